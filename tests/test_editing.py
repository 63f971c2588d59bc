"""Editing (inpainting, outpainting, class-conditional edits): the shared image and mask checks of
edifice.editing, VAR parity with the authors' demo_zero_shot_edit.ipynb (golden vectors in
tests/fixtures/var_edit, copied unchanged from shared/golden/var_edit; weights from tests/fixtures/var), and for
every family that the kept tokens are the image's own at every step."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from edifice.editing import Edit, prepare_edit, require_raster_prefix
from edifice.generative.var import scale_keep_masks
from edifice.official import load_official_var

FIX = Path(__file__).parent / "fixtures"
EDIT = FIX / "var_edit"
CASES = json.loads((EDIT / "config.json").read_text())["cases"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def var_pipe():
    return load_official_var(FIX / "var" / "vae_tiny.pth", FIX / "var" / "var_tiny.pth", device="cpu")


@pytest.fixture(scope="module")
def g():
    return load_file(EDIT / "var_edit_golden.safetensors")


def close(a, b, atol):
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= atol, f"max |diff| {diff:.3g} exceeds {atol}"


# -- VAR: the authors' notebook -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_var_edit_matches_the_authors_notebook(var_pipe, g, case):
    """Tokens after replacement and the kept map exact at every scale; guided logits, f_hat and the image
    within the golden README's tolerances (looser for more_smooth). The notebook's mask is 1 = keep; ours is
    1 = regenerate, given here at the token grid."""
    c = CASES[case]["var_tiny"]
    smooth = c["more_smooth"]
    image = (g["input_img"] + 1) / 2
    regenerate = 1 - g[f"{case}.edit_mask"]
    steps = list(var_pipe.stream(image=image, mask=regenerate, labels=c["label_B"], cfg=c["cfg"], top_k=c["top_k"],
                                 top_p=c["top_p"], more_smooth=smooth, seed=c["g_seed"]))
    assert len(steps) == 4
    for si, s in enumerate(steps):
        kept = g[f"{case}.force_gt_s{si}"].flatten(1).bool()
        assert torch.equal(s.kept, kept), f"scale {si}: kept map differs"
        assert torch.equal(s.tokens, g[f"{case}.idx_replaced_s{si}"]), f"scale {si}: ids differ"
        assert torch.equal(s.tokens[kept], g[f"input_idx_s{si}"][kept]), "kept tokens are not the image's own"
        close(s.logits, g[f"{case}.guided_logits_s{si}"], 1e-4)
        close(s.f_hat, g[f"{case}.fhat_s{si}"], 5e-4 if smooth else 1e-5)
    close(steps[-1].image, g[f"{case}.img"], 1e-3 if smooth else 1e-4)
    if not smooth:
        out = var_pipe.generate(image=image, mask=regenerate, labels=c["label_B"], cfg=c["cfg"], top_k=c["top_k"],
                                top_p=c["top_p"], seed=c["g_seed"])
        close(out, g[f"{case}.img"], 1e-4)


def test_var_image_tokens_are_the_notebooks(var_pipe, g):
    """Our [0, 1] image, mapped back to [-1, 1], encodes to the notebook's input tokens."""
    idx = var_pipe.vae.img_to_idx(((g["input_img"] + 1) / 2).mul(2).sub(1))
    for si, ids in enumerate(idx):
        assert torch.equal(ids, g[f"input_idx_s{si}"])


