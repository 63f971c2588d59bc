"""LlamaGen c2i GPT and the VQ-16 tokenizer: parity with the authors' code on the golden vectors in
tests/fixtures/maskgit_llamagen (copied unchanged from shared/golden/maskgit_llamagen): VQ encode/decode, the rotary
table, teacher-forced logits, ``generate`` token for token with the KV cache and without, streaming records, the
authors' checkpoint layouts and released configs."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import edifice
from edifice import presets
from edifice.__main__ import main
from edifice.errors import CheckpointError
from edifice.generative.llamagen import LlamaGen, filter_top_k_top_p_
from edifice.official_llamagen import RELEASES, check_shapes, gpt_config, load_official_llamagen, release_args
from edifice.official_maskgit import load_vq_state_dict, vq_config

FIX = Path(__file__).parent / "fixtures" / "maskgit_llamagen"
CONFIG = json.loads((FIX / "config.json").read_text())
SHAPES = json.loads((FIX / "official_state_dict_shapes.json").read_text())
VQ, GPT = FIX / "tiny_vq_ds16_c2i.pt", FIX / "tiny_c2i_gpt.pt"
VQ_ARGS = {**CONFIG["vq"]["model_args"], "ch": CONFIG["vq"]["encoder_decoder_ch"],
           "num_res_blocks": CONFIG["vq"]["num_res_blocks"]}
TINY = {"vq": VQ_ARGS, "gpt": CONFIG["gpt"]["model_args"]}
CASES = {c["name"]: c for c in CONFIG["gpt_cases"]}


@pytest.fixture(scope="module")
def pipe():
    return load_official_llamagen(VQ, GPT, TINY, device="cpu")


@pytest.fixture(scope="module")
def g():
    return load_file(FIX / "golden_gpt.safetensors")


def edifice_args(case: dict) -> dict:
    kw = dict(case["kw"])
    return dict(labels=case["labels"], seed=case["seed"], cfg=kw.pop("cfg_scale"), **kw)


# -- the VQ-16 tokenizer ----------------------------------------------------------------------------------------------
def test_vq_encode_decode(pipe):
    vq, v = pipe.tokenizer, load_file(FIX / "golden_vq.safetensors")
    assert vq.cfg.ch_mult == (1, 1, 1, 2, 1) and vq.cfg.image_size == 128
    assert sum(p.numel() for p in vq.parameters()) == CONFIG["vq"]["num_params"]
    with torch.no_grad():
        image = v["vq.encode.image"]
        torch.testing.assert_close(vq.quant_conv(vq.encoder(image)), v["vq.encode.h"], atol=1e-4, rtol=1e-4)
        quant, idx = vq.encode(image)
        torch.testing.assert_close(quant, v["vq.encode.quant"], atol=1e-4, rtol=1e-4)
        assert torch.equal(idx.flatten(), v["vq.encode.indices"])
        torch.testing.assert_close(vq(image), v["vq.forward.dec"], atol=1e-4, rtol=1e-4)
        codes = v["vq.decode.codes"]
        torch.testing.assert_close(vq.embed(codes), v["vq.decode.quant"], atol=1e-6, rtol=0)
        torch.testing.assert_close(vq.decode_code(codes), v["vq.decode.image"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vq.decode_code(codes.flatten(1)), v["vq.decode.image"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vq.quantize.codebook(), v["vq.codebook_normalized"], atol=1e-6, rtol=0)


# -- the GPT ---------------------------------------------------------------------------------------------------------
def test_config_rope_and_teacher_forcing(pipe, g):
    c = pipe.model.cfg
    assert (c.dim, c.n_layer, c.n_head, c.vocab_size, c.num_classes, c.block_size) == (64, 2, 4, 64, 10, 64)
    assert c.ffn_hidden == CONFIG["gpt"]["derived"]["ffn_hidden"]
    assert sum(p.numel() for p in pipe.model.parameters()) == CONFIG["gpt"]["num_params"]
    assert torch.equal(pipe.model.freqs_cis, g["gpt.freqs_cis"])
    with torch.no_grad():
        logits = pipe.model(g["gpt.forward.tokens"], g["gpt.forward.labels"])
        null = pipe.model(g["gpt.forward.tokens"], torch.full((2,), 10))
    torch.testing.assert_close(logits, g["gpt.forward.logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(null, g["gpt.forward.logits_null"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_generate_parity(pipe, g, name, kv_cache):
    """Every token of the authors' generate, for CFG on/off, cfg_interval, top-k, top-p, temperature and
    greedy decoding; the KV cache changes nothing."""
    steps = list(pipe.stream(preview=False, kv_cache=kv_cache, preview_every=1, **edifice_args(CASES[name])))
    assert len(steps) == 64 and [s.front for s in steps] == list(range(1, 65))
    tokens = g[f"{name}.tokens"].long()
    assert torch.equal(steps[-1].tokens, tokens)
    for j, rec in enumerate(steps):  # the raster front: one new token per record
        assert torch.equal(rec.tokens[:, : j + 1], tokens[:, : j + 1]) and (rec.tokens[:, j + 1:] == -1).all()
        assert rec.revealed.sum(1).tolist() == [1, 1] and bool(rec.revealed[0, j])
    drawn = g[f"{name}.step_probs"].gather(2, tokens.T[..., None])[..., 0].T  # [2, 64] probability of each draw
    torch.testing.assert_close(steps[-1].confidence, drawn, atol=1e-5, rtol=1e-4)
    if f"{name}.image" in g:
        torch.testing.assert_close(pipe.decode(steps[-1]) * 2 - 1, g[f"{name}.image"].clamp(-1, 1), atol=1e-4, rtol=0)


def test_filter_matches_the_authors_probs(g):
    """top-k + top-p filter of the authors on the recorded CFG logits gives the recorded probabilities."""
    kw = CASES["gen_cfg3_topk30_topp0.9_t1.3_int20"]["kw"]
    logits = g["gen_cfg3_topk30_topp0.9_t1.3_int20.step_model_logits"][0]  # prefill, guided
    cond, uncond = logits.chunk(2)
    guided = uncond + (cond - uncond) * kw["cfg_scale"]
    probs = filter_top_k_top_p_(guided / kw["temperature"], kw["top_k"], kw["top_p"]).softmax(-1)
    torch.testing.assert_close(probs, g["gen_cfg3_topk30_topp0.9_t1.3_int20.step_probs"][0], atol=1e-6, rtol=1e-5)


def test_streaming_every_k_tokens(pipe):
    steps = list(pipe.stream(labels=[3, 7], seed=0, cfg=4.0, top_k=20, preview_every=24, preview="fast"))
    assert [s.front for s in steps] == [24, 48, 64] and [s.num_steps for s in steps] == [3, 3, 3]
    assert [int(s.revealed[0].sum()) for s in steps] == [24, 24, 16]
    assert all(s.image.shape == (2, 3, 128, 128) for s in steps)
    torch.testing.assert_close(steps[-1].image, pipe.decode(steps[-1]))  # the last record is exact
    default = list(pipe.stream(labels=[3, 7], seed=0, cfg=4.0, top_k=20, preview=False))
    assert [s.front for s in default] == [8 * (i + 1) for i in range(8)]  # one grid row per record
    assert torch.equal(default[-1].tokens, steps[-1].tokens)
    assert torch.equal(pipe.generate(labels=[3, 7], seed=0, cfg_scale=4.0, top_k=20), pipe.decode(steps[-1]))


def test_temperature_zero_is_greedy(pipe):
    a = list(pipe.stream(labels=[4, 6], seed=1, cfg=1.5, temperature=0, preview=False))[-1].tokens
    b = list(pipe.stream(labels=[4, 6], seed=2, cfg=1.5, sample_logits=False, preview=False))[-1].tokens
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad, match", [(dict(cfg=0.5), "cfg"), (dict(temperature=-1), "temperature"),
                                        (dict(top_k=-2), "top_k"), (dict(top_p=0), "top_p"),
                                        (dict(preview_every=0), "preview_every"), (dict(labels=[12]), "unknown class")])
def test_bad_settings(pipe, bad, match):
    with pytest.raises(ValueError, match=match):
        next(pipe.stream(**{"labels": [1, 2], **bad}))


# -- checkpoint layouts and configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["module", "state_dict", "fsdp", "prefixed", "freqs_cis"])
def test_checkpoint_layouts(pipe, tmp_path, layout):
    sd = torch.load(GPT, weights_only=True)["model"]
    ckpt = {"module": {"module": sd}, "state_dict": {"state_dict": sd}, "fsdp": sd,
            "prefixed": {"model": {f"_orig_mod.module.{k}": v for k, v in sd.items()}},
            "freqs_cis": {"model": {**sd, "freqs_cis": torch.zeros(65, 8, 2)}}}[layout]
    torch.save(ckpt, tmp_path / "gpt.pt")
    other = load_official_llamagen(VQ, tmp_path / "gpt.pt", TINY, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), pipe.model.state_dict().values(),
                                                  strict=True))


@pytest.mark.parametrize("config, match", [
    (None, "cannot tell the attention heads of a 64-wide GPT"),
    ({"gpt": {**CONFIG["gpt"]["model_args"], "n_head": 3}}, "not a multiple of 4"),
    ({"gpt": {**CONFIG["gpt"]["model_args"], "dim": 32}}, "does not fit the LlamaGen GPT config"),
    ({"gpt": {**CONFIG["gpt"]["model_args"], "n_kv_head": 2}}, "grouped-query attention"),
    ({"gpt": {**CONFIG["gpt"]["model_args"], "model_type": "t2i"}}, "only class-to-image"),
    ({"gpt": {**CONFIG["gpt"]["model_args"], "block_size": 60}}, "not a square token grid"),
    ({"gpt": {"n_head": 4, "colour": 1}}, "unknown GPT argument 'colour'"),
    ("GPT-Q", "unknown LlamaGen GPT"),
    ("GPT-B", "does not fit the LlamaGen GPT config"),
])
def test_config_checked_against_the_tensors(config, match):
    with pytest.raises(CheckpointError, match=match):
        load_official_llamagen(VQ, GPT, config)


def test_wrong_files_are_refused():
    with pytest.raises(CheckpointError, match="not a LlamaGen class-to-image GPT"):
        load_official_llamagen(VQ, VQ, TINY)
    with pytest.raises(CheckpointError, match="not a LlamaGen VQ tokenizer"):
        load_official_llamagen(GPT, GPT, TINY)


@pytest.mark.parametrize("key", [k for k in SHAPES if k.startswith("llamagen_c2i")])
def test_released_configs_make_the_released_tensors(key):
    """The released names (and their Hub file names) build exactly the authors' key -> shape sets."""
    real = SHAPES[key]
    sd = {k: torch.empty(shape, device="meta") for k, shape in real["state_dict"].items()}
    cfg = gpt_config(sd, release_args(real["hub_file"]), key)
    check_shapes(LlamaGen, cfg, sd, key, "LlamaGen GPT")
    d = real["derived"]
    assert (cfg.block_size, cfg.head_dim, cfg.ffn_hidden, cfg.grid) == (d["block_size"], d["head_dim"],
                                                                        d["ffn_hidden"], d["grid"])
    with torch.device("meta"):
        assert list(LlamaGen(cfg).freqs_cis.shape) == d["freqs_cis_shape"]
    assert sum(math.prod(t.shape) for t in sd.values()) == real["num_params"]
    name = key.split("_")[2]
    assert release_args(f"GPT-{name}")["n_head"] == cfg.n_head and f"GPT-{name}" in RELEASES


