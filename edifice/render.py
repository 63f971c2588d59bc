"""Turn streamed step records into pictures a person can read (PIL only, no UI toolkit).

- :func:`image_grid`: a batch ``[B, 3, H, W]`` in [0, 1] side by side, small images upscaled by an integer
  factor with nearest-neighbour so every pixel stays crisp.
- :func:`var_token_view`: the token map of the current VAR scale at its own pn x pn resolution, each code
  coloured by a fixed 3-D projection (PCA) of the codebook, so similar codes get similar colours.
- :func:`mar_token_view`: the MAR reveal map: hidden positions dark, revealed ones coloured by the
  confidence they were chosen with, the positions revealed in this step outlined in white.
- :func:`latent_token_view`: the reveal map of MAR with diffusion head: unknown positions dark, known tokens
  coloured by a fixed projection of their latent channels, the positions filled in this step outlined in white.
- :func:`uncertainty_view`: one number per token position of a :class:`~edifice.pipeline.TokenStats` (the
  probability of the drawn token, an entropy, a time) on the same colour ramp, positions without one dark.
- :func:`filmstrip`: thumbnails of all steps so far in one image (one payload per update, whatever the count).
- :func:`save_animation`: the whole decode as an animated GIF or WebP, one frame per step.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HIDDEN_RGB = (38, 38, 46)
NEW_RGB = (255, 255, 255)


def upscale_factor(size: int, target: int) -> int:
    return max(1, math.ceil(target / size))


def image_grid(images_B3HW: torch.Tensor, target: int = 256, gap: int = 4) -> Image.Image:
    """Batch in [0, 1] -> one RGB image, images in a row, each upscaled to at least ``target`` pixels."""
    arr = (images_B3HW.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    B, H, W, _ = arr.shape
    k = upscale_factor(max(H, W), target)
    tiles = [np.kron(a, np.ones((k, k, 1), dtype=np.uint8)) if k > 1 else a for a in arr]
    return _row(tiles, gap)


def _row(tiles: list[np.ndarray], gap: int, background: int = 255) -> Image.Image:
    h = max(t.shape[0] for t in tiles)
    w = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    canvas = np.full((h, w, 3), background, dtype=np.uint8)
    x = 0
    for t in tiles:
        canvas[: t.shape[0], x: x + t.shape[1]] = t
        x += t.shape[1] + gap
    return Image.fromarray(canvas)


def filmstrip(thumbs: list[Image.Image], per_row: int = 16, gap: int = 2) -> Image.Image:
    """Thumbnails of every step so far, left to right, wrapping after ``per_row``."""
    w, h = thumbs[0].size
    rows = math.ceil(len(thumbs) / per_row)
    cols = min(len(thumbs), per_row)
    sheet = Image.new("RGB", (cols * (w + gap) - gap, rows * (h + gap) - gap), (255, 255, 255))
    for i, t in enumerate(thumbs):
        sheet.paste(t, ((i % per_row) * (w + gap), (i // per_row) * (h + gap)))
    return sheet


def codebook_colors(codebook_VC: torch.Tensor) -> np.ndarray:
    """RGB ``[V, 3]`` uint8 for every code: the codebook projected on its first three principal axes."""
    x = codebook_VC.detach().float().cpu()
    x = x - x.mean(0, keepdim=True)
    q = min(3, x.shape[1], x.shape[0])
    _, _, v = torch.pca_lowrank(x, q=q, center=False)
    proj = x @ v[:, :q]
    if q < 3:
        proj = torch.cat([proj, proj.new_zeros(x.shape[0], 3 - q)], dim=1)
    lo, hi = proj.min(0).values, proj.max(0).values
    rgb = (proj - lo) / (hi - lo).clamp_min(1e-8)
    return (rgb * 205 + 40).round().byte().numpy()


def var_token_view(tokens_Bl: torch.Tensor, colors_V3: np.ndarray, target: int = 256, gap: int = 4) -> Image.Image:
    """Token ids ``[B, pn*pn]`` of one scale -> coloured pn x pn grids, upscaled crisply to ~``target`` px."""
    B, l = tokens_Bl.shape
    pn = math.isqrt(l)
    ids = tokens_Bl.detach().cpu().numpy().reshape(B, pn, pn)
    k = upscale_factor(pn, target)
    return _row([np.kron(colors_V3[i], np.ones((k, k, 1), dtype=np.uint8)) for i in ids], gap)


def heat(x: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1] -> RGB uint8 on a dark-blue -> teal -> yellow ramp (perceptually ordered)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    frac = (pos - i)[..., None]
    return (stops[i] * (1 - frac) + stops[i + 1] * frac).round().astype(np.uint8)


def mar_token_view(mask_BL: torch.Tensor, confidence_BL: torch.Tensor, revealed_BL: torch.Tensor,
                   target: int = 256, gap: int = 4) -> Image.Image:
    """Reveal map of a MAR step: hidden = dark, revealed = confidence heat map, revealed now = white outline."""
    B, L = mask_BL.shape
    side = math.isqrt(L)
    conf = confidence_BL.detach().float().cpu().numpy().reshape(B * L)
    return _reveal_map(heat(conf).reshape(B, side, side, 3), mask_BL, revealed_BL, target, gap)


def latent_token_view(tokens_BLC: torch.Tensor, mask_BL: torch.Tensor, revealed_BL: torch.Tensor,
                      target: int = 256, gap: int = 4) -> Image.Image:
    """Reveal map of a continuous-token MAR step: each known token's C channels projected on three fixed
    directions (a seeded random orthonormal basis, the same for every step and run) and squashed by tanh, so
    similar tokens get similar colours; unknown = dark, filled in this step = white outline."""
    B, L, C = tokens_BLC.shape
    side = math.isqrt(L)
    basis_C3 = torch.linalg.qr(torch.randn(C, 3, generator=torch.Generator().manual_seed(0)))[0]
    proj = tokens_BLC.detach().float().cpu() @ basis_C3 * math.sqrt(C / 3)
    rgb = (proj.tanh().mul(0.5).add(0.5) * 215 + 40).round().byte().numpy()
    return _reveal_map(rgb.reshape(B, side, side, 3), mask_BL, revealed_BL, target, gap)


def uncertainty_view(stats, target: int = 256, gap: int = 4) -> Image.Image:
    """``stats.heat`` ``[B, rows * cols]`` in [0, 1] as heat maps (nan = dark), the batch side by side."""
    rows, cols = stats.grid
    heat_BN = stats.heat.detach().float().cpu().numpy()
    rgb = heat(np.nan_to_num(heat_BN, nan=0.0))
    rgb[np.isnan(heat_BN)] = HIDDEN_RGB
    k = upscale_factor(max(rows, cols), target)
    return _row([np.kron(t.reshape(rows, cols, 3), np.ones((k, k, 1), dtype=np.uint8)) for t in rgb], gap)


def locate(grid: tuple[int, int], batch: int, x: float, y: float, target: int = 256, gap: int = 4
           ) -> tuple[int, int, int] | None:
    """The (image, row, col) under pixel (x, y) of a token view or uncertainty view drawn for ``target`` with
    ``gap`` between the images (the layout of :func:`var_token_view`, :func:`mar_token_view`,
    :func:`uncertainty_view`); None in a gap or outside."""
    rows, cols = grid
    k = upscale_factor(max(rows, cols), target)
    b, rest = divmod(int(x), cols * k + gap)
    row, col = int(y) // k, rest // k
    if not (0 <= b < batch and rest < cols * k and 0 <= row < rows and 0 <= col < cols):
        return None
    return b, row, col


def _reveal_map(rgb_BSS3: np.ndarray, mask_BL: torch.Tensor, revealed_BL: torch.Tensor, target: int,
                gap: int) -> Image.Image:
    B, side = rgb_BSS3.shape[:2]
    k = upscale_factor(side, target)
    hidden = mask_BL.detach().cpu().numpy().reshape(B, side, side)
    new = revealed_BL.detach().cpu().numpy().reshape(B, side, side)
    tiles = []
    for b in range(B):
        rgb = rgb_BSS3[b].copy()
        rgb[hidden[b]] = HIDDEN_RGB
        img = Image.fromarray(np.kron(rgb, np.ones((k, k, 1), dtype=np.uint8)))
        if k >= 4:
            draw = ImageDraw.Draw(img)
            for y, x in zip(*np.nonzero(new[b]), strict=True):
                draw.rectangle([x * k, y * k, (x + 1) * k - 1, (y + 1) * k - 1], outline=NEW_RGB, width=max(1, k // 8))
        tiles.append(np.asarray(img))
    return _row(tiles, gap)


def save_animation(frames: list[Image.Image], path: str | Path, seconds_per_frame: float = 0.4,
                   hold_last: float = 1.5) -> Path:
    """Write frames as an animated GIF or WebP (by the file suffix), looping, the last frame held longer."""
    path = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    durations = [round(seconds_per_frame * 1000)] * (len(frames) - 1) + [round(hold_last * 1000)]
    fmt = {".gif": "GIF", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"animation format must be .gif or .webp, got {path.suffix!r}")
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=durations, loop=0, **extra)
    return path