def test_var_scale_masks_of_the_real_grids_match_the_notebook():
    """The per-scale keep masks of the 256 px and 512 px models for every stored box (bilinear resize, strict
    0.5, first scale kept), as the CPU kernels compute them."""
    m = load_file(EDIT / "mask_resize_golden.safetensors")
    grids = {"var256": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "var512": (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}
    names = sorted({k.rsplit(".", 1)[0] for k in m})
    assert len(names) == 16
    for name in names:
        keeps = scale_keep_masks(m[f"{name}.edit_mask"][None].bool(), grids[name.split(".")[0]])
        for si, keep in enumerate(keeps):
            assert torch.equal(keep, m[f"{name}.force_gt_s{si}"].flatten(1).bool()), f"{name} scale {si}"


def test_var_edit_broadcasts_one_image_and_mask_over_labels(var_pipe, g):
    """One image, one pixel mask, two classes: every scale keeps the image's own tokens in both items, and the
    two classes fill the hole differently."""
    image = (g["input_img"][:1] + 1) / 2
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1  # pixels; tokens are 16 px, so token rows/cols 1..2
    steps = list(var_pipe.stream(image=image, mask=mask, labels=[3, 7], cfg=3.0, top_k=8, seed=2))
    gt = var_pipe.vae.img_to_idx(image.mul(2).sub(1))
    for si, s in enumerate(steps):
        assert s.kept.shape == s.tokens.shape == (2, s.patch_size ** 2)
        assert torch.equal(s.tokens[s.kept], gt[si].expand(2, -1)[s.kept])
    assert (~steps[-1].kept[0]).sum() == 4
    assert not torch.equal(steps[-1].tokens[0], steps[-1].tokens[1])
    stats = var_pipe.token_stats(steps[-1])
    assert (stats.drawn[steps[-1].kept] == -1).all() and (stats.drawn[~steps[-1].kept] >= 0).all()


def test_var_plain_generation_is_unchanged_by_the_edit_arguments(var_pipe):
    plain = [s.tokens for s in var_pipe.stream(labels=[1], seed=4, top_k=4, preview=False)]
    none = list(var_pipe.stream(labels=[1], seed=4, top_k=4, preview=False, image=None, mask=None))
    assert all(torch.equal(a, b.tokens) and b.kept is None for a, b in zip(plain, none, strict=True))


# -- shared checks (edifice.editing) ---------------------------------------------------------------------------
def test_pixel_mask_reduces_to_tokens_that_have_any_masked_pixel():
    img = torch.rand(3, 64, 64)
    mask = torch.zeros(64, 64)
    mask[0, 0] = 1  # one pixel of token (0, 0)
    mask[40:42, 50] = 0.7  # pixels of token (2, 3)
    mask[63, 63] = 0.4  # below 0.5: kept
    edit = prepare_edit(img, mask, image_size=64, grid=4)
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 0, 0] = expected[0, 2, 3] = True
    assert torch.equal(edit.regenerate, expected)
    assert edit.kept.shape == (1, 16) and edit.kept.sum() == 14
    token = prepare_edit(img, expected[0].int(), image_size=64, grid=4)  # at the token grid: as given
    assert torch.equal(token.regenerate, expected)


def test_batches_broadcast_and_are_checked():
    edit = prepare_edit(torch.rand(1, 3, 32, 32), torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 1]]]),
                        image_size=32, grid=2)
    assert edit.image.shape == (1, 3, 32, 32) and edit.regenerate.shape == (2, 2, 2)  # each image once
    assert edit.batch_size(1) == 2 and edit.check_batch(2) is None
    with pytest.raises(ValueError, match="holds 2 images or masks but batch_size is 3"):
        edit.batch_size(3)
    with pytest.raises(ValueError, match="2 images or masks but there are 3 labels"):
        edit.check_batch(3)
    one = prepare_edit(torch.rand(3, 32, 32), torch.tensor([[1, 0], [0, 0]]), image_size=32, grid=2)
    assert one.batch_size(4) == 4 and one.check_batch(4) is None
    with pytest.raises(ValueError, match="3 images but 2 masks"):
        prepare_edit(torch.rand(3, 3, 32, 32), torch.ones(2, 2, 2).triu(), image_size=32, grid=2)