def test_released_vq_config_is_inferred():
    real = SHAPES["llamagen_vq_ds16_c2i"]
    sd = {k: torch.empty(shape, device="meta") for k, shape in real["state_dict"].items()}
    cfg = vq_config(sd, None, 256, "vq_ds16_c2i.pt")
    assert (cfg.codebook_size, cfg.codebook_embed_dim, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels) == (
        16384, 8, 128, (1, 1, 2, 2, 4), 2, 256)
    assert load_vq_state_dict(VQ)["quantize.embedding.weight"].shape == (64, 8)


# -- presets, convert and the edifice format ------------------------------------------------------------------------
def test_preset_from_the_hub(fake_hub, g):
    fake_hub.add_commit("edifice-test/llamagen", {"vq_tiny.pt": VQ.read_bytes(), "gpt_tiny.pt": GPT.read_bytes()})
    case = CASES["gen_cfg4_topk20_t0.9"]
    defaults = {k: v for k, v in edifice_args(case).items() if k not in ("labels", "seed")}
    presets.register("test-llamagen-tiny", kind="llamagen", source="official-llamagen", repo="edifice-test/llamagen",
                     files={"vq": "vq_tiny.pt", "gpt": "gpt_tiny.pt"}, image_size=128, defaults=defaults,
                     config={"arguments": TINY})
    try:
        pipe = edifice.load("test-llamagen-tiny", device="cpu")
        images = pipe.generate(labels=case["labels"], seed=case["seed"])
        torch.testing.assert_close(images * 2 - 1, g["gen_cfg4_topk20_t0.9.image"].clamp(-1, 1), atol=1e-4, rtol=0)
        fake_hub.stop()
        assert edifice.load("test-llamagen-tiny", device="cpu").defaults["cfg"] == 4.0  # cached
    finally:
        presets.unregister("test-llamagen-tiny")


