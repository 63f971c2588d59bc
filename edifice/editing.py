"""Editing: regenerate part of an image and keep the rest (inpainting, outpainting, class-conditional edits).

Every family's ``stream()`` / ``generate()`` takes the same pair of arguments:

- ``image``: what to edit, ``[B, 3, H, W]`` (or one ``[3, H, W]`` / ``[1, 3, H, W]`` image for the whole
  batch) as floats in [0, 1], or a PIL image, or a ``[H, W]`` / ``[H, W, C]`` / ``[B, H, W, C]`` array as
  image files give it. Modes are converted, never guessed: greyscale is repeated to RGB, an alpha channel
  (RGBA, LA, a palette with transparency) is composited on white, uint8 is divided by 255 and 16-bit
  (uint16, PIL ``I;16`` / ``I``) by 65535. The size must be the model's (``H = W = image_size``): resize or
  crop first, nothing is resized here.
- ``mask``: what to regenerate, **1 = regenerate, 0 = keep** (as in diffusers' inpainting pipelines),
  ``[h, w]`` for the whole batch or ``[B, h, w]`` (``[B, 1, h, w]`` too). Floats are read in [0, 1] and
  values >= 0.5 regenerate (diffusers' rule); uint8 masks and PIL masks are read as 0-255 (a PIL mask with
  an alpha channel, such as a brush layer, uses its alpha). A mask at the token grid (``h = w = grid``) is
  used as given. A mask at pixel resolution (``h = w = image_size``) is reduced to the token grid by the
  rule **a token is regenerated if any of its pixels is**: nothing painted survives, and a brush stroke
  that touches a token regenerates all of it.

Refused before any work, with what to do: an image or mask of the wrong size, shape, range or mode, a mask
that regenerates nothing, and one that regenerates every token (that is plain generation: drop ``image``
and ``mask``).

A family calls :func:`prepare_edit` with its image size and token grid and gets an :class:`Edit`: the
image in [0, 1] and the regenerate map at the token grid. It encodes the image with its tokenizer, holds
the kept tokens at the image's own at every step, and puts the kept map (``Edit.kept``, ``[B, N]`` bool,
row-major) in every step record's ``kept`` field. Class-conditional editing is ``labels``; plain in- and
outpainting is the unconditional class (``labels=-1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Edit:
    """A checked edit: ``image`` ``[b, 3, H, W]`` float32 in [0, 1] and ``regenerate`` ``[b', h, w]`` bool at the
    token grid (True = regenerate); each of b, b' is 1 (one image or mask for the whole batch) or the batch
    size. Encode ``image`` at its own batch (each image once) and broadcast the tokens."""

    image: torch.Tensor
    regenerate: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        """``[b, h * w]`` bool, True = the image's own token is kept (row-major, as step records' tokens)."""
        return ~self.regenerate.flatten(1)

    def batch_size(self, batch_size: int = 1) -> int:
        """The batch a sampler should run: the edit's own when it holds several images or masks and
        ``batch_size`` is left at 1, else ``batch_size`` (one image and mask then serve every item)."""
        b = max(self.image.shape[0], self.regenerate.shape[0])
        if b > 1 and batch_size not in (1, b):
            raise ValueError(f"the edit holds {b} images or masks but batch_size is {batch_size}: pass one image "
                             f"and mask for the whole batch, or {b} of each")
        return b if b > 1 else batch_size

    def fit_batch(self, kwargs: dict) -> None:
        """Set a sampler's ``kwargs["batch_size"]`` to the batch it should run (:meth:`batch_size`) and refuse
        ``kwargs["labels"]`` (a list of labels) that the edit's images or masks do not fit."""
        kwargs["batch_size"] = self.batch_size(kwargs.get("batch_size", 1))
        labels = kwargs.get("labels")
        if labels is not None and not isinstance(labels, int):
            self.check_batch(len(labels))

    def check_batch(self, batch_size: int) -> None:
        """Refuse a batch (e.g. as many items as ``labels``) that the edit's images or masks do not fit."""
        b = max(self.image.shape[0], self.regenerate.shape[0])
        if b not in (1, batch_size):
            raise ValueError(f"the edit holds {b} images or masks but there are {batch_size} labels: pass one "
                             f"label per image, or one image and mask for the whole batch")


def prepare_edit(image, mask, *, image_size: int, grid: int, device=None) -> Edit | None:
    """Check and normalise ``image`` and ``mask`` (see the module docstring) for a model that makes
    ``image_size`` x ``image_size`` images from a ``grid`` x ``grid`` token map; None when neither is given."""
    if image is None and mask is None:
        return None
    if image is None:
        raise ValueError("a mask needs the image to edit: pass image= too")
    if mask is None:
        raise ValueError("an image needs a mask of what to regenerate (1 = regenerate, 0 = keep): pass mask= too")
    img = to_image_tensor(image)
    if tuple(img.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"the image is {img.shape[-1]}x{img.shape[-2]} pixels but this model edits "
                         f"{image_size}x{image_size} images: resize or crop it first")
    regen = token_mask(mask, image_size, grid)
    if img.shape[0] not in (1, regen.shape[0]) and regen.shape[0] != 1:
        raise ValueError(f"{img.shape[0]} images but {regen.shape[0]} masks: pass one mask per image, or one for all")
    for b, r in enumerate(regen):
        which = f" (image {b + 1})" if regen.shape[0] > 1 else ""
        if not r.any():
            raise ValueError(f"the mask{which} regenerates nothing: paint the region to regenerate with 1 "
                             "(uint8 and PIL masks are read as 0-255, 255 = regenerate)")
        if r.all():
            raise ValueError(f"the mask{which} regenerates every token: that is plain generation; leave out image "
                             "and mask, or keep some of the image")
    return Edit(img.to(device), regen.to(device))


