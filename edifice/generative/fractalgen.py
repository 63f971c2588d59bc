"""FractalGen as in the paper (Li, Sun, Fan, He 2025, "Fractal Generative Models"), pixel by pixel.

A hierarchy of generators over raw pixels. Level ``l`` of a K-entry ``img_size_list`` cuts its input (the whole
image at level 0, a patch of it below) into ``seq_len = (img[l] / img[l+1])^2`` patches of ``img[l+1]`` pixels
and makes one condition vector per patch; every patch is then handed, with its condition, to level ``l + 1``,
down to single pixels, which a small causal transformer (:class:`PixelLoss`) draws channel by channel: R, then G
given R, then B given both, each from 256 values. Each level is either

- **AR** (:class:`AR`, LlamaGen-style: causal attention, RMSNorm, SwiGLU, 2-D RoPE): one patch after another
  in raster order, each conditioned on the patches before it (a KV cache keeps their keys and values); or
- **MAR** (:class:`MAR`, a bidirectional ViT): patches in a random order, several per step on a cosine schedule
  (the first steps reveal few, the last many); each condition comes with its four neighbours' (top, right,
  bottom, left), and below level 0 a *guiding pixel* (the patch's average colour, drawn first by its own
  PixelLoss head) can be prepended.

Parameter names are the authors' (LTH14/fractalgen ``models/{fractalgen,mar,ar,pixelloss}.py``), so their
``checkpoint-last.pth`` loads with ``strict=True`` (see :mod:`edifice.official_fractalgen`). The constructor
arguments keep their names too (:class:`FractalGenConfig`).

Sampling (:func:`stream_pixels`) follows the official recursion call for call, so the random draws come in the
official order from one ``torch.Generator`` seeded with ``seed``: on the CPU a seed gives the authors' pixels for
that seed (``torch.manual_seed(seed)`` then ``model.sample``). What differs is the cost: the AR levels and the
pixel heads feed one token per step through KV caches (the official pixel head runs its 4-token sequence three
times per pixel), lower levels get all their rows in one batch, and no patch is handled by a Python loop.
The official code's traps are kept on purpose (``shared/golden/fractalgen/README.md``): temperature *multiplies*
the pixel logits (> 1 sharpens); the linear CFG schedule is float32 under a MAR top level (``1 + (cfg-1)(L -
m)/L``, never reaching cfg) and float64 under an AR one (reaching cfg), and lower levels use the parent's value
as a constant; every pixel-head call draws a (useless) rounding noise; guiding pixels are drawn before a level's
order.

Editing (``init_tokens`` / ``init_mask``; :meth:`FractalGenPipeline.stream` with ``image`` and ``mask``) works
on the top-level patch grid: a patch is kept whole (its pixels are the image's own, and the lower levels never
visit it) or regenerated whole, and a pixel mask is reduced to that grid (a patch is regenerated if any of its
pixels is). A MAR top level starts with the kept patches revealed and fills the others in its random order
restricted to them, over ``mask_lengths(n)`` for their number n (the same in every image); the linear CFG
ramp still follows the fraction of the image known, kept patches included. An AR top level cannot look ahead:
it keeps a raster prefix of patches (rows from the top, then the left part of one row), reads it through its
KV cache and draws the rest. Records then count only the steps that draw.

There is no tokenizer: the "tokens" of this family are the pixel ids 0..255 themselves. The Pipeline base takes
a tokenizer module, so :class:`PixelTokenizer` is an identity one (ids / 255 -> image) with no weights.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import render as draw
from ..editing import Edit, prepare_edit, require_raster_prefix
from ..errors import EdificeError
from ..pipeline import Control, Pipeline, TokenStats, new_seed, resolve_labels
from .blocks import Block, KVCache
from .mar_diffusion import mask_lengths

PIX_MEAN, PIX_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the authors' ImageNet normalisation
GENERATOR_TYPES = ("ar", "mar")
CFG_SCHEDULES = ("linear", "constant")
MAX_CONDS = 5  # a MAR level passes down five conditions: middle, top, right, bottom, left
GUIDING_HEAD = dict(width=128, depth=3, num_heads=4, r_weight=5.0)  # hard-coded in the official MAR


class FractalGenConfigError(EdificeError, ValueError):
    """A FractalGen configuration the authors' code cannot build or sample; the message says why."""


