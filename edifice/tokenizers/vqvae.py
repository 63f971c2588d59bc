"""VAR's VQ-VAE with the multi-scale residual quantizer (Tian et al. 2024, arXiv 2404.02905, Alg. 1-2).

One shared codebook quantizes a latent ``f`` [B, Cvae, h, w] into K token maps of growing size
``patch_nums = (1, 2, ..., h)``: at scale k the residual ``f - f_hat`` is area-downsampled to pn_k x pn_k,
snapped to its nearest code, the code map is bicubic-upsampled back to h x w, refined by a 3x3 conv
``phi`` (``phi(z) = (1 - r) z + r conv(z)``, r = 0.5) and added to ``f_hat``. Decoding sums the same terms.

With ``patch_nums=(h,)`` the same module is a plain single-scale VQ-VAE (used by the discrete MAR).

Scale subsets: every method takes optional ``scale_ids`` (indices into ``patch_nums``, strictly increasing).
Each chosen scale then uses exactly the phi conv it was trained with, so a sub-list reproduces "the same
model, some scales skipped". Images are NCHW in [-1, 1]. Names match ``vae_ch160v4096z32.pth``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import latent_rgb
from .layers import Decoder, Encoder


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    dropout: float = 0.0
    beta: float = 0.25  # commitment weight
    using_znorm: bool = False  # cosine instead of L2 nearest-code search
    quant_conv_ks: int = 3
    quant_resi: float = 0.5  # r in phi(z) = (1 - r) z + r conv(z); 0 disables phi
    share_quant_resi: int = 4  # number of phi convs shared across scales (0 = one per scale)
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    using_sa: bool = True
    using_mid_sa: bool = True

    def __post_init__(self):
        self.ch_mult, self.patch_nums = tuple(self.ch_mult), tuple(self.patch_nums)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def phi_index(si: int, num_scales: int, num_phi: int) -> int:
    """Which of ``num_phi`` shared phi convs scale ``si`` of ``num_scales`` uses (the official rule).

    The ticks and the argmin run in numpy float64 on purpose: for the 10-scale schedules two scales lie
    exactly half-way between ticks and float64 rounding decides them ([0,0,1,1,1,2,2,3,3,3]); float32 or
    exact arithmetic gives a different map and silently breaks the pretrained VAE.
    """
    ratio = si / (num_scales - 1) if num_scales > 1 else 0.0
    K = num_phi
    ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
    return int(np.argmin(np.abs(ticks - ratio)))


class Phi(nn.Conv2d):
    def __init__(self, channels: int, resi_ratio: float):
        super().__init__(channels, channels, 3, 1, 1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h_BChw):
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


class PhiPartiallyShared(nn.Module):
    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls


class MultiScaleQuantizer(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.vocab_size, self.Cvae, self.beta = cfg.vocab_size, cfg.z_channels, cfg.beta
        self.using_znorm = cfg.using_znorm
        self.patch_nums = cfg.patch_nums
        n_phi = cfg.share_quant_resi or len(cfg.patch_nums)
        make = (lambda: Phi(cfg.z_channels, cfg.quant_resi)) if abs(cfg.quant_resi) > 1e-6 else nn.Identity
        self.quant_resi = PhiPartiallyShared(nn.ModuleList([make() for _ in range(n_phi)]))
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(cfg.patch_nums), cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self._phi_ids = [phi_index(si, len(cfg.patch_nums), n_phi) for si in range(len(cfg.patch_nums))]

    def phi(self, si: int) -> nn.Module:
        """The phi conv of trained scale ``si``."""
        return self.quant_resi.qresi_ls[self._phi_ids[si]]

    def scale_ids(self, scale_ids=None) -> list[int]:
        return list(range(len(self.patch_nums))) if scale_ids is None else list(scale_ids)

    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each row of ``z_NC``."""
        codebook_VC = self.embedding.weight.data
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(codebook_VC.T, dim=0), dim=1)
        d_NV = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(codebook_VC.square(), dim=1)
        d_NV.addmm_(z_NC, codebook_VC.T, alpha=-2, beta=1)
        return torch.argmin(d_NV, dim=1)

    def upsample_phi(self, h_BChw: torch.Tensor, si: int, H: int) -> torch.Tensor:
        """phi_si(bicubic_up(h)) at the full latent size H x H (no resize when already there)."""
        if h_BChw.shape[-1] != H:
            h_BChw = F.interpolate(h_BChw, size=(H, H), mode="bicubic")
        return self.phi(si)(h_BChw)

    def embed(self, idx_Bl: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, pn*pn]`` (row-major) -> code map ``[B, Cvae, pn, pn]``."""
        B, l = idx_Bl.shape
        pn = round(l ** 0.5)
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn)

    def f_to_idx(self, f_BChw: torch.Tensor, scale_ids=None, to_fhat: bool = False) -> list[torch.Tensor]:
        """Multi-scale residual quantization: ``[B, pn*pn]`` ids per scale (or the cumulative f_hat)."""
        B, C, H, W = f_BChw.shape
        f_rest, f_hat, out = f_BChw.detach().clone(), torch.zeros_like(f_BChw), []
        for si in self.scale_ids(scale_ids):
            pn = self.patch_nums[si]
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if pn != H else f_rest
            idx_N = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.upsample_phi(self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2), si, H)
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, pn * pn))
        return out

    def idx_to_fhat(self, idx_list: list[torch.Tensor], scale_ids=None, progressive: bool = False):
        """Sum of every scale's upsampled, phi-refined codes: f_hat ``[B, Cvae, H, W]`` (list if progressive)."""
        H = self.patch_nums[-1]
        f_hat = idx_list[0].new_zeros(idx_list[0].shape[0], self.Cvae, H, H, dtype=torch.float32)
        out = []
        for si, idx_Bl in zip(self.scale_ids(scale_ids), idx_list, strict=True):
            f_hat.add_(self.upsample_phi(self.embed(idx_Bl), si, H))
            if progressive:
                out.append(f_hat.clone())
        return out if progressive else f_hat

    def idx_to_var_input(self, idx_list: list[torch.Tensor], scale_ids=None) -> torch.Tensor:
        """Teacher-forcing input of the VAR transformer: for every scale after the first, the cumulative f_hat
        of the scales before it, area-downsampled to its size. ``[B, L - 1, Cvae]``."""
        ids = self.scale_ids(scale_ids)
        fhats = self.idx_to_fhat(idx_list[:-1], ids[:-1], progressive=True)
        return torch.cat([self.downsample(f, self.patch_nums[si]).flatten(2).transpose(1, 2)
                          for f, si in zip(fhats, ids[1:], strict=True)], dim=1)

    @staticmethod
    def downsample(f_hat: torch.Tensor, pn: int) -> torch.Tensor:
        return F.interpolate(f_hat, size=(pn, pn), mode="area") if f_hat.shape[-1] != pn else f_hat

    def forward(self, f_BChw: torch.Tensor, scale_ids=None):
        """Training: straight-through quantized latent, VQ loss (codebook + beta * commitment, averaged over
        scales) and the codebook hit counts ``[V]`` (for dead-code handling)."""
        B, C, H, W = f_BChw.shape
        f_BChw = f_BChw.float()
        f_no_grad = f_BChw.detach()
        f_rest, f_hat = f_no_grad.clone(), torch.zeros_like(f_no_grad)
        ids = self.scale_ids(scale_ids)
        loss, hits_V = 0.0, torch.zeros(self.vocab_size, device=f_BChw.device)
        for si in ids:
            pn = self.patch_nums[si]
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if pn != H else f_rest
            idx_N = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            hits_V += idx_N.bincount(minlength=self.vocab_size).float()
            h = self.upsample_phi(self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2), si, H)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + F.mse_loss(f_hat.data, f_BChw).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
        f_hat = (f_hat.data - f_no_grad).add_(f_BChw)
        return f_hat, loss / len(ids), hits_V