def test_released_presets():
    table = presets.presets()
    names = [n for n, p in table.items() if p.kind == "llamagen"]
    assert names == ["llamagen-b-256", "llamagen-b-384", "llamagen-l-256", "llamagen-l-384", "llamagen-xl-384",
                     "llamagen-xxl-384", "llamagen-3b-384"]
    for n in names:
        p = table[n]
        real = SHAPES[f"llamagen_{p.config['name']}"]
        assert p.files == {"vq": "vq_ds16_c2i.pt", "gpt": real["hub_file"]}
        assert p.params == real["num_params"] + SHAPES["llamagen_vq_ds16_c2i"]["num_params"]
        assert p.image_size == 16 * real["derived"]["grid"] and p.defaults["cfg"] in (2.0, 1.75, 1.65)


def test_convert_and_reload_the_edifice_checkpoint(tmp_path, pipe):
    out = tmp_path / "ckpt"
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert main(["convert", "--vq", str(VQ), "--llamagen", str(GPT), "--model-config", str(tmp_path / "config.json"),
                 "--out", str(out)]) == 0
    again = edifice.load(out, device="cpu")
    assert again.kind == "llamagen" and again.model.cfg == pipe.model.cfg
    args = edifice_args(CASES["gen_cfg2_topp0.8_t1.1"])
    assert torch.equal(list(again.stream(preview=False, **args))[-1].tokens,
                       list(pipe.stream(preview=False, **args))[-1].tokens)
    assert main(["convert", "--vq", str(VQ), "--llamagen", str(GPT), "--maskgit", str(GPT), "--out", str(out)]) == 1