def to_image_tensor(image) -> torch.Tensor:
    """``image`` as ``[b, 3, H, W]`` float32 in [0, 1] on the CPU (or its own device, for a tensor)."""
    if hasattr(image, "mode") and hasattr(image, "getbands"):  # a PIL image
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        x = _scaled(torch.from_numpy(np.ascontiguousarray(image)), "image")
        if x.ndim == 2:  # [H, W] greyscale
            x = x[None, None]
        elif x.ndim in (3, 4):  # [H, W, C] or [B, H, W, C], as image files give them
            x = (x[None] if x.ndim == 3 else x).permute(0, 3, 1, 2)
        else:
            raise ValueError(f"an image array must be [H, W], [H, W, C] or [B, H, W, C], got {list(image.shape)}")
    elif torch.is_tensor(image):
        x = _scaled(image.detach(), "image")
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            x = x[None]
        elif x.ndim != 4:
            raise ValueError(f"an image tensor must be [3, H, W] or [B, 3, H, W], got {list(image.shape)}")
    else:
        raise ValueError(f"image must be a tensor [B, 3, H, W] in [0, 1], a PIL image or an array, got "
                         f"{type(image).__name__}")
    return _rgb(x)


def token_mask(mask, image_size: int, grid: int) -> torch.Tensor:
    """``mask`` (1 = regenerate) as ``[b, grid, grid]`` bool: used as given at the token grid; at pixel
    resolution a token is regenerated if any of its pixels is."""
    if hasattr(mask, "mode") and hasattr(mask, "getbands"):  # a PIL image: its alpha if it has one, else grey
        bands = mask.getbands()
        pil = mask.getchannel("A") if "A" in bands else mask.convert("L")
        m = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).float().div(255)[None]
    else:
        m = _scaled(torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask.detach()), "mask")
        if m.ndim == 4 and m.shape[1] == 1:
            m = m[:, 0]
        m = m[None] if m.ndim == 2 else m
    sizes = {grid: "token grid", image_size: "pixels"}
    if m.ndim != 3 or m.shape[-1] != m.shape[-2] or m.shape[-1] not in sizes:
        raise ValueError(f"the mask must be [{grid}, {grid}] (the token grid) or [{image_size}, {image_size}] "
                         f"(pixels), optionally with a batch dimension first; got {list(m.shape)}")
    regen = m.float() >= 0.5
    if m.shape[-1] != grid:
        if image_size % grid:
            raise ValueError(f"{image_size} pixels do not split into a {grid}x{grid} token grid: give the mask at "
                             f"the token grid")
        s = image_size // grid
        regen = regen.view(-1, grid, s, grid, s).any(dim=4).any(dim=2)
    return regen.cpu()


def _scaled(x: torch.Tensor, what: str) -> torch.Tensor:
    """Numbers as float32 in [0, 1]: bool as is, uint8 / 255, uint16 / 65535; other numbers (floats, a 0/1
    integer mask) must already lie in [0, 1]."""
    if x.dtype == torch.bool:
        return x.float()
    if x.dtype == torch.uint8:
        return x.float() / 255
    if x.dtype == torch.uint16:
        return x.float() / 65535
    if x.is_complex():
        raise ValueError(f"{what} values must be real numbers in [0, 1], got {x.dtype}")
    x = x.float()
    if x.numel() and not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        hint = ": if it is in [-1, 1], pass (x + 1) / 2" if what == "image" and x.min() < 0 else ""
        raise ValueError(f"{what} values must lie in [0, 1], got {x.min().item():.3g}..{x.max().item():.3g}{hint}")
    return x


def _rgb(x_BCHW: torch.Tensor) -> torch.Tensor:
    """1 channel (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) -> RGB; alpha composited on white."""
    C = x_BCHW.shape[1]
    if C not in (1, 2, 3, 4):
        raise ValueError(f"an image needs 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels, got {C} "
                         f"(shape {list(x_BCHW.shape)}; tensors are [B, C, H, W], arrays [H, W, C])")
    if C in (2, 4):
        color, alpha = x_BCHW[:, :-1], x_BCHW[:, -1:]
        x_BCHW = color * alpha + (1 - alpha)
    return x_BCHW.expand(-1, 3, -1, -1).contiguous() if x_BCHW.shape[1] == 1 else x_BCHW.contiguous()


def _from_pil(img) -> torch.Tensor:
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit greyscale (PNG files open as I;16 or I)
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"a 16-bit image must hold values 0..65535, got {arr.min()}..{arr.max()}")
        return _rgb(_scaled(torch.from_numpy(arr.astype(np.uint16)), "image")[None, None])
    if img.mode == "F":
        raise ValueError("32-bit float PIL images have no fixed range: pass a float tensor in [0, 1] instead")
    has_alpha = "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)
    arr = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8).copy()
    return _rgb(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)


def require_raster_prefix(edit: Edit, family: str) -> torch.Tensor:
    """For raster-order generators, which cannot look ahead: the kept tokens of each image must come first in
    raster order (rows above, then the left part of one row), i.e. outpainting to the right and below. Returns
    the number of kept tokens per image ``[b]``, or says what the family can do."""
    kept = edit.kept
    n = kept.sum(1)
    prefix = torch.arange(kept.shape[1], device=kept.device)[None] < n[:, None]
    if not torch.equal(kept, prefix):
        raise ValueError(f"{family} generates tokens in raster order and cannot look ahead: it can keep only a top "
                         "part of the image (whole rows, then the left part of one row) and regenerate the rest; "
                         "use a masked family (MAR, MaskGIT, VAR) for this mask")
    return n
