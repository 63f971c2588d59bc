"""The trainer on a tiny generated ImageFolder (3 classes of coloured squares, 8x8): every stage's loss goes
down, exports load and sample, a resumed run continues the step count and matches an uninterrupted one,
``--max-minutes`` stops cleanly, metrics.csv is written; plus the data-order and scale-list helpers."""

import argparse
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edifice
from edifice import train
from edifice.__main__ import main
from edifice.data import ImageFolder
from edifice.generative.var import check_scales

TINY_TOKENIZER = dict(image_size=8, codebook_size=32, embed_dim=8, ch=32, num_res_blocks=1, attn=False)
TINY_TRANSFORMER = dict(depth=2, width=64, heads=4)
FAST = dict(batch_size=8, warmup=5, log_every=1, save_every=1000)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: with two threads on a busy 2-core machine the threads mostly wait for each other
    (the module ran 3-10x slower), so this module runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """3 classes x 8 images: a square of the class colour at a random place on transparency."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, rgb in enumerate([(220, 40, 40), (40, 180, 60), (40, 60, 220)]):
        (root / f"class{c}").mkdir()
        for i in range(8):
            a = np.zeros((8, 8, 4), np.uint8)
            x, y = rng.integers(0, 5, 2)
            a[y:y + 4, x:x + 4] = (*rgb, 255)
            Image.fromarray(a, "RGBA").save(root / f"class{c}" / f"{i}.png")
    return root


def losses(result) -> list[float]:
    return [row["loss"] for row in result["history"]]


def assert_goes_down(ls: list[float], factor: float):
    assert all(math.isfinite(v) for v in ls)
    first, last = np.mean(ls[:5]), np.mean(ls[-5:])
    assert last < factor * first, f"loss {first:.4f} -> {last:.4f}"


@pytest.fixture(scope="module")
def tokenizer_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "run"
    return train.run("tokenizer", data=images, out=out, steps=40, scales=(1, 2, 4), lr=2e-3, dead_after=10,
                     **TINY_TOKENIZER, **FAST)


def test_tokenizer_loss_goes_down_and_exports(tokenizer_run):
    r = tokenizer_run
    assert r["step"] == 40 and r["stopped"] == "steps"
    assert_goes_down(losses(r), 0.6)
    last = r["metrics"]
    assert last["psnr"] > r["history"][0]["psnr"] + 3
    assert last["codes_reset"] > 0 and 0 < last["codes_used"] <= 1  # dead codes were re-initialised
    with open(r["out"] / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == list(range(1, 41))
    assert {"loss", "recon", "vq", "psnr", "img_per_s", "lr"} <= set(rows[0])
    vae = train.load_tokenizer(r["out"])
    assert vae.cfg.patch_nums == (1, 2, 4)
    idx = vae.img_to_idx(torch.zeros(2, 3, 8, 8))
    assert [t.shape for t in idx] == [(2, 1), (2, 4), (2, 16)]
    assert "## Training" in (r["export"] / "README.md").read_text()


def test_var_stage_learns_with_scale_augmentation_and_exports(images, tokenizer_run, tmp_path):
    r = train.run("var", data=images, out=tmp_path / "var", tokenizer=tokenizer_run["out"], steps=30, lr=2e-3,
                  scale_aug=0.5, **TINY_TRANSFORMER, **FAST)
    assert_goes_down(losses(r), 0.9)
    pipe = edifice.load(r["export"], device="cpu")
    assert pipe.kind == "var" and pipe.class_names == ["class0", "class1", "class2"]
    img = pipe.generate(labels=[0, 2], seed=0, scales=[1, 4])
    assert img.shape == (2, 3, 8, 8) and torch.isfinite(img).all()


def test_mar_stage_learns_and_exports(images, tokenizer_run, tmp_path):
    tok = train.run("tokenizer", data=images, out=tmp_path / "tok1", steps=3, scales=(4,), **TINY_TOKENIZER,
                    **FAST)
    with pytest.raises(SystemExit, match="single-scale"):
        train.run("mar", data=images, out=tmp_path / "bad", tokenizer=tokenizer_run["out"], steps=1)
    r = train.run("mar", data=images, out=tmp_path / "mar", tokenizer=tok["out"], steps=30, lr=2e-3, flip=True,
                  **TINY_TRANSFORMER, **FAST)
    assert_goes_down(losses(r), 0.9)
    pipe = edifice.load(r["export"], device="cpu")
    assert pipe.kind == "mar" and pipe.seq_len == 16
    img = pipe.generate(labels=[1], seed=0, num_steps=4)
    assert img.shape == (1, 3, 8, 8) and torch.isfinite(img).all()


def test_max_minutes_stops_and_resume_matches_an_uninterrupted_run(images, tmp_path):
    opts = dict(data=images, steps=6, scales=(1, 2, 4), lr=2e-3, dead_after=2, **TINY_TOKENIZER, **FAST)
    stopped = train.run("tokenizer", out=tmp_path / "a", max_minutes=0, **opts)
    assert stopped["stopped"] == "time" and stopped["step"] == 1
    assert (tmp_path / "a" / "state").is_dir() and (tmp_path / "a" / "export" / "model.safetensors").is_file()
    resumed = train.run("tokenizer", out=tmp_path / "a", **opts)
    assert resumed["step"] == 6 and [row["step"] for row in resumed["history"]] == [2, 3, 4, 5, 6]
    straight = train.run("tokenizer", out=tmp_path / "b", **opts)
    assert losses(stopped) + losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    with open(tmp_path / "a" / "metrics.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(SystemExit, match="tokenizer run"):
        train.run("var", data=images, out=tmp_path / "a", tokenizer=tmp_path / "a", steps=1)


def test_minutes_fits_the_steps_and_a_rerun_with_them_repeats_the_run(images, tmp_path):
    """--minutes sets --steps from the warm-up's speed; the schedule then ends with the run, the
    run folder and card record the steps, and a run given those --steps follows the same losses."""
    opts = dict(data=images, scales=(1, 2, 4), lr=2e-3, dead_after=2, **TINY_TOKENIZER, **{**FAST, "warmup": 10})
    fitted = train.run("tokenizer", out=tmp_path / "a", minutes=0.05, **opts)
    steps = fitted["step"]
    assert fitted["stopped"] == "steps" and 10 < steps < 10_000
    schedule = argparse.Namespace(lr=2e-3, warmup=10, steps=steps)  # the cosine reaches its end with the run
    assert fitted["history"][-1]["lr"] == pytest.approx(train.lr_at(steps - 1, schedule))
    assert json.loads((tmp_path / "a" / "run.json").read_text())["options"]["steps"] == steps
    assert f"`--steps {steps}`" in (tmp_path / "a" / "export" / "README.md").read_text()
    again = train.run("tokenizer", out=tmp_path / "b", steps=steps, **opts)
    assert losses(again) == pytest.approx(losses(fitted), rel=1e-5)
    with pytest.raises(SystemExit, match="--warmup 10 or more"):
        train.run("tokenizer", out=tmp_path / "c", minutes=1, **{**opts, "warmup": 5})


def test_random_scale_sub_lists_are_valid_and_varied():
    pns = (1, 2, 3, 4, 5, 6, 8)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        ids = train.random_scale_ids(pns, g)
        sizes = [pns[i] for i in ids]
        assert check_scales(sizes, pns) == ids and ids[0] == 0 and ids[-1] == len(pns) - 1
        seen.add(tuple(ids))
    assert len(seen) > 20
    assert train.pick_scale_ids(pns, 0.0, g) is None
    assert train.random_scale_ids((4,), g) == [0]


def test_scale_keep_sets_how_often_short_lists_are_trained():
    pns = (1, 2, 3, 4, 6, 8, 12, 16)
    g = torch.Generator().manual_seed(0)
    assert train.random_scale_ids(pns, g, keep=0.0) == [0, 7]
    assert train.random_scale_ids(pns, g, keep=1.0) == list(range(8))

    def share_short(keep):  # lists with at most one size between the first and the last, such as 1,2,16
        return np.mean([len(train.random_scale_ids(pns, g, keep)) <= 3 for _ in range(4000)])

    assert share_short(0.5) == pytest.approx(7 / 64, abs=0.02)
    assert share_short(0.3) == pytest.approx(0.7 ** 6 + 6 * 0.3 * 0.7 ** 5, abs=0.03)
    parser = train.build_parser()
    assert parser.parse_args(["var", "--data", "d", "--out", "o", "--tokenizer", "t"]).scale_keep == 0.5
    for bad in ("1.5", "-0.1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["var", "--data", "d", "--out", "o", "--tokenizer", "t", "--scale-keep", bad])


def test_run_passes_every_boolean_option_either_way():
    """``run(flag=False)`` writes ``--no-flag``, which every boolean option of every stage accepts."""
    parser = train.build_parser()
    paths = {"data": "d", "out": "o"}
    for stage, flags in (("tokenizer", ("flip", "decoder_only", "attn", "cpu")),
                         ("var", ("flip", "cache_latents", "cpu")), ("mar", ("flip", "cache_latents"))):
        extra = {} if stage == "tokenizer" else {"tokenizer": "t"}
        for value in (True, False):
            args = parser.parse_args(train.cli_args(stage, **paths, **extra, **dict.fromkeys(flags, value)))
            assert all(getattr(args, f) is value for f in flags), (stage, value)


def test_generator_flip_adds_every_image_mirrored(images, tokenizer_run, tmp_path):
    """Cached: the latents of every image and then of its mirror. Uncached: each image of a batch is itself or
    its mirror, as the step's generator draws, the same after resuming."""
    vae = train.load_tokenizer(tokenizer_run["out"])
    data = ImageFolder(images, 8)
    f, y = train.encode_dataset(vae, data, 5, "cpu")
    f2, y2 = train.encode_dataset(vae, data, 5, "cpu", mirror=True)
    n = len(y)
    imgs = torch.stack([data[i][0] for i in range(n)])
    with torch.no_grad():
        mirrored = vae.encode(imgs.flip(-1)).float()
    assert torch.equal(f2[:n], f) and torch.equal(y2, torch.cat([y, y]))
    assert torch.allclose(f2[n:], mirrored, atol=1e-5) and not torch.allclose(mirrored, f, atol=1e-3)

    args = train.build_parser().parse_args(["var", "--data", str(images), "--out", str(tmp_path / "o"),
                                            "--tokenizer", str(tokenizer_run["out"]), "--no-cache-latents",
                                            "--flip", "--batch-size", "8", "--depth", "1", "--width", "32"])
    task = train.TASKS["var"](args, None, "cpu")
    batches, order = task.batches(0, 0, 1), train.index_batches(n, 8, seed=0)
    flips = []
    for b in range(3):
        batch, idx = next(batches), next(order)
        fb, yb = task.inputs(batch, torch.Generator().manual_seed(b))
        assert torch.equal(yb, y[idx])
        again, _ = task.inputs(batch, torch.Generator().manual_seed(b))
        assert torch.equal(again, fb)  # the step's generator (seeded per batch) decides: a resume repeats it
        for row, i in zip(fb, idx.tolist(), strict=True):
            same, mirror = torch.allclose(row, f[i], atol=1e-5), torch.allclose(row, mirrored[i], atol=1e-5)
            assert same or mirror  # both where the square sits in the middle: the image is its own mirror
            flips.append(mirror and not same)
    assert 0 < sum(flips) < len(flips)


