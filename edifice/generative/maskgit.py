"""Halton-MaskGIT (Besnier et al., ICLR 2025; valeoai/Halton-MaskGIT): a class-conditional MaskGIT over the
LlamaGen VQ-16 tokenizer, with both of the authors' samplers.

The transformer reads a ``[B, H*W]`` map of code ids in which hidden positions hold the mask id K (= the
codebook size) and predicts all K+1 logits at every position (the mask id has a logit of its own and can be
sampled). Blocks are pre-norm with RMSNorm, AdaLN-zero modulation from the class embedding, QK-norm over the
whole attention width (all heads jointly), SwiGLU feed-forward and one learned register token appended after
the image tokens; the output head is tied to the token embedding (``logits = h @ tok_emb.T + head.bias``).
Parameter names are the authors' (``transformer.layers.i.attn.wq``, ``last_norm.norm_final``, ...); the
authors' ``head.weight`` (a copy of ``tok_emb.weight``) is dropped by the reader. Dropout is training-only and
left out.

Two samplers, reproduced draw for draw (``Sampler/confidence_sampler.py``, ``Sampler/halton_sampler.py``):

- **confidence** (MaskGIT): every step samples every position, ranks the still-hidden ones by log-confidence
  plus annealed Gumbel noise (numpy's legacy generator, as the authors), and keeps the top ``k_s`` of a
  schedule. Quirk kept: previously revealed positions are re-sampled and overwritten every step; a position
  whose sample is the mask id is hidden again. CFG ramps linearly from 0 to ``w`` over the steps.
- **halton**: a fixed low-discrepancy order of positions (a Halton sequence in bases 2 and 3, optionally
  rolled per sample), revealed in an arccos schedule; revealed tokens are frozen. Constant CFG ``w``; the
  softmax multiplier ramps ``linspace(sm_temp_min, sm_temp_max) ** temp_pow``, halved for ``temp_warmup`` steps.

Both MULTIPLY logits by their softmax "temperature" and guide with ``(1 + w) c - w u`` (``w = 0``: one
unguided pass). edifice's ``cfg`` is the authors' ``w``; edifice's ``temperature`` DIVIDES the logits on top
(1 = the authors' sampler exactly). Streaming yields one :class:`MaskGITStep` per step.

Editing (``init_tokens``; :meth:`MaskGITPipeline.stream` with ``image`` and ``mask``, see :mod:`edifice.editing`)
starts from the image's tokens with the region to regenerate hidden, and both schedules run over the n hidden
tokens instead of all L. The confidence sampler never re-samples a kept token (it does re-sample the ones it
revealed itself, as the authors); Halton walks the full-grid order (rolled per sample with ``randomize``) and
skips the kept positions, so the region is filled in the same spread-out order as a whole image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import render as draw
from ..editing import prepare_edit
from ..pipeline import Control, Pipeline, TokenStats, check_preview, new_seed, preview_control, resolve_labels
from ..tokenizers.llamagen_vq import LlamaGenVQ
from .blocks import modulate
from .mar import start_tokens

SAMPLERS = ("confidence", "halton")
SCHED_MODES = ("arccos", "cosine", "linear", "square", "root")
CANDIDATES = 8  # top candidates kept per position for inspection


@dataclass
class MaskGITConfig:
    """The authors' ``Transformer(...)`` arguments (``dropout`` and ``proj`` are not kept: eval only, proj=1)."""

    input_size: int = 16  # token grid side: 256 px / 16
    hidden_dim: int = 768
    codebook_size: int = 16384  # K; id K is the mask token
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    nclass: int = 1000  # id nclass is the null class
    register: int = 1

    @property
    def seq_len(self) -> int:
        return self.input_size ** 2

    @property
    def vocab_size(self) -> int:  # ids the model reads and predicts, mask included (the seed API's name)
        return self.codebook_size + 1

    @property
    def attn_width(self) -> int:  # heads * (hidden_dim // heads): 510 for the 512-wide, 6-head "small"
        return self.heads * (self.hidden_dim // self.heads)

    @property
    def ffn_hidden(self) -> int:
        return 256 * math.ceil(int(2 * self.mlp_dim / 3) / 256)

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """``x / rms(x)`` in float32, optionally times ``weight`` plus ``bias``."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True, bias: bool = False):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x.float(), (self.dim,), eps=self.eps).type_as(x)
        if self.weight is not None:
            out = out * self.weight
        return out + self.bias if self.bias is not None else out


class Attention(nn.Module):
    """Bidirectional attention with QK-norm over the whole ``heads * head_dim`` width, no biases."""

    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        D, W = cfg.hidden_dim, cfg.attn_width
        self.heads = cfg.heads
        self.wq, self.wk, self.wv = (nn.Linear(D, W, bias=False) for _ in range(3))
        self.wo = nn.Linear(W, D, bias=False)
        self.qk_norm = RMSNorm(W, affine=False)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        B, L, _ = x_BLD.shape
        q, k, v = self.qk_norm(self.wq(x_BLD)), self.qk_norm(self.wk(x_BLD)), self.wv(x_BLD)
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        return self.wo(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """``t + a1 * attn(norm(t) (1 + b1) + g1)``, ``t + a2 * ff(norm(t) (1 + b2) + g2)``; (g, b, a) from the class."""

    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        D = cfg.hidden_dim
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.ln1, self.ln2 = RMSNorm(D), RMSNorm(D)
        self.attn = Attention(cfg)
        self.ff = SwiGLU(D, cfg.ffn_hidden)

    def forward(self, x_BLD: torch.Tensor, c_BD: torch.Tensor) -> torch.Tensor:
        g1, b1, a1, g2, b2, a2 = self.mlp(c_BD)[:, None].chunk(6, dim=-1)
        x_BLD = x_BLD + a1 * self.attn(modulate(self.ln1(x_BLD), g1, b1))
        return x_BLD + a2 * self.ff(modulate(self.ln2(x_BLD), g2, b2))


class FinalNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm_final = RMSNorm(dim, bias=True)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x_BLD: torch.Tensor, c_BD: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(c_BD)[:, None].chunk(2, dim=-1)
        return modulate(self.norm_final(x_BLD), shift, scale)


class TiedHead(nn.Module):
    """The output bias; the weight is the token embedding (the authors tie ``head.weight`` to it)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))