def test_image_modes_are_converted():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:16, :, 3] = 255  # top half opaque red, bottom half transparent -> white
    mask = np.zeros((2, 2), dtype=np.float32)
    mask[0, 0] = 1
    for image in (rgba, Image.fromarray(rgba, "RGBA")):
        x = prepare_edit(image, mask, image_size=32, grid=2).image
        assert torch.equal(x[0, :, 0, 0], torch.tensor([1.0, 0, 0])) and torch.equal(x[0, :, 31, 0], torch.ones(3))
    grey = Image.fromarray(np.full((32, 32), 51, dtype=np.uint8), "L")
    assert torch.allclose(prepare_edit(grey, mask, image_size=32, grid=2).image, torch.full((1, 3, 32, 32), 0.2))
    deep = Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))  # 16-bit greyscale
    assert deep.mode.startswith("I")
    assert torch.equal(prepare_edit(deep, mask, image_size=32, grid=2).image, torch.ones(1, 3, 32, 32))
    assert torch.equal(prepare_edit(np.full((32, 32, 3), 65535, dtype=np.uint16), mask, image_size=32,
                                    grid=2).image, torch.ones(1, 3, 32, 32))
    brush = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # a brush layer: painted where alpha > 0
    brush.paste((255, 255, 255, 255), (20, 20, 24, 24))
    assert torch.equal(prepare_edit(grey, brush, image_size=32, grid=2).regenerate,
                       torch.tensor([[[False, False], [False, True]]]))


@pytest.mark.parametrize("image, mask, message", [
    (torch.rand(3, 48, 48), torch.ones(2, 2).triu(), "is 48x48 pixels but this model edits 32x32"),
    (torch.rand(3, 32, 32) * 2 - 1, torch.ones(2, 2).triu(), r"in \[0, 1\].*pass \(x \+ 1\) / 2"),
    (torch.rand(5, 32, 32), torch.ones(2, 2).triu(), "needs 1 .* or 4 .* channels, got 5"),
    (torch.rand(3, 32, 32), torch.zeros(2, 2), "regenerates nothing"),
    (torch.rand(3, 32, 32), torch.ones(32, 32), "regenerates every token: that is plain generation"),
    (torch.rand(3, 32, 32), torch.ones(3, 3), r"must be \[2, 2\] \(the token grid\) or \[32, 32\] \(pixels\)"),
    (torch.rand(3, 32, 32), None, "needs a mask"),
    (None, torch.ones(2, 2).triu(), "needs the image"),
    ("photo.png", torch.ones(2, 2).triu(), "image must be a tensor"),
    (Image.new("F", (32, 32)), torch.ones(2, 2).triu(), "32-bit float PIL"),
    (np.full((32, 32), 2.0), torch.ones(2, 2).triu(), r"must lie in \[0, 1\]"),
])
def test_bad_input_is_explained(image, mask, message):
    with pytest.raises(ValueError, match=message):
        prepare_edit(image, mask, image_size=32, grid=2)


def test_empty_and_full_masks_are_refused_per_image():
    with pytest.raises(ValueError, match=r"mask \(image 2\) regenerates nothing"):
        prepare_edit(torch.rand(3, 32, 32), torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]]), image_size=32, grid=2)


def test_raster_prefix_for_raster_order_families():
    keep_top = torch.tensor([[[0, 0], [1, 1]]])  # regenerate the bottom row
    assert require_raster_prefix(prepare_edit(torch.rand(3, 32, 32), keep_top, image_size=32, grid=2),
                                 "LlamaGen").tolist() == [2]
    with pytest.raises(ValueError, match="LlamaGen generates tokens in raster order and cannot look ahead"):
        require_raster_prefix(Edit(torch.rand(1, 3, 32, 32), torch.tensor([[[1, 0], [0, 0]]]).bool()), "LlamaGen")