def test_scale_weight_sets_each_scales_share_of_the_var_loss(images, tokenizer_run, tmp_path):
    """``--scale-weight p`` weighs a pn x pn scale's tokens by pn^(-2p), mean 1 over the list: 0 is the plain
    mean over tokens (as before the option), 1 the mean of the scales' mean cross-entropies."""
    pns = (1, 2, 3, 4, 6, 8, 12, 16)
    w = train.token_weights(pns, range(8), 0.5, "cpu")
    shares = torch.stack([c.sum() for c in w.split([p * p for p in pns])]) / w.sum()
    assert w.mean().item() == pytest.approx(1) and torch.allclose(shares, torch.tensor(pns) / sum(pns))
    assert torch.equal(train.token_weights(pns, range(8), 0.0, "cpu"), torch.ones(530))
    sub = train.token_weights(pns, [0, 1, 7], 1.0, "cpu")  # a sub-list: its own scales share the loss equally
    assert sub.shape == (261,) and sub[0].item() == pytest.approx(sub[1:5].sum().item())
    assert sub[5:].sum().item() == pytest.approx(sub[0].item())

    def loss_of(power):
        args = train.build_parser().parse_args(
            ["var", "--data", str(images), "--out", str(tmp_path / "o"), "--tokenizer", str(tokenizer_run["out"]),
             "--batch-size", "8", "--depth", "1", "--width", "32", "--scale-aug", "0", "--scale-weight", str(power)])
        torch.manual_seed(0)
        task = train.TASKS["var"](args, None, "cpu")
        task.model.eval()  # no class dropout: both losses see the same labels
        batch = next(task.batches(0, 0, 1))
        loss, _ = task.loss(task.model, batch, torch.Generator().manual_seed(0))
        f, y = task.inputs(batch, torch.Generator().manual_seed(0))
        idx = task.vae.quantize.f_to_idx(f)
        with torch.no_grad():
            logits = task.model(y, task.vae.quantize.idx_to_var_input(idx))
        ce = [torch.nn.functional.cross_entropy(lg.transpose(1, 2), t)
              for lg, t in zip(logits.split([t.shape[1] for t in idx], 1), idx, strict=True)]
        return loss.item(), ce, torch.cat(idx, 1).shape[1]

    plain, ce, L = loss_of(0.0)
    assert plain == pytest.approx(sum(c.item() * p * p for c, p in zip(ce, (1, 2, 4), strict=True)) / L, rel=1e-5)
    equal, ce, _ = loss_of(1.0)
    assert equal == pytest.approx(sum(c.item() for c in ce) / 3, rel=1e-5) and abs(equal - plain) > 1e-3


