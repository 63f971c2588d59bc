"""FractalGen against the official code's golden vectors (tests/fixtures/fractalgen, copied unchanged from
shared/golden/fractalgen; its README lists the traps): sampled pixel ids identical, every streamed canvas equal,
the random draws the official ones in number, kind and order, forward tensors within 1e-5; loading, converting,
presets and the streaming records."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy
import torch
from safetensors.torch import load_file

import edifice
from edifice import presets
from edifice.errors import CheckpointError, CheckpointNotFoundError
from edifice.generative.fractalgen import (
    CONFIGS,
    FractalGenConfig,
    FractalGenConfigError,
    FractalGenStep,
    mask_rate_draws,
    stream_pixels,
)
from edifice.generative.mar_diffusion import mask_lengths
from edifice.official_fractalgen import infer_config, read_checkpoint

FIX = Path(__file__).parent / "fixtures" / "fractalgen"
ROOT = Path(__file__).parents[1]
CONF = json.loads((FIX / "config.json").read_text())
NAMES = list(CONF["configs"])
CASES = [(name, case["name"]) for name in NAMES for case in CONF["configs"][name]["sample_cases"]]
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def sample_golden():
    return load_file(FIX / "golden_sample.safetensors")


@pytest.fixture(scope="module")
def forward_golden():
    return load_file(FIX / "golden_forward.safetensors")


@pytest.fixture(scope="module")
def rng_golden():
    return load_file(FIX / "golden_rng_draws.safetensors")


def constructor(name: str) -> dict:
    return CONF["configs"][name]["constructor"]


def pipeline(name: str):
    return edifice.load_official_fractalgen(FIX / CONF["configs"][name]["checkpoint"], constructor(name), device="cpu")


def case_of(name: str, case: str) -> dict:
    return next(c for c in CONF["configs"][name]["sample_cases"] if c["name"] == case)


def sampling_args(c: dict) -> dict:
    return dict(labels=c["labels"], num_iter_list=c["num_iter_list"], cfg=c["cfg"], cfg_schedule=c["cfg_schedule"],
                temperature=c["temperature"], filter_threshold=c["filter_threshold"], seed=c["seed"])


# -- sampling -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,case", CASES)
def test_sampled_pixels_and_canvases_are_the_official_ones(name, case, sample_golden):
    pipe, c = pipeline(name), case_of(name, case)
    g = {k.removeprefix(f"{name}.{case}."): v for k, v in sample_golden.items() if k.startswith(f"{name}.{case}.")}
    records = list(pipe.stream(**sampling_args(c)))
    top = pipe.model.cfg.seq_len(0)
    kinds = pipe.model.cfg.generator_type_list
    assert len(records) == (top if kinds[0] == "ar" else min(top, c["num_iter_list"][0]))
    last = records[-1]
    assert torch.equal(last.tokens, g["image_uint8"])  # the sampled pixel ids, exactly
    assert torch.equal(last.image, g["image_uint8"].float() / 255)
    torch.testing.assert_close(last.canvas, g["image"], atol=1e-6, rtol=0)  # the official normalised image
    assert torch.equal(pipe.generate(**sampling_args(c)), last.image)
    if "canvas" in g:  # every canvas the official visualize_patch received
        assert len(records) == g["canvas"].shape[0]
        for record, canvas in zip(records, g["canvas"], strict=True):
            torch.testing.assert_close(record.canvas, canvas, atol=1e-6, rtol=0)
            assert torch.equal(record.image, torch.where(record.known[:, None], record.tokens.float() / 255,
                                                         MEAN[None, :, None, None].expand_as(record.image)))
    if "L0.step_pred" in g:  # MAR top level: which patches each step filled
        B = last.done.shape[0]
        for record, pred, mask in zip(records, g["L0.step_pred"], g["L0.step_mask"], strict=True):
            assert torch.equal(record.filled.reshape(B, -1), pred.bool())
            assert torch.equal(record.done.reshape(B, -1) & ~record.filled.reshape(B, -1), ~mask.bool())
    # the guidance each top-level step used (float32 under a MAR top, float64 under an AR one)
    assert [r.cfg for r in records] == g["L0.child_cfg"].tolist()


@pytest.mark.parametrize("name,case", CASES)
def test_random_draws_are_the_official_ones(name, case, rng_golden):
    """Replaying the recorded draws (kind and shape, in order) on a fresh generator leaves it in the state our
    sampler leaves its own: no draw missing, added or reordered."""
    pipe, c = pipeline(name), case_of(name, case)
    ours = torch.Generator().manual_seed(c["seed"])
    list(stream_pixels(pipe.model, **sampling_args(c), generator=ours))
    replay = torch.Generator().manual_seed(c["seed"])
    prefix = f"{name}.{case}.rng."
    for kind, (rows, cols) in zip(rng_golden[prefix + "kind"].tolist(), rng_golden[prefix + "shape"].tolist(),
                                  strict=True):
        shape = (rows,) if cols == -1 else (rows, cols)
        if kind == 0:
            torch.rand(shape, generator=replay)
        elif kind == 1:
            torch.randn(shape, generator=replay)
        else:
            torch.multinomial(torch.ones(rows, 256), 1, generator=replay)
    assert torch.equal(ours.get_state(), replay.get_state())


def test_stored_draw_values_match(rng_golden, sample_golden):
    """For the stored-value runs, the multinomial outputs are our sampled ids in order (first draw: red)."""
    name, case = "fmar3", "s1_cfg2.5_linear"
    pipe, c = pipeline(name), case_of(name, case)
    ids = rng_golden[f"{name}.{case}.rng.i64"]
    assert ids.numel() > 0 and ids.max() <= 255
    last = list(pipe.stream(**sampling_args(c)))[-1]
    assert torch.equal(last.tokens, sample_golden[f"{name}.{case}.image_uint8"])


@pytest.mark.parametrize("name", NAMES)
def test_streaming_inside_the_levels(name, sample_golden):
    """stream_depth = d adds one record per step of each level 1..d (the pixel head: one per call)."""
    pipe, c = pipeline(name), case_of(name, "s0_cfg1")
    K = pipe.model.cfg.num_levels
    coarse = list(pipe.stream(**sampling_args(c)))
    fine = list(pipe.stream(**sampling_args(c), stream_depth=K - 1))
    for level in range(1, K - 1):  # one record per step of level k: the steps that called level k + 1
        calls = sample_golden[f"{name}.s0_cfg1.L{level}.child_cfg"].numel()
        assert sum(r.level == level for r in fine) == calls
    assert sum(r.level == K - 1 for r in fine) == sample_golden[f"{name}.s0_cfg1.L{K - 2}.child_cfg"].numel()
    tops = [r for r in fine if r.level == 0]
    assert len(tops) == len(coarse)
    for a, b in zip(tops, coarse, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.canvas, b.canvas)
    drawn = [int(r.known.sum()) for r in fine]
    assert drawn == sorted(drawn) and drawn[-1] == fine[-1].known.numel()
    assert all(len(r.path) == r.level + 1 for r in fine)
    inner = next(r for r in fine if r.level == K - 1 and 0 < r.known.sum() < r.known.numel())
    assert inner.filled.any() and not (inner.done & inner.filled).any()  # this step's patches are in progress
    assert isinstance(inner, FractalGenStep) and not inner.final and fine[-1].final


def test_preview_off_leaves_images_out_but_the_last():
    pipe = pipeline("fmar3")
    records = list(pipe.stream(**sampling_args(case_of("fmar3", "s0_cfg1")), preview=False))
    assert [r.image is None for r in records] == [True] * (len(records) - 1) + [False]


def test_unmask_schedules_are_the_official_ones():
    schedules = json.loads((FIX / "unmask_schedules.json").read_text())
    for key, entry in schedules.items():
        if not key.startswith("seq"):
            continue
        L, S = (int(x) for x in key.removeprefix("seq").split("_iter"))
        lengths, left, counts = mask_lengths(L, min(S, L)), L, []
        for s, m in enumerate(lengths):
            now = left if s == len(lengths) - 1 else left - m
            counts.append(now)
            left -= now
        assert counts == entry["tokens_predicted_per_step"], key


# -- forward (training loss) --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_matches_the_official_loss(name, mode, forward_golden, rng_golden):
    pipe = pipeline(name)
    model = pipe.model.train(mode == "train")
    seed = CONF["configs"][name]["forward_runs"][mode]["seed"]
    rates = None
    if mode == "train" and f"{name}.fwd_train.np.truncnorm" in rng_golden:  # scipy-version dependent: injected
        sizes = rng_golden[f"{name}.fwd_train.np.truncnorm_sizes"].tolist()
        rates = np.split(rng_golden[f"{name}.fwd_train.np.truncnorm"].numpy(), np.cumsum(sizes)[:-1])
    trace = {}
    with torch.no_grad():
        loss = model(forward_golden[f"{name}.input.images"], forward_golden[f"{name}.input.labels"],
                     rng=torch.Generator().manual_seed(seed), np_rng=np.random.RandomState(seed), mask_rates=rates,
                     trace=trace)
    prefix = f"{name}.{mode}."
    torch.testing.assert_close(loss, forward_golden[prefix + "loss"], atol=1e-5, rtol=1e-5)
    compared = 0
    for key, want in forward_golden.items():
        short = key.removeprefix(prefix)
        if not key.startswith(prefix) or short not in trace:
            continue
        got = trace[short]
        got = got[:want.shape[0]] if want.dim() else got  # some are stored for their first rows only
        if want.dtype == torch.int64:
            assert torch.equal(got.long(), want), key
        else:
            torch.testing.assert_close(got.float(), want.float(), atol=1e-5, rtol=1e-5, msg=key)
        compared += 1
    assert compared >= 15
    for level in range(pipe.model.cfg.num_levels - 1):
        if f"{prefix}L{level}.num_masked" in forward_golden:
            assert trace[f"L{level}.mask"].sum(1).eq(forward_golden[f"{prefix}L{level}.num_masked"]).all()


@pytest.mark.skipif(scipy.__version__ != CONF["environment"].get("scipy", scipy.__version__),
                    reason="truncnorm draws depend on the scipy version")
def test_training_mask_rates_drawn_like_scipy(rng_golden):
    sizes = rng_golden["fmar3.fwd_train.np.truncnorm_sizes"].tolist()
    rs = np.random.RandomState(200)
    drawn = np.concatenate([mask_rate_draws(n, rs) for n in sizes])
    np.testing.assert_array_equal(drawn, rng_golden["fmar3.fwd_train.np.truncnorm"].numpy())


# -- configurations -----------------------------------------------------------------------------------------------
def test_official_configs_build_the_released_state_dicts():
    from accelerate import init_empty_weights

    shapes = json.loads((FIX / "official_state_dict_shapes.json").read_text())["models"]
    for name, cfg in CONFIGS.items():
        with init_empty_weights():
            sd = edifice.FractalGen(cfg).state_dict()
        assert {k: list(v.shape) for k, v in sd.items()} == shapes[name]["state_dict_shapes"], name
        assert sum(v.numel() for v in sd.values()) == shapes[name]["num_params"]
        assert infer_config(sd) == cfg  # everything but the heads shows in the weights; the heads are official


@pytest.mark.parametrize("change,message", [
    (dict(generator_type_list=["ar", "mar", "ar"], num_conds=5), "MAR under an AR level.*num_conds=1"),
    (dict(num_conds=0), "num_conds must be 1..5"),
    (dict(num_conds=6), "num_conds must be 1..5"),
    (dict(generator_type_list=["ar", "ar", "ar"], num_heads_list=[4, 4, 2], embed_dim_list=[24, 16, 16]),
     "head width 6: its 2-D RoPE needs a multiple of 4"),
    (dict(img_size_list=[16, 3, 1]), "larger multiple of the next"),
    (dict(generator_type_list=["mar", "gru", "ar"]), "each level is 'ar' or 'mar'"),
    (dict(num_blocks_list=[2, 2]), "same length"),
])
def test_configs_the_official_code_cannot_run_are_refused(change, message):
    with pytest.raises(FractalGenConfigError, match=message):
        FractalGenConfig.from_official({**constructor("fmar3"), **change})


def test_every_runnable_mix_samples():
    """Mixes the authors' code runs (README section 8): AR under MAR with num_conds 5, MAR under AR with 1, the
    seed note's ar, ar, mar, mar."""
    for types, num_conds in ((["mar", "ar", "ar", "ar"], 5), (["ar", "mar", "ar", "ar"], 1),
                             (["ar", "ar", "mar", "mar"], 1), (["mar", "mar", "mar", "ar"], 2)):
        cfg = FractalGenConfig([8, 4, 2, 1], [16, 16, 16, 8], [1, 1, 1, 1], [2, 2, 2, 2], types, class_num=3,
                               guiding_pixel=True, num_conds=num_conds)
        torch.manual_seed(0)
        model = edifice.FractalGen(cfg).eval()
        last = list(stream_pixels(model, labels=[0, 2], num_iter_list=[2, 2, 2], cfg=2.0, seed=1))[-1]
        assert last.known.all() and last.tokens.shape == (2, 3, 8, 8)


