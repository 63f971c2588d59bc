"""Halton-MaskGIT: parity with the authors' code on the golden vectors in tests/fixtures/maskgit_llamagen (copied
unchanged from shared/golden/maskgit_llamagen): forwards, schedules, Halton order, both samplers token for token
at every step, images; the authors' checkpoint layouts and released configs; the seed API on the model."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import edifice
from edifice import presets
from edifice.__main__ import main
from edifice.errors import CheckpointError
from edifice.generative import mar
from edifice.generative.maskgit import (
    SAMPLERS,
    MaskGIT,
    confidence_schedule,
    halton_order,
    halton_schedule,
    halton_temperatures,
)
from edifice.official_maskgit import RELEASES, check_shapes, load_official_maskgit, maskgit_config
from edifice.tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig

FIX = Path(__file__).parent / "fixtures" / "maskgit_llamagen"
CONFIG = json.loads((FIX / "config.json").read_text())
SCHEDULES = json.loads((FIX / "schedules.json").read_text())
SHAPES = json.loads((FIX / "official_state_dict_shapes.json").read_text())
VQ, MODEL = FIX / "tiny_vq_ds16_c2i.pt", FIX / "tiny_halton_maskgit.pth"
VQ_ARGS = {**CONFIG["vq"]["model_args"], "ch": CONFIG["vq"]["encoder_decoder_ch"],
           "num_res_blocks": CONFIG["vq"]["num_res_blocks"]}
TINY = {"vq": VQ_ARGS, "maskgit": CONFIG["maskgit"]["constructor"]}
K = CONFIG["maskgit"]["constructor"]["codebook_size"]
CASES = {c["name"]: c for c in CONFIG["confidence_cases"] + CONFIG["halton_cases"]}


@pytest.fixture(scope="module")
def pipe():
    return load_official_maskgit(VQ, MODEL, TINY, device="cpu")


@pytest.fixture(scope="module")
def g():
    return load_file(FIX / "golden_maskgit.safetensors")


def edifice_args(case: dict) -> dict:
    """The authors' sampler arguments as stream() takes them (their own names, plus edifice's cfg/num_steps)."""
    kw = dict(case["kw"])
    common = dict(labels=case["labels"], seed=case["seed"], cfg=kw.pop("w"), num_steps=kw.pop("step"))
    if "r_temp" in kw:
        return dict(sampler="confidence", **common, **kw)
    kw.pop("sched_pow")  # stored but unused by the authors' Halton sampler
    return dict(sampler="halton", **common, **kw)


# -- model ----------------------------------------------------------------------------------------------------------
def test_config_and_tied_head(pipe):
    c = pipe.model.cfg
    assert (c.input_size, c.hidden_dim, c.codebook_size, c.depth, c.heads, c.nclass, c.register) == (8, 48, 64, 2, 3,
                                                                                                      10, 1)
    assert c.ffn_hidden == CONFIG["maskgit"]["derived"]["ffn_hidden"]
    assert "head.weight" not in pipe.model.state_dict()
    assert sum(p.numel() for p in pipe.model.parameters()) == CONFIG["maskgit"]["num_params"]
    assert pipe.image_size == 128 and pipe.model.mask_id == K


def test_forward_logits(pipe, g):
    code = g["maskgit.forward.code"].flatten(1)
    labels = g["maskgit.forward.labels"]
    with torch.no_grad():
        for n in "ab":
            y = torch.where(g[f"maskgit.forward.drop_{n}"].bool(), pipe.num_classes, labels)
            torch.testing.assert_close(pipe.model(code, y), g[f"maskgit.forward.logits_{n}"], atol=1e-4, rtol=1e-4)
        null = pipe.model(torch.full((2, 64), K), None)
    torch.testing.assert_close(null, g["maskgit.forward.allmasked_logits_null"], atol=1e-4, rtol=1e-4)


# -- schedules and order ---------------------------------------------------------------------------------------------
def test_schedules_and_halton_order():
    for key, value in SCHEDULES["confidence"].items():
        mode, steps, size = key.split(".")
        assert confidence_schedule(int(steps[4:]), int(size[4:]) ** 2, mode) == value["k"], key
    for key, value in SCHEDULES["halton"].items():
        steps, size = key.split(".")
        counts = halton_schedule(int(steps[4:]), int(size[4:]) ** 2)
        assert counts == value["cumulative_r"], key
        assert [b - a for a, b in zip([0] + counts, counts, strict=False)] == value["new_tokens"], key
    for key, rows in SCHEDULES["halton_order"].items():
        assert [list(cell) for cell in halton_order(int(key[4:]))] == rows, key


def test_halton_temperatures():
    for key, values in SCHEDULES["halton_temperature"].items():
        lo, hi, power, steps, warmup = (float(re.sub(r"^[a-z]+", "", p)) for p in key.split("_"))
        temps = halton_temperatures(int(steps), lo, hi, power, int(warmup))
        assert temps.tolist() == values, key  # float32 values, exactly


# -- sampling: token ids exact at every step -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_sampler_parity(pipe, g, name):
    case = CASES[name]
    steps = list(pipe.stream(preview=False, **edifice_args(case)))
    S = case["kw"]["step"]
    assert len(steps) == S and [s.step for s in steps] == list(range(S))
    for s, rec in enumerate(steps):
        assert torch.equal(rec.predicted.view(2, 8, 8), g[f"{name}.step_pred_code"][s]), f"step {s}"
        before = steps[s - 1].tokens if s else torch.full((2, 64), K)
        assert torch.equal(before.view(2, 8, 8), g[f"{name}.step_input_code"][s]), f"step {s}"
        golden_mask = g[f"{name}.step_mask"][s].bool().flatten(1)
        if rec.sampler == "confidence":  # still masked after the step
            assert torch.equal(rec.mask, golden_mask)
        else:  # revealed at this step
            assert torch.equal(rec.revealed, golden_mask)
    assert torch.equal(steps[-1].tokens.clamp(0, K - 1).view(2, 8, 8), g[f"{name}.final_code"])
    if f"{name}.image" in g:
        torch.testing.assert_close(pipe.decode(steps[-1]) * 2 - 1, g[f"{name}.image"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["conf_s8_w0", "conf_s12_w2_cosine"])
def test_confidence_ranking_scores(pipe, g, name):
    steps = list(pipe.stream(preview=False, **edifice_args(CASES[name])))
    score = torch.stack([s.score for s in steps])
    golden = g[f"{name}.step_topk_input"]
    assert score.dtype == torch.float64
    assert torch.equal(torch.isinf(score), torch.isinf(golden))
    finite = torch.isfinite(golden)
    torch.testing.assert_close(score[finite], golden[finite], atol=1e-5, rtol=0)
    assert confidence_schedule(len(steps), 64, CASES[name]["kw"]["sched_mode"]) == g[f"{name}.step_k"].tolist()


def test_mask_token_can_be_sampled_and_is_handled(pipe, g):
    """conf_s12_w2_cosine samples the mask id 20 times (golden diagnostics): a re-masked position stays hidden."""
    steps = list(pipe.stream(preview=False, **edifice_args(CASES["conf_s12_w2_cosine"])))
    assert sum(int((s.predicted == K).sum()) for s in steps) == 20
    assert all(torch.equal(s.mask, s.tokens == K) for s in steps)


def test_seed_reproduces_and_labels_draw_apart(pipe):
    a = list(pipe.stream(sampler="halton", num_steps=4, seed=5, labels=None, batch_size=3, preview=False))
    b = list(pipe.stream(sampler="halton", num_steps=4, seed=5, labels=None, batch_size=3, preview=False))
    assert torch.equal(a[-1].tokens, b[-1].tokens) and torch.equal(a[-1].labels, b[-1].labels)
    assert a[-1].seed == 5 and a[-1].tokens.shape == (3, 64)
    # random labels come from their own generator: the token stream equals the one with those labels given
    c = list(pipe.stream(sampler="halton", num_steps=4, seed=5, labels=a[-1].labels.tolist(), preview=False))
    assert torch.equal(a[-1].tokens, c[-1].tokens)


def test_streaming_previews(pipe):
    steps = list(pipe.stream(sampler="confidence", num_steps=6, seed=1, labels=[1, 2], preview="fast",
                             preview_every=2))
    assert [s.image is not None for s in steps] == [False, True, False, True, False, True]
    assert steps[-1].image.shape == (2, 3, 128, 128)
    torch.testing.assert_close(steps[-1].image, pipe.decode(steps[-1]))  # the last step is exact
    assert torch.equal(pipe.generate(sampler="confidence", num_steps=6, seed=1, labels=[1, 2]), pipe.decode(steps[-1]))


def test_authors_aliases_and_temperature(pipe):
    a = list(pipe.stream(w=2.0, step=8, seed=3, labels=[0, 9], preview=False))
    b = list(pipe.stream(cfg=2.0, num_steps=8, seed=3, labels=[0, 9], preview=False))
    assert len(a) == 8 and torch.equal(a[-1].tokens, b[-1].tokens)
    hot = list(pipe.stream(cfg=2.0, num_steps=8, seed=3, labels=[0, 9], temperature=50.0, preview=False))
    assert not torch.equal(hot[-1].tokens, b[-1].tokens)  # temperature divides on top of the authors' multipliers


@pytest.mark.parametrize("bad, match", [(dict(sampler="random"), "unknown sampler"),
                                        (dict(sampler="confidence", num_steps=1), "num_steps must be in 2..64"),
                                        (dict(num_steps=65), "num_steps must be in 1..64"),
                                        (dict(cfg=-1), "cfg"), (dict(temperature=0), "temperature"),
                                        (dict(sampler="confidence", sched_mode="cubic"), "sched_mode"),
                                        (dict(labels=[11]), "unknown class 11")])
def test_bad_settings(pipe, bad, match):
    with pytest.raises(ValueError, match=match):
        next(pipe.stream(**{"labels": [1, 2], **bad}))


# -- the seed API on the MaskGIT model -------------------------------------------------------------------------------
def test_seed_api_runs_on_maskgit(pipe):
    """mar.decode_steps with mask_token_id = K: its own schedule and rules (mask id never emitted, revealed
    tokens kept, temperature divides, torch-only Gumbel ranking), not the authors' samplers."""
    steps = list(mar.decode_steps(pipe.model, mask_token_id=K, num_steps=8, labels=[3, 4], batch_size=2, seed=0,
                                  cfg=2.0, temperature=1.0, schedule="cosine", randomness=4.5))
    assert len(steps) == 8 and steps[-1].tokens.shape == (2, 64)
    assert not steps[-1].mask.any() and int(steps[-1].tokens.max()) < K
    for a, b in zip(steps, steps[1:], strict=False):  # revealed tokens never change
        assert torch.equal(b.tokens[~a.mask], a.tokens[~a.mask])
    final = mar.iterative_decode(pipe.model, mask_token_id=K, num_steps=8, labels=[3, 4], batch_size=2, seed=0,
                                 cfg=2.0, schedule="cosine", randomness=4.5)
    assert torch.equal(final, steps[-1].tokens)