def test_var_refuses_bad_edits_before_any_work(var_pipe, g):
    with pytest.raises(ValueError, match="regenerates every token"):
        next(var_pipe.stream(image=torch.rand(3, 64, 64), mask=torch.ones(4, 4)))
    with pytest.raises(ValueError, match="this model edits 64x64"):
        next(var_pipe.stream(image=torch.rand(3, 32, 32), mask=torch.ones(4, 4).triu()))


# -- MAR, discrete and with diffusion head: kept tokens are the image's own at every step ----------------------
@pytest.fixture(scope="module")
def mar_pipe():
    from tests.tiny_models import tiny_mar

    return tiny_mar()  # 32 px, 8x8 tokens, 3 classes


@pytest.fixture(scope="module")
def diff_pipe():
    from tests.tiny_models import tiny_mar_diffusion

    return tiny_mar_diffusion()  # 64 px, 4x4 tokens, 10 classes


def hole(size: int, lo: int, hi: int) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[lo:hi, lo:hi] = 1
    return mask


def assert_keeps_image_tokens(steps, ids):
    """A batch of 2 with the 3x3 hole at token rows/cols 2..4 of an 8x8 grid (:func:`hole`): every step keeps the
    image's tokens ``ids`` everywhere else and never hides or reveals a kept one. Returns the kept map."""
    kept = steps[0].kept
    assert kept.shape == (2, 64) and (~kept).sum(1).tolist() == [9, 9]
    assert torch.equal(kept[0].view(8, 8)[2:5, 2:5], torch.zeros(3, 3, dtype=torch.bool))
    for s in steps:
        assert torch.equal(s.kept, kept)
        assert torch.equal(s.tokens[kept], ids.expand(2, -1)[kept])
        assert not (s.mask & kept).any() and not (s.revealed & kept).any()
    return kept


@pytest.mark.parametrize("labels, cfg", [(-1, 1.0), ([0, 2], 3.0)])  # plain inpainting; class-conditional edit
def test_discrete_mar_edit_keeps_the_image_tokens(mar_pipe, labels, cfg):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = hole(32, 8, 20)  # pixels; 4 px tokens -> token rows/cols 2..4
    ids = mar_pipe.encode(image)
    steps = list(mar_pipe.stream(image=image, mask=mask, labels=labels, batch_size=2, cfg=cfg, num_steps=4,
                                 seed=1))
    kept = assert_keeps_image_tokens(steps, ids)
    assert (steps[-1].tokens > 0).all() and steps[-1].labels.tolist() == ([3, 3] if labels == -1 else labels)
    stats = mar_pipe.token_stats(steps[0])
    assert (stats.drawn[kept] == -1).all()
    assert mar_pipe.generate(image=image, mask=mask, labels=labels, batch_size=2, cfg=cfg, num_steps=4,
                             seed=1).shape == (2, 3, 32, 32)


def test_discrete_mar_edit_batches_and_refusals(mar_pipe):
    images = torch.rand(2, 3, 32, 32)
    masks = torch.zeros(2, 8, 8)
    masks[0, :4] = 1  # image 1: regenerate the top half (token grid)
    masks[1, :, 4:] = 1  # image 2: the right half
    last = list(mar_pipe.stream(image=images, mask=masks, labels=-1, num_steps=3, seed=0))[-1]
    assert last.tokens.shape == (2, 64) and torch.equal(last.kept, ~masks.flatten(1).bool())
    assert torch.equal(last.tokens[last.kept], mar_pipe.encode(images)[last.kept])
    with pytest.raises(ValueError, match="either image and mask, or init_tokens"):
        mar_pipe.stream(image=images, mask=masks, init_tokens=torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="2 images or masks but there are 3 labels"):
        mar_pipe.stream(image=images, mask=masks, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="this model edits 32x32"):
        mar_pipe.stream(image=torch.rand(3, 64, 64), mask=masks[0])