class MaskGIT(nn.Module):
    """Code ids ``[B, L]`` (K = hidden) and labels ``[B]`` (nclass = null) -> logits ``[B, L, K + 1]``."""

    def __init__(self, cfg: MaskGITConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or MaskGITConfig(**kwargs)
        D = cfg.hidden_dim
        self.num_classes, self.mask_id = cfg.nclass, cfg.codebook_size
        self.cls_emb = nn.Embedding(cfg.nclass + 1, D)
        self.tok_emb = nn.Embedding(cfg.codebook_size + 1, D)
        self.pos_emb = nn.Embedding(cfg.seq_len, D)
        self.reg_tokens = nn.Embedding(cfg.register, D)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.last_norm = FinalNorm(D)
        self.head = TiedHead(cfg.codebook_size + 1)

    def forward(self, tokens_BL: torch.Tensor, labels_B: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at every position (``labels_B`` None = the null class)."""
        B, L = tokens_BL.shape
        if labels_B is None:
            labels_B = torch.full((B,), self.num_classes, device=tokens_BL.device)
        c_BD = self.cls_emb(labels_B)
        x_BLD = self.tok_emb(tokens_BL) + self.pos_emb.weight[:L]
        x_BLD = torch.cat((x_BLD, self.reg_tokens.weight.expand(B, -1, -1).to(x_BLD.dtype)), dim=1)
        for block in self.transformer.layers:
            x_BLD = block(x_BLD, c_BD)
        x_BLD = self.last_norm(x_BLD[:, :L], c_BD)
        return F.linear(x_BLD, self.tok_emb.weight, self.head.bias).float()

    def cast(self, dtype: torch.dtype) -> MaskGIT:
        """Blocks and embeddings in ``dtype``; norms compute in float32 and logits come back float32."""
        return self.to(dtype)


# -- schedules ---------------------------------------------------------------------------------------------------
def confidence_schedule(num_steps: int, seq_len: int, mode: str = "arccos") -> list[int]:
    """How many positions are revealed after each step of the confidence sampler (``k_s``; the last is L):
    ``max(int(f(linspace(0, 1, S)) L), s + 1)`` in float32, as the authors' ``build_sequence``."""
    if mode not in SCHED_MODES:
        raise ValueError(f"unknown sched_mode {mode!r}: use one of {SCHED_MODES}")
    r = torch.linspace(0, 1, num_steps)
    val = {"arccos": lambda: 1 - torch.arccos(r) / (math.pi * 0.5), "cosine": lambda: 1 - torch.cos(r * math.pi * 0.5),
           "linear": lambda: r, "square": lambda: r ** 2, "root": lambda: r ** 0.5}[mode]()
    return [max(int(v), s + 1) for s, v in enumerate((val * seq_len).int().tolist())]


def halton_schedule(num_steps: int, seq_len: int) -> list[int]:
    """Positions revealed after each Halton step, cumulative: ``max(s + 1, int(arccos-schedule(s) L))``."""
    out = []
    for s in range(num_steps):
        r = 1 - torch.arccos(torch.tensor((s + 1) / num_steps)) / (math.pi * 0.5)
        out.append(max(s + 1, int(r * seq_len)))
    return out


def _radical_inverse(i: int, base: int) -> float:
    f, r = 1.0, 0.0
    while i > 0:
        f /= base
        r += f * (i % base)
        i //= base
    return r


@cache
def halton_order(grid: int, n: int = 10_000) -> tuple[tuple[int, int], ...]:
    """The authors' reveal order: cells ``(floor(x_i grid), floor(y_i grid))`` of the Halton points
    ``(radical inverse of i in base 2, in base 3)``, i = 1..n, first occurrences only, as (row, col)."""
    seen, order = set(), []
    for i in range(1, n + 1):
        cell = (int(_radical_inverse(i, 2) * grid), int(_radical_inverse(i, 3) * grid))
        if cell not in seen:
            seen.add(cell)
            order.append(cell)
    if len(order) != grid * grid:
        raise ValueError(f"the Halton order covers only {len(order)} of {grid * grid} cells (grids up to 48)")
    return tuple(order)


def halton_temperatures(num_steps: int, sm_temp_min: float, sm_temp_max: float, temp_pow: float,
                        temp_warmup: int) -> torch.Tensor:
    """Per-step softmax multipliers ``linspace(min, max, S) ** temp_pow``, halved for the first ``temp_warmup``."""
    base = torch.linspace(sm_temp_min, sm_temp_max, num_steps)
    temps = torch.stack([base[s] ** temp_pow for s in range(num_steps)])  # 0-dim pow, as the authors (rounds apart)
    temps[:temp_warmup] *= 0.5
    return temps


# -- sampling ----------------------------------------------------------------------------------------------------
@dataclass
class MaskGITStep:
    """One streamed step of a MaskGIT generation (either sampler)."""

    step: int  # 0-based
    num_steps: int
    sampler: str  # "confidence" | "halton"
    tokens: torch.Tensor  # [B, L] ids after this step, K (mask id) where hidden; the final image clamps K to K-1
    mask: torch.Tensor  # [B, L] bool, True = hidden after this step (confidence: id K; halton: not yet visited)
    revealed: torch.Tensor  # [B, L] bool, hidden before this step and set by it
    predicted: torch.Tensor  # [B, L] this step's sample at every position (may be K)
    confidence: torch.Tensor  # [B, L] probability of each position's token: this step's where drawn now (confidence
    #                           sampler: everywhere), the reveal step's for Halton's frozen tokens
    score: torch.Tensor | None  # [B, L] float64 ranking score of the confidence sampler (+inf = revealed)
    candidates: torch.Tensor  # [B, L, 8] this step's most probable ids at every position (K = the mask token)
    candidate_probs: torch.Tensor  # [B, L, 8] their probabilities (after CFG and temperatures, before top-k/top-p)
    entropy: torch.Tensor  # [B, L] entropy (nats) of this step's distribution at every position
    image: torch.Tensor | None  # [B, 3, H, W] in [0, 1]; None with previews off or between previews
    seconds: float  # wall time of this step (forward, sampling and preview)
    labels: torch.Tensor  # [B] class ids used (nclass = unconditional)
    seed: int
    kept: torch.Tensor | None = None  # [B, L] bool when editing: True = the image's own token, never changed


def guided_logits(model: MaskGIT, tokens_BL: torch.Tensor, labels_B: torch.Tensor, w: float,
                  guided: bool = True) -> torch.Tensor:
    """``(1 + w) c - w u`` from one doubled pass (conditional rows first); one plain pass when not ``guided``
    (the authors' ``w == 0``; their confidence ramp still runs the doubled pass at its first step, where w is 0)."""
    if not guided:
        return model(tokens_BL, labels_B)
    null_B = torch.full_like(labels_B, model.num_classes)
    cond, uncond = model(tokens_BL.repeat(2, 1), torch.cat((labels_B, null_B))).chunk(2)
    return (1 + w) * cond - w * uncond


def _draw(prob_BLV: torch.Tensor, top_k: int, top_p: float, rng: torch.Generator) -> torch.Tensor:
    """One id per position from ``prob``, as the authors draw: ``Categorical(probs).sample()`` (normalise, then
    one multinomial over all K+1 columns) or, with ``top_k``, a multinomial over the renormalised top k.
    ``top_p`` in (0, 1) (not the authors') keeps the smallest set of top ids whose mass reaches it."""
    B, L, V = prob_BLV.shape
    ids = None
    if top_k > 0:
        prob_BLV, ids = prob_BLV.topk(top_k, dim=-1)
        prob_BLV = prob_BLV / prob_BLV.sum(-1, keepdim=True)
    if 0 < top_p < 1:
        if ids is None:
            prob_BLV, ids = prob_BLV.sort(dim=-1, descending=True)
        drop = prob_BLV.cumsum(-1) - prob_BLV > top_p
        prob_BLV = prob_BLV.masked_fill(drop, 0)
    if ids is None:
        prob_BLV = prob_BLV / prob_BLV.sum(-1, keepdim=True)
    j_N1 = torch.multinomial(prob_BLV.reshape(-1, prob_BLV.shape[-1]), 1, True, generator=rng)
    j_BL = j_N1.view(B, L)
    return j_BL if ids is None else ids.gather(-1, j_BL[..., None])[..., 0]


def check_sampling(seq_len: int, sampler: str, num_steps: int, cfg: float, temperature: float, top_k: int,
                   sched_mode: str, randomize) -> None:
    """Errors a user can cause, said before anything runs."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: use one of {SAMPLERS}")
    low = 2 if sampler == "confidence" else 1  # the authors' confidence ramp divides by num_steps - 1
    if not low <= int(num_steps) <= seq_len:
        raise ValueError(f"num_steps must be in {low}..{seq_len} for the {sampler} sampler, got {num_steps}")
    if cfg < 0:
        raise ValueError(f"cfg (the authors' w) must be >= 0 (0 = no guidance), got {cfg}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (it divides the logits; 1 = the authors' sampler), "
                         f"got {temperature}")
    if top_k < 0 and top_k != -1:
        raise ValueError(f"top_k must be >= 0 (0 or -1 = off), got {top_k}")
    if sampler == "confidence":
        if sched_mode not in SCHED_MODES:
            raise ValueError(f"unknown sched_mode {sched_mode!r}: use one of {SCHED_MODES}")
        if randomize not in ("linear", "none", True, False):
            raise ValueError(f"randomize must be 'linear' (True) or 'none' (False) for the confidence sampler, "
                             f"got {randomize!r}")


@torch.inference_mode()
def stream_tokens(model: MaskGIT, *, sampler: str = "halton", labels=None, batch_size: int = 1, num_steps: int = 32,
                  cfg: float = 0.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  seed: int | None = None, sm_temp: float = 1.0, r_temp: float = 4.5, sched_mode: str = "arccos",
                  randomize: bool | str | None = None, sm_temp_min: float = 1.0, sm_temp_max: float = 1.0,
                  temp_pow: float = 1.0, temp_warmup: int = 0, init_tokens: torch.Tensor | None = None,
                  render: Callable[[torch.Tensor, bool], torch.Tensor] | None = None,
                  preview_every: int = 1) -> Iterator[MaskGITStep]:
    """The authors' ``ConfidenceSampler`` / ``HaltonSampler``, yielding a :class:`MaskGITStep` after each step.

    - ``sampler``: "halton" (default, the authors' recommendation) or "confidence".
    - ``cfg``: the authors' ``w`` (``(1 + w) c - w u``; 0 = one unguided pass; confidence ramps 0 -> w).
    - ``temperature``: divides the logits after the authors' multipliers (1 = theirs exactly).
    - ``top_k`` (Halton's own, also applied to the confidence sampler) and ``top_p`` (edifice's; 1 or 0 = off).
    - Confidence settings: ``sm_temp`` (multiplies), ``r_temp`` (Gumbel scale, annealed to 0), ``sched_mode``,
      ``randomize`` ("linear" or True = the annealed Gumbel noise, the default; "none" or False = pure confidence).
    - Halton settings: ``sm_temp_min``/``sm_temp_max``/``temp_pow``/``temp_warmup`` (multipliers), ``randomize``
      (True = roll the order by a random offset per sample; default False).
    - ``seed``: a ``torch.Generator`` seeded with it makes the torch draws and ``numpy.random.RandomState(seed)``
      the confidence sampler's Gumbel noise, so on the CPU the tokens equal the authors' after
      ``torch.manual_seed(seed); np.random.seed(seed)``. Labels drawn at random (``labels=None``) come from a
      separate generator with the same seed, leaving that stream untouched.
    - ``init_tokens``: ``[1 or B, L]`` ids with K (the mask id) where unknown, to edit (see the module
      docstring): the known ones are kept and never re-sampled; steps beyond the number to draw reveal nothing.
    - ``render(tokens_BL, final) -> image`` runs every ``preview_every`` steps and at the last one.
    """
    cfg_ = model.cfg
    L, K = cfg_.seq_len, cfg_.codebook_size
    if randomize is None:
        randomize = sampler == "confidence"
    check_sampling(L, sampler, num_steps, cfg, temperature, top_k, sched_mode, randomize)
    if sampler == "confidence":
        randomize = randomize in ("linear", True)
    if preview_every < 1:
        raise ValueError(f"preview_every must be >= 1, got {preview_every}")
    device = model.tok_emb.weight.device
    seed = new_seed() if seed is None else int(seed)
    label_B = resolve_labels(labels, batch_size, model.num_classes, torch.Generator(device).manual_seed(seed), device)
    B, S = label_B.shape[0], int(num_steps)
    rng = torch.Generator(device).manual_seed(seed)
    code_BL = start_tokens(init_tokens, B, L, K + 1, K, device)  # ids 0..K, K = hidden
    kept_BL = None if init_tokens is None else code_BL != K
    hidden_BL = code_BL == K
    shown_conf_BL = (~hidden_BL).float()  # 1 = given
    # known positions after each step: the kept ones, plus each sample's schedule over its n hidden ones
    counts_BS = torch.tensor([[min(c, n) for c in (confidence_schedule(S, n, sched_mode) if sampler == "confidence"
                                                   else halton_schedule(S, n))]
                              for n in hidden_BL.sum(1).tolist()], device=device)
    counts_BS += (~hidden_BL).sum(1, keepdim=True)
    if sampler == "confidence":
        nprng = np.random.RandomState(seed)
    else:
        temps = halton_temperatures(S, sm_temp_min, sm_temp_max, temp_pow, temp_warmup)
        order_L = torch.tensor([r * cfg_.input_size + c for r, c in halton_order(cfg_.input_size)], device=device)
        order_BL = order_L.expand(B, L)
        if randomize:
            shift_B = torch.randint(0, L, (B,), generator=rng, device=device)
            order_BL = order_L[(torch.arange(L, device=device) - shift_B[:, None]) % L]
        # kept positions first (a stable sort keeps the Halton order of the rest), then each step takes ranks
        order_BL = order_BL.gather(1, hidden_BL.gather(1, order_BL).int().argsort(dim=1, stable=True))
        rank_BL = torch.empty_like(order_BL).scatter_(1, order_BL, torch.arange(L, device=device).expand(B, L))
        prev_B1 = (~hidden_BL).sum(1, keepdim=True)
    for s in range(S):
        t0 = time.perf_counter()
        if sampler == "confidence":
            logits_BLV = guided_logits(model, code_BL, label_B, cfg * (s / (S - 1)), cfg != 0) * sm_temp
        else:
            logits_BLV = guided_logits(model, code_BL, label_B, cfg, cfg != 0) * temps[s].to(device)
        if temperature != 1.0:
            logits_BLV = logits_BLV / temperature
        prob_BLV = logits_BLV.softmax(-1)
        pred_BL = _draw(prob_BLV, top_k, top_p, rng)
        conf_BL = prob_BLV.gather(-1, pred_BL[..., None])[..., 0]
        cand_p_BLk, cand_BLk = prob_BLV.topk(min(CANDIDATES, K + 1), dim=-1)
        entropy_BL = -(prob_BLV * prob_BLV.clamp_min(1e-30).log()).sum(-1)
        score_BL = None
        if sampler == "confidence":
            score_BL = conf_BL.log().double()
            if randomize:
                noise = (r_temp * nprng.gumbel(size=(B, L))) * (1 - s / (S - 1))
                score_BL = score_BL + torch.from_numpy(noise).to(device)
            score_BL = score_BL.masked_fill(~hidden_BL, math.inf)
            thr_B1 = score_BL.sort(dim=-1, descending=True).values.gather(1, counts_BS[:, s:s + 1] - 1)
            take_BL = score_BL >= thr_B1  # every revealed position too: re-sampled, as the authors do
            if kept_BL is not None:
                take_BL &= ~kept_BL  # but never a kept one
            code_BL = torch.where(take_BL, pred_BL, code_BL)
            new_hidden_BL = code_BL == K
        else:
            take_BL = (rank_BL >= prev_B1) & (rank_BL < counts_BS[:, s:s + 1])
            prev_B1 = counts_BS[:, s:s + 1]
            code_BL = torch.where(take_BL, pred_BL, code_BL)
            new_hidden_BL = hidden_BL & ~take_BL
        drawn_now_BL = hidden_BL if sampler == "halton" else torch.ones_like(hidden_BL)
        if kept_BL is not None:
            drawn_now_BL = drawn_now_BL & ~kept_BL
        shown_conf_BL = torch.where(drawn_now_BL, conf_BL, shown_conf_BL)
        revealed_BL = hidden_BL & ~new_hidden_BL
        hidden_BL = new_hidden_BL
        last = s == S - 1
        show = render is not None and (last or (s + 1) % preview_every == 0)
        image = render(code_BL, last) if show else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield MaskGITStep(step=s, num_steps=S, sampler=sampler, tokens=code_BL, mask=hidden_BL, revealed=revealed_BL,
                          predicted=pred_BL, confidence=shown_conf_BL, score=score_BL, candidates=cand_BLk,
                          candidate_probs=cand_p_BLk, entropy=entropy_BL, image=image,
                          seconds=time.perf_counter() - t0, labels=label_B, seed=seed, kept=kept_BL)


# -- image pipeline ----------------------------------------------------------------------------------------------
class MaskGITPipeline(Pipeline):
    """The LlamaGen VQ-16 tokenizer and a Halton-MaskGIT transformer: ``stream`` yields one :class:`MaskGITStep`
    per step (arguments of :func:`stream_tokens`, plus ``preview`` and the authors' aliases ``w`` = ``cfg`` and
    ``step`` = ``num_steps``); ``generate`` returns images ``[B, 3, H, W]`` in [0, 1]. Previews decode the
    known codes with the mean of the (normalised) codebook at hidden positions; the final image clamps a
    left-over mask id to K - 1, as the authors do."""

    kind = "maskgit"
    family = "Halton-MaskGIT"
    can_edit = True
    legend = ("Dark = still masked; colour = probability of each position's token (purple 0 → yellow 1); white "
              "outline = revealed in this step. The confidence sampler re-draws every revealed token each step.")

    def __init__(self, tokenizer: LlamaGenVQ, model: MaskGIT, class_names: list[str] | None = None,
                 defaults: dict | None = None):
        if tokenizer.vocab_size != model.cfg.codebook_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} codes but the model {model.cfg.codebook_size}")
        if tokenizer.cfg.image_size != model.cfg.input_size * tokenizer.cfg.stride:
            raise ValueError(f"the model's {model.cfg.input_size}x{model.cfg.input_size} tokens make "
                             f"{model.cfg.input_size * tokenizer.cfg.stride} px images, not the tokenizer's "
                             f"{tokenizer.cfg.image_size}")
        super().__init__(tokenizer, model, class_names, defaults)

    @property
    def seq_len(self) -> int:
        return self.model.cfg.seq_len

    @torch.inference_mode()
    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> code ids ``[B, L]`` (e.g. the image of an edit)."""
        return self.tokenizer.encode(img_B3HW.to(self.device) * 2 - 1)[1].flatten(1)

    def render(self, tokens_BL: torch.Tensor, mode: str = "full", final: bool = False) -> torch.Tensor:
        """Token ids -> image ``[B, 3, H, W]`` in [0, 1]. Hidden (mask id) positions get the mean code, or with
        ``final`` the code K - 1 (the authors' clamp). ``mode``: "full", "fast" (half-size latent), "latent"."""
        K, n = self.model.cfg.codebook_size, self.model.cfg.input_size
        if final:
            latent = self.tokenizer.embed(tokens_BL.clamp(0, K - 1).view(-1, n, n))
        else:
            codebook_VC = self.tokenizer.quantize.codebook()
            hidden_BL1 = (tokens_BL == K)[..., None]
            z_BLC = torch.where(hidden_BL1, codebook_VC.mean(0), codebook_VC[tokens_BL.clamp(0, K - 1)])
            latent = z_BLC.transpose(1, 2).reshape(tokens_BL.shape[0], -1, n, n)
        if mode == "latent" and not final:
            return self.tokenizer.latent_preview(latent)
        return self.tokenizer.preview(latent, n // 2 if mode == "fast" and not final and n >= 4 else None)

    def controls(self) -> list[Control]:
        d, L, K = self.defaults, self.seq_len, self.model.cfg.codebook_size
        halton, conf = "(Halton sampler)", "(confidence sampler)"
        return [
            Control("sampler", "choice", d.get("sampler", "halton"), "Sampler", "halton: a fixed low-discrepancy "
                    "order, revealed tokens frozen; confidence: MaskGIT's, most confident first", choices=SAMPLERS),
            Control("num_steps", "int", min(d.get("num_steps", 32), L), "Steps", f"unmasking steps (2 to {L})", 2, L,
                    1),
            Control("cfg", "float", d.get("cfg", 0.0), "CFG (w)", "the authors' w: (1 + w) c - w u, 0 = off; the "
                    "confidence sampler ramps it from 0", 0.0, 20.0, 0.1),
            Control("temperature", "float", d.get("temperature", 1.0), "Temperature", "divides the logits after "
                    "the authors' softmax multipliers (1 = the authors' sampler)", 0.05, 5.0, 0.05),
            Control("top_k", "int", d.get("top_k", 0), "Top-k", f"draw among the k most probable ids (0 = off, at "
                    f"most {K + 1})", 0, K + 1, 1),
            Control("randomize", "bool", d.get("randomize", d.get("sampler", "halton") == "confidence"),
                    "Randomize", f"{halton} roll the order per image; {conf} annealed Gumbel noise on the ranking"),
            Control("sm_temp_min", "float", d.get("sm_temp_min", 1.0), "Softmax multiplier, first step",
                    f"{halton} logits are multiplied by it (>1 sharpens)", 0.05, 5.0, 0.05, when=("sampler", "halton")),
            Control("sm_temp_max", "float", d.get("sm_temp_max", 1.0), "Softmax multiplier, last step",
                    f"{halton} linear from the first step's", 0.05, 5.0, 0.05, when=("sampler", "halton")),
            Control("temp_pow", "float", d.get("temp_pow", 1.0), "Multiplier power", f"{halton} the multipliers "
                    "are raised to it", 0.1, 5.0, 0.1, when=("sampler", "halton")),
            Control("temp_warmup", "int", d.get("temp_warmup", 0), "Warm-up steps", f"{halton} the multiplier is "
                    "halved (flatter) for this many first steps", 0, L, 1, when=("sampler", "halton")),
            Control("sm_temp", "float", d.get("sm_temp", 1.0), "Softmax multiplier", f"{conf} logits are "
                    "multiplied by it (>1 sharpens)", 0.05, 5.0, 0.05, when=("sampler", "confidence")),
            Control("r_temp", "float", d.get("r_temp", 4.5), "Ranking noise", f"{conf} scale of the Gumbel noise, "
                    "annealed to 0", 0.0, 20.0, 0.5, when=("sampler", "confidence")),
            Control("sched_mode", "choice", d.get("sched_mode", "arccos"), "Schedule", f"{conf} how many tokens "
                    "are revealed after each step", choices=SCHED_MODES, when=("sampler", "confidence")),
            Control("preview_every", "int", d.get("preview_every", 1), "Preview every k steps", "the last step is "
                    "always decoded", 1, L, 1),
            preview_control(d),
        ]

    def status(self, step: MaskGITStep) -> str:
        shown = int((~step.mask[0]).sum())
        return (f"step {step.step + 1}/{step.num_steps} · {shown}/{step.mask.shape[1]} revealed · {step.sampler} · "
                f"{step.seconds * 1e3:.0f} ms")

    def token_view(self, step: MaskGITStep, target: int = 256):
        return draw.mar_token_view(step.mask, step.confidence, step.revealed, target)

    def token_stats(self, step: MaskGITStep) -> TokenStats:
        """This step's distribution at every position (after CFG, the softmax multipliers and temperature, before
        top-k/top-p). Drawn: this step's sample where it was drawn into the map (Halton: the positions hidden
        before the step; confidence: everywhere). Heat: entropy / log(K + 1) there."""
        K, n = self.model.cfg.codebook_size, self.model.cfg.input_size
        active = (step.mask | step.revealed) if step.sampler == "halton" else torch.ones_like(step.mask)
        if step.kept is not None:
            active = active & ~step.kept
        drawn_prob = torch.where(active, step.confidence, torch.nan)
        heat = torch.where(active, step.entropy / math.log(K + 1), torch.nan).clamp(0, 1)
        return TokenStats((n, n), step.candidates.cpu(), step.candidate_probs.cpu(),
                          torch.where(active, step.predicted, -1).cpu(), drawn_prob.cpu(), step.entropy.cpu(),
                          heat.cpu(), "entropy / log V", "this step's distribution: after CFG, the softmax multipliers "
                          "and temperature, before top-k/top-p",
                          lambda i: "mask token" if i == K else f"code {i}")

    def _sample(self, preview: bool | str = True, w: float | None = None, step: int | None = None, image=None,
                mask=None, **kwargs) -> Iterator[MaskGITStep]:
        """``image``, ``mask``: edit an image (:mod:`edifice.editing`; mask 1 = regenerate, at the token grid or
        in pixels): sampling starts from the image's tokens with the regenerated ones hidden (``init_tokens``)."""
        check_preview(preview)
        if w is not None:
            kwargs["cfg"] = w
        if step is not None:
            kwargs["num_steps"] = step
        mode = preview if isinstance(preview, str) else "full"
        edit = prepare_edit(image, mask, image_size=self.image_size, grid=self.model.cfg.input_size,
                            device=self.device)
        if edit:
            if kwargs.get("init_tokens") is not None:
                raise ValueError("pass either image and mask, or init_tokens, not both")
            edit.fit_batch(kwargs)
            kwargs["init_tokens"] = torch.where(edit.kept, self.encode(edit.image), self.model.cfg.codebook_size)

        def render(tokens_BL, final):  # the last step is always decoded exactly
            return self.render(tokens_BL, "full" if final else mode, final)

        return stream_tokens(self.model, render=render if preview else None, **kwargs)

    @torch.inference_mode()
    def decode(self, step: MaskGITStep) -> torch.Tensor:
        return self.render(step.tokens, final=True)