# -- checkpoint layouts and configs ---------------------------------------------------------------------------------
def test_prefixed_keys_load_the_same(pipe, tmp_path):
    ckpt = torch.load(MODEL, weights_only=True)
    ckpt["model_state_dict"] = {f"module._orig_mod.{k}": v for k, v in ckpt["model_state_dict"].items()}
    torch.save(ckpt, tmp_path / "ddp.pth")
    other = load_official_maskgit(VQ, tmp_path / "ddp.pth", TINY, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), pipe.model.state_dict().values(),
                                                  strict=True))


def test_untied_head_and_wrong_files_are_refused(tmp_path):
    ckpt = torch.load(MODEL, weights_only=True)
    ckpt["model_state_dict"]["head.weight"] = ckpt["model_state_dict"]["head.weight"] + 1
    torch.save(ckpt, tmp_path / "untied.pth")
    with pytest.raises(CheckpointError, match="head.weight differs from tok_emb.weight"):
        load_official_maskgit(VQ, tmp_path / "untied.pth", TINY)
    with pytest.raises(CheckpointError, match="not a LlamaGen VQ tokenizer"):
        load_official_maskgit(MODEL, MODEL, TINY)
    with pytest.raises(CheckpointError, match="not a Halton-MaskGIT transformer"):
        load_official_maskgit(VQ, VQ, TINY)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_official_maskgit(VQ, tmp_path / "missing.pth", TINY)