@pytest.mark.parametrize("labels, cfg", [(-1, 1.0), ([3, 7], 2.0)])
def test_diffusion_mar_edit_keeps_the_image_tokens(diff_pipe, labels, cfg):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    known = diff_pipe.encode(image)
    steps = list(diff_pipe.stream(image=image, mask=mask, labels=labels, batch_size=2, cfg=cfg, num_steps=3,
                                  num_sampling_steps=5, seed=3))
    kept = steps[0].kept
    assert torch.equal(kept, ~mask.flatten()[None].bool().expand(2, -1))
    for s in steps:
        assert torch.equal(s.kept, kept)
        assert torch.equal(s.tokens[kept], known.expand(2, -1, -1)[kept])
        assert not (s.mask & kept).any() and not (s.revealed & kept).any()
    assert not steps[-1].mask.any() and (steps[-1].tokens[~kept] != 0).all()
    assert sum(int(s.revealed[0].sum()) for s in steps) == 5  # the 5 tokens to draw, once each
    assert torch.equal(kept.gather(1, steps[0].orders)[:, 5:], torch.ones(2, 11, dtype=torch.bool))
    heat = diff_pipe.token_stats(steps[-1]).heat
    assert heat[kept].isnan().all() and not heat[~kept].isnan().any()


def test_diffusion_mar_nothing_known_is_plain_generation(diff_pipe):
    """Editing with every token to draw follows the plain sampler exactly: the restricted order and the
    schedule reduce to the official ones."""
    from edifice.generative.mar_diffusion import stream_tokens

    args = dict(labels=[1, 2], num_steps=4, num_sampling_steps=5, cfg=2.0, seed=9)
    plain = list(stream_tokens(diff_pipe.model, **args))
    edit = list(stream_tokens(diff_pipe.model, init_tokens=torch.randn(1, 16, 16), init_mask=torch.ones(1, 16).bool(),
                              **args))
    for a, b in zip(plain, edit, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.orders, b.orders) and b.kept.sum() == 0


def test_diffusion_mar_needs_equal_hole_sizes(diff_pipe):
    masks = torch.zeros(2, 4, 4)
    masks[0, 0, 0] = 1
    masks[1, :2, :2] = 1
    with pytest.raises(ValueError, match=r"same number of tokens in every image \(got \[1, 4\]\)"):
        next(diff_pipe.stream(image=torch.rand(3, 64, 64), mask=masks, num_steps=2, num_sampling_steps=5))


# -- Halton-MaskGIT: both samplers start from the image's tokens and never re-sample the kept ones ---------------
@pytest.fixture(scope="module")
def maskgit_pipe():
    from tests.tiny_models import golden_maskgit_llamagen

    return golden_maskgit_llamagen("maskgit")  # 128 px, 8x8 tokens, K = 64, 10 classes


@pytest.mark.parametrize("sampler", ["confidence", "halton"])
@pytest.mark.parametrize("labels, cfg", [(-1, 0.0), ([1, 2], 2.0)])  # plain inpainting; class-conditional edit
def test_maskgit_edit_keeps_the_image_tokens(maskgit_pipe, sampler, labels, cfg):
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    mask = hole(128, 32, 80)  # pixels; 16 px tokens -> token rows/cols 2..4
    ids = maskgit_pipe.encode(image)
    steps = list(maskgit_pipe.stream(image=image, mask=mask, labels=labels, batch_size=2, sampler=sampler, cfg=cfg,
                                     num_steps=4, seed=1, preview=False))
    kept = assert_keeps_image_tokens(steps, ids)
    for s in steps:
        stats = maskgit_pipe.token_stats(s)
        assert (stats.drawn[kept] == -1).all() and stats.drawn_prob[kept].isnan().all()
    assert sum(int(s.revealed[0].sum()) for s in steps) >= 9 and steps[-1].labels.tolist() == (
        [10, 10] if labels == -1 else labels)
    if sampler == "halton":
        assert not steps[-1].mask.any()
    assert maskgit_pipe.generate(image=image, mask=mask, labels=labels, batch_size=2, sampler=sampler, cfg=cfg,
                                 num_steps=4, seed=1).shape == (2, 3, 128, 128)


