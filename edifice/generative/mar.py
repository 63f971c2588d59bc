"""Discrete MAR: masked-token generation as Edifice's ``Edifice.Generative.MAR`` documents it, working.

A bidirectional transformer reads a token map in which hidden positions hold the [MASK] id (0) and predicts
every position at once. Training masks a random fraction of the tokens and scores only those
(:func:`random_mask`, :func:`mar_loss`). Generation starts fully masked and, over K steps, commits the
most confident predictions (:func:`decode_steps` streams one :class:`MARStep` per step).

Where Edifice's code breaks its docs we follow the docs (see ``shared/notes/seeds.md`` 1.2-1.5):
the token embedding is learned (Edifice's fixed one is erased by LayerNorm, so its logits ignore the input),
the [MASK] id is never emitted, decoding really samples, and ``vocab_size`` is checked. PyTorch modules
carry their parameters, so there is no ``params`` argument.

Ids: 0 is [MASK]; data ids are 1..vocab_size-1. With a VQ tokenizer, token id = code index + 1.
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
from ..editing import prepare_edit
from ..pipeline import Control, Pipeline, TokenStats, cfg_mix, check_preview, new_seed, preview_control, resolve_labels
from ..tokenizers.vqvae import VQVAE
from .blocks import FFN, SelfAttention, sinusoidal_positions

MASK_ID = 0
RATIO_SCHEDULES = ("seed", "maskgit", "mar")
REVEAL_SCHEDULES = ("linear", "cosine")


@dataclass
class MARConfig:
    vocab_size: int  # including [MASK] at id 0
    embed_dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    seq_len: int = 256  # longest token sequence (size of the position table)
    dropout: float = 0.1  # after embedding, and on the attention and FFN outputs of every block
    num_classes: int = 0  # 0 = unconditional; else class ids 0..num_classes-1 and num_classes = null (CFG)
    mlp_ratio: float = 4.0
    cond_drop_rate: float = 0.1  # training only: share of labels replaced by the null class, so CFG works

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-LayerNorm bidirectional block: ``x + attn(ln(x))`` then ``x + ffn(ln(x))``."""

    def __init__(self, cfg: MARConfig):
        super().__init__()
        C = cfg.embed_dim
        self.norm1 = nn.LayerNorm(C)
        self.attn = SelfAttention(C, cfg.num_heads, l2_norm=False, proj_drop=cfg.dropout)
        self.norm2 = nn.LayerNorm(C)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio), drop=cfg.dropout, approximate="none")

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        x_BLC = x_BLC + self.attn(self.norm1(x_BLC))
        return x_BLC + self.ffn(self.norm2(x_BLC))


class MAR(nn.Module):
    """Token ids ``[B, L]`` (L <= seq_len) -> logits ``[B, L, vocab_size]``.

    With ``num_classes > 0`` one class token (no position) is prepended and dropped before the head; label
    ``num_classes`` is the null class, used for unconditional rows and classifier-free guidance.
    ``model.num_classes`` is 0 for an unconditional model.
    """

    def __init__(self, cfg: MARConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or MARConfig(**kwargs)
        C = cfg.embed_dim
        self.num_classes = cfg.num_classes
        self.tok_emb = nn.Embedding(cfg.vocab_size, C)
        self.register_buffer("pos_LC", sinusoidal_positions(cfg.seq_len, C), persistent=False)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C) if cfg.num_classes else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, tokens_BL: torch.Tensor, labels_B: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position. ``labels_B`` None means the null class (conditional models only)."""
        B, L = tokens_BL.shape
        if L > self.cfg.seq_len:
            raise ValueError(f"sequence of {L} tokens is longer than this model's seq_len {self.cfg.seq_len}")
        x_BLC = self.tok_emb(tokens_BL) + self.pos_LC[:L]
        if self.class_emb is not None:
            if labels_B is None:
                labels_B = torch.full((B,), self.num_classes, device=tokens_BL.device)
            if self.training and self.cfg.cond_drop_rate > 0:
                drop = torch.rand(B, device=labels_B.device) < self.cfg.cond_drop_rate
                labels_B = torch.where(drop, self.num_classes, labels_B)
            x_BLC = torch.cat((self.class_emb(labels_B).unsqueeze(1), x_BLC), dim=1)
        x_BLC = self.drop(x_BLC)
        for block in self.blocks:
            x_BLC = block(x_BLC)
        return self.head(self.norm(x_BLC[:, -L:]))


def build(vocab_size: int, embed_dim: int = 256, num_layers: int = 6, num_heads: int = 8, seq_len: int = 256,
          dropout: float = 0.1, num_classes: int | None = None) -> MAR:
    """The seed's ``build``: a MAR transformer (``num_classes=None`` = unconditional, as in the seed)."""
    return MAR(MARConfig(vocab_size=vocab_size, embed_dim=embed_dim, num_layers=num_layers, num_heads=num_heads,
                         seq_len=seq_len, dropout=dropout, num_classes=num_classes or 0))