def test_generator_shift_encodes_moved_images(images, tokenizer_run, tmp_path):
    """``--shift`` on a generator stage: each batch's images are moved as ``augment`` moves them (the step's
    generator decides) and encoded anew, so it refuses cached latents."""
    vae = train.load_tokenizer(tokenizer_run["out"])
    opts = ["var", "--data", str(images), "--out", str(tmp_path / "o"), "--tokenizer", str(tokenizer_run["out"]),
            "--shift", "2", "--batch-size", "8", "--depth", "1", "--width", "32"]
    with pytest.raises(SystemExit, match="--no-cache-latents"):
        train.TASKS["var"](train.build_parser().parse_args(opts), None, "cpu")
    task = train.TASKS["var"](train.build_parser().parse_args(opts + ["--no-cache-latents"]), None, "cpu")
    batch = next(task.batches(0, 0, 1))
    f, y = task.inputs(batch, torch.Generator().manual_seed(3))
    assert torch.equal(task.inputs(batch, torch.Generator().manual_seed(3))[0], f)  # a resumed step repeats it
    with torch.no_grad():
        moved = vae.encode(train.augment(batch[0], False, 2, torch.Generator().manual_seed(3))).float()
        still = vae.encode(batch[0]).float()
    assert torch.equal(y, batch[1]) and torch.allclose(f, moved, atol=1e-6)
    assert not torch.allclose(f, still, atol=1e-3)


