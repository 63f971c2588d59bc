"""Transformer building blocks shared by every model in edifice.

Parameter names follow the official VAR code (``mat_qkv``, ``q_bias``, ``zero_k_bias``, ``v_bias``,
``scale_mul_1H11``, ``proj``, ``fc1``, ``fc2``) so official checkpoints load without renaming; the discrete
MAR reuses the same modules with plain scaled dot-product attention. The official MAR (diffusion head) uses
timm's ``Block`` names instead (``attn.qkv``, ``attn.proj``, ``mlp.fc1``): :class:`Attention` and
:class:`Block` here.

Modules here are stateless at inference: the KV cache is an explicit :class:`KVCache` object handed in by the
sampler, so one model instance can serve concurrent generations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys and values of one attention layer, ``[B, H, length, head_dim]`` each, allocated once at the final
    length: ``extend`` writes the new tokens in place and returns views of everything seen so far. Fixed
    addresses make the sampler's steps capturable as CUDA graphs, and nothing is re-copied as the cache grows."""

    def __init__(self, batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype, device):
        self.k = torch.empty(batch, heads, length, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.len = 0

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.len + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache of {self.k.shape[2]} tokens cannot take {end}")
        self.k[:, :, self.len:end].copy_(k)
        self.v[:, :, self.len:end].copy_(v)
        self.len = end
        return self.k[:, :, :end], self.v[:, :, :end]


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (the key bias is fixed at zero, as in VAR).

    ``l2_norm=True`` is VAR's cosine attention: q and k are L2-normalised per head and q is multiplied by a
    learned per-head temperature ``exp(min(scale_mul_1H11, ln 100))`` (initialised to 4); the dot product is
    then not divided by sqrt(head_dim). ``l2_norm=False`` is standard ``softmax(q k^T / sqrt(head_dim))``.
    """

    def __init__(self, dim: int, num_heads: int, l2_norm: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        assert dim % num_heads == 0, f"width {dim} is not divisible by {num_heads} heads"
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.l2_norm = l2_norm
        if l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = self.head_dim ** -0.5
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x_BLC: torch.Tensor, attn_bias: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q_BHLc = F.normalize(q_BHLc, dim=-1).mul(scale_mul)
            k_BHLc = F.normalize(k_BHLc, dim=-1)
        if cache is not None:
            k_BHLc, v_BHLc = cache.extend(k_BHLc, v_BHLc)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q_BHLc.dtype)
        out = F.scaled_dot_product_attention(q_BHLc, k_BHLc, v_BHLc, attn_mask=attn_bias, scale=self.scale,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))


class Attention(nn.Module):
    """Multi-head self-attention with timm's names: one ``qkv`` projection with bias, then ``proj``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        assert dim % num_heads == 0, f"width {dim} is not divisible by {num_heads} heads"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        B, L, C = x_BLC.shape
        q, k, v = self.qkv(x_BLC).view(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, C))


class Block(nn.Module):
    """timm's pre-norm transformer block ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (exact GELU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = FFN(dim, int(dim * mlp_ratio), approximate="none")

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        x_BLC = x_BLC + self.attn(self.norm1(x_BLC))
        return x_BLC + self.mlp(self.norm2(x_BLC))


class FFN(nn.Module):
    """Two-layer MLP ``fc2(gelu(fc1(x)))``; VAR uses the tanh approximation of GELU."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, approximate: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


def sinusoidal_positions(length: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed sine/cosine position table ``[length, dim]`` (Vaswani et al.: interleaved sin at even, cos at odd)."""
    assert dim % 2 == 0, "sinusoidal positions need an even width"
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


def timestep_embedding(t_N: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT/ADM timestep features ``[N, dim]``: ``[cos(t f) | sin(t f)]`` with ``f_i = max_period^(-i / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_N.device) / half)
    args = t_N[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