@dataclass
class FractalGenConfig:
    """The authors' ``FractalGen(...)`` constructor arguments under their names (lists, one entry per level).

    Dropout rates, ``grad_checkpointing`` and ``fractal_level`` are not kept (see :meth:`from_official`).
    ``r_weight`` only weighs the red channel in the training loss (the official class default is 1.0; the
    released models were trained with main_fractalgen's 5.0)."""

    img_size_list: list[int] = field(default_factory=lambda: [64, 4, 1])
    embed_dim_list: list[int] = field(default_factory=lambda: [1024, 512, 128])
    num_blocks_list: list[int] = field(default_factory=lambda: [32, 8, 3])
    num_heads_list: list[int] = field(default_factory=lambda: [16, 8, 4])
    generator_type_list: list[str] = field(default_factory=lambda: ["mar", "mar", "ar"])
    class_num: int = 1000
    guiding_pixel: bool = False
    num_conds: int = 1
    r_weight: float = 1.0
    label_drop_prob: float = 0.1

    IGNORED = ("attn_dropout", "proj_dropout", "grad_checkpointing", "fractal_level")

    def __post_init__(self):
        for name in ("img_size_list", "embed_dim_list", "num_blocks_list", "num_heads_list", "generator_type_list"):
            setattr(self, name, list(getattr(self, name)))
        self.check()

    @classmethod
    def from_official(cls, args: dict) -> FractalGenConfig:
        """From the authors' constructor keywords; dropout rates, ``grad_checkpointing`` and ``fractal_level``
        are accepted and ignored (inference, and our training, run without dropout)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known - set(cls.IGNORED))
        if unknown:
            raise FractalGenConfigError(f"unknown FractalGen argument(s) {', '.join(unknown)}; the authors' "
                                        f"constructor takes {', '.join(sorted(known | set(cls.IGNORED)))}")
        return cls(**{k: v for k, v in args.items() if k in known})

    @property
    def num_levels(self) -> int:
        return len(self.img_size_list)

    @property
    def img_size(self) -> int:
        return self.img_size_list[0]

    def seq_len(self, level: int) -> int:
        return (self.img_size_list[level] // self.img_size_list[level + 1]) ** 2

    def patch_size(self, level: int) -> int:
        return self.img_size_list[level + 1]

    def has_guiding_pixel(self, level: int) -> bool:
        """Only MAR levels below the top draw a guiding pixel (AR levels ignore the flag)."""
        return self.guiding_pixel and level > 0 and self.generator_type_list[level] == "mar"

    def check(self) -> None:
        """Refuse what the official code cannot build or sample, saying why."""
        K = self.num_levels
        lists = ("img_size_list", "embed_dim_list", "num_blocks_list", "num_heads_list", "generator_type_list")
        if K < 2 or any(len(getattr(self, n)) != K for n in lists):
            raise FractalGenConfigError(f"{', '.join(lists)} must all have the same length >= 2 (one entry per "
                                        f"level, the last being the pixel head); got lengths "
                                        f"{[len(getattr(self, n)) for n in lists]}")
        if self.img_size_list[-1] != 1:
            raise FractalGenConfigError(f"the last image size must be 1 (single pixels for the pixel head), got "
                                        f"{self.img_size_list}")
        for l in range(K - 1):
            big, small = self.img_size_list[l], self.img_size_list[l + 1]
            if small < 1 or big % small or big == small:
                raise FractalGenConfigError(f"img_size_list {self.img_size_list}: each size must be a larger "
                                            f"multiple of the next ({big} is not of {small})")
        for l, kind in enumerate(self.generator_type_list):
            if kind not in GENERATOR_TYPES:
                raise FractalGenConfigError(f"generator_type_list[{l}] = {kind!r}: each level is 'ar' or 'mar'")
        for l in range(K):
            D, H = self.embed_dim_list[l], self.num_heads_list[l]
            if H < 1 or D % H:
                raise FractalGenConfigError(f"level {l}: width {D} is not divisible by {H} heads")
            if l < K - 1 and self.generator_type_list[l] == "ar" and (D // H) % 4:
                raise FractalGenConfigError(f"level {l} is AR with head width {D // H}: its 2-D RoPE needs a "
                                            "multiple of 4 (rows and columns each rotate half of it in pairs)")
        if not 1 <= self.num_conds <= MAX_CONDS:
            raise FractalGenConfigError(f"num_conds must be 1..{MAX_CONDS} (a MAR level passes down middle, top, "
                                        f"right, bottom, left; sampling needs at least one), got {self.num_conds}")
        types = self.generator_type_list[:K - 1]
        for l in range(1, K - 1):
            if types[l] == "mar" and types[l - 1] == "ar" and self.num_conds != 1:
                raise FractalGenConfigError(
                    f"level {l} is a MAR under an AR level, which passes down one condition, but num_conds is "
                    f"{self.num_conds}: the authors' code fails there (IndexError); use num_conds=1 for such mixes")

    def to_dict(self) -> dict:
        return asdict(self)


def _official(img, dims, blocks, heads, types, num_conds, guiding_pixel) -> FractalGenConfig:
    return FractalGenConfig(list(img), list(dims), list(blocks), list(heads), list(types), class_num=1000,
                            guiding_pixel=guiding_pixel, num_conds=num_conds, r_weight=5.0)


# The five released models: the official factories with the keywords the authors' README and notebook pass.
CONFIGS = {
    "fractalar_in64": _official((64, 4, 1), (1024, 512, 128), (32, 8, 3), (16, 8, 4), ("ar", "ar", "ar"), 1, False),
    "fractalmar_in64": _official((64, 4, 1), (1024, 512, 128), (32, 8, 3), (16, 8, 4), ("mar", "mar", "ar"), 5,
                                 False),
    "fractalmar_base_in256": _official((256, 16, 4, 1), (768, 384, 192, 64), (24, 6, 3, 1), (12, 6, 3, 4),
                                       ("mar", "mar", "mar", "ar"), 5, True),
    "fractalmar_large_in256": _official((256, 16, 4, 1), (1024, 512, 256, 64), (32, 8, 4, 1), (16, 8, 4, 4),
                                        ("mar", "mar", "mar", "ar"), 5, True),
    "fractalmar_huge_in256": _official((256, 16, 4, 1), (1280, 640, 320, 64), (40, 10, 5, 1), (16, 8, 4, 4),
                                       ("mar", "mar", "mar", "ar"), 5, True),
}


# -- layers -------------------------------------------------------------------------------------------------------
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) [+ causal -inf mask]) v`` with the official arithmetic (float32 logits, no
    max-subtraction before the softmax). With a KV cache the single query sees every cached key."""
    w = (q.float() @ k.float().transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))
    if causal and q.shape[-2] > 1:
        L, S = q.shape[-2], k.shape[-2]
        hidden = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(S - L).logical_not()
        w = w + torch.zeros(L, S, device=q.device).masked_fill_(hidden, float("-inf"))
    return torch.softmax(w, dim=-1).to(v.dtype) @ v


class CausalBlock(Block):
    """The pixel head's block: timm's names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp``) with
    causal attention, optionally over a KV cache (one new token per call)."""

    def forward(self, x_BLC: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, L, C = x_BLC.shape
        H = self.attn.num_heads
        q, k, v = self.attn.qkv(self.norm1(x_BLC)).view(B, L, 3, H, C // H).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.extend(k, v)
        out = attention(q, k, v, causal=True).transpose(1, 2).reshape(B, L, C)
        x_BLC = x_BLC + self.attn.proj(out)
        return x_BLC + self.mlp(self.norm2(x_BLC))


class MlmLayer(nn.Module):
    """Output bias of a weight-tied pixel classifier (logits = x codebook^T + bias)."""

    def __init__(self, vocab_size: int = 256):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, vocab_size))


def normalize_ids(ids: torch.Tensor, channel: int) -> torch.Tensor:
    """Pixel ids -> the authors' normalised values ``(id / 255 - mean) / std`` in float32, op for op."""
    return (ids.float() / 255 - torch.tensor(PIX_MEAN[channel])) / torch.tensor(PIX_STD[channel])


