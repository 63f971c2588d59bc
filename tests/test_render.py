"""The pictures the app shows: crisp upscaling, codebook colours, the MAR reveal map and animations."""

import numpy as np
import pytest
import torch
from PIL import Image

from edifice import render


def test_image_grid_upscales_by_integer_factor_without_blur():
    img = torch.zeros(2, 3, 4, 4)
    img[0, 0, 1, 2] = 1.0  # one red pixel in the first image
    grid = np.asarray(render.image_grid(img, target=16, gap=2))
    assert grid.shape == (16, 16 * 2 + 2, 3)
    assert (grid[4:8, 8:12] == [255, 0, 0]).all()  # the pixel became a 4x4 block of pure red
    assert (grid[:4, :4] == 0).all() and (grid[:, 16:18] == 255).all()  # black image, white gap


def test_codebook_colors_keep_similar_codes_close():
    torch.manual_seed(0)
    base = torch.randn(8, 16)
    book = torch.cat([base, base + 0.01 * torch.randn(8, 16)])  # code i+8 is a near copy of code i
    rgb = render.codebook_colors(book).astype(int)
    near = np.abs(rgb[:8] - rgb[8:]).sum(1).max()
    far = np.abs(rgb[:8, None] - rgb[None, :8]).sum(-1)
    assert near < far[~np.eye(8, dtype=bool)].min()


def test_var_token_view_has_one_block_per_token():
    colors = np.array([[10, 20, 30], [200, 100, 0]], dtype=np.uint8)
    view = np.asarray(render.var_token_view(torch.tensor([[0, 1, 1, 0]]), colors, target=8))
    assert view.shape == (8, 8, 3)
    assert (view[:4, :4] == [10, 20, 30]).all() and (view[:4, 4:] == [200, 100, 0]).all()


def test_mar_token_view_marks_hidden_confident_and_new():
    mask = torch.tensor([[True, False, False, True]])
    conf = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    new = torch.tensor([[False, True, False, False]])
    view = np.asarray(render.mar_token_view(mask, conf, new, target=16))
    k = 8
    assert (view[2, 2] == render.HIDDEN_RGB).all()  # hidden position 0
    assert (view[2, k + 2] == render.heat(np.array(1.0))).all()  # confident, revealed
    assert (view[0, k + 2] == render.NEW_RGB).all()  # outlined: revealed in this step
    assert (view[k + 2, 2] == render.heat(np.array(0.0))).all()  # revealed earlier, low confidence


def test_filmstrip_wraps_rows():
    thumbs = [Image.new("RGB", (10, 10), (i, 0, 0)) for i in range(5)]
    sheet = render.filmstrip(thumbs, per_row=2, gap=1)
    assert sheet.size == (21, 32) and sheet.getpixel((11, 11)) == (3, 0, 0) and sheet.getpixel((0, 22)) == (4, 0, 0)


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animation_has_one_frame_per_step(tmp_path, suffix):
    frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(5)]
    path = render.save_animation(frames, tmp_path / f"run{suffix}")
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.info["loop"] == 0
    with pytest.raises(ValueError, match="gif or .webp"):
        render.save_animation(frames, tmp_path / "run.mp4")