class VQVAE(nn.Module):
    """Encoder -> quant_conv -> multi-scale quantizer -> post_quant_conv -> decoder."""

    def __init__(self, cfg: VQVAEConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or VQVAEConfig(**kwargs)
        dd = dict(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks, z_channels=cfg.z_channels,
                  in_channels=cfg.in_channels, dropout=cfg.dropout, using_sa=cfg.using_sa,
                  using_mid_sa=cfg.using_mid_sa)
        self.encoder, self.decoder = Encoder(**dd), Decoder(**dd)
        self.quantize = MultiScaleQuantizer(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, 1, ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, 1, ks // 2)

    @property
    def Cvae(self) -> int:
        return self.cfg.z_channels

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> continuous latent f ``[B, Cvae, h, w]``."""
        return self.quant_conv(self.encoder(img_B3HW))

    def img_to_idx(self, img_B3HW: torch.Tensor, scale_ids=None) -> list[torch.Tensor]:
        return self.quantize.f_to_idx(self.encode(img_B3HW), scale_ids)

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent -> image in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def preview(self, f_hat: torch.Tensor, latent_size: int | None = None) -> torch.Tensor:
        """Latent -> image ``[B, 3, H, W]`` in [0, 1] at full size. With ``latent_size`` smaller than the latent,
        the latent is area-downsampled to it first and the small image upscaled with nearest-neighbour: the
        decoder's work falls with the square of the size (a cheap, blocky preview)."""
        if latent_size is None or latent_size == f_hat.shape[-1]:
            return self.fhat_to_img(f_hat).add(1).mul(0.5)
        small = self.fhat_to_img(self.quantize.downsample(f_hat, latent_size))
        return F.interpolate(small, size=self.cfg.image_size, mode="nearest").add(1).mul(0.5)

    def latent_preview(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Near-free preview ``[B, 3, H, W]`` in [0, 1]: a linear latent -> RGB map (see :mod:`.latent_rgb`),
        fitted on first use to decodes of 32 random f_hat: random codes on the first k scales (k drawn per
        sample, as a generation's partial sums are), area-downsampled to at most 8x8."""
        def sample(gen):
            pns, fs = self.cfg.patch_nums, []
            for k in torch.randint(1, len(pns) + 1, (32,), generator=gen, device=gen.device).tolist():
                ids = [torch.randint(0, self.vocab_size, (1, pn * pn), generator=gen, device=gen.device)
                       for pn in pns[:k]]
                fs.append(self.quantize.idx_to_fhat(ids, scale_ids=list(range(k))))
            f = self.quantize.downsample(torch.cat(fs), min(8, pns[-1]))
            return f, self.fhat_to_img(f).add(1).mul(0.5)

        return latent_rgb.apply(latent_rgb.fitted(self, sample), f_hat, self.cfg.image_size)

    def idx_to_img(self, idx_list: list[torch.Tensor], scale_ids=None, progressive: bool = False):
        f = self.quantize.idx_to_fhat(idx_list, scale_ids, progressive)
        return [self.fhat_to_img(x) for x in f] if progressive else self.fhat_to_img(f)

    def forward(self, img_B3HW: torch.Tensor, scale_ids=None):
        """Training pass: reconstruction in [-1, 1] (unclamped), VQ loss, codebook hits."""
        f_hat, vq_loss, hits = self.quantize(self.encode(img_B3HW), scale_ids)
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss, hits

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # The usage statistic is sized by the number of scales; a VAE trained with another schedule (e.g. the
        # 256 px file reused at 512 px) carries one of another length. It is not used for inference.
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = dict(state_dict)
            state_dict[key] = self.quantize.ema_vocab_hit_SV.new_zeros(self.quantize.ema_vocab_hit_SV.shape)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