@pytest.mark.parametrize("config, match", [
    (None, "cannot tell the attention heads of a 48-wide"),
    ({"maskgit": {"heads": 5}}, r"wk.weight is \[48, 48\], the config makes \[45, 48\]"),
    ({"vq": {**VQ_ARGS, "ch": 64}, "maskgit": {"heads": 3}}, "does not fit the VQ tokenizer config"),
    ({"maskgit": {"heads": 3, "proj": 2}}, "proj != 1"),
    ({"maskgit": {"heads": 3, "width": 2}}, "unknown MaskGIT argument 'width'"),
    ({"gpt": {}}, "config must be a released model's name or a dict"),
    ("ImageNet_999_huge", "unknown Halton-MaskGIT model"),
    ("ImageNet_256_tiny", "does not fit the Halton-MaskGIT config"),
])
def test_config_checked_against_the_tensors(config, match):
    with pytest.raises(CheckpointError, match=match):
        load_official_maskgit(VQ, MODEL, config)


@pytest.mark.parametrize("name", list(RELEASES))
def test_released_configs_make_the_released_tensors(name):
    """Every released model's config builds exactly the key -> shape set of the authors' model (head.weight is
    the tied copy the reader drops), with the authors' parameter count."""
    real = SHAPES[f"halton_maskgit_{name}"]
    sd = {k: torch.empty(shape, device="meta") for k, shape in real["state_dict"].items() if k != "head.weight"}
    cfg = maskgit_config(sd, RELEASES[name], name)
    assert cfg == maskgit_config(sd, None, name)  # the released widths' heads are the default
    check_shapes(MaskGIT, cfg, sd, name, "Halton-MaskGIT")
    assert sum(math.prod(t.shape) for t in sd.values()) == real["num_params"]
    assert cfg.attn_width == real["derived"]["qkv_width"] and cfg.ffn_hidden == real["derived"]["ffn_hidden"]