class PixelLoss(nn.Module):
    """One pixel from a condition: a causal transformer over ``[cond, r, g, b]`` whose outputs at the first three
    positions are the logits of R, G and B (weight-tied to the channel codebooks)."""

    def __init__(self, c_channels: int, width: int, depth: int, num_heads: int, r_weight: float = 1.0):
        super().__init__()
        self.r_weight = r_weight
        self.cond_proj = nn.Linear(c_channels, width)
        self.r_codebook = nn.Embedding(256, width)
        self.g_codebook = nn.Embedding(256, width)
        self.b_codebook = nn.Embedding(256, width)
        self.ln = nn.LayerNorm(width, eps=1e-6)
        self.blocks = nn.ModuleList([CausalBlock(width, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.r_mlm, self.g_mlm, self.b_mlm = MlmLayer(), MlmLayer(), MlmLayer()

    @property
    def codebooks(self) -> tuple[nn.Embedding, nn.Embedding, nn.Embedding]:
        return self.r_codebook, self.g_codebook, self.b_codebook

    def channel_logits(self, x_NW: torch.Tensor, channel: int) -> torch.Tensor:
        mlm = (self.r_mlm, self.g_mlm, self.b_mlm)[channel]
        return torch.matmul(x_NW, self.codebooks[channel].weight.transpose(0, 1)) + mlm.bias

    def logits(self, ids_N3: torch.Tensor, cond_NC: torch.Tensor) -> torch.Tensor:
        """All three channels' logits ``[N, 3, 256]`` given the true ids (teacher forcing, as in training)."""
        x = torch.cat([self.cond_proj(cond_NC.to(self.cond_proj.weight.dtype)).unsqueeze(1)]
                      + [cb(ids_N3[:, i:i + 1]) for i, cb in enumerate(self.codebooks)], dim=1)
        x = self.ln(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).float()
        return torch.stack([self.channel_logits(x[:, i], i) for i in range(3)], dim=1)

    def forward(self, target_N3: torch.Tensor, cond_NC: torch.Tensor, rng: torch.Generator | None = None,
                trace: dict | None = None, prefix: str = "pix") -> torch.Tensor:
        """Training loss of normalised pixels ``target [N, 3]``: the ids are ``round((x std + mean) 255 + 0.01
        noise)`` (the authors' guard against banker's rounding), then cross-entropy per channel; in training
        ``(r_weight CE_r + CE_g + CE_b) / (r_weight + 2)``, in eval the plain mean."""
        mean, std = (torch.tensor(v, device=target_N3.device)[None] for v in (PIX_MEAN, PIX_STD))
        noise = torch.randn(target_N3.shape, generator=rng, device=target_N3.device, dtype=target_N3.dtype)
        ids = ((target_N3 * std + mean) * 255 + 1e-2 * noise).round().long()
        logits = self.logits(ids, cond_NC)
        ce = torch.stack([F.cross_entropy(logits[:, i], ids[:, i], reduction="none") for i in range(3)])
        loss = ((self.r_weight * ce[0] + ce[1] + ce[2]) / (self.r_weight + 2) if self.training
                else (ce[0] + ce[1] + ce[2]) / 3).mean()
        if trace is not None:
            trace.update({f"{prefix}.target": ids, f"{prefix}.logits": logits, f"{prefix}.ce": ce,
                          f"{prefix}.loss": loss})
        return loss

    def sample(self, cond_RC: torch.Tensor, temperature: float, cfg: float, filter_threshold: float,
               rng: torch.Generator | None, return_stats: bool = False):
        """Pixel ids ``[N, 3]`` (long), R then G then B, one token per channel through KV caches. With ``cfg
        != 1`` the rows are [conditional; unconditional] and N is half of them. Per channel, as the official
        ``sample``: its rounding noise is drawn (it cannot change an id, but it moves the generator), logits
        times ``temperature``, CFG with the conditional-probability filter, one multinomial draw.
        ``return_stats``: also the entropy ``[N]`` (nats) of the colour's distribution along the drawn path,
        H(R) + H(G | r) + H(B | r, g), and the log-probability ``[N]`` of the drawn colour, both of the
        distributions the draws came from."""
        R = cond_RC.shape[0]
        guided = not cfg == 1.0
        N = R // 2 if guided else R
        dtype, device = self.cond_proj.weight.dtype, cond_RC.device
        W, heads = self.cond_proj.out_features, self.blocks[0].attn.num_heads if len(self.blocks) else 1
        caches = [KVCache(R, heads, 3, W // heads, dtype, device) for _ in self.blocks]
        token = self.cond_proj(cond_RC.to(dtype))
        ids = torch.empty(N, 3, dtype=torch.long, device=device)
        entropy, logprob = torch.zeros(N, device=device), torch.zeros(N, device=device)
        for i in range(3):
            torch.randn((R, 3), generator=rng, device=device)  # the official predict's rounding noise
            x = self.ln(token)[:, None]
            for block, cache in zip(self.blocks, caches, strict=True):
                x = block(x, cache)
            logits = self.channel_logits(self.norm(x[:, 0]).float(), i) * temperature
            if guided:
                cond, uncond = logits[:N], logits[N:]
                filtered = torch.softmax(cond, dim=-1) < filter_threshold
                floor = cond - cond.max(dim=-1, keepdim=True)[0] + uncond.max(dim=-1, keepdim=True)[0]
                uncond = torch.where(filtered, torch.maximum(uncond, floor), uncond)
                logits = uncond + cfg * (cond - uncond)
            ids[:, i] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=rng)[:, 0]
            if return_stats:
                logp = logits.log_softmax(-1)
                entropy -= (logp.exp() * logp).nan_to_num(0.0).sum(-1)
                logprob += logp.gather(1, ids[:, i:i + 1])[:, 0]
            if i < 2:
                token = self.codebooks[i](ids[:, i].repeat(2) if guided else ids[:, i])
        return (ids, entropy, logprob) if return_stats else ids


class MAR(nn.Module):
    """Bidirectional level: ``[guiding pixel], cond_{n-1} .. cond_0, patches`` (masked patches replaced by
    ``mask_token``) through timm blocks; returns the middle condition of every patch and its four neighbours'."""

    def __init__(self, seq_len: int, patch_size: int, cond_embed_dim: int, embed_dim: int, num_blocks: int,
                 num_heads: int, num_conds: int = 1, guiding_pixel: bool = False):
        super().__init__()
        self.seq_len, self.patch_size, self.grid = seq_len, patch_size, math.isqrt(seq_len)
        self.num_conds, self.guiding_pixel = num_conds, guiding_pixel
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_emb = nn.Linear(3 * patch_size ** 2, embed_dim)
        self.patch_emb_ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.cond_emb = nn.Linear(cond_embed_dim, embed_dim)
        if guiding_pixel:
            self.pix_proj = nn.Linear(3, embed_dim)
        self.pos_embed_learned = nn.Parameter(torch.zeros(1, seq_len + num_conds + guiding_pixel, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads) for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if guiding_pixel:
            self.guiding_pixel_loss = PixelLoss(cond_embed_dim, **GUIDING_HEAD)

    def predict(self, patches_NLC: torch.Tensor, mask_NL: torch.Tensor, conds: list[torch.Tensor]) \
            -> list[torch.Tensor]:
        """Five conditions ``[N, L, D]`` (middle, top, right, bottom, left; zero outside the grid)."""
        dtype = self.patch_emb.weight.dtype
        x = self.patch_emb(patches_NLC.to(dtype))
        front = [self.cond_emb(conds[i].to(dtype)).unsqueeze(1) for i in reversed(range(self.num_conds))]
        if self.guiding_pixel:
            front.insert(0, self.pix_proj(conds[-1].to(dtype)).unsqueeze(1))
        x = torch.cat(front + [torch.where(mask_NL.bool()[..., None], self.mask_token.to(dtype), x)], dim=1)
        x = self.patch_emb_ln(x + self.pos_embed_learned)
        for block in self.blocks:
            x = block(x)
        m = self.norm(x)[:, len(front):]
        N, L, D = m.shape
        g = m.reshape(N, self.grid, self.grid, D)
        top, right, bottom, left = (torch.zeros_like(g) for _ in range(4))
        top[:, 1:], bottom[:, :-1] = g[:, :-1], g[:, 1:]
        right[:, :, :-1], left[:, :, 1:] = g[:, :, 1:], g[:, :, :-1]
        return [m] + [t.reshape(N, L, D) for t in (top, right, bottom, left)]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class ARAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x_BLC: torch.Tensor, rope_L2: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, L, C = x_BLC.shape
        q, k, v = self.wqkv(x_BLC).view(B, L, 3, self.num_heads, C // self.num_heads).unbind(2)
        q, k = rotate(q, rope_L2).transpose(1, 2), rotate(k, rope_L2).transpose(1, 2)
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.extend(k, v)
        return self.wo(attention(q, k, v, causal=cache is None).transpose(1, 2).reshape(B, L, C))


class FeedForward(nn.Module):
    """SwiGLU ``w2(silu(w1 x) * w3 x)`` of width ``find_multiple(int(8 D / 3), 256)`` (LlamaGen)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = -(-int(2 * 4 * dim / 3) // 256) * 256
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention = ARAttention(dim, num_heads)
        self.feed_forward = FeedForward(dim)
        self.attention_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache)
        return h + self.feed_forward(self.ffn_norm(h))


def rope_2d(grid: int, head_dim: int, base: float = 10000) -> torch.Tensor:
    """``[1 + grid^2, head_dim / 2, 2]`` (cos, sin): rotation pair i turns by row * f_i for the first quarter of
    the head, by column * f_(i - hd/4) for the second; row 0 (the condition token) is all zero, which zeroes
    its query and key. Computed as the official ``precompute_freqs_cis_2d``, op for op."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    freqs = torch.outer(torch.arange(grid), freqs)
    grid_f = torch.cat([freqs[:, None, :].expand(-1, grid, -1), freqs[None, :, :].expand(grid, -1, -1)], dim=-1)
    table = torch.stack([torch.cos(grid_f), torch.sin(grid_f)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(1, half, 2), table])


def rotate(x_BLHc: torch.Tensor, rope_L2: torch.Tensor) -> torch.Tensor:
    xs = x_BLHc.float().reshape(*x_BLHc.shape[:-1], -1, 2)
    r = rope_L2.view(1, xs.shape[1], 1, xs.shape[3], 2)
    out = torch.stack([xs[..., 0] * r[..., 0] - xs[..., 1] * r[..., 1],
                       xs[..., 1] * r[..., 0] + xs[..., 0] * r[..., 1]], dim=-1)
    return out.flatten(3).type_as(x_BLHc)


class AR(nn.Module):
    """Causal level: ``cond_0, patch_0 .. patch_{L-2}`` through LlamaGen blocks with 2-D RoPE; the output at
    token j is the condition of patch j. Only ``cond_0`` (the middle condition) is read."""

    def __init__(self, seq_len: int, patch_size: int, cond_embed_dim: int, embed_dim: int, num_blocks: int,
                 num_heads: int):
        super().__init__()
        self.seq_len, self.patch_size, self.grid = seq_len, patch_size, math.isqrt(seq_len)
        self.num_heads = num_heads
        self.patch_emb = nn.Linear(3 * patch_size ** 2, embed_dim)
        self.patch_emb_ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pos_embed_learned = nn.Parameter(torch.zeros(1, seq_len + 1, embed_dim))
        self.cond_emb = nn.Linear(cond_embed_dim, embed_dim)
        self.blocks = nn.ModuleList([TransformerBlock(embed_dim, num_heads) for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.register_buffer("rope", rope_2d(self.grid, embed_dim // num_heads), persistent=False)

    def predict(self, patches_NLC: torch.Tensor, cond_ND: torch.Tensor) -> torch.Tensor:
        """Conditions ``[N, L, D]`` of all patches at once (causal; training and the NLL path)."""
        dtype = self.patch_emb.weight.dtype
        x = torch.cat([self.cond_emb(cond_ND.to(dtype)).unsqueeze(1), self.patch_emb(patches_NLC.to(dtype))], dim=1)
        x = self.patch_emb_ln(x + self.pos_embed_learned[:, :x.shape[1]])
        for block in self.blocks:
            x = block(x, self.rope[:x.shape[1]])
        return self.norm(x)[:, :-1]

    def new_caches(self, rows: int) -> list[KVCache]:
        D = self.pos_embed_learned.shape[-1]
        return [KVCache(rows, self.num_heads, self.seq_len, D // self.num_heads, self.patch_emb.weight.dtype,
                        self.pos_embed_learned.device) for _ in self.blocks]

    def step(self, token_ND: torch.Tensor, s: int, caches: list[KVCache]) -> torch.Tensor:
        """The condition of patch ``s`` ``[N, D]`` given token ``s`` (already embedded: the condition for s = 0,
        patch s - 1 after), everything before it being in ``caches``."""
        x = self.patch_emb_ln(token_ND + self.pos_embed_learned[:, s])[:, None]
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block(x, self.rope[s:s + 1], cache)
        return self.norm(x[:, 0])


# -- the hierarchy ------------------------------------------------------------------------------------------------
class FractalGen(nn.Module):
    """One level of the hierarchy (level 0 also holds ``class_emb`` and ``fake_latent``, the no-class embedding
    used for CFG): ``generator`` (AR or MAR) and ``next_fractal``, the level below or the final pixel head."""

    def __init__(self, cfg: FractalGenConfig | None = None, fractal_level: int = 0, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or FractalGenConfig(**kwargs)
        self.fractal_level = l = fractal_level
        K, dims = cfg.num_levels, cfg.embed_dim_list
        if l == 0:
            self.num_classes = cfg.class_num
            self.class_emb = nn.Embedding(cfg.class_num, dims[0])
            self.fake_latent = nn.Parameter(torch.zeros(1, dims[0]))
        args = dict(seq_len=cfg.seq_len(l), patch_size=cfg.patch_size(l), cond_embed_dim=dims[max(l - 1, 0)],
                    embed_dim=dims[l], num_blocks=cfg.num_blocks_list[l], num_heads=cfg.num_heads_list[l])
        if cfg.generator_type_list[l] == "mar":
            self.generator = MAR(**args, num_conds=cfg.num_conds, guiding_pixel=cfg.has_guiding_pixel(l))
        else:
            self.generator = AR(**args)
        if l < K - 2:
            self.next_fractal = FractalGen(cfg, l + 1)
        else:
            self.next_fractal = PixelLoss(dims[l], dims[l + 1], cfg.num_blocks_list[l + 1], cfg.num_heads_list[l + 1],
                                          cfg.r_weight)
        if l == 0:
            self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation: xavier-uniform linears with zero bias, unit LayerNorms, N(0, 0.02)
        embeddings, mask tokens, learned positions and codebooks."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0)
        for name, p in self.named_parameters():
            if name.split(".")[-1] in ("mask_token", "pos_embed_learned", "fake_latent") or \
                    name.endswith(("codebook.weight", "class_emb.weight")):
                nn.init.normal_(p, std=0.02)

    def levels(self) -> list[nn.Module]:
        """The generators from the top down, then the final pixel head."""
        out, level = [], self
        while isinstance(level, FractalGen):
            out.append(level.generator)
            level = level.next_fractal
        return out + [level]

    def cast(self, dtype: torch.dtype) -> FractalGen:
        """Generators in ``dtype``; every pixel head (the final one and the guiding ones) stays float32, since
        it turns logits into 256-way probabilities."""
        self.to(dtype)
        for m in self.modules():
            if isinstance(m, PixelLoss):
                m.float()
        return self

    def class_embedding(self, label_B: torch.Tensor) -> torch.Tensor:
        """``class_emb`` rows; label ``num_classes`` (unconditional) is ``fake_latent``."""
        uncond = (label_B == self.num_classes)[:, None]
        return torch.where(uncond, self.fake_latent, self.class_emb(label_B.clamp_max(self.num_classes - 1)))

    # training loss ---------------------------------------------------------------------------------------------
    def forward(self, imgs: torch.Tensor, labels: torch.Tensor, *, rng: torch.Generator | None = None,
                np_rng: np.random.RandomState | None = None, mask_rates=None, trace: dict | None = None) \
            -> torch.Tensor:
        """The official loss of normalised images ``[B, 3, H, W]``: in ``train()`` mode with label dropout,
        truncated-normal MAR masking and the r-weighted pixel loss; in ``eval()`` mode the authors' NLL path
        (labels ignored: every row gets ``fake_latent``; MAR masks of a uniform size). Torch draws come from
        ``rng`` and numpy draws from ``np_rng`` in the official order; ``mask_rates`` (an iterator of arrays,
        one per MAR level in level order) replaces the truncated-normal draws, e.g. to replay a stored run.
        ``trace`` collects the intermediates under the golden files' names (``L0.mask``, ``pix.logits``, ...).
        Dropout is not applied."""
        assert self.fractal_level == 0, "forward is called on the top level"
        np_rng = np_rng or np.random.RandomState()
        ce = self.class_emb(labels)
        if self.training:
            drop = (torch.rand(labels.shape[0], generator=rng, device=ce.device) < self.cfg.label_drop_prob)
        else:
            drop = torch.ones(labels.shape[0], device=ce.device)
        drop = drop[:, None].to(ce.dtype)
        ce = drop * self.fake_latent + (1 - drop) * ce
        if trace is not None:
            trace["L0.class_embedding"] = ce
        rates = iter(mask_rates) if mask_rates is not None else None
        return self._level_loss(imgs, [ce] * MAX_CONDS, rng, np_rng, rates, trace)

    def _level_loss(self, imgs, conds, rng, np_rng, rates, trace) -> torch.Tensor:
        gen, tag = self.generator, f"L{self.fractal_level}"
        N, p = imgs.shape[0], gen.patch_size
        patches = patchify(imgs, p)
        gp_loss = imgs.new_zeros(())
        if isinstance(gen, MAR):
            orders = torch.argsort(torch.rand(N, gen.seq_len, generator=rng, device=imgs.device), dim=1)
            if self.training:
                rate = next(rates) if rates is not None else mask_rate_draws(N, np_rng)
                n_masked = torch.tensor(np.ceil(gen.seq_len * np.asarray(rate)), dtype=torch.float32,
                                        device=imgs.device)
                mask = (orders < n_masked[:, None]).float()
            else:
                n = np_rng.randint(gen.seq_len) + 1
                mask = torch.zeros(N, gen.seq_len, device=imgs.device).scatter_(1, orders[:, :n], 1.0)
            conds = list(conds)
            if gen.guiding_pixel:
                g = imgs.mean(-1).mean(-1)
                gp_loss = gen.guiding_pixel_loss(g, conds[0], rng, trace, f"{tag}.gp")
                conds.append(g)
                if trace is not None:
                    trace.update({f"{tag}.guiding_pixels": g, f"{tag}.guiding_pixel_loss": gp_loss})
            out = gen.predict(patches, mask, conds)
            keep = mask.reshape(-1).bool()
            conds_next = [c.reshape(-1, c.shape[-1])[keep] for c in out]
            patches_next = patches.reshape(-1, patches.shape[-1])[keep]
            if trace is not None:
                trace.update({f"{tag}.orders": orders, f"{tag}.mask": mask})
        else:
            out = [gen.predict(patches, conds[0])]
            conds_next = [out[0].reshape(-1, out[0].shape[-1])]
            patches_next = patches.reshape(-1, patches.shape[-1])
        patches_next = patches_next.reshape(-1, 3, p, p)
        if trace is not None:
            trace.update({f"{tag}.patches": patches, f"{tag}.predict.cond0": out[0],
                          f"{tag}.out.patches": patches_next})
            trace.update({f"{tag}.out.cond{i}": c for i, c in enumerate(conds_next)})
        if isinstance(self.next_fractal, FractalGen):
            loss = self.next_fractal._level_loss(patches_next, conds_next, rng, np_rng, rates, trace)
        else:
            loss = self.next_fractal(patches_next.reshape(-1, 3), conds_next[0], rng, trace)
        loss = loss + gp_loss
        if trace is not None:
            trace[f"{tag}.level_loss"] = loss
        return loss


def mask_rate_draws(n: int, np_rng: np.random.RandomState) -> np.ndarray:
    """Training mask ratios of n rows: truncated normal on [0, 1] around 1 (sd 0.25), as the official
    ``scipy.stats.truncnorm(-4, 0, loc=1, scale=0.25)``."""
    from scipy import stats

    return stats.truncnorm(-4, 0, loc=1.0, scale=0.25).rvs(n, random_state=np_rng)


def patchify(imgs_N3HW: torch.Tensor, p: int) -> torch.Tensor:
    """``[N, 3, h p, w p] -> [N, h w, 3 p^2]``: row-major patches, channel-major inside a patch."""
    N, C, H, W = imgs_N3HW.shape
    x = imgs_N3HW.reshape(N, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwcpq", x).reshape(N, (H // p) * (W // p), C * p * p)


def unpatchify(patches_NLC: torch.Tensor, p: int) -> torch.Tensor:
    N, L = patches_NLC.shape[:2]
    h = math.isqrt(L)
    x = patches_NLC.reshape(N, h, h, 3, p, p)
    return torch.einsum("nhwcpq->nchpwq", x).reshape(N, 3, h * p, h * p)


# -- sampling -----------------------------------------------------------------------------------------------------
@dataclass
class FractalGenStep:
    """One streamed record: after a top-level step (``level`` 0) or, with ``stream_depth``, after a step of a
    lower level inside the top-level step ``step`` (``level`` k, ``path`` = (step, steps) of levels 0..k)."""

    step: int  # top-level step, 0-based (still in progress when level > 0)
    num_steps: int  # top-level steps
    tokens: torch.Tensor  # [B, 3, H, W] uint8 pixel ids drawn so far (0 where not drawn yet)
    image: torch.Tensor | None  # [B, 3, H, W] in [0, 1]: ids / 255, undrawn pixels in the mean colour
    seconds: float  # wall time since the previous record
    labels: torch.Tensor  # [B] class ids (num_classes = unconditional)
    seed: int
    canvas: torch.Tensor  # [B, 3, H, W] the authors' canvas: normalised pixels, 0 where not drawn
    known: torch.Tensor  # [B, H, W] bool, pixels drawn so far
    done: torch.Tensor  # [B, h, w] bool, top-level patches finished
    filled: torch.Tensor  # [B, h, w] bool, top-level patches of this top-level step (finished when level 0)
    level: int  # 0 = a top-level step ended; k = a step of level k ended (K - 1 = a pixel-head call)
    path: tuple[tuple[int, int], ...]  # (step, steps) of each level from the top down to ``level``
    cfg: float  # guidance of this record's top-level step
    temperature: float
    entropy: torch.Tensor  # [B, H, W] the pixel head's entropy (nats) of each drawn colour, nan where undrawn
    logprob: torch.Tensor  # [B, H, W] log-probability of each drawn colour, nan where undrawn
    kept: torch.Tensor | None = None  # [B, H * W] bool when editing: pixels of the kept top-level patches

    @property
    def final(self) -> bool:
        return self.level == 0 and self.step == self.num_steps - 1


def check_sampling(model: FractalGen, num_iter_list, cfg: float, cfg_schedule: str, temperature: float,
                   filter_threshold: float, stream_depth: int) -> list[int]:
    """Errors a user can cause, said before anything runs; returns the steps of each level (AR levels take one
    step per patch whatever ``num_iter_list`` says, MAR levels at most one per patch, as in the official code)."""
    cfg_ = model.cfg
    K = cfg_.num_levels
    if len(num_iter_list) != K - 1:
        raise ValueError(f"num_iter_list needs one entry per generator level ({K - 1} for this model), got "
                         f"{list(num_iter_list)}")
    steps = []
    for l, n in enumerate(num_iter_list):
        if int(n) < 1:
            raise ValueError(f"num_iter_list[{l}] must be >= 1, got {n}")
        L = cfg_.seq_len(l)
        steps.append(L if cfg_.generator_type_list[l] == "ar" else min(L, int(n)))
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}: use one of {CFG_SCHEDULES}")
    if not cfg >= 1.0:
        raise ValueError(f"cfg must be >= 1 (1 = no guidance), got {cfg}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (it multiplies the pixel logits), got {temperature}")
    if not 0 <= filter_threshold < 1:
        raise ValueError(f"filter_threshold must be in [0, 1), got {filter_threshold}")
    if not 0 <= stream_depth <= K - 1:
        raise ValueError(f"stream_depth must be 0..{K - 1} (0 = top-level steps only, {K - 1} = every pixel-head "
                         f"call), got {stream_depth}")
    return steps


class _Sampler:
    """One generation: the official recursion as nested generators. Every level's sampler yields its level index
    after each of its steps (when within ``depth``) and returns its patches; the pixel head writes the ids it
    draws into the shared canvas at their place ``(b, y, x)``, which is how records see work in progress."""

    def __init__(self, model: FractalGen, steps: list[int], temperature: float, filter_threshold: float,
                 rng: torch.Generator, depth: int, B: int, device, init_ids: torch.Tensor | None = None,
                 keep_BL: torch.Tensor | None = None):
        self.levels, self.cfg = model.levels(), model.cfg
        self.steps, self.temperature, self.filter = steps, temperature, filter_threshold
        self.rng, self.depth = rng, depth
        H = self.cfg.img_size
        self.ids = torch.zeros(B, 3, H, H, dtype=torch.uint8, device=device)
        self.known = torch.zeros(B, H, H, dtype=torch.bool, device=device)
        self.entropy = torch.full((B, H, H), torch.nan, device=device)  # the pixel head's, per drawn pixel
        self.logprob = torch.full((B, H, H), torch.nan, device=device)
        g = math.isqrt(self.cfg.seq_len(0))
        self.done = torch.zeros(B, g, g, dtype=torch.bool, device=device)
        self.filled = torch.zeros_like(self.done)
        self.path: list[tuple[int, int]] = [(0, 0)] * len(self.levels)
        self.top_cfg = 1.0
        self.table = torch.stack([normalize_ids(torch.arange(256), c) for c in range(3)]).to(device)
        self.keep = keep_BL  # [B, L] top-level patches kept from init_ids (editing), or None
        if keep_BL is not None:
            self.done = keep_BL.view_as(self.done).clone()
            self.known = self.done.repeat_interleave(H // g, 1).repeat_interleave(H // g, 2)
            self.ids = torch.where(self.known[:, None], init_ids, self.ids)

    def normalized(self, ids_N3: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.table[c][ids_N3[:, c]] for c in range(3)], dim=1)

    def level(self, l: int, conds: list[torch.Tensor], cfg: float, schedule: str, place_N3: torch.Tensor):
        if l == len(self.levels) - 1:
            ids, entropy, logprob = self.levels[l].sample(conds[0], self.temperature, cfg, self.filter, self.rng,
                                                          return_stats=True)
            b, y, x = place_N3.unbind(1)
            self.ids[b, :, y, x] = ids.to(torch.uint8)
            self.known[b, y, x] = True
            self.entropy[b, y, x], self.logprob[b, y, x] = entropy, logprob
            if l <= self.depth:
                yield l
            return self.normalized(ids)[:, :, None, None]
        gen = self.levels[l]
        if isinstance(gen, MAR):
            return (yield from self._mar(l, gen, conds, cfg, schedule, place_N3))
        return (yield from self._ar(l, gen, conds, cfg, schedule, place_N3))

    def _child_place(self, place_N3: torch.Tensor, gen, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        p = gen.patch_size
        offset = torch.stack([torch.zeros_like(pos), pos // gen.grid * p, pos % gen.grid * p], dim=1)
        return place_N3[rows] + offset

    def _mar(self, l, gen: MAR, conds, cfg, schedule, place_N3):
        R = conds[0].shape[0]
        guided = not cfg == 1.0
        N, L, rep = (R // 2 if guided else R), gen.seq_len, (2 if guided else 1)
        device = conds[0].device
        conds = list(conds)
        if gen.guiding_pixel:
            g = self.normalized(gen.guiding_pixel_loss.sample(conds[0], self.temperature, cfg, self.filter, self.rng))
            conds.append(g.repeat(rep, 1))
        orders = torch.argsort(torch.rand(N, L, generator=self.rng, device=device), dim=1)
        patches = torch.zeros(N, L, 3 * gen.patch_size ** 2, device=device)
        mask = torch.ones(N, L, dtype=torch.bool, device=device)
        if l == 0 and self.keep is not None:  # the kept patches known; the others first in each sample's order
            patches = torch.where(self.keep[..., None], self._kept_patches(gen.patch_size), patches)
            mask = ~self.keep
            orders = orders.gather(1, self.keep.gather(1, orders).int().argsort(dim=1, stable=True))
        num_steps = self.steps[l]
        for s, mask_len in enumerate(mask_lengths(int(mask[0].sum()), num_steps)):
            self.path[l] = (s, num_steps)
            next_mask = torch.zeros_like(mask)
            if s < num_steps - 1:
                next_mask.scatter_(1, orders[:, :mask_len], True)
            pred = mask & ~next_mask
            if schedule == "linear":  # the official float32 arithmetic: 1 + (cfg - 1) (L - m) / L
                m = torch.tensor([float(mask_len)], dtype=torch.float32)
                cfg_s = float(1 + (cfg - 1) * (L - m) / L)
            else:
                cfg_s = cfg
            if l == 0:
                self.top_cfg = cfg_s
                self.filled = pred.view_as(self.filled)
            rows, pos = pred.nonzero(as_tuple=True)
            if len(rows):
                out = gen.predict(patches.repeat(rep, 1, 1), mask.repeat(rep, 1), conds)
                sel = pred.repeat(rep, 1)
                child = yield from self.level(l + 1, [c[sel] for c in out], cfg_s, "constant",
                                              self._child_place(place_N3, gen, rows, pos))
                patches[rows, pos] = child.reshape(len(rows), -1).to(patches.dtype)
            mask = next_mask
            if l == 0:
                self.done |= self.filled
            if l <= self.depth:
                yield l
        return unpatchify(patches, gen.patch_size)

    def _ar(self, l, gen: AR, conds, cfg, schedule, place_N3):
        R = conds[0].shape[0]
        guided = not cfg == 1.0
        N, L, rep = (R // 2 if guided else R), gen.seq_len, (2 if guided else 1)
        device = conds[0].device
        caches = gen.new_caches(R)
        patches = torch.zeros(N, L, 3 * gen.patch_size ** 2, device=device)
        rows = torch.arange(N, device=device)
        dtype = gen.patch_emb.weight.dtype
        token = gen.cond_emb(conds[0].to(dtype))
        P = int(self.keep[0].sum()) if l == 0 and self.keep is not None else 0
        if P:  # a kept raster prefix: read through the cache, nothing drawn
            patches[:, :P] = self._kept_patches(gen.patch_size)[:, :P]
            for s in range(P):
                gen.step(token, s, caches)
                token = gen.patch_emb(patches[:, s].to(dtype)).repeat(rep, 1)
        for s in range(P, L):
            self.path[l] = (s - P, L - P)
            cond = gen.step(token, s, caches)
            cfg_s = 1 + (cfg - 1) * (s + 1) / L if schedule == "linear" else cfg
            if l == 0:
                self.top_cfg = cfg_s
                self.filled = torch.zeros_like(self.done)
                self.filled.view(N, L)[:, s] = True
            child = yield from self.level(l + 1, [cond], cfg_s, "constant",
                                          self._child_place(place_N3, gen, rows, torch.full_like(rows, s)))
            patches[:, s] = child.reshape(N, -1).to(patches.dtype)
            if s < L - 1:
                token = gen.patch_emb(patches[:, s].to(dtype)).repeat(rep, 1)
            if l == 0:
                self.done |= self.filled
            if l <= self.depth:
                yield l
        return unpatchify(patches, gen.patch_size)

    def _kept_patches(self, p: int) -> torch.Tensor:
        """The edit's image as top-level patches ``[B, L, 3 p^2]`` of normalised pixels (as drawn ones are)."""
        return patchify(torch.stack([self.table[c][self.ids[:, c].long()] for c in range(3)], dim=1), p)


@torch.inference_mode()
def stream_pixels(model: FractalGen, *, labels=None, batch_size: int = 1, num_iter_list=None, cfg: float = 1.0,
                  cfg_schedule: str = "linear", temperature: float = 1.0, filter_threshold: float = 1e-4,
                  seed: int | None = None, stream_depth: int = 0, preview: bool = True,
                  generator: torch.Generator | None = None, init_tokens: torch.Tensor | None = None,
                  init_mask: torch.Tensor | None = None) -> Iterator[FractalGenStep]:
    """The official ``FractalGen.sample``, yielding a :class:`FractalGenStep` after each top-level step and, for
    ``stream_depth`` d > 0, after each step of levels 1..d too (d = K - 1: after every pixel-head call, i.e.
    pixel by pixel within a patch). ``labels``: None = drawn at random, an int = the whole batch (negative =
    unconditional), a list = one per image. ``num_iter_list``: steps of each generator level (AR levels
    always take one per patch; default: every MAR level at most 64). ``cfg``: guidance at the top level,
    ramped by ``cfg_schedule`` (lower levels use the top level's value of the moment); ``temperature``
    multiplies the pixel logits (the authors' convention: > 1 sharpens); ``filter_threshold``: under CFG,
    candidates whose conditional probability is below it get no boost from guidance. ``preview=False``
    leaves ``image`` None except in the last record. ``generator``: draw from this one (advancing it) instead
    of a fresh one seeded with ``seed``. ``init_tokens`` (pixel ids ``[1 or B, 3, H, W]``) and ``init_mask``
    (``[1 or B, L]`` bool over the top-level patches, row-major, True = draw): edit (see the module docstring)."""
    K = model.cfg.num_levels
    if num_iter_list is None:
        num_iter_list = [min(model.cfg.seq_len(l), 64) for l in range(K - 1)]
    steps = check_sampling(model, num_iter_list, cfg, cfg_schedule, temperature, filter_threshold, stream_depth)
    device = model.fake_latent.device
    seed = new_seed() if seed is None else int(seed)
    label_B = resolve_labels(labels, batch_size, model.num_classes, torch.Generator(device).manual_seed(seed),
                             device)
    B = label_B.shape[0]
    rng = generator if generator is not None else torch.Generator(device).manual_seed(seed)
    init_ids, keep_BL = _edit_start(model, init_tokens, init_mask, B, device)
    if keep_BL is not None:  # only the patches to draw take steps
        n = int((~keep_BL[0]).sum())
        steps[0] = n if model.cfg.generator_type_list[0] == "ar" else min(n, steps[0])
    run = _Sampler(model, steps, float(temperature), float(filter_threshold), rng, stream_depth, B, device, init_ids,
                   keep_BL)
    kept = None if keep_BL is None else run.known.flatten(1).clone()
    ce = model.class_embedding(label_B)
    if cfg != 1.0:
        ce = torch.cat([ce, model.fake_latent.repeat(B, 1)])
    place = torch.stack([torch.arange(B, device=device), torch.zeros(B, dtype=torch.long, device=device),
                         torch.zeros(B, dtype=torch.long, device=device)], dim=1)
    mean = torch.tensor(PIX_MEAN, device=device)[None, :, None, None]
    t0 = time.perf_counter()
    for level in run.level(0, [ce] * model.cfg.num_conds, float(cfg), cfg_schedule, place):
        known = run.known[:, None]
        last = level == 0 and run.path[0][0] == steps[0] - 1
        canvas = torch.where(known, torch.stack([run.table[c][run.ids[:, c].long()] for c in range(3)], dim=1), 0.0)
        image = torch.where(known, run.ids.float() / 255, mean) if preview or last else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        yield FractalGenStep(step=run.path[0][0], num_steps=steps[0], tokens=run.ids.clone(), image=image,
                             seconds=now - t0, labels=label_B, seed=seed, canvas=canvas, known=run.known.clone(),
                             done=run.done.clone(), filled=run.filled.clone(), level=level,
                             path=tuple(run.path[:level + 1]), cfg=run.top_cfg, temperature=float(temperature),
                             entropy=run.entropy.clone(), logprob=run.logprob.clone(), kept=kept)
        t0 = now


def _edit_start(model: FractalGen, init_tokens, init_mask, B: int, device):
    """An edit's pixel ids ``[B, 3, H, W]`` uint8 and kept top-level patches ``[B, L]`` bool, checked (the same
    number to draw in every image; a raster prefix kept under an AR top level); (None, None) when not editing."""
    if (init_tokens is None) != (init_mask is None):
        raise ValueError("init_tokens and init_mask go together: pass both to edit, or neither")
    if init_tokens is None:
        return None, None
    H, L = model.cfg.img_size, model.cfg.seq_len(0)
    ids = torch.as_tensor(init_tokens, device=device)
    ids = ids[None] if ids.ndim == 3 else ids
    if ids.ndim != 4 or tuple(ids.shape[1:]) != (3, H, H) or ids.shape[0] not in (1, B):
        raise ValueError(f"init_tokens must be pixel ids [1 or {B}, 3, {H}, {H}], got {list(ids.shape)}")
    if ids.is_floating_point() or ids.min() < 0 or ids.max() > 255:
        raise ValueError("init_tokens must be integer pixel ids in 0..255")
    draw_BL = torch.as_tensor(init_mask, device=device).bool()
    draw_BL = draw_BL[None] if draw_BL.ndim == 1 else draw_BL
    if draw_BL.ndim != 2 or draw_BL.shape[1] != L or draw_BL.shape[0] not in (1, B):
        raise ValueError(f"init_mask must be [{L}] or [1 or {B}, {L}] (the top-level patches), got "
                         f"{list(draw_BL.shape)}")
    counts = draw_BL.sum(1)
    if (counts != counts[0]).any() or not 0 < int(counts[0]) < L:
        raise ValueError(f"an edit must draw the same number of top-level patches in every image, at least one and "
                         f"not all {L} (got {counts.tolist()}): pass one mask for the batch, or edit one image at a "
                         "time")
    if model.cfg.generator_type_list[0] == "ar":
        g = math.isqrt(L)
        require_raster_prefix(Edit(ids.float() / 255, draw_BL.view(-1, g, g)), "FractalGen with an AR top level")
    return ids.expand(B, -1, -1, -1).to(torch.uint8), ~draw_BL.expand(B, -1)


# -- pipeline -----------------------------------------------------------------------------------------------------
@dataclass
class PixelTokenizerConfig:
    image_size: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


class PixelTokenizer(nn.Module):
    """The identity "tokenizer" of a pixel-space family: tokens are pixel ids 0..255 and an image is ids / 255.
    It has no weights; it exists because every :class:`Pipeline` (and the checkpoint format) has a tokenizer."""

    def __init__(self, cfg: PixelTokenizerConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg or PixelTokenizerConfig(**kwargs)

    def tokens_to_image(self, ids_B3HW: torch.Tensor) -> torch.Tensor:
        return ids_B3HW.float() / 255


LEVEL_COLOURS = torch.tensor([[38, 38, 46], [120, 120, 130], [255, 170, 40], [255, 255, 255]]) / 255


class FractalGenPipeline(Pipeline):
    """A FractalGen model over pixels: ``stream`` yields :class:`FractalGenStep` records (arguments of
    :func:`stream_pixels` plus ``preview``), ``generate`` returns images ``[B, 3, H, W]`` in [0, 1] (the pixel
    ids / 255)."""

    kind = "fractalgen"
    family = "FractalGen"
    can_edit = True  # whole top-level patches; a raster prefix of them under an AR top level
    step_name = "level-0 step"
    legend = ("Level map at pixel resolution: dark = not started; grey = top-level patches done before this step; "
              "orange = patches of this step still being drawn; white = pixels drawn in this step.")
    uncertainty_legend = ("How unsure the pixel head was of each pixel drawn so far: the entropy of its colour's "
                          "distribution (R, then G, then B) ÷ its maximum 3 log 256; dark = not drawn yet.")

    def __init__(self, tokenizer: PixelTokenizer, model: FractalGen, class_names: list[str] | None = None,
                 defaults: dict | None = None):
        if tokenizer.cfg.image_size != model.cfg.img_size:
            raise ValueError(f"the pixel tokenizer is for {tokenizer.cfg.image_size} px but the model makes "
                             f"{model.cfg.img_size} px images")
        super().__init__(tokenizer, model, class_names, defaults)

    @property
    def image_size(self) -> int:
        return self.model.cfg.img_size

    def _sample(self, image=None, mask=None, **kwargs) -> Iterator[FractalGenStep]:
        """``image``, ``mask``: edit an image (:mod:`edifice.editing`; mask 1 = regenerate, at the top-level patch
        grid or in pixels, where a patch is regenerated if any of its pixels is): see the module docstring."""
        edit = prepare_edit(image, mask, image_size=self.image_size, grid=math.isqrt(self.model.cfg.seq_len(0)),
                            device=self.device)
        if edit:
            edit.fit_batch(kwargs)
            kwargs.update(init_tokens=edit.image.mul(255).round().to(torch.uint8),
                          init_mask=edit.regenerate.flatten(1))
        return stream_pixels(self.model, **kwargs)

    @torch.inference_mode()
    def decode(self, step: FractalGenStep) -> torch.Tensor:
        return self.tokenizer.tokens_to_image(step.tokens)

    def controls(self) -> list[Control]:
        d, cfg = self.defaults, self.model.cfg
        out = []
        for l in range(cfg.num_levels - 1):
            L, kind = cfg.seq_len(l), cfg.generator_type_list[l]
            if kind == "mar":
                default = (d.get("num_iter_list") or [min(L, 64)] * (cfg.num_levels - 1))[l]
                out.append(Control(f"num_iter_{l}", "int", min(int(default), L), f"Level {l} steps",
                                   f"MAR level {l}: steps to fill its {L} patches (1 to {L})", 1, L, 1))
        return out + [
            Control("cfg", "float", d.get("cfg", 1.0), "CFG", "classifier-free guidance at the top level; 1 = off",
                    1.0, 40.0, 0.5),
            Control("cfg_schedule", "choice", d.get("cfg_schedule", "linear"), "CFG schedule",
                    "linear: guidance ramps up as the top level fills in", choices=CFG_SCHEDULES),
            Control("temperature", "float", d.get("temperature", 1.0), "Temperature",
                    "multiplies the pixel logits (the authors' convention: above 1 sharpens)", 0.5, 2.0, 0.01),
            Control("filter_threshold", "float", d.get("filter_threshold", 1e-4), "Filter threshold",
                    "under CFG, pixel values less likely than this get no boost", 0.0, 0.1, 1e-4),
            Control("stream_depth", "int", 0, "Stream depth", "0 = a record per top-level step; higher = also "
                    f"inside the lower levels (up to {cfg.num_levels - 1}: every pixel-head call)",
                    0, cfg.num_levels - 1, 1),
        ]

    def stream(self, **kwargs) -> Iterator[FractalGenStep]:
        """As :func:`stream_pixels`; ``num_iter_0``, ``num_iter_1``, ... (the controls) set single entries of
        ``num_iter_list``."""
        kwargs = {**self.defaults, **kwargs}
        per_level = {int(k.removeprefix("num_iter_")): kwargs.pop(k) for k in list(kwargs)
                     if re.fullmatch(r"num_iter_\d+", k)}
        if per_level:
            K = self.model.cfg.num_levels
            base = list(kwargs.get("num_iter_list") or [min(self.model.cfg.seq_len(l), 64) for l in range(K - 1)])
            for l, n in per_level.items():
                if not 0 <= l < len(base):
                    raise ValueError(f"num_iter_{l}: this model has generator levels 0..{len(base) - 1}")
                base[l] = n
            kwargs["num_iter_list"] = base
        return self._sample(**kwargs)

    def status(self, step: FractalGenStep) -> str:
        where = " › ".join(f"L{l} {s + 1}/{n}" for l, (s, n) in enumerate(step.path))
        drawn = int(step.known[0].sum())
        return (f"{where} · {drawn}/{step.known[0].numel()} pixels · cfg {step.cfg:.2f} · "
                f"{step.seconds * 1e3:.0f} ms")

    def level_map(self, step: FractalGenStep) -> torch.Tensor:
        """``[B, H, W]`` uint8: 0 not started, 1 done before this step, 2 in this step's patches and not drawn
        yet, 3 drawn in this step."""
        H = self.image_size
        k = H // step.done.shape[-1]
        up = lambda m: m.repeat_interleave(k, 1).repeat_interleave(k, 2)  # noqa: E731
        before, this = up(step.done & ~step.filled), up(step.filled)
        out = torch.zeros(step.known.shape, dtype=torch.uint8, device=step.known.device)
        out[before] = 1
        out[this & ~step.known] = 2
        out[this & step.known] = 3
        return out

    def token_view(self, step: FractalGenStep, target: int = 256):
        colours = LEVEL_COLOURS.to(step.known.device)[self.level_map(step).long()]
        return draw.image_grid(colours.permute(0, 3, 1, 2), target)

    def token_stats(self, step: FractalGenStep) -> TokenStats:
        """Per pixel: the pixel head's entropy of every colour drawn so far (the heat) and, for the pixels drawn
        in this top-level step, the colour (``#rrggbb``) and its probability. No candidates (k = 0): a colour is
        three draws in turn, each channel's list depending on the channels drawn before it, so there is no one
        list of alternatives to rank; the entropy and probability come from the distributions sampled (after
        CFG and temperature)."""
        B, H, W = step.known.shape
        this = self.level_map(step) == 3
        ids = step.tokens.long()
        colour = torch.where(this, ids[:, 0] << 16 | ids[:, 1] << 8 | ids[:, 2], -1)
        drawn_prob = torch.where(this, step.logprob.exp(), torch.nan)
        empty = torch.zeros(B, H * W, 0)
        return TokenStats((H, W), empty.long(), empty, colour.flatten(1).cpu(), drawn_prob.flatten(1).float().cpu(),
                          step.entropy.flatten(1).float().cpu(),
                          (step.entropy / (3 * math.log(256))).clamp(0, 1).flatten(1).float().cpu(),
                          "entropy of the colour / 3 log 256",
                          "the pixel head's distributions after CFG and temperature; a colour is drawn R, then G, "
                          "then B, so there is no single list of candidates", token_names=lambda i: f"#{i:06x}")
