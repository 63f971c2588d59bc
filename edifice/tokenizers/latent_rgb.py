"""A near-free preview: one linear map from a latent's channels to RGB, fitted to the tokenizer's own decoder.

Decoding a preview costs a full decoder pass; on a CPU that is as much as a whole generation step of a large
model, or, for small models, most of a step in fixed per-layer costs. The "approximate" previews of diffusion
UIs use instead a linear map latent -> colour at latent resolution, upsampled. Here the map (``C + 1`` by 3,
with a bias) is fitted once per tokenizer by least squares: random latents of the tokenizer's kind are
decoded at a small size and each latent position is paired with the mean colour of the pixels it decodes to.
Measured on the bundled emoji models (6 generations each, frames after the first quarter, compared at 8x8
with the exact decode of the same step): correlation 0.82 on average (median 0.87) for VAR and 0.75 for
MAR, with about two thirds of the exact decode's contrast. It shows where the colours are, washed out, without
detail; the last step is always decoded exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def fit(latents_BChw: torch.Tensor, images_B3HW: torch.Tensor) -> torch.Tensor:
    """Least-squares ``[C + 1, 3]`` map from a latent vector (plus 1) to the mean colour of its pixels."""
    B, C, h, w = latents_BChw.shape
    target = F.adaptive_avg_pool2d(images_B3HW.float(), (h, w)).permute(0, 2, 3, 1).reshape(-1, 3)
    x = latents_BChw.float().permute(0, 2, 3, 1).reshape(-1, C)
    x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    return torch.linalg.lstsq(x.cpu().double(), target.cpu().double()).solution.float()


def apply(weight: torch.Tensor, latent_BChw: torch.Tensor, image_size: int) -> torch.Tensor:
    """Image ``[B, 3, image_size, image_size]`` in [0, 1] from a latent, through a map from :func:`fit`."""
    w = weight.to(latent_BChw.device)
    rgb = torch.einsum("bchw,cd->bdhw", latent_BChw.float(), w[:-1]) + w[-1].view(1, 3, 1, 1)
    return F.interpolate(rgb, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)


def fitted(module: torch.nn.Module, sample: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
           ) -> torch.Tensor:
    """The module's map, fitted on first use from ``sample(generator) -> (latents, images in [0, 1])`` and kept
    on the module (not in its state dict)."""
    weight = getattr(module, "_latent_rgb", None)
    if weight is None:
        device = next(module.parameters()).device
        with torch.inference_mode():
            weight = fit(*sample(torch.Generator(device).manual_seed(0)))
        module._latent_rgb = weight
    return weight