def test_bad_sampling_settings_are_explained():
    model = pipeline("fmar3").model
    for kwargs, message in ((dict(num_iter_list=[4]), "one entry per generator level"),
                            (dict(num_iter_list=[4, 0]), "must be >= 1"), (dict(cfg=0.5), "cfg must be >= 1"),
                            (dict(temperature=0.0), "temperature must be > 0"),
                            (dict(cfg_schedule="cosine"), "unknown cfg_schedule"),
                            (dict(stream_depth=3), "stream_depth must be 0..2"),
                            (dict(labels=[11]), "unknown class 11")):
        with pytest.raises(ValueError, match=message):
            next(stream_pixels(model, **{"num_iter_list": [4, 3], **kwargs}))


# -- loading, converting, presets ---------------------------------------------------------------------------------
def test_weights_read_from_the_training_checkpoint_and_inferred():
    sd, args = read_checkpoint(FIX / "tiny_fmar4gp_checkpoint-last.pth")
    assert args.r_weight == 3.0 and "fake_latent" in sd
    with pytest.raises(CheckpointError, match=r"attention heads of width\(s\) \[16, 24, 32\].*num_heads_list"):
        edifice.load_official_fractalgen(FIX / "tiny_fmar4gp_checkpoint-last.pth")
    cfg = infer_config(sd, args, {"num_heads_list": [4, 3, 2, 2]})
    assert cfg == FractalGenConfig.from_official(constructor("fmar4gp"))
    with pytest.raises(CheckpointError, match="do not fit the config|has shape"):
        edifice.load_official_fractalgen(FIX / "tiny_fmar3_checkpoint-last.pth", "fractalmar_in64")
    with pytest.raises(CheckpointError, match="unknown FractalGen model 'fractalmar_in32'"):
        edifice.load_official_fractalgen(FIX / "tiny_fmar3_checkpoint-last.pth", "fractalmar_in32")


