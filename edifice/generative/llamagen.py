"""LlamaGen class-to-image GPT (Sun et al. 2024, FoundationVision/LlamaGen ``c2i_B_256.pt`` ... ``c2i_3B_384.pt``):
raster-order next-token prediction over the LlamaGen VQ-16 tokenizer.

A Llama-style decoder (RMSNorm, SwiGLU, no biases) reads the class embedding as one prefix token and then the
code ids left to right, row by row; 2-D rotary embeddings give each image token its (row, column) angles, and
the class token gets all-zero rotary rows (its q and k are zeroed, as the authors' cache does). Parameter names
are the authors' (``tok_embeddings``, ``cls_embedding.embedding_table``, ``layers.i.attention.wqkv``,
``feed_forward.w1/w2/w3``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output``); the rotary table is
computed, not stored. Dropouts are training-only and left out.

Sampling is the authors' ``generate`` draw for draw (:func:`stream_tokens`): a KV cache per layer, one
``torch.multinomial`` per token; CFG ``u + cfg (c - u)`` on a doubled batch only when ``cfg > 1``, switched
to the conditional logits after token ``cfg_interval + 1`` (the doubled batch still runs); logits DIVIDED by
``temperature``; the authors' (Hugging Face style) top-k then top-p filter. Records stream every
``preview_every`` tokens (default one row of the grid).

Editing: raster order cannot look ahead, so only a raster prefix of the image can be kept: whole rows from the
top, then the left part of one row. That is outpainting below or regenerating the bottom (from any token on);
a hole, a right-hand strip or anything above kept tokens is refused (use MaskGIT, MAR or VAR). The
prefix (``prefix_tokens``; :meth:`LlamaGenPipeline.stream` with ``image`` and ``mask``) goes through the KV
cache in one pass after the class token, and sampling continues from the first token after it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import render as draw
from ..editing import prepare_edit, require_raster_prefix
from ..pipeline import Control, Pipeline, TokenStats, cfg_mix, check_preview, new_seed, preview_control, resolve_labels
from ..tokenizers.llamagen_vq import LlamaGenVQ
from .blocks import KVCache
from .maskgit import RMSNorm, SwiGLU

CANDIDATES = 8  # top candidates kept per position for inspection


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class LlamaGenConfig:
    """The authors' ``ModelArgs`` fields that shape a c2i model (GQA, dropouts and t2i fields are not kept)."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    vocab_size: int = 16384
    num_classes: int = 1000  # id num_classes is the null class
    cls_token_num: int = 1
    block_size: int = 256  # image tokens: 16x16 at 256 px, 24x24 at 384 px

    @property
    def grid(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    def to_dict(self) -> dict:
        return asdict(self)


def rope_2d(grid: int, head_dim: int, base: float, cls_token_num: int) -> torch.Tensor:
    """Rotary table ``[cls + grid^2, head_dim / 2, 2]`` of (cos, sin): for cell (r, c) the angles
    ``[r f_0 .. r f_n-1, c f_0 .. c f_n-1]``, ``f_j = base^(-2j / (head_dim/2))``; class rows all zero."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    freqs = torch.outer(torch.arange(grid, dtype=torch.float32), freqs)
    grid_freqs = torch.cat([freqs[:, None, :].expand(-1, grid, -1), freqs[None, :, :].expand(grid, -1, -1)], dim=-1)
    table = torch.stack([torch.cos(grid_freqs), torch.sin(grid_freqs)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def apply_rope(x_BLHc: torch.Tensor, freqs_Lc2: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (2i, 2i+1) of every head, in float32."""
    xs = x_BLHc.float().reshape(*x_BLHc.shape[:-1], -1, 2)
    f = freqs_Lc2.view(1, xs.shape[1], 1, xs.shape[3], 2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x_BLHc)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaGenConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x_BLD: torch.Tensor, freqs_Lc2: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q, k, v = self.wqkv(x_BLD).view(B, L, 3, self.n_head, self.head_dim).unbind(2)
        q, k = apply_rope(q, freqs_Lc2), apply_rope(k, freqs_Lc2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            if L > 1 and cache.len:
                raise ValueError("a cached pass takes one token at a time once the cache holds any")
            k, v = cache.extend(k, v)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=L > 1)
        return self.wo(out.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, cfg: LlamaGenConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = SwiGLU(cfg.dim, cfg.ffn_hidden)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x_BLD, freqs_Lc2, cache: KVCache | None = None):
        h = x_BLD + self.attention(self.attention_norm(x_BLD), freqs_Lc2, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)


class LlamaGen(nn.Module):
    """Class ids and raster code ids -> next-token logits ``[B, l, vocab_size]`` (float32)."""

    def __init__(self, cfg: LlamaGenConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or LlamaGenConfig(**kwargs)
        self.num_classes = cfg.num_classes
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.register_buffer("freqs_cis", rope_2d(cfg.grid, cfg.head_dim, cfg.rope_base, cfg.cls_token_num),
                             persistent=False)

    def run(self, x_BlD: torch.Tensor, start: int, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Logits of the embedded tokens ``x_BlD`` at positions ``start..start+l-1`` (0 = the class token),
        appending to ``caches`` when given, else attending causally within ``x_BlD`` (which must then start at 0)."""
        freqs = self.freqs_cis[start:start + x_BlD.shape[1]]
        for i, layer in enumerate(self.layers):
            x_BlD = layer(x_BlD, freqs, caches[i] if caches is not None else None)
        return self.output(self.norm(x_BlD)).float()

    def embed_class(self, labels_B: torch.Tensor) -> torch.Tensor:
        return self.cls_embedding.embedding_table(labels_B)[:, None]

    def forward(self, idx_BL: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits ``[B, 1 + L, V]`` of [class, idx]; position j predicts token j."""
        x_BLD = torch.cat((self.embed_class(labels_B), self.tok_embeddings(idx_BL)), dim=1)
        return self.run(x_BLD, 0)

    def new_caches(self, batch: int) -> list[KVCache]:
        dtype, device = self.tok_embeddings.weight.dtype, self.tok_embeddings.weight.device
        return [KVCache(batch, self.cfg.n_head, self.cfg.cls_token_num + self.cfg.block_size, self.cfg.head_dim,
                        dtype, device) for _ in self.layers]

    def cast(self, dtype: torch.dtype) -> LlamaGen:
        """Weights in ``dtype``; norms and rotations compute in float32, logits come back float32."""
        self.to(dtype)
        self.freqs_cis = self.freqs_cis.float()
        return self


# -- sampling ----------------------------------------------------------------------------------------------------
def filter_top_k_top_p_(logits_BV: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The authors' (Hugging Face) filter, in place: top-k keeps logits >= the k-th largest (ties kept), then
    top-p removes the sorted tail whose cumulative probability before it exceeds ``top_p`` (the best token is
    always kept). Not VAR's filter: its top-p threshold differs at the boundary and 0 means off there."""
    if top_k > 0:
        k = min(max(top_k, 1), logits_BV.shape[-1])
        logits_BV.masked_fill_(logits_BV < logits_BV.topk(k)[0][..., -1, None], -torch.inf)
    if top_p < 1.0:
        sorted_BV, idx_BV = logits_BV.sort(descending=True)
        remove = sorted_BV.softmax(-1).cumsum(-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits_BV.masked_fill_(remove.scatter(1, idx_BV, remove), -torch.inf)
    return logits_BV


@dataclass
class LlamaGenStep:
    """One streamed record of a LlamaGen generation: ``preview_every`` more tokens in raster order."""

    step: int  # 0-based record index
    num_steps: int  # records in the generation: ceil(L / preview_every)
    front: int  # tokens generated so far (the raster front: row front // grid, column front % grid)
    tokens: torch.Tensor  # [B, L] ids so far, -1 where not generated yet
    mask: torch.Tensor  # [B, L] bool, True = not generated yet
    revealed: torch.Tensor  # [B, L] bool, generated in this record
    confidence: torch.Tensor  # [B, L] probability of each generated token when it was drawn (0 = not yet)
    candidates: torch.Tensor  # [B, L, 8] the most probable ids at each generated position (after CFG and filters)
    candidate_probs: torch.Tensor  # [B, L, 8] their probabilities
    entropy: torch.Tensor  # [B, L] entropy (nats) of the distribution each token was drawn from (0 = not yet)
    image: torch.Tensor | None  # [B, 3, H, W] in [0, 1]; None with previews off
    seconds: float  # wall time of this record (its tokens and preview)
    labels: torch.Tensor  # [B] class ids used (num_classes = unconditional)
    seed: int
    kept: torch.Tensor | None = None  # [B, L] bool when editing: True = the image's own token (the prefix)


def check_sampling(cfg: float, temperature: float, top_k: int, top_p: float, preview_every: int) -> None:
    if cfg < 1.0:
        raise ValueError(f"cfg (the authors' cfg_scale) must be >= 1 (1 = no guidance), got {cfg}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (it divides the logits; 0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    if preview_every < 1:
        raise ValueError(f"preview_every must be >= 1 token, got {preview_every}")


@torch.inference_mode()
def stream_tokens(model: LlamaGen, *, labels=None, batch_size: int = 1, cfg: float = 1.0, cfg_interval: int = -1,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, sample_logits: bool = True,
                  seed: int | None = None, kv_cache: bool = True, preview_every: int | None = None,
                  prefix_tokens: torch.Tensor | None = None,
                  render: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[LlamaGenStep]:
    """The authors' ``generate``, yielding a :class:`LlamaGenStep` every ``preview_every`` tokens (None = one
    grid row) and after the last.

    - ``cfg``: the authors' ``cfg_scale``; ``u + cfg (c - u)`` when > 1 (1 = one unguided batch).
      ``cfg_interval``: from token ``cfg_interval + 2`` on, the conditional logits alone (-1 = guide every token).
    - ``temperature`` divides the logits (0 = greedy, the authors' ``sample_logits=False``); ``top_k`` (0 = off)
      and ``top_p`` (1 = off) filter as the authors do.
    - ``seed``: a ``torch.Generator`` seeded with it makes the one draw per token, so on the CPU the tokens equal
      the authors' after ``torch.manual_seed(seed)``; labels drawn at random (``labels=None``) come from a
      separate generator with the same seed.
    - ``kv_cache=False`` recomputes the whole prefix for every token (same tokens; for benchmarks).
    - ``prefix_tokens``: ``[1 or B, P]`` ids of the first P tokens in raster order, kept (editing): they are
      read in one pass and sampling starts at token P; records count from there.
    - ``render(tokens_BL) -> image`` runs at every record (-1 = not generated yet).
    """
    L, G = model.cfg.block_size, model.cfg.grid
    every = G if preview_every is None else int(preview_every)
    check_sampling(cfg, temperature, top_k, top_p, every)
    if temperature == 0:
        sample_logits, temperature = False, 1.0
    device = model.tok_embeddings.weight.device
    seed = new_seed() if seed is None else int(seed)
    label_B = resolve_labels(labels, batch_size, model.num_classes, torch.Generator(device).manual_seed(seed), device)
    B, guided = label_B.shape[0], cfg > 1.0
    rng = torch.Generator(device).manual_seed(seed)
    rows_R = torch.cat((label_B, torch.full_like(label_B, model.num_classes))) if guided else label_B
    caches = model.new_caches(len(rows_R)) if kv_cache else None
    tokens_BL = torch.full((B, L), -1, dtype=torch.long, device=device)
    x_RlD = model.embed_class(rows_R)
    P, kept_BL = 0, None
    if prefix_tokens is not None:
        prefix_BP = _prefix(prefix_tokens, B, L, model.cfg.vocab_size, device)
        P = prefix_BP.shape[1]
        tokens_BL[:, :P] = prefix_BP
        kept_BL = tokens_BL >= 0
        x_RlD = torch.cat((x_RlD, model.tok_embeddings(prefix_BP.repeat(2 if guided else 1, 1))), dim=1)
    seq_RlD = x_RlD
    conf_BL = (tokens_BL >= 0).float()  # 1 = given
    cand_BLk = torch.zeros(B, L, CANDIDATES, dtype=torch.long, device=device)
    cand_p_BLk = torch.zeros(B, L, CANDIDATES, device=device)
    entropy_BL = torch.zeros(B, L, device=device)
    num_steps, start, t0 = math.ceil(L / every) - P // every, P, time.perf_counter()
    for t in range(P, L):
        if kv_cache:  # x_RlD: the tokens (class, prefix, last drawn) at positions up to t, not yet in the cache
            logits_RV = model.run(x_RlD, t + 1 - x_RlD.shape[1], caches)[:, -1]
        else:
            logits_RV = model.run(seq_RlD, 0)[:, -1]
        if guided:
            cond_BV, uncond_BV = logits_RV.chunk(2)
            on = not (cfg_interval > -1 and t - 1 > cfg_interval)
            logits_BV = cfg_mix(cond_BV, uncond_BV, cfg) if on else cond_BV
        else:
            logits_BV = logits_RV
        logits_BV = filter_top_k_top_p_(logits_BV / max(temperature, 1e-5), top_k, top_p)
        probs_BV = logits_BV.softmax(-1)
        if sample_logits:
            tok_B = torch.multinomial(probs_BV, 1, generator=rng)[:, 0]
        else:
            tok_B = probs_BV.topk(1)[1][:, 0]
        tokens_BL[:, t] = tok_B
        conf_BL[:, t] = probs_BV.gather(1, tok_B[:, None])[:, 0]
        cand_p_BLk[:, t], cand_BLk[:, t] = probs_BV.topk(min(CANDIDATES, probs_BV.shape[-1]))
        entropy_BL[:, t] = -(probs_BV * probs_BV.clamp_min(1e-30).log()).sum(-1)
        x_RlD = model.tok_embeddings(tok_B.repeat(2 if guided else 1))[:, None]
        if not kv_cache:
            seq_RlD = torch.cat((seq_RlD, x_RlD), dim=1)
        if (t + 1) % every and t + 1 < L:
            continue
        revealed_BL = torch.zeros(B, L, dtype=torch.bool, device=device)
        revealed_BL[:, start:t + 1] = True
        snapshot = tokens_BL.clone()
        image = render(snapshot) if render is not None else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield LlamaGenStep(step=t // every - P // every, num_steps=num_steps, front=t + 1, tokens=snapshot,
                           mask=snapshot < 0, revealed=revealed_BL, confidence=conf_BL.clone(),
                           candidates=cand_BLk.clone(), candidate_probs=cand_p_BLk.clone(), entropy=entropy_BL.clone(),
                           image=image, seconds=time.perf_counter() - t0, labels=label_B, seed=seed, kept=kept_BL)
        start, t0 = t + 1, time.perf_counter()


def _prefix(prefix_tokens, B: int, L: int, V: int, device) -> torch.Tensor:
    """``prefix_tokens`` as ``[B, P]`` ids, checked: 1 <= P < L (something kept, something to draw)."""
    prefix = torch.as_tensor(prefix_tokens, device=device).long()
    prefix = prefix[None] if prefix.ndim == 1 else prefix
    if prefix.ndim != 2 or prefix.shape[0] not in (1, B) or not 0 < prefix.shape[1] < L:
        raise ValueError(f"prefix_tokens must be [P] or [1 or {B}, P] with 0 < P < {L}, got {list(prefix.shape)}")
    if prefix.min() < 0 or prefix.max() >= V:
        raise ValueError(f"prefix_tokens must be ids in 0..{V - 1}")
    return prefix.expand(B, -1)


# -- image pipeline ----------------------------------------------------------------------------------------------
class LlamaGenPipeline(Pipeline):
    """The LlamaGen VQ-16 tokenizer and a c2i GPT: ``stream`` yields one :class:`LlamaGenStep` every
    ``preview_every`` tokens (arguments of :func:`stream_tokens`, plus ``preview`` and the authors' alias
    ``cfg_scale`` = ``cfg``); ``generate`` returns images ``[B, 3, H, W]`` in [0, 1]. Previews decode the tokens
    so far with the mean of the (normalised) codebook below the raster front."""

    kind = "llamagen"
    family = "LlamaGen"
    can_edit = True  # a raster prefix only (see the module docstring)
    step_name = "row"
    legend = ("Raster order, left to right and top to bottom: dark = not generated yet; colour = probability of "
              "the drawn token (purple 0 → yellow 1); white outline = the tokens of this record.")

    def __init__(self, tokenizer: LlamaGenVQ, model: LlamaGen, class_names: list[str] | None = None,
                 defaults: dict | None = None):
        if tokenizer.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} codes but the GPT's vocabulary is "
                             f"{model.cfg.vocab_size}")
        if tokenizer.cfg.image_size != model.cfg.grid * tokenizer.cfg.stride:
            raise ValueError(f"the GPT's {model.cfg.grid}x{model.cfg.grid} tokens make "
                             f"{model.cfg.grid * tokenizer.cfg.stride} px images, not the tokenizer's "
                             f"{tokenizer.cfg.image_size}")
        super().__init__(tokenizer, model, class_names, defaults)

    @property
    def seq_len(self) -> int:
        return self.model.cfg.block_size

    @torch.inference_mode()
    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> code ids ``[B, L]`` in raster order (e.g. the image of an edit)."""
        return self.tokenizer.encode(img_B3HW.to(self.device) * 2 - 1)[1].flatten(1)

    def render(self, tokens_BL: torch.Tensor, mode: str = "full") -> torch.Tensor:
        """Token ids (-1 = not generated) -> image ``[B, 3, H, W]`` in [0, 1]; unknown positions get the mean
        code. ``mode``: "full", "fast" (half-size latent), "latent" (linear colours)."""
        n, codebook_VC = self.model.cfg.grid, self.tokenizer.quantize.codebook()
        z_BLC = torch.where((tokens_BL < 0)[..., None], codebook_VC.mean(0), codebook_VC[tokens_BL.clamp_min(0)])
        latent = z_BLC.transpose(1, 2).reshape(tokens_BL.shape[0], -1, n, n)
        if mode == "latent":
            return self.tokenizer.latent_preview(latent)
        return self.tokenizer.preview(latent, n // 2 if mode == "fast" and n >= 4 else None)

    def controls(self) -> list[Control]:
        d, L, V, G = self.defaults, self.seq_len, self.model.cfg.vocab_size, self.model.cfg.grid
        return [
            Control("cfg", "float", d.get("cfg", 1.0), "CFG", "the authors' cfg_scale: u + cfg (c - u), 1 = off",
                    1.0, 20.0, 0.05),
            Control("cfg_interval", "int", d.get("cfg_interval", -1), "CFG for the first tokens",
                    "guide only tokens 1 to this + 1, then the conditional logits alone (-1 = every token)", -1, L, 1),
            Control("temperature", "float", d.get("temperature", 1.0), "Temperature",
                    "logits divided by it before top-k/top-p; 0 = greedy", 0.0, 5.0, 0.05),
            Control("top_k", "int", d.get("top_k", 0), "Top-k", f"keep the k best codes (0 = off, at most {V})",
                    0, V, 1),
            Control("top_p", "float", d.get("top_p", 1.0), "Top-p", "keep the smallest set of codes with this "
                    "much probability (1 = off)", 0.01, 1.0, 0.01),
            Control("preview_every", "int", d.get("preview_every", G), "Tokens per record",
                    f"one record (and preview) every k tokens; {G} = one row", 1, L, 1),
            preview_control(d),
        ]

    def status(self, step: LlamaGenStep) -> str:
        first, G = int(step.revealed[0].nonzero()[0]), self.model.cfg.grid
        return (f"tokens {first + 1}–{step.front}/{self.seq_len} · row {(step.front - 1) // G + 1}/{G} · "
                f"{step.seconds * 1e3:.0f} ms")

    def token_view(self, step: LlamaGenStep, target: int = 256):
        return draw.mar_token_view(step.mask, step.confidence, step.revealed, target)

    def token_stats(self, step: LlamaGenStep) -> TokenStats:
        """At every generated position, the distribution its token was drawn from (after CFG, temperature and
        top-k/top-p); heat = the probability of the drawn token; positions not generated yet (and an edit's kept
        prefix) are empty."""
        G, done = self.model.cfg.grid, ~step.mask if step.kept is None else ~step.mask & ~step.kept
        return TokenStats((G, G), step.candidates.cpu(), step.candidate_probs.cpu(),
                          torch.where(done, step.tokens, -1).cpu(),
                          torch.where(done, step.confidence, torch.nan).cpu(),
                          torch.where(done, step.entropy, torch.nan).cpu(),
                          torch.where(done, step.confidence, torch.nan).cpu(), "probability of the drawn token",
                          "the distribution each token was drawn from: after CFG, temperature and top-k/top-p")

    def _sample(self, preview: bool | str = True, cfg_scale: float | None = None, image=None, mask=None,
                **kwargs) -> Iterator[LlamaGenStep]:
        """``image``, ``mask``: edit an image (:mod:`edifice.editing`; mask 1 = regenerate, at the token grid or
        in pixels). The kept tokens must be a raster prefix of the same length in every image (rows from the top,
        then the left part of one row); other masks are refused with what works."""
        check_preview(preview)
        if cfg_scale is not None:
            kwargs["cfg"] = cfg_scale
        mode = preview if isinstance(preview, str) else "full"
        edit = prepare_edit(image, mask, image_size=self.image_size, grid=self.model.cfg.grid, device=self.device)
        if edit:
            if kwargs.get("prefix_tokens") is not None:
                raise ValueError("pass either image and mask, or prefix_tokens, not both")
            n = require_raster_prefix(edit, self.family)
            if (n != n[0]).any():
                raise ValueError(f"{self.family} keeps the same number of tokens in every image (got {n.tolist()}): "
                                 "pass one mask for the batch, or edit one image at a time")
            edit.fit_batch(kwargs)
            kwargs["prefix_tokens"] = self.encode(edit.image)[:, :int(n[0])]

        def render(tokens_BL):  # the last record (nothing unknown) is always decoded exactly
            return self.render(tokens_BL, mode if (tokens_BL < 0).any() else "full")

        return stream_tokens(self.model, render=render if preview else None, **kwargs)

    @torch.inference_mode()
    def decode(self, step: LlamaGenStep) -> torch.Tensor:
        return self.render(step.tokens)