def test_released_vq_shapes():
    real = SHAPES["llamagen_vq_ds16_c2i"]
    with torch.device("meta"):
        vq = LlamaGenVQ(LlamaGenVQConfig())
    assert {k: list(v.shape) for k, v in vq.state_dict().items()} == real["state_dict"]
    assert sum(p.numel() for p in vq.parameters()) == real["num_params"]


# -- presets, convert and the edifice format ------------------------------------------------------------------------
HALTON_S8 = edifice_args(CASES["halton_s8_w0"])


@pytest.fixture
def tiny_preset(fake_hub):
    """Preset "test-maskgit-tiny": the transformer in one fake-Hub repo, the VQ in another, as the real presets."""
    fake_hub.add_commit("edifice-test/llamagen", {"vq_tiny.pt": VQ.read_bytes()})
    fake_hub.add_commit("edifice-test/halton", {"maskgit_tiny.pth": MODEL.read_bytes()})
    defaults = {k: v for k, v in HALTON_S8.items() if k not in ("labels", "seed")}
    yield presets.register("test-maskgit-tiny", kind="maskgit", source="official-maskgit", repo="edifice-test/halton",
                           files={"vq": "vq_tiny.pt", "model": "maskgit_tiny.pth"}, image_size=128,
                           defaults=defaults, config={"arguments": TINY, "vq_repo": "edifice-test/llamagen"})
    presets.unregister("test-maskgit-tiny")


def test_preset_from_two_hub_repos(fake_hub, tiny_preset, g):
    pipe = edifice.load("test-maskgit-tiny", device="cpu")
    got = sorted(p.rsplit("/", 1)[1] for m, p in fake_hub.requests if m == "GET" and "/resolve/" in p)
    assert got == ["maskgit_tiny.pth", "vq_tiny.pt"]
    images = pipe.generate(labels=HALTON_S8["labels"], seed=HALTON_S8["seed"])  # sampler settings from the preset
    torch.testing.assert_close(images * 2 - 1, g["halton_s8_w0.image"], atol=1e-4, rtol=0)
    fake_hub.requests.clear()
    edifice.load("test-maskgit-tiny", device="cpu")
    assert fake_hub.requests == []  # both files from the cache
    fake_hub.stop()
    assert edifice.load("test-maskgit-tiny", device="cpu").defaults["sampler"] == "halton"