def test_maskgit_halton_edit_follows_the_order_skipping_kept_positions(maskgit_pipe):
    """Halton reveals the hidden positions in the full-grid Halton order with the kept ones left out, over
    the arccos schedule of their number."""
    from edifice.generative.maskgit import halton_order, halton_schedule

    mask = torch.zeros(8, 8)
    mask[:, 5:] = 1  # regenerate the 3 right columns: 24 tokens
    steps = list(maskgit_pipe.stream(image=torch.rand(3, 128, 128), mask=mask, sampler="halton", num_steps=5,
                                     seed=0, preview=False))
    order = [r * 8 + c for r, c in halton_order(8) if c >= 5]
    counts = [0] + halton_schedule(5, 24)
    for s, lo, hi in zip(steps, counts[:-1], counts[1:], strict=True):
        assert s.revealed[0].nonzero()[:, 0].tolist() == sorted(order[lo:hi])


@pytest.mark.parametrize("sampler", ["confidence", "halton"])
def test_maskgit_nothing_known_is_plain_generation(maskgit_pipe, sampler):
    """With every token hidden the edit path follows the authors' sampler exactly (schedules, order, draws)."""
    from edifice.generative.maskgit import stream_tokens

    args = dict(sampler=sampler, labels=[1, 2], num_steps=4, cfg=1.5, seed=9, randomize=True)
    plain = list(stream_tokens(maskgit_pipe.model, **args))
    edit = list(stream_tokens(maskgit_pipe.model, init_tokens=torch.full((1, 64), 64), **args))
    for a, b in zip(plain, edit, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.revealed, b.revealed) and b.kept.sum() == 0


def test_maskgit_edit_refusals(maskgit_pipe):
    assert maskgit_pipe.can_edit
    mask = torch.ones(8, 8).triu()
    with pytest.raises(ValueError, match="this model edits 128x128"):
        maskgit_pipe.stream(image=torch.rand(3, 64, 64), mask=mask)
    with pytest.raises(ValueError, match="regenerates every token"):
        maskgit_pipe.stream(image=torch.rand(3, 128, 128), mask=torch.ones(8, 8))
    with pytest.raises(ValueError, match="either image and mask, or init_tokens"):
        maskgit_pipe.stream(image=torch.rand(3, 128, 128), mask=mask, init_tokens=torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="2 images or masks but there are 3 labels"):
        maskgit_pipe.stream(image=torch.rand(2, 3, 128, 128), mask=mask, labels=[0, 1, 2])


# -- LlamaGen: a raster prefix is kept, read through the KV cache, and the rest is sampled ------------------------
@pytest.fixture(scope="module")
def llamagen_pipe():
    from tests.tiny_models import golden_maskgit_llamagen

    return golden_maskgit_llamagen("gpt")  # 128 px, 8x8 tokens, 64 codes, 10 classes


def bottom_mask() -> torch.Tensor:
    """Keep 4 rows and 3 tokens of the fifth (a raster prefix of 35 tokens), regenerate the rest."""
    mask = torch.ones(8, 8)
    mask[:4] = 0
    mask[4, :3] = 0
    return mask