# -- the family interface -------------------------------------------------------------------------------------------
def test_family_interface(pipe):
    from edifice import render

    controls = pipe.controls()
    settings = {c.name: c.check(c.default) for c in controls}
    assert set(settings) == {"cfg", "cfg_interval", "temperature", "top_k", "top_p", "preview_every", "preview"}
    assert settings["preview_every"] == 8  # one row of the 8x8 grid
    steps = list(pipe.stream(labels=[3, 7], seed=0, **{**settings, "cfg": 4.0, "preview": "latent"}))
    assert len(steps) == 8
    step = steps[2]
    assert pipe.status(step).startswith("tokens 17–24/64 · row 3/8 · ")
    assert pipe.token_view(step, target=64).size == (2 * 64 + 4, 64)
    stats = pipe.token_stats(step)
    info = stats.inspect(0, 2, 5)  # generated in this record
    assert info["drawn"] == f"code {int(step.tokens[0, 21])}"
    assert info["drawn_prob"] == pytest.approx(float(step.confidence[0, 21]))
    assert max(info["candidates"].values()) >= info["drawn_prob"] - 1e-6
    assert stats.inspect(0, 4, 0)["drawn"] is None  # below the raster front
    assert render.uncertainty_view(stats, target=64).size == (2 * 64 + 4, 64)