def test_index_batches_shard_seed_and_resume():
    a = train.index_batches(20, 3, seed=1)
    first = [next(a) for _ in range(14)]  # 6 batches per epoch: covers 2+ epochs
    assert len({int(i) for b in first[:6] for i in b}) == 18  # one epoch: no repeats
    assert not torch.equal(torch.cat(first[:6]), torch.cat(first[6:12]))  # reshuffled per epoch
    resumed = train.index_batches(20, 3, seed=1, start=8)
    assert all(torch.equal(next(resumed), b) for b in first[8:])
    r0, r1 = (list(zip(range(3), train.index_batches(20, 3, 1, rank=r, world=2), strict=False)) for r in (0, 1))
    assert not {int(i) for _, b in r0 for i in b} & {int(i) for _, b in r1 for i in b}
    with pytest.raises(SystemExit, match="fewer than one batch"):
        next(train.index_batches(5, 8, 0))


def test_class_balance_sets_each_class_share_and_resumes(images, tokenizer_run, tmp_path):
    """``--class-balance b``: each class is drawn in proportion to its image count to the power 1 - b (0: the
    data's own mix, 1: classes evenly), epoch by epoch from the seed, so a resumed run draws the same; the
    generator stages draw their cached batches with those weights."""
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    assert train.class_weights(labels, 0.0) is None
    for balance, expect in ((1.0, [1 / 3] * 3), (0.5, [c ** 0.5 / sum(k ** 0.5 for k in (60, 30, 10))
                                                       for c in (60, 30, 10)])):
        order = train.index_batches(100, 10, seed=2, weights=train.class_weights(labels, balance))
        drawn = torch.cat([next(order) for _ in range(400)])
        shares = torch.bincount(labels[drawn], minlength=3).double() / len(drawn)
        assert torch.allclose(shares, torch.tensor(expect, dtype=torch.float64), atol=0.02), (balance, shares)
    w = train.class_weights(labels, 1.0)
    first = [b for _, b in zip(range(25), train.index_batches(100, 10, seed=2, weights=w), strict=False)]
    resumed = train.index_batches(100, 10, seed=2, start=13, weights=w)
    assert all(torch.equal(next(resumed), b) for b in first[13:])

    args = train.build_parser().parse_args(["var", "--data", str(images), "--out", str(tmp_path / "o"),
                                            "--tokenizer", str(tokenizer_run["out"]), "--class-balance", "1",
                                            "--batch-size", "8", "--depth", "1", "--width", "32"])
    task = train.TASKS["var"](args, None, "cpu")
    f, y = task.cached
    weighted = train.index_batches(len(y), 8, seed=0, weights=train.class_weights(y, 1.0))
    batches = task.batches(0, 0, 1)
    for _ in range(6):
        idx = next(weighted)
        fb, yb = next(batches)
        assert torch.equal(yb, y[idx]) and torch.equal(fb, f[idx])
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["var", "--data", "d", "--out", "o", "--tokenizer", "t", "--class-balance",
                                         "1.5"])


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    args = type("A", (), dict(lr=1.0, warmup=10, steps=110))()
    assert train.lr_at(0, args) == pytest.approx(0.1)
    assert train.lr_at(9, args) == pytest.approx(1.0)
    assert train.lr_at(60, args) == pytest.approx(0.55)
    assert train.lr_at(110, args) == pytest.approx(0.1) and train.lr_at(500, args) == pytest.approx(0.1)