def test_not_a_fractalgen_checkpoint(tmp_path):
    torch.save({"model": {"z_proj.weight": torch.zeros(2, 2)}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not a FractalGen checkpoint"):
        edifice.load_official_fractalgen(tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        edifice.load_official_fractalgen(tmp_path / "missing.pth")


def convert(out: Path, name: str = "fmar4gp") -> subprocess.CompletedProcess:
    config = json.dumps({"num_heads_list": constructor(name)["num_heads_list"]})
    return subprocess.run([sys.executable, "-m", "edifice", "convert", "--fractalgen",
                           str(FIX / CONF["configs"][name]["checkpoint"]), "--fractalgen-config", config, "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_convert_then_load_round_trip_and_from_the_hub(tmp_path, fake_hub, sample_golden):
    done = convert(tmp_path / "fg")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "fg" / "config.json").read_text())
    assert config["kind"] == "fractalgen" and config["model"]["num_heads_list"] == [4, 3, 2, 2]
    c = case_of("fmar4gp", "s1_cfg2.5_linear")
    golden = sample_golden["fmar4gp.s1_cfg2.5_linear.image_uint8"].float() / 255
    local = edifice.load(tmp_path / "fg", device="cpu")
    assert torch.equal(local.generate(**sampling_args(c)), golden)
    fake_hub.add_commit("edifice-test/fractal", {p.name: p.read_bytes() for p in (tmp_path / "fg").iterdir()})
    hub = edifice.load("edifice-test/fractal", device="cpu")
    assert hub.kind == "fractalgen" and torch.equal(hub.generate(**sampling_args(c)), golden)
    hub.defaults = {"cfg": 2.5}
    hub.save_pretrained(tmp_path / "again")  # what push_to_hub uploads
    assert edifice.load(tmp_path / "again", device="cpu").defaults == {"cfg": 2.5}


def test_convert_says_what_is_missing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "edifice", "convert", "--fractalgen",
                           str(FIX / "tiny_far3_checkpoint-last.pth"), "--out", str(tmp_path / "x")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "--fractalgen-config" in done.stderr and "Traceback" not in done.stderr


def test_presets_read_the_authors_layout_and_say_where_files_are(tmp_path):
    names = ["fractalar-in64", "fractalmar-in64", "fractalmar-base-in256", "fractalmar-large-in256",
             "fractalmar-huge-in256"]
    for name in names:
        p = presets.get(name)
        assert p.kind == "fractalgen" and p.url.startswith("https://www.dropbox.com/") and p.classes == "imagenet"
        assert p.defaults["cfg_schedule"] == "linear" and p.config["name"].replace("_", "-") == name
    presets.register("test-fractal-missing", **{**_entry(presets.get("fractalmar-in64")), "path": str(tmp_path)})
    try:
        with pytest.raises(CheckpointNotFoundError, match=r"outside the Hugging Face Hub; download it from "
                                                          r"https://www\.dropbox\.com/.* and save it as "):
            edifice.load("test-fractal-missing", device="cpu")
    finally:
        presets.unregister("test-fractal-missing")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "checkpoint-last.pth").write_bytes((FIX / "tiny_mix4_checkpoint-last.pth").read_bytes())
    presets.register("test-fractal-tiny", kind="fractalgen", source="official-fractalgen", path=str(tmp_path),
                     files={"model": "tiny/checkpoint-last.pth"}, config={"constructor": constructor("mix4")},
                     defaults={"num_iter_list": [4, 4, 3], "temperature": 1.1})
    try:
        pipe = edifice.load("test-fractal-tiny", device="cpu")
        assert pipe.defaults["temperature"] == 1.1
        golden = load_file(FIX / "golden_sample.safetensors")["mix4.s0_cfg1.image_uint8"]
        assert torch.equal(pipe.generate(labels=[3, 7], seed=0), golden.float() / 255)
    finally:
        presets.unregister("test-fractal-tiny")


def _entry(p) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(p).items() if k != "name"}


# -- the family interface -----------------------------------------------------------------------------------------
def test_family_interface():
    pipe = pipeline("mix4")
    names = [c.name for c in pipe.controls()]
    assert names == ["num_iter_0", "num_iter_2", "cfg", "cfg_schedule", "temperature", "filter_threshold",
                     "stream_depth"]  # level 1 is AR: one step per patch, nothing to set
    c = case_of("mix4", "s0_cfg1")
    args = {k: v for k, v in sampling_args(c).items() if k != "num_iter_list"}
    records = list(pipe.stream(**args, num_iter_0=4, num_iter_1=4, num_iter_2=3, stream_depth=1))
    golden = load_file(FIX / "golden_sample.safetensors")["mix4.s0_cfg1.image_uint8"]
    assert torch.equal(records[-1].tokens, golden)
    inner = next(r for r in records if r.level == 1)
    levels = pipe.level_map(inner)
    assert set(levels.unique().tolist()) <= {0, 1, 2, 3} and (levels == 3).any() and (levels == 2).any()
    assert (levels >= 2).sum() == inner.filled.sum() * 4 ** 2  # this step's patches, 4x4 pixels each
    view = pipe.token_view(inner, target=64)
    assert view.size[1] == 64
    assert pipe.status(records[-1]).startswith("L0 4/4 · 256/256 pixels")


def test_token_stats_show_the_pixel_heads_entropy_of_every_drawn_pixel():
    pipe = pipeline("fmar3")
    args = sampling_args(case_of("fmar3", "s1_cfg2.5_linear"))
    records = list(pipe.stream(**args))
    golden = load_file(FIX / "golden_sample.safetensors")["fmar3.s1_cfg2.5_linear.image_uint8"]
    assert torch.equal(records[-1].tokens, golden)  # computing the statistics leaves the draws alone
    assert pipe.uncertainty_legend
    for rec in (records[1], records[-1]):
        stats = pipe.token_stats(rec)
        B, H, W = rec.known.shape
        assert stats.grid == (H, W) and stats.top_ids.shape == (B, H * W, 0)
        known = rec.known.flatten(1)
        assert torch.equal(stats.heat.isnan(), ~known) and torch.equal(stats.entropy.isnan(), ~known)
        assert (stats.heat[known] >= 0).all() and (stats.heat[known] <= 1).all()
        this = (pipe.level_map(rec) == 3).flatten(1)
        assert torch.equal(stats.drawn >= 0, this) and this.any()
        ids = rec.tokens.long().flatten(2)
        assert torch.equal(stats.drawn[this], (ids[:, 0] * 65536 + ids[:, 1] * 256 + ids[:, 2])[this])
        assert ((stats.drawn_prob[this] > 0) & (stats.drawn_prob[this] <= 1)).all()
        assert stats.drawn_prob[~this].isnan().all()
    b, n = this.nonzero()[0].tolist()
    info = stats.inspect(b, n // W, n % W)
    r, g, bl = rec.tokens[b, :, n // W, n % W].tolist()
    assert info["drawn"] == f"#{r:02x}{g:02x}{bl:02x}" and info["candidates"] == {}
    assert edifice.render.uncertainty_view(stats, target=64).size == (B * 64 + (B - 1) * 4, 64)


def test_token_stats_measure_the_distributions_sampled():
    """Temperature multiplies the logits: near 0 every colour is equally likely (entropy 3 log 256, the drawn
    one has probability 256^-3); very large, the draws are certain (entropy 0, probability 1) except where two
    values of the random weights' logits all but tie."""
    pipe = pipeline("far3")
    flat, sharp = (pipe.token_stats(list(pipe.stream(labels=[1], seed=0, temperature=t))[-1]) for t in (1e-6, 1e6))
    drawn = flat.drawn >= 0
    assert drawn.any() and torch.equal(drawn, sharp.drawn >= 0)
    assert flat.entropy.numpy() == pytest.approx(3 * np.log(256), abs=1e-3)
    assert flat.drawn_prob[drawn].numpy() == pytest.approx(256.0 ** -3, rel=1e-2)
    assert (sharp.entropy < 1e-3).float().mean() > 0.95 and (sharp.drawn_prob[drawn] > 0.999).float().mean() > 0.95
