"""Official MAR (diffusion head) and its KL-16 VAE: parity with the official code on the golden vectors in
tests/fixtures/mar (copied unchanged from shared/golden/mar), the real models' key->shape sets, the checkpoint
layouts, and the streaming sampler's behaviour."""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import edifice
from edifice import presets
from edifice.__main__ import main
from edifice.errors import CheckpointError
from edifice.generative import diffusion
from edifice.generative.mar_diffusion import DiffusionMAR, cfg_scale, mask_lengths, stream_tokens
from edifice.official import infer_klvae_config, infer_mar_diffusion_config, load_official_mar
from edifice.tokenizers.klvae import KLVAE

FIX = Path(__file__).parent / "fixtures" / "mar"
CONFIG = json.loads((FIX / "config.json").read_text())
CASES = CONFIG["sample_cases"]
HEADS = {"encoder_num_heads": 4, "decoder_num_heads": 3}  # the tiny model's; its widths are not official ones
VAE, CKPT = FIX / "tiny_kl16.safetensors", FIX / "tiny_mar_checkpoint-last.pth"
FWD_ATOL = 1e-4  # golden README: single forwards 1e-4; sampling atol 2e-3, rtol 1e-3
SAMPLE_TOL = dict(atol=2e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def pipe():
    return load_official_mar(VAE, CKPT, device="cpu", **HEADS)


@pytest.fixture(scope="module")
def g():
    return load_file(FIX / "golden_forward.safetensors")


@pytest.fixture(scope="module")
def st():
    return load_file(FIX / "golden_sample_tokens.safetensors")


def close(a, b, atol=FWD_ATOL, rtol=FWD_ATOL):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


# -- configuration and checkpoint layouts --------------------------------------------------------------------
def test_config_inferred_from_the_files(pipe):
    m, v = CONFIG["mar"], CONFIG["vae"]
    c = pipe.model.cfg
    assert (c.img_size, c.vae_stride, c.patch_size, c.vae_embed_dim) == (64, 16, 1, 16)
    assert (c.encoder_embed_dim, c.encoder_depth, c.decoder_embed_dim, c.decoder_depth) == (
        m["encoder_embed_dim"], m["encoder_depth"], m["decoder_embed_dim"], m["decoder_depth"])
    assert (c.class_num, c.buffer_size, c.diffloss_d, c.diffloss_w) == (
        m["class_num"], m["buffer_size"], m["diffloss_d"], m["diffloss_w"])
    t = pipe.tokenizer.cfg
    assert (t.embed_dim, t.ch, t.ch_mult, t.num_res_blocks) == (v["embed_dim"], v["ch"], tuple(v["ch_mult"]),
                                                                v["num_res_blocks"])
    assert sum(p.numel() for p in pipe.model.parameters()) == CONFIG["derived"]["num_params_mar"]
    assert sum(p.numel() for p in pipe.tokenizer.parameters()) == CONFIG["derived"]["num_params_vae"]


def test_heads_of_an_unofficial_width_must_be_given():
    with pytest.raises(CheckpointError, match=r"attention heads of a 32-wide MAR encoder .* --mar-heads ENC DEC"):
        load_official_mar(VAE, CKPT, device="cpu")


@pytest.mark.parametrize("name", ["mar_base", "mar_large", "mar_huge"])
def test_real_models_have_the_official_keys_and_shapes(name):
    """Config inferred from the real key->shape list, model built on the meta device: identical key->shapes."""
    real = json.loads((FIX / "official_state_dict_shapes.json").read_text())
    vae_shapes, shapes = real["kl16_vae"]["state_dict"], real[name]["state_dict"]
    with torch.device("meta"):
        vae_sd = {k: torch.empty(s) for k, s in vae_shapes.items()}
        sd = {k: torch.empty(s) for k, s in shapes.items()}
        vae_cfg = infer_klvae_config(vae_sd)
        vae, model = KLVAE(vae_cfg), DiffusionMAR(infer_mar_diffusion_config(sd, vae_cfg))
    assert {k: list(t.shape) for k, t in vae.state_dict().items()} == vae_shapes
    assert {k: list(t.shape) for k, t in model.state_dict().items()} == shapes
    assert sum(t.numel() for t in model.parameters()) == real[name]["num_params"]
    assert sum(t.numel() for t in model.diffloss.parameters()) == real[name]["num_params_diffloss"]
    assert sum(t.numel() for t in vae.parameters()) == real["kl16_vae"]["num_params"]
    assert model.cfg == edifice.generative.mar_diffusion.CONFIGS[name]


def test_flat_safetensors_and_the_pickle_load_the_same_ema_weights(pipe, tmp_path):
    """The Hub layout (flat safetensors, strict) and kl16.ckpt ({'model': ...}); checkpoint-last.pth gives EMA."""
    ckpt = torch.load(CKPT, weights_only=True)
    assert not torch.equal(ckpt["model"]["fake_latent"], ckpt["model_ema"]["fake_latent"])
    save_file(ckpt["model_ema"], tmp_path / "mar.safetensors")
    torch.save({"model": load_file(VAE)}, tmp_path / "kl16.ckpt")
    flat = load_official_mar(tmp_path / "kl16.ckpt", tmp_path / "mar.safetensors", device="cpu", **HEADS)
    for a, b in zip(flat.model.state_dict().values(), pipe.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(pipe.model.fake_latent, ckpt["model_ema"]["fake_latent"])


def test_training_checkpoint_with_args_namespace(tmp_path):
    """A checkpoint saved by the official training loop also holds its argparse arguments: allow-listed."""
    ckpt = torch.load(CKPT, weights_only=True)
    torch.save({"model": ckpt["model"], "epoch": 3, "args": argparse.Namespace(model="mar_tiny", lr=1e-4)},
               tmp_path / "checkpoint-last.pth")
    p = load_official_mar(VAE, tmp_path / "checkpoint-last.pth", device="cpu", **HEADS)
    assert torch.equal(p.model.fake_latent, ckpt["model"]["fake_latent"])  # no model_ema: model


def test_wrong_or_broken_files_say_what_they_are(tmp_path):
    with pytest.raises(CheckpointError, match="expected a KL VAE state dict.*found a MAR"):
        load_official_mar(CKPT, CKPT, device="cpu", **HEADS)
    with pytest.raises(CheckpointError, match="expected a MAR .* found a KL VAE"):
        load_official_mar(VAE, VAE, device="cpu", **HEADS)
    (tmp_path / "cut.safetensors").write_bytes(VAE.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_official_mar(tmp_path / "cut.safetensors", CKPT, device="cpu", **HEADS)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_official_mar(tmp_path / "missing.safetensors", CKPT, device="cpu", **HEADS)


# -- single forward passes -----------------------------------------------------------------------------------
def test_vae_decode_encode_and_posterior_sample(pipe, g):
    vae, model = pipe.tokenizer, pipe.model
    close(vae.decode(g["vae.decode.latent"]), g["vae.decode.image"])
    mean, logvar = vae.encode(g["vae.encode.image"])
    close(mean, g["vae.encode.mean"])
    close(logvar, g["vae.encode.logvar"])
    sample = vae.sample(g["vae.encode.image"], torch.Generator().manual_seed(7))
    close(sample, g["vae.encode.sample_seed7"])
    close(model.patchify(sample * vae.cfg.scale), g["vae.encode.mar_tokens_seed7"])


def test_encoder_decoder_partial_all_and_no_mask(pipe, g):
    m = pipe.model
    close(m.class_embedding(g["mar.labels"]), g["mar.class_embedding"])
    assert torch.equal(m.class_embedding(torch.tensor([10, 10])), g["mar.allmasked.class_embedding"])  # 10 = null
    assert torch.equal(m.patchify(g["mar.patchify.latent"]), g["mar.patchify.tokens"])
    assert torch.equal(m.unpatchify(g["mar.patchify.tokens"]), g["mar.patchify.latent"])
    for case in ("partial", "allmasked", "nomask"):
        mask = g[f"mar.{case}.mask"]
        enc = m.forward_mae_encoder(g["mar.tokens"], mask, g.get(f"mar.{case}.class_embedding",
                                                                 g["mar.class_embedding"]))
        close(enc, g[f"mar.{case}.encoder_out"])
        close(m.forward_mae_decoder(enc, mask), g[f"mar.{case}.decoder_out"])


def test_diffusion_mlp_forward_and_guidance(pipe, g):
    net = pipe.model.diffloss.net
    x, t, c = g["diffloss.net.x"], g["diffloss.net.t"], g["diffloss.net.c"]
    close(net.time_embed(t), g["diffloss.net.time_embed"])
    close(net(x, t, c), g["diffloss.net.out"])
    close(net.forward_with_cfg(x[:3], t, c, 2.5), g["diffloss.net_cfg.out_scale2.5"][:3])


def test_diffusion_head_sampler(pipe, g):
    d = pipe.model.diffloss
    out = d.sample(g["diffloss.sample.z"], 1.0, 1.0, 20, torch.Generator().manual_seed(123))
    close(out, g["diffloss.sample.out_cfg1_temp1_seed123"], **SAMPLE_TOL)
    out = d.sample(g["diffloss.sample.z_cfg"], 0.95, 2.5, 20, torch.Generator().manual_seed(321))
    close(out, g["diffloss.sample.out_cfg2.5_temp0.95_seed321"], **SAMPLE_TOL)


# -- schedules ----------------------------------------------------------------------------------------------------
def test_respaced_cosine_schedules_equal_the_official_ones():
    s = load_file(FIX / "diffusion_schedules.safetensors")
    torch.testing.assert_close(torch.from_numpy(diffusion.cosine_betas()), s["train1000.betas"], atol=0, rtol=1e-11)
    for n in (100, 64, 50, 25, 20, 13, 10, 4, 2):
        sched = diffusion.respaced_schedule(n)
        assert sched.timestep_map.tolist() == s[f"steps{n}.timestep_map"].tolist()
        for name in ("betas", "alphas_cumprod", "posterior_log_variance_clipped", "posterior_mean_coef1",
                     "posterior_mean_coef2", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"):
            torch.testing.assert_close(torch.from_numpy(getattr(sched, name)), s[f"steps{n}.{name}"],
                                       atol=0, rtol=1e-11)  # float64 rounding


def test_unmask_schedules_and_linear_cfg_equal_the_official_ones():
    for key, sched in json.loads((FIX / "unmask_schedules.json").read_text()).items():
        L, S = sched["seq_len"], sched["num_iter"]
        lens = mask_lengths(L, S)
        assert lens[:-1] == sched["masked_after_step"][:-1], key
        remaining = [L] + lens[:-1]
        assert [r - n for r, n in zip(remaining, lens[:-1] + [0], strict=True)] == sched["tokens_predicted_per_step"]
        assert [cfg_scale(3.0, "linear", n, L) for n in lens] == pytest.approx(
            sched["cfg_scale_per_step_linear_cfg3"], abs=1e-6), key


@pytest.mark.parametrize("bad", [1, 0, 1001, "ddim1"])
def test_diffusion_steps_out_of_range_are_refused(pipe, bad):
    with pytest.raises(ValueError, match="num_sampling_steps must be in 2..1000|exactly 1 steps"):
        next(pipe.stream(labels=1, num_steps=2, num_sampling_steps=bad, seed=0))


# -- full sampling runs -------------------------------------------------------------------------------------------
def run_case(pipe, case, **extra):
    c = CASES[case]
    labels = c["labels"] if c["labels"] is not None else -1  # edifice: negative = unconditional
    return list(pipe.stream(labels=labels, batch_size=c["bsz"], num_steps=c["num_iter"], cfg=c["cfg"],
                            cfg_schedule=c["cfg_schedule"], temperature=c["temperature"],
                            num_sampling_steps=int(CONFIG["mar"]["num_sampling_steps"]), seed=c["seed"], **extra))


@pytest.mark.parametrize("case", list(CASES))
def test_sample_tokens_runs_reproduce_the_official_ones(pipe, st, case):
    steps = run_case(pipe, case, preview=False)
    assert len(steps) == CASES[case]["num_iter"]
    assert torch.equal(steps[0].orders, st[f"{case}.orders"])
    for s, step in enumerate(steps):
        assert torch.equal(st[f"{case}.step_masks"][s], (step.mask | step.revealed).float())  # mask fed at step s
        assert step.revealed.sum(1).tolist() == st[f"{case}.step_num_pred"][s].tolist()
        assert step.cfg == pytest.approx(float(st[f"{case}.step_cfg_iter"][s]), abs=1e-6)
        close(step.tokens, st[f"{case}.step_tokens"][s], **SAMPLE_TOL)
    close(pipe.model.unpatchify(steps[-1].tokens), st[f"{case}.tokens"], **SAMPLE_TOL)
    if f"{case}.image" in st:
        close(pipe.tokenizer.decode(pipe.model.unpatchify(steps[-1].tokens) / 0.2325), st[f"{case}.image"],
              **SAMPLE_TOL)


@pytest.mark.parametrize("case", ["it4_cfg1", "it4_cfg2.5_constant"])
def test_random_draws_follow_the_official_order(pipe, monkeypatch, case):
    """Every torch draw of the run, in order, equals the official one (CFG: N rows of initial noise, then
    2N rows at each diffusion step, the last one included)."""
    golden = load_file(FIX / "golden_sample_rng_draws.safetensors")
    expected = [golden[k] for k in sorted(k for k in golden if k.startswith(case + "."))]
    seen, randn = [], torch.randn

    def recording(*args, **kwargs):
        out = randn(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(torch, "randn", recording)
    run_case(pipe, case, preview=False)
    assert len(seen) == len(expected) == CASES[case]["num_rng_draws"]
    for a, b in zip(seen, expected, strict=True):
        assert torch.equal(a, b)


# -- the streaming API --------------------------------------------------------------------------------------------
def test_stream_records_previews_and_seeds(pipe):
    steps = list(pipe.stream(labels=[2, 5], batch_size=2, num_steps=6, cfg=3.0, num_sampling_steps=4, seed=11,
                             preview_every=4))
    assert [s.step for s in steps] == list(range(6))
    assert [s.image is not None for s in steps] == [False, False, False, True, False, True]
    assert steps[3].image.shape == (2, 3, 64, 64) and 0 <= steps[3].image.min() and steps[3].image.max() <= 1
    filled = torch.zeros(2, 16, dtype=torch.bool)
    for s in steps:  # each step fills new positions, known tokens never change, nothing is left unknown
        assert not (s.revealed & filled).any() and torch.equal(s.mask, ~(filled | s.revealed))
        assert torch.equal((s.tokens != 0).all(-1), filled | s.revealed)
        filled |= s.revealed
    assert filled.all() and steps[-1].labels.tolist() == [2, 5]
    images = pipe.generate(labels=[2, 5], batch_size=2, num_steps=6, cfg=3.0, num_sampling_steps=4, seed=11)
    torch.testing.assert_close(images, steps[-1].image, atol=0, rtol=0)  # same seed, same images
    other = pipe.generate(labels=[2, 5], batch_size=2, num_steps=6, cfg=3.0, num_sampling_steps=4, seed=12)
    assert (other - images).abs().max() > 1e-3


def test_random_labels_leave_the_diffusion_draws_alone(pipe):
    """labels=None draws the classes from their own generator: with the drawn labels passed explicitly, the same
    seed gives the same tokens."""
    first = list(pipe.stream(batch_size=2, num_steps=3, num_sampling_steps=3, seed=5, preview=False))[-1]
    again = list(pipe.stream(labels=first.labels.tolist(), batch_size=2, num_steps=3, num_sampling_steps=3, seed=5,
                             preview=False))[-1]
    assert torch.equal(first.tokens, again.tokens)


@pytest.mark.parametrize("mode", ["fast", "latent"])
def test_cheap_previews_differ_until_the_exact_last_frame(pipe, mode):
    cheap = list(pipe.stream(labels=1, num_steps=3, num_sampling_steps=3, seed=0, preview=mode))
    full = list(pipe.stream(labels=1, num_steps=3, num_sampling_steps=3, seed=0, preview="full"))
    assert cheap[0].image.shape == full[0].image.shape == (1, 3, 64, 64)
    assert (cheap[0].image - full[0].image).abs().max() > 1e-3
    assert torch.equal(cheap[-1].image, full[-1].image)
    if mode == "latent":  # the fitted map lives on the VAE, outside its state dict
        assert pipe.tokenizer._latent_rgb.shape == (17, 3)
        assert set(pipe.tokenizer.state_dict()) == set(load_file(VAE))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_steps": 0}, r"num_steps must be in 1\.\.16"),
    ({"num_steps": 17}, r"num_steps must be in 1\.\.16"),
    ({"cfg_schedule": "cosine"}, "unknown cfg_schedule"),
    ({"cfg": 0.5}, "cfg must be >= 1"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"labels": 11}, r"unknown class 11: this model has classes 0\.\.9"),
    ({"preview_every": 0}, "preview_every must be >= 1"),
    ({"preview": "half"}, "preview must be"),
])
def test_user_errors_are_clear(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(pipe.stream(**{"labels": 1, "num_steps": 4, "num_sampling_steps": 3, "seed": 0, **kwargs}))


def test_edifice_checkpoint_round_trip(pipe, tmp_path):
    pipe.defaults = {"num_steps": 4, "num_sampling_steps": 5}
    pipe.save_pretrained(tmp_path / "ckpt")
    back = edifice.load(tmp_path / "ckpt", device="cpu")
    assert back.kind == "mar-diffusion" and back.defaults == pipe.defaults and back.model.cfg == pipe.model.cfg
    a = back.generate(labels=3, seed=1)
    torch.testing.assert_close(a, pipe.generate(labels=3, seed=1, num_steps=4, num_sampling_steps=5))
    with pytest.raises(CheckpointError, match="not VAR"):
        edifice.load(tmp_path / "ckpt", device="cpu", kind="var")
    pipe.defaults = {}


def test_stream_tokens_runs_on_the_model_alone(pipe):
    """The library function needs no VAE: tokens only, previews off."""
    steps = list(stream_tokens(pipe.model, labels=0, num_steps=2, num_sampling_steps=2, seed=0))
    assert len(steps) == 2 and steps[-1].image is None and steps[-1].tokens.shape == (1, 16, 16)
    assert math.isfinite(steps[-1].tokens.abs().max().item())


# -- command line and presets ---------------------------------------------------------------------------------------
def golden_images(st):
    """it4_cfg1's decoded image mapped to [0, 1] as the pipeline returns it."""
    return st["it4_cfg1.image"].add(1).div(2).clamp(0, 1)


IT4 = dict(labels=[3, 7], batch_size=2, num_steps=4, cfg=1.0, temperature=1.0, num_sampling_steps=20, seed=0)


def test_convert_command(tmp_path, st, capsys):
    out = tmp_path / "mar"
    args = ["convert", "--mar-vae", str(VAE), "--mar", str(CKPT), "--out", str(out)]
    assert main(args) == 1
    assert "--mar-heads ENC DEC" in capsys.readouterr().err
    assert main(args + ["--mar-heads", "4", "3"]) == 0
    pipe = edifice.load(out, device="cpu")
    assert pipe.kind == "mar-diffusion"
    close(pipe.generate(**IT4), golden_images(st), **SAMPLE_TOL)


def test_official_preset_through_the_hub(fake_hub, st):
    """An "official-mar" preset: both files fetched once from the (fake) Hub at the pinned commit, the
    preset's config supplies the heads, its defaults apply, and the images are the official ones."""
    commit = fake_hub.add_commit("edifice-test/mar-tiny", {"kl16.safetensors": VAE.read_bytes(),
                                                           "checkpoint-last.pth": CKPT.read_bytes()})
    fake_hub.add_commit("edifice-test/mar-tiny", {"kl16.safetensors": b"newer, broken"})  # main moved on
    presets.register("test-mar-tiny", kind="mar-diffusion", source="official-mar", repo="edifice-test/mar-tiny",
                     revision=commit, files={"vae": "kl16.safetensors", "mar": "checkpoint-last.pth"},
                     config=HEADS, defaults={k: v for k, v in IT4.items() if k not in ("labels", "batch_size")})
    try:
        pipe = edifice.load("test-mar-tiny", device="cpu")
        got = sorted(p.rsplit("/", 1)[1] for m, p in fake_hub.requests if m == "GET" and "/resolve/" in p)
        assert got == ["checkpoint-last.pth", "kl16.safetensors"]
        close(pipe.generate(labels=[3, 7], batch_size=2), golden_images(st), **SAMPLE_TOL)
        with pytest.raises(CheckpointError, match="preset 'test-mar-tiny' is a MAR-DIFFUSION model, not VAR"):
            edifice.load("test-mar-tiny", kind="var")
    finally:
        presets.unregister("test-mar-tiny")


def test_presets_point_at_the_authors_files():
    table = presets.presets()
    base, large, huge = table["mar-base"], table["mar-large"], table["mar-huge"]
    assert base.files == {"vae": "kl16.ckpt", "mar": "checkpoint-last.pth"}  # EMA weights: see presets.py
    assert base.revision == "773c9bdcd98740c7b876ce0d66f684a0e2468990"
    assert large.files["mar"] == "mar-large.safetensors" and huge.files["vae"] == "kl16.safetensors"
    assert [p.defaults["cfg"] for p in (base, large, huge)] == [2.9, 3.0, 3.2]
    for p in (base, large, huge):
        assert p.kind == "mar-diffusion" and p.classes == "imagenet"
        assert {k: p.defaults[k] for k in ("num_steps", "num_sampling_steps", "cfg_schedule", "temperature")} == {
            "num_steps": 256, "num_sampling_steps": 100, "cfg_schedule": "linear", "temperature": 1.0}


def test_bf16_transformer_keeps_the_diffusion_head_and_vae_in_fp32(g):
    fp32 = load_official_mar(VAE, CKPT, device="cpu", **HEADS)
    pipe = edifice.loading.place(load_official_mar(VAE, CKPT, device="cpu", **HEADS), "cpu", "bf16")
    assert pipe.model.encoder_blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert pipe.model.diffloss.net.input_proj.weight.dtype == torch.float32
    assert pipe.tokenizer.decoder.conv_out.weight.dtype == torch.float32
    mask, emb = g["mar.partial.mask"], g["mar.class_embedding"]
    z16, z32 = pipe.model(g["mar.tokens"], mask, emb).float(), fp32.model(g["mar.tokens"], mask, emb)
    assert (z16 - z32).abs().max() < 0.05 * z32.abs().max()  # bf16 rounding, not a different computation
    steps = list(pipe.stream(labels=[1, 2], batch_size=2, num_steps=4, cfg=2.0, num_sampling_steps=5, seed=0))
    assert steps[-1].tokens.dtype == torch.float32 and torch.isfinite(steps[-1].image).all()


def test_expected_wait_follows_the_settings(pipe, monkeypatch):
    """The estimate composes timed parts; each is timed once, so under load a real pair can come out in either
    order. Measured parts must be positive; the composition is checked on parts whose cost grows with their size."""
    assert pipe.estimate_seconds(num_steps=4, num_sampling_steps=10, cfg=2.0, preview=False) > 0

    def part_seconds(key, fn):  # key = (part, sizes...): a transformer pass, a head call, a decode
        sizes = [k for k in key[1:] if isinstance(k, int)]
        return {"transformer": 1e-2, "head": 1e-5, "decode": 5e-3}[key[0]] * math.prod(sizes)

    monkeypatch.setattr(pipe, "_timed", part_seconds)
    few = pipe.estimate_seconds(num_steps=4, num_sampling_steps=10, cfg=2.0, preview=False)
    assert 0 < few < pipe.estimate_seconds(num_steps=16, num_sampling_steps=10, cfg=2.0, preview=False)
    assert few < pipe.estimate_seconds(num_steps=4, num_sampling_steps=500, cfg=2.0, preview=False)
    assert few < pipe.estimate_seconds(num_steps=4, num_sampling_steps=10, cfg=2.0, preview=True, preview_every=1)
    with pytest.raises(ValueError, match="num_sampling_steps must be in 2..1000"):
        pipe.estimate_seconds(num_steps=4, num_sampling_steps=1)