TINY_FRACTAL = dict(img_size_list=(8, 4, 1), embed_dim_list=(32, 32, 16), num_blocks_list=(1, 1, 1),
                    num_heads_list=(2, 2, 2))


def test_fractalgen_stage_learns_resumes_exactly_and_exports(images, tmp_path):
    opts = dict(data=images, steps=60, lr=3e-3, generator_types=("mar", "mar", "ar"), num_conds=5, **TINY_FRACTAL,
                **FAST)
    stopped = train.run("fractalgen", out=tmp_path / "a", max_minutes=0, **opts)
    assert stopped["stopped"] == "time" and stopped["step"] == 1
    resumed = train.run("fractalgen", out=tmp_path / "a", **opts)
    assert resumed["step"] == 60 and [row["step"] for row in resumed["history"]] == list(range(2, 61))
    straight = train.run("fractalgen", out=tmp_path / "b", **opts)
    assert losses(stopped) + losses(resumed) == losses(straight)  # data order and every draw continue exactly
    assert_goes_down(losses(straight), 0.5)
    pipe = edifice.load(tmp_path / "a" / "export", device="cpu")
    assert pipe.kind == "fractalgen" and pipe.class_names == ["class0", "class1", "class2"]
    assert pipe.model.cfg.generator_type_list == ["mar", "mar", "ar"] and pipe.model.cfg.class_num == 3
    img = pipe.generate(labels=[0, 2], seed=0, num_iter_list=[4, 4], cfg=2.0)
    assert img.shape == (2, 3, 8, 8) and img.min() >= 0 and img.max() <= 1
    assert "## Training" in (tmp_path / "a" / "export" / "README.md").read_text()


def test_fractalgen_stage_takes_any_generator_mix_the_authors_run(images, tmp_path):
    r = train.run("fractalgen", data=images, out=tmp_path / "ar", steps=2, generator_types=("ar", "ar", "ar"),
                  num_conds=1, **TINY_FRACTAL, **FAST)
    pipe = edifice.load(r["export"], device="cpu")
    assert pipe.model.cfg.generator_type_list == ["ar", "ar", "ar"]
    assert pipe.generate(labels=[1], seed=0).shape == (1, 3, 8, 8)
    with pytest.raises(SystemExit, match="num_conds"):  # a MAR under an AR level gets one condition
        train.run("fractalgen", data=images, out=tmp_path / "bad", steps=1, generator_types=("ar", "mar", "ar"),
                  num_conds=5, **TINY_FRACTAL, **FAST)