@pytest.mark.parametrize("labels, cfg", [(-1, 1.0), ([1, 2], 2.0)])  # plain outpainting; class-conditional edit
def test_llamagen_edit_keeps_the_raster_prefix(llamagen_pipe, labels, cfg):
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    ids = llamagen_pipe.encode(image)
    steps = list(llamagen_pipe.stream(image=image, mask=bottom_mask(), labels=labels, batch_size=2, cfg=cfg, seed=1,
                                      preview=False))
    kept = steps[0].kept
    assert torch.equal(kept, (torch.arange(64) < 35).expand(2, -1))
    assert [(s.step, s.num_steps, s.front) for s in steps] == [(0, 4, 40), (1, 4, 48), (2, 4, 56), (3, 4, 64)]
    for s in steps:
        assert torch.equal(s.kept, kept)
        assert torch.equal(s.tokens[kept], ids.expand(2, -1)[kept])
        assert not (s.mask & kept).any() and not (s.revealed & kept).any()
        assert (llamagen_pipe.token_stats(s).drawn[kept] == -1).all()
    assert (steps[-1].tokens >= 0).all() and steps[0].revealed[0].nonzero()[:, 0].tolist() == list(range(35, 40))
    assert steps[-1].labels.tolist() == ([10, 10] if labels == -1 else labels)
    no_cache = list(llamagen_pipe.stream(image=image, mask=bottom_mask(), labels=labels, batch_size=2, cfg=cfg,
                                         seed=1, preview=False, kv_cache=False))
    assert torch.equal(no_cache[-1].tokens, steps[-1].tokens)  # the prefilled cache reads what a full pass does


def test_llamagen_edit_draws_the_first_token_given_the_prefix(llamagen_pipe):
    """The first drawn token's distribution is the teacher-forced one after [class, image tokens]."""
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    ids = llamagen_pipe.encode(image)
    first = next(iter(llamagen_pipe.stream(image=image, mask=bottom_mask(), labels=[4], seed=0, preview=False)))
    with torch.inference_mode():
        probs = llamagen_pipe.model(ids, torch.tensor([4]))[0, 35].softmax(-1)
    top_p, top_i = probs.topk(8)
    assert torch.equal(first.candidates[0, 35], top_i)
    torch.testing.assert_close(first.candidate_probs[0, 35], top_p, atol=1e-5, rtol=1e-4)


def test_llamagen_refuses_masks_that_are_not_a_raster_prefix(llamagen_pipe):
    assert llamagen_pipe.can_edit
    image = torch.rand(3, 128, 128)
    top = torch.zeros(8, 8)
    top[:2] = 1  # regenerate the top: needs looking ahead
    with pytest.raises(ValueError, match=r"LlamaGen generates tokens in raster order .* use a masked family"):
        llamagen_pipe.stream(image=image, mask=top)
    masks = torch.ones(2, 8, 8)
    masks[0, :4] = masks[1, :5] = 0
    with pytest.raises(ValueError, match=r"same number of tokens in every image \(got \[32, 40\]\)"):
        llamagen_pipe.stream(image=image, mask=masks)
    with pytest.raises(ValueError, match="this model edits 128x128"):
        llamagen_pipe.stream(image=torch.rand(3, 64, 64), mask=bottom_mask())
    with pytest.raises(ValueError, match="either image and mask, or prefix_tokens"):
        llamagen_pipe.stream(image=image, mask=bottom_mask(), prefix_tokens=torch.zeros(8, dtype=torch.long))


# -- FractalGen: kept top-level patches are the image's own pixels; only the others are drawn -------------------
@pytest.fixture(scope="module")
def fractal_pipes():
    from tests.tiny_models import golden_fractalgen

    return {name: golden_fractalgen(name) for name in ("fmar3", "far3")}  # 16 px, 4x4 top-level patches of 4 px


def lower_mask() -> torch.Tensor:
    """Regenerate the top-level patches from (1, 2) on in raster order: 6 kept, 10 drawn (a prefix, for AR too)."""
    mask = torch.zeros(4, 4)
    mask[2:] = mask[1, 2:] = 1
    return mask


