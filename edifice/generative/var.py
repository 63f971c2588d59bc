"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al. 2024, arXiv 2404.02905).

The image is the multi-scale token pyramid of :mod:`edifice.tokenizers.vqvae`: 1x1, 2x2, ..., 16x16 maps
of one shared codebook. A GPT-style transformer predicts every token of scale k in parallel from the class
token and all coarser scales (block-causal attention); the input tokens of scale k are the cumulative
latent ``f_hat`` of scales < k, area-downsampled to pn_k x pn_k. Blocks are conditioned on the class with
AdaLN; attention is cosine (L2-normalised) with a learned per-head temperature. Inference caches keys and
values across scales, so each scale runs only its own pn_k^2 tokens.

Parameter and buffer names are those of FoundationVision/VAR, so ``var_d16.pth`` ... ``var_d36.pth`` load
with ``strict=True``. Images are NCHW tensors.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import render
from ..editing import prepare_edit
from ..pipeline import (
    Control,
    Pipeline,
    TokenStats,
    capture,
    check_preview,
    new_seed,
    preview_control,
    resolve_cuda_graphs,
    resolve_labels,
    sample_top_k_top_p_,
    warm_up,
    weights_key,
)
from ..tokenizers.vqvae import VQVAE, VQVAEConfig
from .blocks import FFN, KVCache, SelfAttention, modulate

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass
class VARConfig:
    vocab_size: int = 4096
    z_channels: int = 32  # channels of the tokenizer latent (Cvae)
    num_classes: int = 1000  # index num_classes is the null class used for CFG
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False  # one AdaLN projection for all blocks (+ per-block ada_gss), as in VAR-d36
    cond_drop_rate: float = 0.1  # class dropout for CFG, applied in training mode only
    attn_l2_norm: bool = True
    patch_nums: tuple[int, ...] = PATCH_NUMS_256

    def __post_init__(self):
        self.patch_nums = tuple(self.patch_nums)

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability p (training only)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class AdaLNSelfAttn(nn.Module):
    """Pre-norm transformer block whose LayerNorm scale/shift and residual gains come from the class vector."""

    def __init__(self, cfg: VARConfig, drop_path: float):
        super().__init__()
        C = self.C = cfg.embed_dim
        self.attn = SelfAttention(C, cfg.num_heads, l2_norm=cfg.attn_l2_norm, attn_drop=cfg.attn_drop_rate,
                                  proj_drop=cfg.drop_rate)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio), drop=cfg.drop_rate)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shared_aln = cfg.shared_aln
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x_BLC, cond_BD, attn_bias=None, cache: KVCache | None = None):
        # cond_BD is the class vector [B, C], or with shared AdaLN the shared projection [B, 1, 6, C]
        ada = (self.ada_gss + cond_BD) if self.shared_aln else self.ada_lin(cond_BD).view(-1, 1, 6, self.C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)
        h = self.attn(modulate(self.ln_wo_grad(x_BLC), shift1, scale1), attn_bias, cache)
        x_BLC = x_BLC + self.drop_path(h.mul(gamma1))
        h = self.ffn(modulate(self.ln_wo_grad(x_BLC), shift2, scale2))
        return x_BLC + self.drop_path(h.mul(gamma2))


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD):
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x_BLC, cond_BD):
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return modulate(self.ln_wo_grad(x_BLC), shift, scale)


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or VARConfig(**kwargs)
        C, pns = cfg.embed_dim, cfg.patch_nums
        self.num_classes, self.patch_nums = cfg.num_classes, pns
        self.first_l = pns[0] ** 2
        ends = list(itertools.accumulate(pn * pn for pn in pns))
        self.begin_ends = list(zip([0] + ends[:-1], ends, strict=True))

        self.word_embed = nn.Linear(cfg.z_channels, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, cfg.L, C))
        self.lvl_embed = nn.Embedding(len(pns), C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([AdaLNSelfAttn(cfg, dpr[i]) for i in range(cfg.depth)])

        lvl_L = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(pns)])
        self.register_buffer("lvl_1L", lvl_L.view(1, -1))
        block_causal_LL = torch.where(lvl_L[:, None] >= lvl_L[None, :], 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", block_causal_LL.view(1, 1, cfg.L, cfg.L))
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)

    # -- shared pieces of training and inference ---------------------------------------------------------
    def positions(self, scale_ids: Sequence[int]) -> torch.Tensor:
        """Sequence positions (into the full pyramid) of the tokens of the chosen scales."""
        return torch.cat([torch.arange(*self.begin_ends[si]) for si in scale_ids]).to(self.lvl_1L.device)

    def lvl_pos(self, pos_L: torch.Tensor | slice) -> torch.Tensor:
        """Level + absolute position embedding ``[1, l, C]`` of the given positions."""
        return self.lvl_embed(self.lvl_1L[:, pos_L]) + self.pos_1LC[:, pos_L]

    def sos(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Tokens of the first (1x1) scale: class vector + start position (level/position added by caller)."""
        B = cond_BD.shape[0]
        return cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)

    def embed_next(self, f_BCvhw: torch.Tensor, si: int) -> torch.Tensor:
        """Downsampled cumulative latent ``[B, Cvae, pn, pn]`` -> input tokens ``[B, pn*pn, C]`` of scale si."""
        x = self.word_embed(f_BCvhw.flatten(2).transpose(1, 2).to(self.word_embed.weight.dtype))
        return x + self.lvl_pos(slice(*self.begin_ends[si]))

    def block_cond(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.shared_ada_lin(cond_BD)

    def get_logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """AdaLN head, computed in float32 like the official code."""
        return self.head(self.head_nm(h_BLC.float(), cond_BD.float())).float()

    # -- teacher forcing ----------------------------------------------------------------------------------
    def forward(self, label_B: torch.Tensor, x_BlCv: torch.Tensor | None, scale_ids: Sequence[int] | None = None):
        """Logits ``[B, l, V]`` of every token of the chosen scales (default: all), block-causal.

        ``x_BlCv`` is the teacher-forcing input ``[B, l - 1, Cvae]`` from the tokenizer's ``idx_to_var_input``
        (None when only the first scale is asked for). Class dropout (``cond_drop_rate``) applies only in
        training mode; the official code also drops labels in eval mode, which makes its logits random.
        """
        ids = list(range(len(self.patch_nums))) if scale_ids is None else list(scale_ids)
        if ids[0] != 0:
            raise ValueError("a scale list must start with the first (1x1) scale")
        B = label_B.shape[0]
        if self.training and self.cfg.cond_drop_rate > 0:
            drop = torch.rand(B, device=label_B.device) < self.cfg.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        cond_BD = self.class_emb(label_B)
        x_BLC = self.sos(cond_BD)
        if x_BlCv is not None and x_BlCv.shape[1] > 0:
            x_BLC = torch.cat((x_BLC, self.word_embed(x_BlCv.float().to(self.word_embed.weight.dtype))), dim=1)
        if ids == list(range(len(ids))):
            pos = slice(0, self.begin_ends[ids[-1]][1])
            attn_bias = self.attn_bias_for_masking[:, :, pos, pos]
        else:
            pos = self.positions(ids)
            attn_bias = self.attn_bias_for_masking[:, :, pos[:, None], pos[None, :]]
        x_BLC = x_BLC + self.lvl_pos(pos)
        cond = self.block_cond(cond_BD)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond, attn_bias)
        return self.get_logits(x_BLC, cond_BD)

    def cast(self, dtype: torch.dtype) -> VAR:
        """Put the transformer in ``dtype`` but keep the AdaLN head in float32, as the official code does. The
        head is cast around, not through ``dtype``, so a float32 head keeps every bit (a bf16 placement or an
        fp16 resave does not round it)."""
        for child in self.children():
            if child is not self.head_nm and child is not self.head:
                child.to(dtype)
        for param in self.parameters(recurse=False):
            param.data = param.data.to(dtype)
        self.head_nm.float()
        self.head.float()
        self.attn_bias_for_masking = self.attn_bias_for_masking.float()
        return self

    def scale_graphs(self, batch_size: int, scale_ids: Sequence[int]) -> ScaleGraphs:
        """The :class:`ScaleGraphs` of this batch size and scale list, captured on first use. One set is kept
        (a new batch size, scale list, dtype or device captures anew and frees the old). Not thread-safe: the
        graphs share static buffers, so run one generation at a time per model."""
        key = (batch_size, tuple(scale_ids), weights_key(self))
        if getattr(self, "_graphs", (None,))[0] != key:
            self._graphs = (None,)  # free the old graphs before capturing the new ones
            self._graphs = (key, ScaleGraphs(self, batch_size, scale_ids))
        return self._graphs[1]

    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02):
        """The official initialisation for training from scratch: truncated normal std sqrt(1/(3C)), tiny AdaLN
        gains so every block starts close to identity, a small head, residual projections scaled by depth."""
        std = (1 / self.cfg.embed_dim / 3) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
            C, depth = self.cfg.embed_dim, len(self.blocks)
            for block in self.blocks:
                block.attn.proj.weight.div_(math.sqrt(2 * depth))
                block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
                if block.shared_aln:
                    block.ada_gss[:, :, 2:].mul_(init_adaln)
                    block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
                else:
                    block.ada_lin[-1].weight[2 * C:].mul_(init_adaln)
                    block.ada_lin[-1].weight[:2 * C].mul_(init_adaln_gamma)
        return self


# -- sampling -----------------------------------------------------------------------------------------------
@dataclass
class VARStep:
    """One streamed scale of a VAR generation."""

    step: int  # 0-based position in the chosen scale list
    num_steps: int  # length of the chosen scale list
    scale: int  # index of this scale in the model's trained list
    patch_size: int  # pn: this scale's token map is pn x pn
    tokens: torch.Tensor  # [B, pn*pn] sampled ids, row-major
    logits: torch.Tensor  # [B, pn*pn, V] CFG-guided logits, before temperature and top-k/top-p
    f_hat: torch.Tensor  # [B, Cvae, h, w] cumulative latent after this scale (float32)
    image: torch.Tensor | None  # [B, 3, H, W] in [0, 1] decoded from f_hat, None when previews are off
    seconds: float  # wall time of this scale (sampling + preview)
    labels: torch.Tensor  # [B] class ids used (num_classes = unconditional)
    seed: int
    temperature: float = 1.0  # what the logits were divided by before top-k/top-p (0 = greedy)
    kept: torch.Tensor | None = None  # [B, pn*pn] bool when editing: True = the image's own token, kept


def check_scales(scales: Sequence[int] | None, trained: Sequence[int]) -> list[int]:
    """Validate a scale-list choice; returns the indices of the chosen sizes in the trained list.

    Allowed: any strictly increasing list that starts with the first trained size and uses only trained
    sizes (e.g. [1, 2, 4, 8, 16] of [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]); stopping early gives a coarse image.
    """
    trained = list(trained)
    if scales is None:
        return list(range(len(trained)))
    sizes = list(scales)
    ok = (len(sizes) > 0 and all(isinstance(s, int) and not isinstance(s, bool) for s in sizes)
          and sizes[0] == trained[0] and all(a < b for a, b in zip(sizes, sizes[1:], strict=False))
          and set(sizes) <= set(trained))
    if not ok:
        raise ValueError(f"invalid scale list {sizes}: use a strictly increasing list that starts with "
                         f"{trained[0]} and uses only this model's trained sizes {trained}")
    return [trained.index(s) for s in sizes]


def scale_keep_masks(kept_BHW: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """Which tokens of each scale an edit keeps, ``[B, pn*pn]`` bool per scale, as the authors' notebook
    (``demo_zero_shot_edit.ipynb``) derives them from the keep map at the finest grid: resized bilinearly
    (``align_corners=False``) to pn x pn and kept where the value is > 0.5 (a tie is regenerated); the 1x1
    scale is always kept, whatever the mask."""
    kept_B1HW = kept_BHW[:, None].float()
    masks = []
    for pn in patch_nums:
        if pn * pn <= 3:
            keep = torch.ones_like(kept_B1HW[:, :, :pn, :pn], dtype=torch.bool)
        else:
            keep = F.interpolate(kept_B1HW, size=(pn, pn), mode="bilinear", align_corners=False) > 0.5
        masks.append(keep.flatten(1))
    return masks


def gumbel_softmax(logits: torch.Tensor, tau: float, rng: torch.Generator | None) -> torch.Tensor:
    gumbels = -torch.empty_like(logits).exponential_(generator=rng).log()
    return ((logits + gumbels) / tau).softmax(-1)


def new_caches(var: VAR, batch: int, scale_ids: Sequence[int]) -> list[KVCache]:
    """One KV cache per block, sized for every token of the chosen scales."""
    attn = var.blocks[0].attn
    length = sum(var.patch_nums[si] ** 2 for si in scale_ids)
    return [KVCache(batch, attn.num_heads, length, attn.head_dim, var.class_emb.weight.dtype, var.lvl_1L.device)
            for _ in var.blocks]


class ScaleGraphs:
    """CUDA graphs of VAR's per-scale transformer pass (every block, then the head), one per scale, for one
    batch size and scale list. At small batches a scale is a few hundred short kernels and the GPU waits on
    the CPU launching them; a replayed graph launches them all at once. Inputs, class vector and KV caches
    live in static buffers that the graphs read and write; ``run`` copies a scale's input in and replays.
    Graphs replay in capture order (scale 0 first), so they share one memory pool. Captured once, after an
    eager warm-up pass on a side stream, and kept by :meth:`VAR.scale_graphs`. Two generations interleaved on
    one set (two live generators of one model) would overwrite each other's caches: ``run`` refuses that.

    Measured on an H100 (``benchmarks/bench_gpu.py``): VAR-d16 bf16 4.2x faster at batch 1 and 2.9x at batch 8,
    VAR-d30 5.2x / 1.7x, the same tokens as the eager pass; capture costs about two eager generations."""

    def __init__(self, var: VAR, batch_size: int, scale_ids: Sequence[int]):
        self.var, B2 = var, 2 * batch_size
        dtype, device = var.class_emb.weight.dtype, var.lvl_1L.device
        self.caches = new_caches(var, B2, scale_ids)
        self.cond_BD = torch.zeros(B2, var.cfg.embed_dim, dtype=dtype, device=device)
        self.x = [torch.zeros(B2, var.patch_nums[si] ** 2, var.cfg.embed_dim, dtype=dtype, device=device)
                  for si in scale_ids]
        warm_up(lambda: [self._forward(j) for j in range(len(self.x))], device)
        self.graphs, self.logits, pool = [], [], None
        self.owner, self.next_j = None, 0
        for cache in self.caches:
            cache.len = 0
        for j in range(len(self.x)):
            graph, logits = capture(lambda j=j: self._forward(j), pool)
            self.graphs.append(graph)
            self.logits.append(logits)
            pool = graph.pool()

    def _forward(self, j: int) -> torch.Tensor:
        cond, x_BLC = self.var.block_cond(self.cond_BD), self.x[j]
        for block, cache in zip(self.var.blocks, self.caches, strict=True):
            x_BLC = block(x_BLC, cond, None, cache)
        return self.var.get_logits(x_BLC, self.cond_BD)

    def run(self, owner: object, j: int, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Logits ``[2B, pn*pn, V]`` of the j-th chosen scale (a static buffer, overwritten by the next run) for
        the generation ``owner``; scale 0 starts a generation and takes the graphs over."""
        if j == 0:
            self.owner = owner
            self.cond_BD.copy_(cond_BD)
        elif owner is not self.owner or j != self.next_j:
            raise RuntimeError("another generation of this model ran in between, and its CUDA graphs share one KV "
                               "cache: run interleaved generations with cuda_graphs=False")
        self.next_j = j + 1
        self.x[j].copy_(x_BLC)
        self.graphs[j].replay()
        return self.logits[j]


@torch.inference_mode()
def stream_var(var: VAR, vae: VQVAE, *, labels=None, batch_size: int = 1, cfg: float = 1.5, top_k: int = 0,
               top_p: float = 0.0, temperature: float = 1.0, more_smooth: bool = False, seed: int | None = None,
               scales: Sequence[int] | None = None, preview: bool | str = True,
               cuda_graphs: bool | None = None, image=None, mask=None) -> Iterator[VARStep]:
    """Generate images scale by scale, yielding a :class:`VARStep` after every scale.

    Matches the official ``autoregressive_infer_cfg`` draw for draw: a generator seeded with ``seed`` on the
    model's device makes every random draw (class labels if ``labels`` is None, one multinomial per scale,
    then the Gumbel noise of ``more_smooth``). ``seed=None`` picks a fresh seed, reported in each step.

    - ``cfg``: the official per-scale ramp; at scale k of K the guided logits are
      ``(1 + t) cond - t uncond`` with ``t = cfg * k / (K - 1)`` (k, K counted in the trained list).
    - ``temperature``: logits are divided by it before top-k/top-p (1.0 = official); 0 means greedy.
    - ``scales``: the scale-list control (see :func:`check_scales`); each chosen scale keeps its trained
      position embedding, level, phi conv and CFG weight.
    - ``preview``: True / "full" decodes the full latent after every scale (exact, one full decoder pass per
      scale); "fast" decodes the latent area-downsampled to the scale's own pn x pn and upscales the small
      image (decoder cost grows with pn^2, so all scales together cost about sum(pn^2) / h^2 full passes;
      the last scale is exact); "latent" maps f_hat to colours with one linear map (near-free, no detail;
      the last scale exact); False skips previews.
    - ``cuda_graphs``: replay each scale's transformer pass as a CUDA graph (:class:`ScaleGraphs`, captured on
      first use for this batch size and scale list); the tokens are those of the eager pass. None (default):
      whenever the whole model is on one CUDA device; True demands it; False runs eagerly (needed to
      interleave two live generations of one model).
    - ``image``, ``mask``: edit an image (:mod:`edifice.editing`; mask 1 = regenerate, at the finest token grid
      or in pixels). As the authors' ``demo_zero_shot_edit.ipynb``: every scale is sampled as usual, then the
      kept tokens (:func:`scale_keep_masks`) are replaced by the image's own (its multi-scale encoding over
      the chosen scales) before they enter ``f_hat``, so both CFG halves see the edited context. Records'
      ``tokens`` are after replacement and ``kept`` says which were kept.
    """
    check_preview(preview)
    scale_ids = check_scales(scales, var.patch_nums)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    shown_temperature = temperature
    if temperature == 0:
        top_k, temperature = 1, 1.0
    device = var.lvl_1L.device
    H = vae.cfg.patch_nums[-1]
    edit = prepare_edit(image, mask, image_size=vae.cfg.image_size, grid=H, device=device)
    batch_size = edit.batch_size(batch_size) if edit else batch_size
    seed = new_seed() if seed is None else int(seed)
    rng = torch.Generator(device=device).manual_seed(seed)
    label_B = resolve_labels(labels, batch_size, var.num_classes, rng, device)
    B, K = label_B.shape[0], len(var.patch_nums)
    quant = vae.quantize
    if edit:  # each image encoded once, over the chosen scales; tokens and masks broadcast to the batch
        edit.check_batch(B)
        gt_idx = [ids.expand(B, -1) for ids in
                  vae.img_to_idx(edit.image.mul(2).sub(1).to(vae.quant_conv.weight.dtype), scale_ids)]
        keep = [k.expand(B, -1) for k in scale_keep_masks(~edit.regenerate, [var.patch_nums[si] for si in scale_ids])]

    cond_BD = var.class_emb(torch.cat((label_B, torch.full_like(label_B, var.num_classes))))
    cond = var.block_cond(cond_BD)
    x_BLC = var.sos(cond_BD) + var.lvl_pos(slice(0, var.first_l))
    f_hat = torch.zeros(B, vae.Cvae, H, H, device=device)
    graphs = var.scale_graphs(B, scale_ids) if resolve_cuda_graphs(var, cuda_graphs) else None
    caches = None if graphs else new_caches(var, 2 * B, scale_ids)
    owner = object()  # this generation, to the graphs it shares with any other generation of the model
    for j, si in enumerate(scale_ids):
        t0 = time.perf_counter()
        pn, ratio = var.patch_nums[si], si / (K - 1) if K > 1 else 0.0
        if graphs:
            logits_2BlV = graphs.run(owner, j, x_BLC, cond_BD)
        else:
            for block, cache in zip(var.blocks, caches, strict=True):
                x_BLC = block(x_BLC, cond, None, cache)
            logits_2BlV = var.get_logits(x_BLC, cond_BD)
        t = cfg * ratio
        guided_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]
        logits_BlV = guided_BlV / temperature if temperature != 1.0 else guided_BlV.clone()
        idx_Bl = sample_top_k_top_p_(logits_BlV, top_k, top_p, rng)
        if more_smooth:  # MaskGIT-style soft codes: visual quality only, consumes RNG after the multinomial
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            h_BlC = gumbel_softmax(logits_BlV.mul(1 + ratio), tau, rng) @ quant.embedding.weight.float()
        else:
            h_BlC = quant.embedding(idx_Bl).float()
        h_BChw = h_BlC.transpose(1, 2).reshape(B, vae.Cvae, pn, pn)
        if edit:  # the notebook's replace_embedding: the image's own codes where kept
            m_B1hw = keep[j].view(B, 1, pn, pn).int()
            gt_BChw = quant.embedding(gt_idx[j]).float().transpose(1, 2).reshape(B, vae.Cvae, pn, pn)
            h_BChw = gt_BChw * m_B1hw + h_BChw * (1 - m_B1hw)
            idx_Bl = torch.where(keep[j], gt_idx[j], idx_Bl)
        f_hat.add_(quant.upsample_phi(h_BChw, si, H))
        if j + 1 < len(scale_ids):
            nxt = scale_ids[j + 1]
            x_BLC = var.embed_next(quant.downsample(f_hat, var.patch_nums[nxt]), nxt).repeat(2, 1, 1)
        if not preview:
            image = None
        elif preview == "latent" and j + 1 < len(scale_ids):
            image = vae.latent_preview(f_hat)
        else:
            image = vae.preview(f_hat, pn if preview == "fast" else None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield VARStep(step=j, num_steps=len(scale_ids), scale=si, patch_size=pn, tokens=idx_Bl, logits=guided_BlV,
                      f_hat=f_hat.clone(), image=image, seconds=time.perf_counter() - t0, labels=label_B, seed=seed,
                      temperature=shown_temperature, kept=keep[j] if edit else None)


class VARPipeline(Pipeline):
    """A multi-scale VQ-VAE (``tokenizer``, alias ``vae``) and a VAR transformer (``model``, alias ``var``).
    ``stream`` yields one :class:`VARStep` per scale; ``generate`` returns images ``[B, 3, H, W]`` in [0, 1]."""

    kind = "var"
    family = "VAR"
    step_name = "scale"
    legend = ("The current scale's token map at its own resolution, one colour per code (a PCA of the codebook: "
              "similar codes, similar colours).")
    uncertainty_legend = ("The probability of the drawn code at every position of this scale, after CFG and "
                          "temperature (purple 0 → yellow 1).")
    can_edit = True

    def __init__(self, vae: VQVAE, var: VAR, class_names: list[str] | None = None, defaults: dict | None = None):
        if tuple(vae.cfg.patch_nums) != tuple(var.patch_nums):
            raise ValueError(f"tokenizer scales {vae.cfg.patch_nums} differ from the transformer's {var.patch_nums}")
        super().__init__(vae, var, class_names, defaults)

    vae = property(lambda self: self.tokenizer)
    var = property(lambda self: self.model)

    @property
    def scales(self) -> list[int]:
        return list(self.var.patch_nums)

    def controls(self) -> list[Control]:
        d, V = self.defaults, self.var.cfg.vocab_size
        return [
            Control("scales", "multi", list(d.get("scales") or self.scales), "Scales",
                    "token-map sizes to generate: start with the first, skip any others", choices=tuple(self.scales)),
            Control("cfg", "float", d.get("cfg", 1.5), "CFG", "guidance, ramped from 0 at the first scale to this "
                    "at the last", 0.0, 20.0, 0.1),
            Control("temperature", "float", d.get("temperature", 1.0), "Temperature",
                    "logits divided by it before top-k/top-p; 0 = greedy", 0.0, 5.0, 0.05),
            Control("top_k", "int", d.get("top_k", 0), "Top-k", f"keep the k best codes (0 = off, at most {V})",
                    0, V, 1),
            Control("top_p", "float", d.get("top_p", 0.0), "Top-p", "keep the smallest set of codes with this "
                    "much probability (0 = off)", 0.0, 1.0, 0.01),
            Control("more_smooth", "bool", d.get("more_smooth", False), "More smooth",
                    "Gumbel-softmax soft codes (visual quality only)"),
            preview_control(d),
        ]

    def settings_note(self, scales=None, **settings) -> str:
        ids = check_scales(None if scales is None else sorted(int(s) for s in scales), self.scales)
        return f"{len(ids)} scales · {sum(self.scales[i] ** 2 for i in ids)} tokens"

    def status(self, step: VARStep) -> str:
        return (f"scale {step.step + 1}/{step.num_steps} · {step.patch_size}×{step.patch_size} · "
                f"{step.seconds * 1e3:.0f} ms")

    def token_view(self, step: VARStep, target: int = 256):
        if getattr(self, "_colors", (None,))[0] is not self.vae.quantize.embedding.weight:
            weight = self.vae.quantize.embedding.weight
            self._colors = (weight, render.codebook_colors(weight))
        return render.var_token_view(step.tokens, self._colors[1], target)

    def token_stats(self, step: VARStep) -> TokenStats:
        return TokenStats.from_logits(step.logits, step.tokens, (step.patch_size, step.patch_size),
                                      "after CFG and temperature, before top-k/top-p", step.temperature,
                                      active_BN=None if step.kept is None else ~step.kept)

    def _sample(self, **kwargs) -> Iterator[VARStep]:
        return stream_var(self.var, self.vae, **kwargs)

    def decode(self, step: VARStep) -> torch.Tensor:
        return self.vae.preview(step.f_hat)


# -- the seed API (Edifice.Generative.VAR in Python) --------------------------------------------------------
def _ch_mult(downsample: int) -> tuple[int, ...]:
    levels = downsample.bit_length()  # downsample = 2 ** (levels - 1)
    return (1,) + (1, 2, 2, 4)[4 - (levels - 1):] if levels > 1 else (1,)


def build_tokenizer(image_size: int = 256, scales: Sequence[int] = (1, 2, 4, 8, 16), codebook_size: int = 1024,
                    embed_dim: int = 256, in_channels: int = 3, ch: int = 128, **kwargs) -> VQVAE:
    """The multi-scale VQ-VAE: ``image_size / scales[-1]`` must be a power of two (the conv downsampling);
    ``embed_dim`` is the code (latent) width. Unlike Edifice's docs there is one codebook shared by all
    scales, as in the VAR paper. Encode with ``img_to_idx``, decode with ``idx_to_img``."""
    scales = tuple(scales)
    ratio = image_size // scales[-1]
    if image_size % scales[-1] or ratio & (ratio - 1):
        raise ValueError(f"image_size {image_size} / last scale {scales[-1]} must be a power of two")
    cfg = VQVAEConfig(vocab_size=codebook_size, z_channels=embed_dim, ch=ch, ch_mult=_ch_mult(ratio),
                      in_channels=in_channels, patch_nums=scales, **kwargs)
    return VQVAE(cfg)


def build(hidden_size: int = 512, num_layers: int = 12, num_heads: int = 8, mlp_ratio: float = 4.0,
          scales: Sequence[int] = (1, 2, 4, 8, 16), codebook_size: int = 1024, dropout: float = 0.1,
          num_classes: int = 1000, embed_dim: int = 256, **kwargs) -> VAR:
    """The VAR transformer (seed option names; ``embed_dim`` is the tokenizer's code width). It is
    initialised for training with the official scheme."""
    cfg = VARConfig(vocab_size=codebook_size, z_channels=embed_dim, num_classes=num_classes, depth=num_layers,
                    embed_dim=hidden_size, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_rate=dropout,
                    patch_nums=tuple(scales), **kwargs)
    return VAR(cfg).init_weights()


def next_scale_prediction(model: VAR | VARPipeline, tokens_so_far: Sequence[torch.Tensor], scale_idx: int,
                          labels: torch.Tensor, tokenizer: VQVAE | None = None) -> torch.Tensor:
    """Logits ``[B, pn*pn, V]`` **of scale ``scale_idx``** given the token maps of scales ``0..scale_idx-1``.

    Edifice's code is off by one here: its documentation says ``scale_idx`` is the scale to predict but it
    returns the logits of ``scale_idx + 1``. We return what the documentation says. Pass a pipeline, or a
    transformer plus its ``tokenizer`` (needed to turn tokens into the next-scale input).
    """
    var, vae = (model.var, model.vae) if isinstance(model, VARPipeline) else (model, tokenizer)
    if not 0 <= scale_idx < len(var.patch_nums):
        raise ValueError(f"scale_idx must be in 0..{len(var.patch_nums) - 1}, got {scale_idx}")
    if len(tokens_so_far) != scale_idx:
        raise ValueError(f"predicting scale {scale_idx} needs the {scale_idx} coarser token maps, "
                         f"got {len(tokens_so_far)}")
    ids = list(range(scale_idx + 1))
    x = vae.quantize.idx_to_var_input([*tokens_so_far, None], ids) if scale_idx > 0 else None
    return var(labels, x, ids)[:, -var.patch_nums[scale_idx] ** 2:]


def total_tokens(scales: Sequence[int] = (1, 2, 4, 8, 16)) -> int:
    """Number of tokens in the pyramid: sum of pn^2 (341 for the default scales)."""
    return sum(s * s for s in scales)


def recommended_defaults() -> dict:
    """Settings of the official VAR-d16 (310M, ImageNet 256 px) and the sampling of its README's FID recipe:
    ``build_tokenizer(**d["tokenizer"])``, ``build(**d["model"])``, ``pipeline.generate(**d["sampling"])``."""
    return {
        "tokenizer": dict(image_size=256, scales=PATCH_NUMS_256, codebook_size=4096, embed_dim=32, ch=160),
        "model": dict(hidden_size=1024, num_layers=16, num_heads=16, mlp_ratio=4.0, scales=PATCH_NUMS_256,
                      codebook_size=4096, dropout=0.0, num_classes=1000, embed_dim=32),
        "sampling": dict(cfg=1.5, top_k=900, top_p=0.96, more_smooth=False),
    }
