"""Convolutional encoder/decoder of the VQGAN / LDM family, used by VAR's multi-scale VQ-VAE and MAR's KL-16 VAE.

Names follow the taming/LDM layout (``down.{i}.block.{j}.norm1``, ``mid.attn_1``, ``up.{i}.upsample.conv``,
``norm_out``, ``conv_out``). The attention block has VAR's fused 1x1 ``qkv`` convolution or LDM's separate
``q``/``k``/``v`` (``fused_qkv=False``), so the official ``vae_ch160v4096z32.pth`` and MAR's ``kl16`` both load
as they are. Images are NCHW in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a fused 1x1 qkv convolution (VAR) or separate
    q, k, v convolutions (LDM, ``fused=False``)."""

    def __init__(self, channels: int, fused: bool = True):
        super().__init__()
        self.norm = Normalize(channels)
        if fused:
            self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        else:
            self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(h).reshape(B, 3, C, H * W).unbind(1)
        else:
            q, k, v = (conv(h).reshape(B, C, H * W) for conv in (self.q, self.k, self.v))
        attn_BNN = torch.bmm(q.transpose(1, 2), k).mul_(C ** -0.5).softmax(dim=2)
        h = torch.bmm(v, attn_BNN.transpose(1, 2)).view(B, C, H, W)
        return x + self.proj_out(h)


class Encoder(nn.Module):
    """Image ``[B, in_channels, H, W]`` -> latent ``[B, z_channels, H/2^(n-1), W/2^(n-1)]`` for n = len(ch_mult)."""

    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3, dropout: float = 0.0, using_sa: bool = True, using_mid_sa: bool = True,
                 fused_qkv: bool = True):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and using_sa:
                    attn.append(AttnBlock(block_in, fused_qkv))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in, fused_qkv) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[B, z_channels, h, w]`` -> image ``[B, in_channels, h*2^(n-1), w*2^(n-1)]``."""

    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3, dropout: float = 0.0, using_sa: bool = True, using_mid_sa: bool = True,
                 fused_qkv: bool = True):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in, fused_qkv) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and using_sa:
                    attn.append(AttnBlock(block_in, fused_qkv))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample2x(block_in)
            self.up.insert(0, up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, in_channels, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
