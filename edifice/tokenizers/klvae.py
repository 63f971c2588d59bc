"""The KL-regularised autoencoder MAR generates in: LDM's "KL-f16" recipe, trained by the MAR authors on ImageNet.

An image ``[B, 3, H, W]`` in [-1, 1] becomes a diagonal Gaussian over a latent ``[B, embed_dim, H/16, W/16]``
(``encode``); ``decode`` maps a latent back to an image in [-1, 1]. MAR's tokens are latents multiplied by
``scale`` = 0.2325 (1 / std of the KL-16 latents over ImageNet, no mean shift), so images are
``decode(tokens / scale)``: :meth:`KLVAE.tokens_to_image` does that and maps to [0, 1].

Parameter names are the official ones (``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv``; LDM
attention with separate ``q``/``k``/``v``): the Hub's ``kl16.safetensors`` and the state dict inside the
authors' ``kl16.ckpt`` load with ``strict=True``. The official class hard-codes ``ch=128, num_res_blocks=2``;
here both are settings (the golden tests use a small one). Attention: the encoder has it at its last level
(where LDM's ``attn_resolutions=(16,)`` puts it for 256 px) and in its middle block; the decoder only in its
middle block (the authors removed the up-level attention to save memory).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import latent_rgb
from .layers import Decoder, Encoder


@dataclass
class KLVAEConfig:
    embed_dim: int = 16  # latent channels (MAR's token channels per patch)
    z_channels: int = 16  # channels between the conv stacks and the 1x1 quant convs
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # 5 levels: stride 16
    num_res_blocks: int = 2
    in_channels: int = 3
    using_sa: bool = True  # attention at the encoder's last level
    image_size: int = 256  # what the paired generator makes (the VAE itself is fully convolutional)
    scale: float = 0.2325  # token = latent * scale

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)

    @property
    def stride(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


class KLVAE(nn.Module):
    def __init__(self, cfg: KLVAEConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or KLVAEConfig(**kwargs)
        common = dict(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
                      in_channels=cfg.in_channels, fused_qkv=False)
        self.encoder = Encoder(z_channels=2 * cfg.z_channels, using_sa=cfg.using_sa, **common)
        self.decoder = Decoder(z_channels=cfg.z_channels, using_sa=False, **common)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (clamped to [-30, 20]) ``[B, embed_dim, H/16, W/16]`` each."""
        mean, logvar = self.quant_conv(self.encoder(img_B3HW)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def sample(self, img_B3HW: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A latent drawn from the posterior, ``mean + std * noise`` (noise from ``generator``)."""
        mean, logvar = self.encode(img_B3HW)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z_BEhw: torch.Tensor) -> torch.Tensor:
        """Latent -> image in [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(z_BEhw))

    def latent_preview(self, z_BEhw: torch.Tensor) -> torch.Tensor:
        """Near-free preview ``[B, 3, H, W]`` in [0, 1] of a latent: a linear latent -> RGB map (see
        :mod:`.latent_rgb`), fitted on first use to decodes of random 8x8 latents (tokens ~ N(0, 1))."""
        def sample(gen):
            z = torch.randn(32, self.cfg.embed_dim, 8, 8, generator=gen, device=gen.device) / self.cfg.scale
            return z, self.decode(z).add(1).div(2).clamp(0, 1)

        return latent_rgb.apply(latent_rgb.fitted(self, sample), z_BEhw, z_BEhw.shape[-1] * self.cfg.stride)

    def tokens_to_image(self, tokens_BEhw: torch.Tensor, latent_size: int | None = None) -> torch.Tensor:
        """MAR tokens (scaled latents) -> image ``[B, 3, H, W]`` in [0, 1]. ``latent_size`` smaller than the
        token map decodes an area-downsampled latent (cheaper, blurrier) and upsamples the picture to full size."""
        z = tokens_BEhw.float() / self.cfg.scale
        h = z.shape[-1]
        if latent_size is not None and latent_size < h:
            z = F.interpolate(z, size=(latent_size, latent_size), mode="area")
        img = self.decode(z).add(1).div(2).clamp(0, 1)
        if img.shape[-1] != h * self.cfg.stride:
            img = F.interpolate(img, size=(h * self.cfg.stride,) * 2, mode="bilinear", align_corners=False)
        return img