# -- training ------------------------------------------------------------------------------------------------
def mar_loss(logits_BLV: torch.Tensor, targets_BL: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the masked tokens of the whole batch (mask 1 = predict); 0 if none."""
    ce_BL = F.cross_entropy(logits_BLV.float().flatten(0, 1), targets_BL.flatten(), reduction="none")
    m_BL = mask_BL.flatten().float()
    return (ce_BL * m_BL).sum() / m_BL.sum().clamp_min(1.0)


def mask_ratios(n: int, schedule: str = "maskgit", generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` mask ratios ``[n]`` in [0, 1]; see :func:`sample_mask_ratio` for the schedules."""
    if schedule not in RATIO_SCHEDULES:
        raise ValueError(f"unknown mask-ratio schedule {schedule!r}: use one of {RATIO_SCHEDULES}")
    device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if schedule == "seed":
        r = 1 - torch.cos(math.pi * u / 2)
    elif schedule == "maskgit":
        r = torch.cos(math.pi * u / 2)
    else:  # inverse-CDF draw from N(1, 0.25^2) truncated to [0.7, 1]
        lo = torch.special.ndtr(torch.tensor(-1.2, dtype=torch.float64, device=device))
        r = (1 + 0.25 * torch.special.ndtri(lo + u * (0.5 - lo))).clamp(0.7, 1.0)
    return r.float()


def sample_mask_ratio(schedule: str = "seed", generator: torch.Generator | None = None) -> float:
    """One mask ratio r in [0, 1] from u ~ U[0, 1) (means measured over 2e6 draws, equal to the exact ones):

    - ``"seed"`` (default, the seed API): ``1 - cos(pi u / 2)``, mean 0.363, median 0.293. Its density
      grows without bound at r -> 0 (29 % of draws are below 0.1): biased towards *low* ratios, not
      "moderate" as Edifice's docs say.
    - ``"maskgit"``: ``cos(pi u / 2)`` (MaskGIT), mean 0.637, biased towards high ratios.
    - ``"mar"``: the MAR paper's N(1, 0.25^2) truncated to [0.7, 1], mean 0.867.

    Training (:func:`random_mask`) uses ``"maskgit"`` by default: decoding starts fully masked and the linear
    schedule visits every ratio from 1 down to 1/K, so training must cover all of [0, 1] with most weight
    on the hard high ratios. The seed's formula rarely shows the model a mostly-masked map; MAR's never
    shows it one below 70 % masked, which late confidence-decoding steps need.
    """
    return float(mask_ratios(1, schedule, generator)[0])


def random_mask(tokens_BL: torch.Tensor, schedule: str = "maskgit", generator: torch.Generator | None = None,
                mask_token_id: int = MASK_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's training steps 1-2: per sample draw r, hide ``max(1, ceil(r L))`` random positions.

    Returns the model input (``mask_token_id`` at hidden positions) and the bool mask ``[B, L]`` for
    :func:`mar_loss`. ``generator`` must live on the tokens' device.
    """
    B, L = tokens_BL.shape
    r_B = mask_ratios(B, schedule, generator, tokens_BL.device)
    n_B = (r_B * L).ceil().long().clamp(1, L)
    rank_BL = torch.rand(B, L, generator=generator, device=tokens_BL.device).argsort(dim=1).argsort(dim=1)
    mask_BL = rank_BL < n_B[:, None]
    return tokens_BL.masked_fill(mask_BL, mask_token_id), mask_BL


# -- decoding ------------------------------------------------------------------------------------------------
def reveal_schedule(n: int, num_steps: int, schedule: str = "linear") -> list[int]:
    """How many of ``n`` hidden tokens each of ``num_steps`` steps reveals; the counts sum to ``n``.

    Tokens still hidden after step k of K: ``linear`` (the seed) ``round((1 - k/K) n)``, halves rounded up as
    in Edifice; ``cosine`` (MaskGIT, official MAR) ``floor(n cos(pi k / 2K))``. When ``n >= K`` every step
    reveals at least one token (a no-op for ``linear``; for ``cosine`` this equals the official MAR counts).
    """
    if schedule not in REVEAL_SCHEDULES:
        raise ValueError(f"unknown reveal schedule {schedule!r}: use one of {REVEAL_SCHEDULES}")
    counts, hidden = [], n
    for k in range(1, num_steps + 1):
        if schedule == "linear":
            target = (2 * (num_steps - k) * n + num_steps) // (2 * num_steps)
        else:
            target = math.floor(n * math.cos(math.pi * k / (2 * num_steps))) if k < num_steps else 0
        target = min(hidden - 1, max(target, num_steps - k)) if n >= num_steps else min(hidden, target)
        counts.append(hidden - target)
        hidden = target
    return counts


def cfg_logits(model: MAR, tokens_BL: torch.Tensor, labels_B: torch.Tensor | None, cfg: float) -> torch.Tensor:
    """Logits ``u + cfg (c - u)`` of conditional c and null-class u rows; the plain logits when cfg = 1."""
    if cfg == 1.0 or not model.num_classes:
        return model(tokens_BL, labels_B)
    null_B = torch.full_like(labels_B, model.num_classes)
    cond_BLV, uncond_BLV = model(tokens_BL.repeat(2, 1), torch.cat((labels_B, null_B))).chunk(2)
    return cfg_mix(cond_BLV, uncond_BLV, cfg)


@dataclass
class MARStep:
    """One streamed unmasking step of a MAR generation."""

    step: int  # 0-based; step num_steps - 1 reveals the last hidden tokens
    num_steps: int
    tokens: torch.Tensor  # [B, L] ids so far, mask id where still hidden
    mask: torch.Tensor  # [B, L] bool, True = still hidden after this step
    confidence: torch.Tensor  # [B, L] prob of the chosen token: this step's for hidden, reveal-time's for revealed
    revealed: torch.Tensor  # [B, L] bool, revealed in this step
    predicted: torch.Tensor  # [B, L] this step's candidate at positions hidden before it, the token elsewhere
    image: torch.Tensor | None  # [B, 3, H, W] in [0, 1], None without a tokenizer or with previews off
    seconds: float  # wall time of this step (forward, sampling and preview)
    labels: torch.Tensor  # [B] class ids used (num_classes = unconditional / null)
    seed: int
    logits: torch.Tensor | None = None  # [B, L, V] this step's logits after CFG ([MASK] at -inf), before temperature
    temperature: float = 1.0
    kept: torch.Tensor | None = None  # [B, L] bool with init_tokens (editing): True = given, never changed


def _labels(model: MAR, labels, batch_size: int, rng: torch.Generator, device) -> torch.Tensor:
    if model.num_classes:
        return resolve_labels(labels, batch_size, model.num_classes, rng, device)
    if labels is not None and not (isinstance(labels, int) and labels < 0):
        raise ValueError("this MAR model is unconditional: pass labels=None")
    return torch.zeros(batch_size, dtype=torch.long, device=device)


def start_tokens(init_tokens, B: int, L: int, V: int, mask_token_id: int, device) -> torch.Tensor:
    """The starting token map ``[B, L]`` of a masked generation: all ``mask_token_id``, or ``init_tokens``
    (``[L]`` or ``[1 or B, L]`` ids in 0..V-1, the mask id where unknown) broadcast over the batch."""
    if init_tokens is None:
        return torch.full((B, L), mask_token_id, dtype=torch.long, device=device)
    init = torch.as_tensor(init_tokens, device=device).long()
    init = init[None] if init.ndim == 1 else init
    if init.ndim != 2 or init.shape[1] != L or init.shape[0] not in (1, B):
        raise ValueError(f"init_tokens must be [{L}] or [1 or {B}, {L}], got {list(init.shape)}")
    if init.min() < 0 or init.max() >= V:
        raise ValueError(f"init_tokens must be ids in 0..{V - 1} ({mask_token_id} = unknown)")
    return init.expand(B, L).clone()


def _gumbel_noise(shape, rng: torch.Generator, device) -> torch.Tensor:
    return -torch.empty(shape, device=device).exponential_(generator=rng).log()


@torch.inference_mode()
def decode_steps(model: MAR, *, num_steps: int = 8, seq_len: int | None = None, vocab_size: int | None = None,
                 mask_token_id: int = MASK_ID, temperature: float = 1.0, batch_size: int = 1, labels=None,
                 cfg: float = 1.0, schedule: str = "linear", randomness: float = 0.0, seed: int | None = None,
                 init_tokens=None, render: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[MARStep]:
    """Iterative decoding, yielding a :class:`MARStep` after each of ``num_steps`` steps.

    Every step runs the model on the current map and, at each hidden position, chooses a candidate: the
    argmax when ``temperature`` is 0, else a draw from ``softmax(logits / temperature)``; the [MASK] logit is
    removed first, so the mask id is never emitted. Confidence = probability of the chosen token under that
    softmax (at temperature 0, of the plain logits: the seed's "max softmax probability"). The hidden
    positions are ranked by ``log confidence + randomness (1 - k/K) gumbel`` (``randomness`` is MaskGIT's
    annealed "choice temperature", 4.5 there; 0 = pure confidence, ties to the lower index) and the top
    ``reveal_schedule(...)[k]`` are committed. Committed and ``init_tokens`` positions never change, so all
    are revealed after step K.

    - ``seq_len`` / ``vocab_size``: default to the model's; a different ``vocab_size`` raises.
    - ``labels``: as in VAR (None = drawn from the seeded generator, an int = whole batch, negative =
      unconditional, a list = one per image); an unconditional model takes only None or a negative int.
      ``cfg``: constant guidance ``u + cfg (c - u)``, 1 = off.
    - ``init_tokens``: ``[L]`` or ``[B, L]`` ids with ``mask_token_id`` where unknown (inpainting); the
      schedule then spreads each row's unknown positions over the steps. ``batch_size`` defaults to B.
    - ``seed``: one ``torch.Generator`` on the model's device makes every draw (labels, then per step the
      token draw, then the ranking noise); None picks a fresh seed, reported in each record.
    - ``render``: optional tokens -> image ``[B, 3, H, W]`` callback for previews.
    """
    V, L = model.cfg.vocab_size, model.cfg.seq_len if seq_len is None else seq_len
    if vocab_size is not None and vocab_size != V:
        raise ValueError(f"vocab_size {vocab_size} differs from the model's {V}")
    if not 1 <= L <= model.cfg.seq_len:
        raise ValueError(f"seq_len must be in 1..{model.cfg.seq_len}, got {L}")
    if not 1 <= num_steps <= L:
        raise ValueError(f"num_steps must be in 1..{L} (1..seq_len), got {num_steps}")
    if temperature < 0 or randomness < 0:
        raise ValueError("temperature and randomness must be >= 0 (temperature 0 = argmax)")
    if cfg != 1.0 and not model.num_classes:
        raise ValueError("cfg needs a class-conditional model; this one is unconditional (use cfg=1)")
    if schedule not in REVEAL_SCHEDULES:
        raise ValueError(f"unknown reveal schedule {schedule!r}: use one of {REVEAL_SCHEDULES}")
    device = model.tok_emb.weight.device
    seed = new_seed() if seed is None else int(seed)
    rng = torch.Generator(device=device).manual_seed(seed)
    if init_tokens is not None and batch_size == 1 and torch.as_tensor(init_tokens).ndim == 2:
        batch_size = len(init_tokens)
    label_B = _labels(model, labels, batch_size, rng, device)
    B = label_B.shape[0]
    tokens_BL = start_tokens(init_tokens, B, L, V, mask_token_id, device)
    mask_BL = tokens_BL == mask_token_id
    kept_BL = None if init_tokens is None else ~mask_BL
    confidence_BL = (~mask_BL).float()
    counts_BK = torch.tensor([reveal_schedule(int(n), num_steps, schedule) for n in mask_BL.sum(1)],
                             device=device).view(B, num_steps)
    model_labels = label_B if model.num_classes else None
    was_training = model.training
    model.eval()
    try:
        for k in range(num_steps):
            t0 = time.perf_counter()
            logits_BLV = cfg_logits(model, tokens_BL, model_labels, cfg).float()
            logits_BLV[..., mask_token_id] = -torch.inf
            if temperature == 0:
                conf_BL, pred_BL = logits_BLV.softmax(-1).max(-1)
            else:
                probs_BLV = (logits_BLV / temperature).softmax(-1)
                pred_BL = torch.multinomial(probs_BLV.view(-1, V), 1, generator=rng).view(B, L)
                conf_BL = probs_BLV.gather(-1, pred_BL[..., None])[..., 0]
            score_BL = conf_BL.log()
            if randomness > 0:
                score_BL = score_BL + randomness * (1 - (k + 1) / num_steps) * _gumbel_noise(
                    (B, L), rng, device)
            order_BL = score_BL.masked_fill(~mask_BL, -torch.inf).sort(dim=1, descending=True, stable=True).indices
            take_BL = torch.arange(L, device=device)[None] < counts_BK[:, k:k + 1]
            revealed_BL = torch.zeros_like(mask_BL).scatter(1, order_BL, take_BL)
            predicted_BL = torch.where(mask_BL, pred_BL, tokens_BL)
            confidence_BL = torch.where(mask_BL, conf_BL, confidence_BL)
            tokens_BL = torch.where(revealed_BL, pred_BL, tokens_BL)
            mask_BL = mask_BL & ~revealed_BL
            image = render(tokens_BL) if render is not None else None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            yield MARStep(step=k, num_steps=num_steps, tokens=tokens_BL, mask=mask_BL, confidence=confidence_BL,
                          revealed=revealed_BL, predicted=predicted_BL, image=image,
                          seconds=time.perf_counter() - t0, labels=label_B, seed=seed, logits=logits_BLV,
                          temperature=temperature, kept=kept_BL)
    finally:
        model.train(was_training)


def iterative_decode(model: MAR, **kwargs) -> torch.Tensor:
    """The seed's ``iterative_decode``: the final tokens ``[batch_size, seq_len]`` of :func:`decode_steps`."""
    *_, last = decode_steps(model, **kwargs)
    return last.tokens


# -- image pipeline ------------------------------------------------------------------------------------------
class MARPipeline(Pipeline):
    """A single-scale VQ-VAE (``patch_nums=(h,)``) and a MAR over its ``h*h`` token map, ids = codes + 1.

    ``stream`` yields one :class:`MARStep` per unmasking step (arguments of :func:`decode_steps`, plus
    ``preview=False`` to skip the images); ``generate`` returns images ``[B, 3, H, W]`` in [0, 1]. Previews
    decode the revealed codes with the codebook's mean vector at hidden positions: one decoder pass, and
    hidden regions show as the tokenizer's "average" patch instead of noise or a stale guess.
    """

    kind = "mar"
    family = "MAR (discrete)"
    legend = ("Dark = still hidden; colour = confidence of the chosen token (purple 0 → yellow 1); white outline = "
              "revealed in this step.")
    uncertainty_legend = ("The entropy (÷ log V) of the positions still being decided at this step, after CFG and "
                          "temperature (purple certain → yellow uncertain); positions revealed earlier are dark.")
    can_edit = True

    def __init__(self, tokenizer: VQVAE, model: MAR, class_names: list[str] | None = None,
                 defaults: dict | None = None):
        pns = tuple(tokenizer.cfg.patch_nums)
        if len(pns) != 1:
            raise ValueError(f"MAR needs a single-scale tokenizer (patch_nums=(h,)), got patch_nums={pns}")
        if model.cfg.seq_len != pns[0] ** 2:
            raise ValueError(f"the tokenizer makes {pns[0]}x{pns[0]} = {pns[0] ** 2} tokens but the model's "
                             f"seq_len is {model.cfg.seq_len}")
        if model.cfg.vocab_size != tokenizer.vocab_size + 1:
            raise ValueError(f"the model's vocab_size must be the tokenizer's {tokenizer.vocab_size} codes + 1 "
                             f"([MASK]), got {model.cfg.vocab_size}")
        super().__init__(tokenizer, model, class_names, defaults)

    @property
    def seq_len(self) -> int:
        return self.model.cfg.seq_len

    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> MAR token ids ``[B, L]`` (code + 1), e.g. training data or ``init_tokens``."""
        return self.tokenizer.img_to_idx(img_B3HW.mul(2).sub(1))[0] + 1

    def render(self, tokens_BL: torch.Tensor, mode: str = "full") -> torch.Tensor:
        """Token ids -> image ``[B, 3, H, W]`` in [0, 1]; hidden (mask id) positions get the mean code.
        ``mode="fast"`` decodes the latent area-downsampled to half its size (a quarter of the decoder's work)
        and upscales the result, blocky but cheap enough to preview every step; ``"latent"`` maps the latent
        to colours linearly (:meth:`VQVAE.latent_preview`), nearly free."""
        quant, pn = self.tokenizer.quantize, self.tokenizer.cfg.patch_nums[0]
        codebook_VC = quant.embedding.weight
        h_BLC = torch.where((tokens_BL == MASK_ID)[..., None], codebook_VC.mean(0),
                            codebook_VC[(tokens_BL - 1).clamp_min(0)])
        h_BChw = h_BLC.transpose(1, 2).reshape(tokens_BL.shape[0], quant.Cvae, pn, pn).float()
        f_hat = quant.upsample_phi(h_BChw, 0, pn)
        if mode == "latent":
            return self.tokenizer.latent_preview(f_hat)
        return self.tokenizer.preview(f_hat, pn // 2 if mode == "fast" and pn >= 4 else None)

    def controls(self) -> list[Control]:
        d = self.defaults
        return [
            Control("num_steps", "int", min(d.get("num_steps", 16), self.seq_len), "Steps",
                    f"unmasking steps (1 to {self.seq_len}, the number of tokens)", 1, self.seq_len, 1),
            Control("cfg", "float", d.get("cfg", 1.0), "CFG", "guidance u + cfg (c - u); 1 = off", 0.0, 20.0, 0.1),
            Control("temperature", "float", d.get("temperature", 1.0), "Temperature",
                    "logits divided by it before drawing each candidate; 0 = argmax", 0.0, 5.0, 0.05),
            Control("schedule", "choice", d.get("schedule", "cosine"), "Schedule",
                    "how many tokens each step reveals", choices=REVEAL_SCHEDULES),
            Control("randomness", "float", d.get("randomness", 0.0), "Ranking randomness",
                    "Gumbel noise on the confidence ranking (MaskGIT's choice temperature), annealed", 0.0, 20.0, 0.5),
            preview_control(d),
        ]

    def status(self, step: MARStep) -> str:
        shown = int((~step.mask[0]).sum())
        return (f"step {step.step + 1}/{step.num_steps} · {shown}/{step.mask.shape[1]} revealed · "
                f"{step.seconds * 1e3:.0f} ms")

    def token_view(self, step: MARStep, target: int = 256):
        return draw.mar_token_view(step.mask, step.confidence, step.revealed, target)

    def token_stats(self, step: MARStep) -> TokenStats | None:
        """Candidates at the positions that were hidden before this step (after CFG and temperature); the
        uncertainty view shows their entropy (the positions already revealed are left dark)."""
        if step.logits is None:
            return None
        side = math.isqrt(self.seq_len)
        return TokenStats.from_logits(step.logits, step.predicted, (side, side),
                                      "after CFG and temperature, at positions hidden before this step",
                                      step.temperature, active_BN=step.mask | step.revealed, heat="entropy",
                                      token_names=lambda i: f"code {i - 1}")

    def _sample(self, preview: bool | str = True, image=None, mask=None, **kwargs) -> Iterator[MARStep]:
        """``preview``: True / "full" (exact), "fast" (half-resolution latent), "latent" (linear colours; see
        :meth:`render`) or False. ``image``, ``mask``: edit an image (:mod:`edifice.editing`; mask 1 =
        regenerate, at the token grid or in pixels): decoding starts from the image's tokens with the
        regenerated ones hidden (``init_tokens``), and the kept ones never change."""
        check_preview(preview)
        edit = prepare_edit(image, mask, image_size=self.image_size, grid=math.isqrt(self.seq_len),
                            device=self.device)
        if edit:
            if kwargs.get("init_tokens") is not None:
                raise ValueError("pass either image and mask, or init_tokens, not both")
            edit.fit_batch(kwargs)
            with torch.inference_mode():
                ids_BL = self.encode(edit.image)
            kwargs["init_tokens"] = torch.where(edit.kept, ids_BL, MASK_ID)

        def render(tokens_BL):  # the last step (nothing hidden) is always decoded exactly
            return self.render(tokens_BL, preview if (tokens_BL == MASK_ID).any() else "full")

        return decode_steps(self.model, render=render if preview else None, **kwargs)

    @torch.inference_mode()
    def decode(self, step: MARStep) -> torch.Tensor:
        return self.render(step.tokens)