def test_init_fine_tunes_a_generator_from_its_checkpoint(images, tokenizer_run, tmp_path):
    """``--init`` starts a new run from an exported checkpoint: its first loss is the source's last, far below a
    fresh start; a generator that does not fit the tokenizer or the family is refused."""
    opts = dict(data=images, tokenizer=tokenizer_run["out"], lr=2e-3, **TINY_TRANSFORMER, **FAST)
    source = train.run("var", out=tmp_path / "src", steps=30, **opts)
    tuned = train.run("var", out=tmp_path / "tuned", steps=5, init=source["export"], **opts)
    fresh = train.run("var", out=tmp_path / "fresh", steps=5, **opts)
    assert losses(tuned)[0] < 0.8 * losses(fresh)[0]
    assert losses(tuned)[0] == pytest.approx(np.mean(losses(source)[-5:]), rel=0.25)
    assert "--init" in (tmp_path / "tuned" / "export" / "README.md").read_text()
    drop_rate = lambda r: json.loads((r["export"] / "config.json").read_text())["model"]["drop_rate"]  # noqa: E731
    assert drop_rate(source) == drop_rate(tuned) == 0.0  # --init keeps the source's rate unless told
    redropped = train.run("var", out=tmp_path / "redrop", steps=1, init=source["export"], dropout=0.2, **opts)
    assert drop_rate(redropped) == 0.2
    from_checkpoint, from_run = (train.load_tokenizer(p).state_dict() for p in (source["export"], tokenizer_run["out"]))
    assert all(torch.equal(from_checkpoint[k], v) for k, v in from_run.items())  # --tokenizer takes a checkpoint
    mar_tok = train.run("tokenizer", data=images, out=tmp_path / "tok1", steps=2, scales=(4,), **TINY_TOKENIZER,
                        **FAST)
    with pytest.raises(SystemExit, match="not a discrete MAR"):
        train.run("mar", data=images, out=tmp_path / "bad", tokenizer=mar_tok["out"], steps=1,
                  init=source["export"])
    with pytest.raises(SystemExit, match="init"):
        train.run("var", data=images, out=tmp_path / "bad2", tokenizer=tokenizer_run["out"], steps=1,
                  init=tmp_path / "missing")


def test_a_fine_tune_exports_the_sampling_settings_of_its_init(images, tokenizer_run, tmp_path):
    """An --init run's export recommends the init checkpoint's sampling settings, and a resumed run's export
    still does (they travel in the run state); a new model's export recommends none."""
    opts = dict(data=images, tokenizer=tokenizer_run["out"], **TINY_TRANSFORMER, **FAST)
    source = train.run("var", out=tmp_path / "src", steps=2, **opts)
    assert edifice.load(source["export"], device="cpu").defaults == {}
    settings = tmp_path / "settings"
    assert main(["resave", str(source["export"]), "--out", str(settings), "--set", "cfg=2.5", "top_k=7"]) == 0
    tuned = train.run("var", out=tmp_path / "tuned", steps=1, init=settings, **opts)
    assert edifice.load(tuned["export"], device="cpu").defaults == {"cfg": 2.5, "top_k": 7}
    resumed = train.run("var", out=tmp_path / "tuned", steps=2, **opts)  # from the state; no --init this time
    assert resumed["step"] == 2
    assert edifice.load(resumed["export"], device="cpu").defaults == {"cfg": 2.5, "top_k": 7}


SUBGROUPS = {"class0.left": ("class0", range(4)), "class0.right": ("class0", range(4, 8)),
             "class1.all": ("class1", range(8)), "class2.all": ("class2", range(8))}


def subgroup_tree(images: Path, root: Path, emoji: bool = False) -> Path:
    """``images`` filed by subgroup as ``python -m edifice.data emoji --label subgroup`` does (class0 split in
    two), or with ``emoji`` one folder per image beneath them, as ``--label emoji`` files each emoji."""
    classes = []
    for folder, (group, ids) in SUBGROUPS.items():
        for i in ids:
            leaf = f"{folder}.{i}" if emoji else folder
            (root / leaf).mkdir(parents=True, exist_ok=True)
            shutil.copy(images / group / f"{i}.png", root / leaf / f"{i}.png")
            entry = {"folder": leaf, "name": folder.split(".")[1], "group": group}
            if emoji:
                entry.update(name=f"image {i}", subgroup=folder.split(".")[1])
            classes += [entry] if entry not in classes else []
    (root / "manifest.json").write_text(json.dumps({"classes": classes}))
    return root