@pytest.mark.parametrize("name", ["fmar3", "far3"])
@pytest.mark.parametrize("labels, cfg", [(-1, 1.0), ([1, 2], 2.0)])  # plain outpainting; class-conditional edit
def test_fractalgen_edit_keeps_the_image_pixels(fractal_pipes, name, labels, cfg):
    pipe = fractal_pipes[name]
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = image.mul(255).round().to(torch.uint8).expand(2, -1, -1, -1)
    keep = ~lower_mask().bool().repeat_interleave(4, 0).repeat_interleave(4, 1)  # [16, 16] pixels
    steps = list(pipe.stream(image=image, mask=lower_mask(), labels=labels, batch_size=2, cfg=cfg, seed=1,
                             num_iter_list=[4, 4], stream_depth=1, preview=False))
    top = [s for s in steps if s.level == 0]
    assert len(top) == (10 if name == "far3" else 4) and all(s.num_steps == len(top) for s in top)
    assert [s.step for s in top] == list(range(len(top)))
    for s in steps:
        assert torch.equal(s.kept, keep.flatten().expand(2, -1))
        assert torch.equal(s.tokens.permute(0, 2, 3, 1)[:, keep], ids.permute(0, 2, 3, 1)[:, keep])
        assert s.known[:, keep].all() and s.entropy[:, keep].isnan().all()
        kept_patches = ~lower_mask().bool()
        assert s.done[:, kept_patches].all() and not s.filled[:, kept_patches].any()
        assert (pipe.token_stats(s).drawn[s.kept] == -1).all()
    assert top[-1].known.all() and top[-1].labels.tolist() == ([10, 10] if labels == -1 else labels)
    if name == "far3":  # one patch per step, in raster order after the prefix
        assert [int(s.filled[0].flatten().nonzero()[0]) for s in top] == list(range(6, 16))
    out = pipe.generate(image=image, mask=lower_mask(), labels=labels, batch_size=2, cfg=cfg, seed=1,
                        num_iter_list=[4, 4])
    assert out.shape == (2, 3, 16, 16) and torch.equal(out[:, :, keep], ids[:, :, keep].float() / 255)


@pytest.mark.parametrize("name", ["fmar3", "far3"])
def test_fractalgen_edit_draws_given_the_kept_patches(fractal_pipes, name):
    """Same seed, two images that differ only in the kept patches: the drawn patches differ (the kept ones
    condition the rest), and the draws are reproducible."""
    pipe, run = fractal_pipes[name], dict(mask=lower_mask(), labels=3, seed=5, num_iter_list=[4, 4])
    a, b = torch.zeros(3, 16, 16), torch.ones(3, 16, 16)
    out_a, out_b = pipe.generate(image=a, **run), pipe.generate(image=b, **run)
    drawn = lower_mask().bool().repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert not torch.equal(out_a[:, :, drawn], out_b[:, :, drawn])
    assert torch.equal(pipe.generate(image=a, **run), out_a)


def test_fractalgen_edit_refusals(fractal_pipes):
    mar, ar = fractal_pipes["fmar3"], fractal_pipes["far3"]
    assert mar.can_edit and ar.can_edit
    hole_mask = torch.zeros(4, 4)
    hole_mask[1:3, 1:3] = 1
    assert next(mar.stream(image=torch.rand(3, 16, 16), mask=hole_mask, num_iter_list=[2, 2])).kept.sum() == 192
    with pytest.raises(ValueError, match="FractalGen with an AR top level generates tokens in raster order"):
        next(ar.stream(image=torch.rand(3, 16, 16), mask=hole_mask))
    masks = torch.zeros(2, 4, 4)
    masks[0, 0, 0] = 1
    masks[1, :2] = 1
    with pytest.raises(ValueError, match=r"same number of top-level patches in every image.*\(got \[1, 8\]\)"):
        next(mar.stream(image=torch.rand(3, 16, 16), mask=masks))
    with pytest.raises(ValueError, match="this model edits 16x16"):
        mar.stream(image=torch.rand(3, 32, 32), mask=hole_mask)
    with pytest.raises(ValueError, match="init_tokens and init_mask go together"):
        next(mar.stream(init_tokens=torch.zeros(3, 16, 16, dtype=torch.uint8)))