def test_download_fetches_both_repos_then_loads_offline(fake_hub, tiny_preset):
    folder = edifice.download("test-maskgit-tiny")
    assert (folder / "maskgit_tiny.pth").is_file()
    fake_hub.stop()
    assert edifice.load("test-maskgit-tiny", device="cpu").model.cfg.hidden_dim == 48


def test_released_presets():
    table = presets.presets()
    names = [n for n, p in table.items() if p.kind == "maskgit"]
    assert names == ["maskgit-256-tiny", "maskgit-256-small", "maskgit-256-base", "maskgit-384-small",
                     "maskgit-384-base", "maskgit-384-large"]
    for n in names:
        p = table[n]
        real = SHAPES[f"halton_maskgit_{p.config['name']}"]
        assert p.files["model"] == real["hub_file"] and p.config["vq_repo"] == "FoundationVision/LlamaGen"
        assert p.params == real["num_params"] + SHAPES["llamagen_vq_ds16_c2i"]["num_params"]
        assert p.image_size == 16 * RELEASES[p.config["name"]]["input_size"]
        assert p.defaults["sampler"] == "halton" and p.defaults["num_steps"] == 32


def test_convert_and_reload_the_edifice_checkpoint(tmp_path, pipe):
    out = tmp_path / "ckpt"
    assert main(["convert", "--vq", str(VQ), "--maskgit", str(MODEL), "--model-config", json.dumps(TINY),
                 "--out", str(out)]) == 0
    again = edifice.load(out, device="cpu")
    assert again.kind == "maskgit" and again.model.cfg == pipe.model.cfg and again.tokenizer.cfg == pipe.tokenizer.cfg
    a = list(again.stream(preview=False, **HALTON_S8))[-1].tokens
    b = list(pipe.stream(preview=False, **HALTON_S8))[-1].tokens
    assert torch.equal(a, b)
    assert main(["convert", "--maskgit", str(MODEL), "--out", str(out)]) == 1  # --vq missing: one-line error


# -- the family interface -------------------------------------------------------------------------------------------
def test_family_interface(pipe):
    from edifice import render

    controls = pipe.controls()
    settings = {c.name: c.check(c.default) for c in controls}
    assert {"sampler", "num_steps", "cfg", "temperature", "top_k", "randomize", "sm_temp_min", "r_temp",
            "sched_mode", "preview"} <= set(settings)
    settings.update(num_steps=6, preview="fast")
    for sampler in SAMPLERS:  # every control is a stream() keyword, for both samplers
        steps = list(pipe.stream(labels=[1, 2], seed=0, **{**settings, "sampler": sampler}))
        assert len(steps) == 6
        step = steps[2]
        assert pipe.status(step).startswith(f"step 3/6 · {int((~step.mask[0]).sum())}/64 revealed · {sampler}")
        assert pipe.token_view(step, target=64).size == (2 * 64 + 4, 64)
        stats = pipe.token_stats(step)
        info = stats.inspect(1, 3, 5)
        assert len(info["candidates"]) == 8 and sum(info["candidates"].values()) <= 1 + 1e-5
        n = 3 * 8 + 5
        drawn_here = bool(step.revealed[1, n] or step.mask[1, n]) or sampler == "confidence"
        assert (info["drawn"] is not None) == drawn_here
        if drawn_here:
            assert info["drawn"] == ("mask token" if step.predicted[1, n] == K else f"code {int(step.predicted[1, n])}")
            assert info["drawn_prob"] == pytest.approx(float(step.confidence[1, n]))
        assert render.uncertainty_view(stats, target=64).size == (2 * 64 + 4, 64)
    with pytest.raises(ValueError, match="Steps"):
        next(c for c in controls if c.name == "num_steps").check(65)


def test_halton_confidence_is_kept_from_the_reveal_step(pipe):
    steps = list(pipe.stream(sampler="halton", num_steps=8, seed=1, labels=[1, 2], preview=False))
    for a, b in zip(steps, steps[1:], strict=False):
        frozen = ~a.mask
        assert torch.equal(b.confidence[frozen], a.confidence[frozen])
        assert torch.equal(b.tokens[frozen], a.tokens[frozen])