def test_subgroup_tree_widens_an_init_generator_and_exports_its_subclasses(images, tokenizer_run, tmp_path):
    """On a --subgroups tree an --init generator trained on the categories gets one label per subgroup, each
    starting as its category's; the export takes categories and draws subgroups. On a tree of emoji beneath those
    subgroups, that generator widens again, each emoji starting as its subgroup's."""
    opts = dict(tokenizer=tokenizer_run["out"], **TINY_TRANSFORMER, **FAST)
    source = train.run("var", data=images, out=tmp_path / "src", steps=3, **opts)
    tree = subgroup_tree(images, tmp_path / "sub")
    tuned = train.run("var", data=tree, out=tmp_path / "tuned", steps=1, lr=0.0, init=source["export"], **opts)
    before, after = (edifice.load(r["export"], device="cpu") for r in (source, tuned))
    assert after.class_names == ["class0", "class1", "class2"] and after.num_classes == 3
    assert after.subclasses.names == ("left", "right", "all", "all") and after.subclasses.classes == (0, 0, 1, 2)
    assert after.subclasses.weights == (4.0, 4.0, 8.0, 8.0) and after.model.num_classes == 4
    emb = before.model.class_emb.weight
    assert torch.equal(after.model.class_emb.weight, emb[[0, 0, 1, 2, 3]])  # lr 0: as widened
    steps = list(after.stream(labels=0, batch_size=6, seed=1, preview=False))
    assert set(steps[-1].labels.tolist()) <= {0, 1}
    assert "4 subclasses" in (tuned["export"] / "README.md").read_text()
    again = train.run("var", data=tree, out=tmp_path / "again", steps=1, init=tuned["export"], **opts)
    assert edifice.load(again["export"], device="cpu").subclasses == after.subclasses  # no second widening
    with pytest.raises(SystemExit, match="other labels"):
        train.run("var", data=images, out=tmp_path / "bad", steps=1, init=tuned["export"], **opts)
    # one step finer: each image its own label, starting as its (class, subgroup)'s; both "all"s kept apart
    leaves = subgroup_tree(images, tmp_path / "leaves", emoji=True)
    fine = train.run("var", data=leaves, out=tmp_path / "fine", steps=1, lr=0.0, init=tuned["export"], **opts)
    emoji = edifice.load(fine["export"], device="cpu")
    assert emoji.class_names == after.class_names and emoji.model.num_classes == 24
    assert emoji.subclasses.classes == (0,) * 8 + (1,) * 8 + (2,) * 8 and set(emoji.subclasses.weights) == {1.0}
    rows = [0] * 4 + [1] * 4 + [2] * 8 + [3] * 8 + [4]
    assert torch.equal(emoji.model.class_emb.weight, after.model.class_emb.weight[rows])
    assert "24 subclasses" in (fine["export"] / "README.md").read_text()
    with pytest.raises(SystemExit, match="do not refine"):  # emoji of subgroups the init never learned
        shutil.move(leaves / "class0.left.1", leaves / "class0.middle.1")
        m = json.loads((leaves / "manifest.json").read_text())
        for c in m["classes"]:
            if c["folder"] == "class0.left.1":
                c.update(folder="class0.middle.1", subgroup="middle")
        (leaves / "manifest.json").write_text(json.dumps(m))
        train.run("var", data=leaves, out=tmp_path / "bad3", steps=1, init=tuned["export"], **opts)


def test_label_lr_scales_the_class_embedding_step_alone(images, tokenizer_run, tmp_path):
    """``--label-lr`` multiplies the learning rate of the class-label embedding only: at 0 the labels stay as
    they started while every other trained weight moves; at 1 the optimizer has no group of its own for them."""
    opts = dict(tokenizer=tokenizer_run["out"], **TINY_TRANSFORMER, **FAST, ema=0.0)
    source = train.run("var", data=images, out=tmp_path / "src", steps=1, **opts)
    frozen = train.run("var", data=images, out=tmp_path / "frozen", steps=2, init=source["export"], label_lr=0.0,
                       lr=1e-2, **opts)
    before, after = (edifice.load(r["export"], device="cpu").model.state_dict() for r in (source, frozen))
    assert torch.equal(before["class_emb.weight"], after["class_emb.weight"])
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, moved
    model = edifice.load(source["export"], device="cpu").model
    assert [g["lr_scale"] for g in train.param_groups(model, 0.05)] == [1.0, 1.0]
    groups = train.param_groups(model, 0.05, label_lr=10.0)
    assert groups[2] == {"params": [model.class_emb.weight], "weight_decay": 0.0, "lr_scale": 10.0}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with pytest.raises(SystemExit, match="no class-label embedding"):  # a tokenizer has no labels to scale
        train.param_groups(edifice.load(source["export"], device="cpu").tokenizer, 0.0, label_lr=10.0)


