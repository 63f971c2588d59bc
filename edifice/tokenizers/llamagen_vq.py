"""LlamaGen's VQ-16 image tokenizer (FoundationVision/LlamaGen ``VQ_16``, ``vq_ds16_c2i.pt``), shared by the
LlamaGen c2i GPTs and Halton-MaskGIT.

An image ``[B, 3, H, W]`` in [-1, 1] becomes a ``[B, H/16, W/16]`` map of ids into a 16384 x 8 codebook; both
the encoder's latent vectors and the codebook rows are L2-normalised before the nearest-code search, and
decoding looks up the normalised rows. The blocks are the taming/LDM ones of :mod:`.layers` under LlamaGen's
names: ``encoder.conv_blocks.{i}.res.{j}`` / ``.attn.{j}`` / ``.downsample``, ``mid.{0,1,2}``, and a decoder
whose ``conv_blocks.0`` is the *lowest* resolution. The authors' checkpoint (``{'model': state_dict}``, with the
``quantize.codebook_used`` usage buffer) loads with ``strict=True``. ``VQModel`` hard-codes ``ch=128,
num_res_blocks=2``; here both are settings (the golden tests use a small one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import latent_rgb
from .layers import AttnBlock, Downsample2x, Normalize, ResnetBlock, Upsample2x


@dataclass
class LlamaGenVQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # encoder_ch_mult (= decoder_ch_mult in every released model)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_show_usage: bool = True  # the checkpoint carries the 65536-entry ``codebook_used`` buffer
    image_size: int = 256  # what the paired generator makes (the tokenizer itself is fully convolutional)

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class _Level(nn.Module):
    """One resolution of the encoder or decoder: ``res`` blocks, each followed by an ``attn`` block if any."""

    def __init__(self, block_in: int, block_out: int, n: int, attn: bool):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(block_in if j == 0 else block_out, block_out) for j in range(n))
        self.attn = nn.ModuleList(AttnBlock(block_out, fused=False) for _ in range(n if attn else 0))

    def forward(self, h):
        for j, res in enumerate(self.res):
            h = res(h)
            if self.attn:
                h = self.attn[j](h)
        return h


def _mid(channels: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels), AttnBlock(channels, fused=False),
                          ResnetBlock(channels, channels)])


class Encoder(nn.Module):
    def __init__(self, cfg: LlamaGenVQConfig):
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        self.conv_blocks = nn.ModuleList()
        for i in range(n):
            level = _Level(ch * ((1,) + mult)[i], ch * mult[i], cfg.num_res_blocks, attn=i == n - 1)
            if i != n - 1:
                level.downsample = Downsample2x(ch * mult[i])
            self.conv_blocks.append(level)
        self.mid = _mid(ch * mult[-1])
        self.norm_out = Normalize(ch * mult[-1])
        self.conv_out = nn.Conv2d(ch * mult[-1], cfg.z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: LlamaGenVQConfig):
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in)
        self.conv_blocks = nn.ModuleList()
        for j in range(n):  # j = 0 is the lowest resolution
            level = _Level(block_in, ch * mult[n - 1 - j], cfg.num_res_blocks + 1, attn=j == 0)
            block_in = ch * mult[n - 1 - j]
            if j != n - 1:
                level.upsample = Upsample2x(block_in)
            self.conv_blocks.append(level)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest code by L2 distance between unit vectors (``codebook_l2_norm=True`` in every released model)."""

    def __init__(self, cfg: LlamaGenVQConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        if cfg.codebook_show_usage:  # training statistics only; kept so the authors' file loads strictly
            self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> torch.Tensor:
        """The normalised codebook ``[V, C]``: what encoding compares against and decoding looks up."""
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def forward(self, h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(straight-through quantised latent ``[B, C, h, w]``, ids ``[B, h, w]``)."""
        z_BhwC = F.normalize(h_BChw.permute(0, 2, 3, 1), p=2, dim=-1)
        z_NC, e_VC = z_BhwC.reshape(-1, z_BhwC.shape[-1]), self.codebook()
        d_NV = z_NC.pow(2).sum(1, keepdim=True) + e_VC.pow(2).sum(1) - 2 * z_NC @ e_VC.t()
        idx_N = d_NV.argmin(1)
        zq_BhwC = z_BhwC + (e_VC[idx_N].view_as(z_BhwC) - z_BhwC)
        return zq_BhwC.permute(0, 3, 1, 2), idx_N.view(z_BhwC.shape[:3])


class LlamaGenVQ(nn.Module):
    """Images in [-1, 1] <-> code ids; ``decode_code`` accepts ``[B, h, w]`` or raster ``[B, h*w]`` (square)."""

    def __init__(self, cfg: LlamaGenVQConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or LlamaGenVQConfig(**kwargs)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    @property
    def vocab_size(self) -> int:
        return self.cfg.codebook_size

    def encode(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(quantised latent ``[B, C, h, w]``, ids ``[B, h, w]``) of images in [-1, 1]."""
        return self.quantize(self.quant_conv(self.encoder(img_B3HW)))

    def decode(self, quant_BChw: torch.Tensor) -> torch.Tensor:
        """Latent -> image in [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(quant_BChw))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w]`` or ``[B, h*w]`` -> latent ``[B, C, h, w]`` (normalised codebook rows)."""
        if codes.ndim == 2:
            h = round(codes.shape[1] ** 0.5)
            codes = codes.view(codes.shape[0], h, h)
        return self.quantize.codebook()[codes.long()].permute(0, 3, 1, 2)

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embed(codes))

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(img_B3HW)[0])

    def preview(self, latent_BChw: torch.Tensor, latent_size: int | None = None) -> torch.Tensor:
        """Latent -> image ``[B, 3, H, W]`` in [0, 1]. ``latent_size`` smaller than the map decodes an
        area-downsampled latent (a quarter of the work at half size, blurrier) and upsamples the picture."""
        h = latent_BChw.shape[-1]
        z = latent_BChw.float()
        if latent_size is not None and latent_size < h:
            z = F.interpolate(z, size=(latent_size, latent_size), mode="area")
        img = self.decode(z).add(1).div(2).clamp(0, 1)
        if img.shape[-1] != h * self.cfg.stride:
            img = F.interpolate(img, size=(h * self.cfg.stride,) * 2, mode="bilinear", align_corners=False)
        return img

    def latent_preview(self, latent_BChw: torch.Tensor) -> torch.Tensor:
        """Near-free preview ``[B, 3, H, W]`` in [0, 1]: a linear latent -> RGB map (see :mod:`.latent_rgb`),
        fitted on first use to decodes of random 8x8 code maps."""
        def sample(gen):
            z = self.embed(torch.randint(self.vocab_size, (32, 8, 8), generator=gen, device=gen.device))
            return z, self.decode(z).add(1).div(2).clamp(0, 1)

        return latent_rgb.apply(latent_rgb.fitted(self, sample), latent_BChw, latent_BChw.shape[-1] * self.cfg.stride)