def test_redrop_changes_the_dropout_rate_and_keeps_every_weight():
    """A model rebuilt with another dropout rate has the same weights and, in eval mode, the same outputs; in
    training mode its dropout layers now use the new rate."""
    from edifice.generative import mar

    model = mar.MAR(mar.MARConfig(vocab_size=17, embed_dim=32, num_layers=2, num_heads=4, seq_len=4, dropout=0.0,
                                  num_classes=3)).eval()
    tokens, labels = torch.randint(0, 17, (2, 4)), torch.tensor([0, 2])
    dropped = train.redrop(model, 0.5, "dropout")
    assert dropped.cfg.dropout == 0.5 and dropped.training and train.redrop(model, None, "dropout") is model
    assert dropped.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, dropped.state_dict()[k]) for k, v in model.state_dict().items())
    rates = {m.p for m in dropped.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.5}
    with torch.no_grad():
        assert torch.equal(dropped.eval()(tokens, labels), model(tokens, labels))


def test_decoder_only_keeps_every_token_and_resave_swaps_it_in(images, tokenizer_run, tmp_path):
    """``tokenizer --decoder-only`` trains only the decoder (tokens unchanged, reconstruction better), and
    ``resave --tokenizer`` puts it into a generator's checkpoint; a tokenizer that encodes differently is refused."""
    from edifice.__main__ import main as cli

    gen = train.run("var", data=images, out=tmp_path / "var", tokenizer=tokenizer_run["out"], steps=3,
                    **TINY_TRANSFORMER, **FAST)
    dec = train.run("tokenizer", data=images, out=tmp_path / "dec", steps=30, lr=2e-3, decoder_only=True,
                    init=tokenizer_run["out"], **FAST)
    before, after = train.load_tokenizer(tokenizer_run["out"]), train.load_tokenizer(dec["out"])
    x = torch.stack([ImageFolder(images, 8)[i][0] for i in range(24)])
    ids = before.img_to_idx(x)
    assert all(torch.equal(a, b) for a, b in zip(ids, after.img_to_idx(x), strict=True))
    err = [(vae.idx_to_img(ids) - x).square().mean().item() for vae in (before, after)]
    assert err[1] < 0.9 * err[0]
    assert cli(["resave", str(gen["export"]), "--out", str(tmp_path / "swapped"), "--tokenizer", str(dec["out"])]) == 0
    swapped = edifice.load(tmp_path / "swapped", device="cpu")
    assert torch.equal(swapped.tokenizer.decoder.conv_out.weight, after.decoder.conv_out.weight)
    assert cli(["resave", str(gen["export"]), "--out", str(tmp_path / "no"), "--tokenizer",
                str(tmp_path / "tok-other")]) == 1  # not a tokenizer folder
    other = train.run("tokenizer", data=images, out=tmp_path / "other", steps=2, scales=(1, 2, 4), seed=1,
                      **TINY_TOKENIZER, **FAST)
    assert cli(["resave", str(gen["export"]), "--out", str(tmp_path / "no"), "--tokenizer", str(other["out"])]) == 1
    assert not (tmp_path / "no").exists()
    with pytest.raises(SystemExit, match="--init"):
        train.run("tokenizer", data=images, out=tmp_path / "noinit", steps=1, decoder_only=True, **TINY_TOKENIZER)


def test_augment_mirrors_and_moves_with_white_fill_and_repeats_from_its_seed(images, tokenizer_run, tmp_path):
    """``--flip``/``--shift``: each image is itself, its mirror, or moved by at most ``shift`` px with white
    where it uncovers; the same generator seed gives the same batch; a decoder fine-tune takes the flags."""
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    assert torch.equal(train.augment(x, False, 0, torch.Generator().manual_seed(0)), x)
    a = train.augment(x, True, 0, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(a[i], x[i].flip(-1)) for i in range(16)]
    assert all(m or torch.equal(a[i], x[i]) for i, m in enumerate(mirrored)) and 3 <= sum(mirrored) <= 13
    s = train.augment(x, False, 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2,) * 4, value=1.0)
    offsets = [next((dy, dx) for dy in range(5) for dx in range(5)
                    if torch.equal(s[i], padded[i, :, dy:dy + 8, dx:dx + 8])) for i in range(16)]
    assert len(set(offsets)) > 3
    assert torch.equal(s, train.augment(x, False, 2, torch.Generator().manual_seed(1)))
    dec = train.run("tokenizer", data=images, out=tmp_path / "dec", steps=3, decoder_only=True, flip=True, shift=2,
                    init=tokenizer_run["out"], **FAST)
    assert dec["step"] == 3 and json.loads((dec["out"] / "run.json").read_text())["options"]["shift"] == 2
