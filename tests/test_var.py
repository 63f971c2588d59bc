"""VAR parity with the official code (golden vectors in tests/fixtures/var, copied unchanged from
shared/golden/var) and the behaviour of the streaming sampler, the scale-list control and the seed API."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import edifice
from edifice.generative import var as var_mod
from edifice.official import infer_var_config, load_official_var
from edifice.pipeline import sample_top_k_top_p_
from edifice.tokenizers.vqvae import VQVAE, VQVAEConfig, phi_index

FIX = Path(__file__).parent / "fixtures" / "var"
CONFIG = json.loads((FIX / "config.json").read_text())
CASES = CONFIG["cases"]
SHAPES = FIX / "hub_state_dict_shapes"


@pytest.fixture(scope="module")
def pipe():
    return load_official_var(FIX / "vae_tiny.pth", FIX / "var_tiny.pth", device="cpu")


@pytest.fixture(scope="module")
def vg():
    return load_file(FIX / "vae_golden.safetensors")


@pytest.fixture(scope="module")
def g():
    return load_file(FIX / "var_golden.safetensors")


def close(a, b, atol, rtol=1e-5):
    """|a - b| <= atol + rtol |b| elementwise (the golden README's tolerances: 1e-5 for logits and latents,
    atol 1e-4 for images)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    a, b = a.float(), b.float()
    excess = ((a - b).abs() - atol - rtol * b.abs()).max().item()
    assert excess <= 0, f"max |diff| {(a - b).abs().max().item():.3g} exceeds atol {atol} + rtol {rtol}"


# -- configuration inferred from the files ------------------------------------------------------------------
def test_config_inferred_from_state_dicts(pipe):
    v, t = CONFIG["vqvae"], CONFIG["var"]
    assert pipe.vae.cfg.vocab_size == v["vocab_size"] and pipe.vae.cfg.z_channels == v["z_channels"]
    assert pipe.vae.cfg.ch == v["ch"] and pipe.vae.cfg.ch_mult == (1, 1, 2, 2, 4)
    assert pipe.vae.cfg.num_res_blocks == 2 and pipe.vae.cfg.share_quant_resi == v["share_quant_resi"]
    c = pipe.var.cfg
    assert (c.depth, c.embed_dim, c.num_heads, c.num_classes) == (t["depth"], t["embed_dim"], t["num_heads"],
                                                                  t["num_classes"])
    assert c.patch_nums == tuple(t["patch_nums"]) and c.shared_aln is False and c.attn_l2_norm is True
    assert sum(p.numel() for p in pipe.vae.parameters()) == CONFIG["param_counts"]["vae"]
    assert sum(p.numel() for p in pipe.var.parameters()) == CONFIG["param_counts"]["var_tiny"]


def test_phi_mapping_follows_numpy_float64_ties(vg):
    assert [phi_index(si, 4, 4) for si in range(4)] == vg["phi_index_per_scale"].tolist()
    assert [phi_index(si, 10, 4) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(si, 3, 4) for si in range(3)] == [0, 2, 3]
    assert [phi_index(si, 14, 4) for si in range(14)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]


# -- tokenizer parity -----------------------------------------------------------------------------------------
@torch.no_grad()
def test_vqvae_matches_official(pipe, vg):
    vae = pipe.vae
    x = vg["input_img"]
    enc = vae.encoder(x)
    close(enc, vg["encoder_out"], 1e-5)
    f = vae.quant_conv(enc)
    close(f, vg["f"], 1e-5)
    idx = vae.quantize.f_to_idx(f)
    for si, ids in enumerate(idx):
        assert torch.equal(ids, vg[f"idx_s{si}"]), f"scale {si} ids differ"
    for si, fh in enumerate(vae.quantize.f_to_idx(f, to_fhat=True)):
        close(fh, vg[f"fhat_s{si}"], 1e-5)
    close(vae.idx_to_img(idx), vg["recon_last"], 1e-4)
    for si, img in enumerate(vae.idx_to_img(idx, progressive=True)):
        close(img, vg[f"recon_s{si}"], 1e-4)
    close(vae.quantize.idx_to_var_input(idx), vg["var_input"], 1e-5)


# -- transformer parity ---------------------------------------------------------------------------------------
@torch.no_grad()
def test_teacher_forcing_logits_match_official(pipe, g):
    close(pipe.var(g["tf_labels"], g["tf_input"]), g["tf_logits"], 1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_sampling_matches_official(pipe, g, case):
    c = CASES[case]
    steps = list(pipe.stream(labels=c["label_B"], cfg=c["cfg"], top_k=c["top_k"], top_p=c["top_p"],
                             more_smooth=c["more_smooth"], seed=c["g_seed"]))
    assert [s.patch_size for s in steps] == [1, 2, 3, 4]
    B = len(c["label_B"])
    assert torch.equal(torch.cat((steps[0].labels, torch.full((B,), 10))), g[f"{case}.class_emb_input"])
    for si, s in enumerate(steps):
        assert torch.equal(s.tokens, g[f"{case}.idx_s{si}"]), f"scale {si} ids differ"
        close(s.logits, g[f"{case}.guided_logits_s{si}"], 1e-5)
        close(s.f_hat, g[f"{case}.fhat_s{si}"], 1e-5)
    close(steps[-1].image, g[f"{case}.img"], 1e-4)
    close(pipe.generate(labels=c["label_B"], cfg=c["cfg"], top_k=c["top_k"], top_p=c["top_p"],
                        more_smooth=c["more_smooth"], seed=c["g_seed"]), g[f"{case}.img"], 1e-4)


def test_streamed_previews_match_official(pipe, g):
    c = CASES["greedy_cfg1.5"]
    steps = list(pipe.stream(labels=c["label_B"], cfg=c["cfg"], top_k=1, seed=0))
    for si in range(3):
        close(steps[si].image, g[f"greedy_cfg1.5.preview_s{si}"], 1e-4)
    assert all(s.image.min() >= 0 and s.image.max() <= 1 for s in steps)


def test_cuda_graphs_are_automatic_and_refused_off_cuda(pipe):
    """None (the default) samples eagerly on the CPU, True there is refused with what to do; the KV cache is
    sized for the chosen scales and names its overflow."""
    eager = [s.tokens for s in pipe.stream(labels=[3], seed=5, top_k=4, preview=False, cuda_graphs=False)]
    auto = [s.tokens for s in pipe.stream(labels=[3], seed=5, top_k=4, preview=False)]
    assert all(torch.equal(a, b) for a, b in zip(eager, auto, strict=True))
    with pytest.raises(ValueError, match="needs the whole model on one CUDA device; it is on cpu.*cuda_graphs at None"):
        next(pipe.stream(labels=[3], seed=5, cuda_graphs=True))
    caches = var_mod.new_caches(pipe.var, 2, [0, 1])
    assert caches[0].k.shape[2] == sum(pn * pn for pn in pipe.var.patch_nums[:2])
    k = torch.zeros(2, caches[0].k.shape[1], caches[0].k.shape[2] + 1, caches[0].k.shape[3])
    with pytest.raises(ValueError, match="cannot take"):
        caches[0].extend(k, k)


@torch.no_grad()
def test_kv_cached_logits_equal_teacher_forced(pipe):
    """Sampling with the KV cache and no mask == one block-causal pass over the sampled tokens."""
    labels, cfg = torch.tensor([4, 9]), 1.5
    steps = list(pipe.stream(labels=labels, cfg=cfg, top_k=8, top_p=0.9, seed=3))
    idx = [s.tokens for s in steps]
    x = pipe.vae.quantize.idx_to_var_input(idx)
    cond = pipe.var(labels, x)
    uncond = pipe.var(torch.full_like(labels, 10), x)
    K = len(steps)
    for si, (b, e) in enumerate(pipe.var.begin_ends):
        t = cfg * si / (K - 1)
        close(steps[si].logits, (1 + t) * cond[:, b:e] - t * uncond[:, b:e], 1e-5)


def test_teacher_forcing_is_block_causal(pipe, g):
    """Changing the input of scale 3 leaves the logits of scales 0..2 untouched and changes scale 3's."""
    x = g["tf_input"].clone()
    base = pipe.var(g["tf_labels"], x)
    x[:, 13:] += 1.0  # inputs of the last scale (positions 14..29 of the sequence)
    out = pipe.var(g["tf_labels"], x)
    assert torch.equal(out[:, :14], base[:, :14])
    assert (out[:, 14:] - base[:, 14:]).abs().max() > 1e-3


# -- the scale-list control -----------------------------------------------------------------------------------
def test_non_default_scale_list_streams_every_chosen_scale(pipe):
    steps = list(pipe.stream(labels=[1, 2], scales=[1, 2, 4], cfg=2.0, top_k=5, seed=11))
    assert [s.patch_size for s in steps] == [1, 2, 4] and [s.scale for s in steps] == [0, 1, 3]
    assert all(s.num_steps == 3 for s in steps)
    for s in steps:
        assert s.tokens.shape == (2, s.patch_size ** 2)
        assert s.image.shape == (2, 3, 64, 64) and torch.isfinite(s.image).all()
        assert torch.isfinite(s.f_hat).all() and torch.isfinite(s.logits).all()


def test_scale_list_ending_early_gives_coarse_image(pipe):
    steps = list(pipe.stream(labels=[1], scales=[1, 2], seed=0))
    assert len(steps) == 2 and steps[-1].image.shape == (1, 3, 64, 64)
    full = list(pipe.stream(labels=[1], seed=0))
    assert torch.equal(steps[1].tokens, full[1].tokens)  # same draws up to where it stops


@pytest.mark.parametrize("bad", [[2, 3], [1, 3, 2], [1, 5], [], [1, 1, 2], [1, 2.5]])
def test_invalid_scale_lists_are_explained(pipe, bad):
    with pytest.raises(ValueError, match=r"trained sizes \[1, 2, 3, 4\]"):
        next(pipe.stream(labels=[1], scales=bad))


# -- labels, seeds, temperature -------------------------------------------------------------------------------
def test_labels_drawn_from_seed_and_reported(pipe):
    a = list(pipe.stream(labels=None, batch_size=3, seed=5, preview=False))
    b = list(pipe.stream(labels=None, batch_size=3, seed=5, preview=False))
    assert torch.equal(a[0].labels, b[0].labels) and a[0].labels.shape == (3,)
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, b, strict=True))
    assert a[0].image is None


def test_negative_label_is_unconditional_and_unknown_class_refused(pipe):
    s = next(pipe.stream(labels=-1, batch_size=2, seed=0))
    assert s.labels.tolist() == [10, 10]
    with pytest.raises(ValueError, match=r"classes 0\.\.9"):
        next(pipe.stream(labels=[3, 11]))


def test_seed_none_is_reported_and_reproducible(pipe):
    first = list(pipe.stream(labels=[2], top_k=20, preview=False))
    again = list(pipe.stream(labels=[2], top_k=20, seed=first[0].seed, preview=False))
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(first, again, strict=True))


def test_temperature_zero_is_greedy(pipe):
    a = list(pipe.stream(labels=[3, 7], cfg=1.5, temperature=0, seed=1, preview=False))
    b = list(pipe.stream(labels=[3, 7], cfg=1.5, top_k=1, seed=99, preview=False))
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="temperature"):
        next(pipe.stream(labels=[1], temperature=-1))


def test_bfloat16_transformer_samples_finite_images():
    p = load_official_var(FIX / "vae_tiny.pth", FIX / "var_tiny.pth", device="cpu", dtype=torch.bfloat16)
    assert p.var.blocks[0].attn.mat_qkv.weight.dtype == torch.bfloat16 and p.var.head.weight.dtype == torch.float32
    full = load_official_var(FIX / "vae_tiny.pth", FIX / "var_tiny.pth", device="cpu").var
    for m, f in ((p.var.head, full.head), (p.var.head_nm, full.head_nm)):  # the float32 head is not rounded
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), f.state_dict().values(), strict=True))
    img = p.generate(labels=[3, 7], top_k=1, cfg=1.5, seed=0)
    assert img.shape == (2, 3, 64, 64) and torch.isfinite(img).all()


# -- real hub architectures, built on the meta device ----------------------------------------------------------
def hub_var_config(depth: int) -> edifice.VARConfig:
    pns = var_mod.PATCH_NUMS_512 if depth == 36 else var_mod.PATCH_NUMS_256
    return edifice.VARConfig(depth=depth, embed_dim=64 * depth, num_heads=depth, shared_aln=depth == 36,
                             patch_nums=pns)


def shapes_of(module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_hub_vqvae_keys_and_shapes():
    with torch.device("meta"):
        vae = VQVAE(VQVAEConfig(vocab_size=4096, z_channels=32, ch=160))
    assert shapes_of(vae) == json.loads((SHAPES / "vqvae_ch160v4096z32_state_dict_shapes.json").read_text())


@pytest.mark.parametrize("depth", [16, 20, 24, 30, 36])
def test_hub_var_keys_and_shapes(depth):
    with torch.device("meta"):
        model = edifice.VAR(hub_var_config(depth))
    assert shapes_of(model) == json.loads((SHAPES / f"var_d{depth}_state_dict_shapes.json").read_text())


@pytest.mark.parametrize("depth", [16, 30, 36])
def test_hub_var_config_inferred_from_shapes(depth):
    expected = hub_var_config(depth)
    shapes = json.loads((SHAPES / f"var_d{depth}_state_dict_shapes.json").read_text())
    sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    sd["lvl_1L"] = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(expected.patch_nums)])[None]
    assert infer_var_config(sd) == expected


# -- wrong, broken and unsafe files ------------------------------------------------------------------------------
def test_vae_given_as_var_is_named(tmp_path):
    with pytest.raises(edifice.CheckpointError, match="expected a VAR transformer.*found a VAR VQ-VAE"):
        load_official_var(FIX / "vae_tiny.pth", FIX / "vae_tiny.pth")


def test_truncated_file_is_named(tmp_path):
    bad = tmp_path / "var_d16.pth"
    bad.write_bytes((FIX / "var_tiny.pth").read_bytes()[:100_000])
    with pytest.raises(edifice.CheckpointError, match="truncated or corrupt"):
        load_official_var(FIX / "vae_tiny.pth", bad)


def test_mar_training_checkpoint_is_named(tmp_path):
    ck = tmp_path / "checkpoint-last.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "model_ema": {"w": torch.zeros(1)}}, ck)
    with pytest.raises(edifice.CheckpointError, match="training checkpoint"):
        load_official_var(FIX / "vae_tiny.pth", ck)


def test_pickle_with_objects_is_refused(tmp_path):
    ck = tmp_path / "var.pth"
    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.zeros(1)}, ck)
    with pytest.raises(edifice.CheckpointError, match="refused to unpickle: it needs argparse.Namespace"):
        load_official_var(FIX / "vae_tiny.pth", ck)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(edifice.CheckpointError, match="no such checkpoint"):
        load_official_var(tmp_path / "nope.pth", FIX / "var_tiny.pth")


# -- the seed API ----------------------------------------------------------------------------------------------
def test_total_tokens():
    assert var_mod.total_tokens() == 341
    assert var_mod.total_tokens([1, 2]) == 5 and var_mod.total_tokens([1, 2, 4]) == 21
    assert var_mod.total_tokens(var_mod.PATCH_NUMS_256) == 680


@torch.no_grad()
def test_next_scale_prediction_returns_logits_of_scale_idx(pipe, g):
    """Fed the golden greedy tokens of scales 0..1, it returns the official raw logits of scale 2 (cond half)."""
    case = "greedy_cfg1.0"
    tokens = [g[f"{case}.idx_s{si}"] for si in range(2)]
    out = var_mod.next_scale_prediction(pipe, tokens, 2, torch.tensor([3, 7]))
    close(out, g[f"{case}.raw_logits_s2"][:2], 1e-5)
    first = var_mod.next_scale_prediction(pipe.var, [], 0, torch.tensor([3, 7]), tokenizer=pipe.vae)
    close(first, g[f"{case}.raw_logits_s0"][:2], 1e-5)
    with pytest.raises(ValueError, match="2 coarser token maps"):
        var_mod.next_scale_prediction(pipe, tokens[:1], 2, torch.tensor([3, 7]))


def test_seed_build_functions_give_working_models():
    torch.manual_seed(0)
    tok = var_mod.build_tokenizer(image_size=64, scales=(1, 2, 4), codebook_size=32, embed_dim=8, ch=32)
    model = var_mod.build(hidden_size=64, num_layers=2, num_heads=2, scales=(1, 2, 4), codebook_size=32,
                          embed_dim=8, num_classes=5)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    idx = tok.img_to_idx(x)
    assert [i.shape for i in idx] == [(2, 1), (2, 4), (2, 16)]
    model.eval()
    logits = model(torch.tensor([0, 4]), tok.quantize.idx_to_var_input(idx))
    assert logits.shape == (2, var_mod.total_tokens((1, 2, 4)), 32)
    imgs = edifice.VARPipeline(tok, model).generate(labels=[1, 2], seed=0)
    assert imgs.shape == (2, 3, 64, 64) and torch.isfinite(imgs).all()
    with pytest.raises(ValueError, match="power of two"):
        var_mod.build_tokenizer(image_size=60, scales=(1, 2, 4))


def test_recommended_defaults_build_the_official_d16():
    d = var_mod.recommended_defaults()
    with torch.device("meta"):
        model = var_mod.build(**d["model"])
        tok = var_mod.build_tokenizer(**d["tokenizer"])
    assert sum(p.numel() for p in model.parameters()) == 310_283_520
    assert sum(p.numel() for p in tok.parameters()) == 108_948_355
    assert set(d["sampling"]) == {"cfg", "top_k", "top_p", "more_smooth"}


def test_fast_preview_decodes_each_scale_at_its_own_size(pipe):
    fast = list(pipe.stream(labels=[3, 7], top_k=1, seed=0, preview="fast"))
    full = list(pipe.stream(labels=[3, 7], top_k=1, seed=0, preview="full"))
    assert all(s.image.shape == (2, 3, 64, 64) for s in fast)
    assert torch.equal(fast[-1].image, full[-1].image)  # the last scale is exact
    for pn, s in zip([1, 2, 3], fast[:3], strict=True):  # a pn x pn latent decodes to 16pn px, shown in blocks
        block = 64 // (16 * pn)
        img = s.image[..., : 16 * pn * block, : 16 * pn * block]
        assert torch.equal(img, img[..., ::block, ::block].repeat_interleave(block, -1).repeat_interleave(block, -2))
    assert not torch.equal(fast[1].image, full[1].image)
    with pytest.raises(ValueError, match="preview must be"):
        next(pipe.stream(labels=[1], preview="quick"))


@pytest.mark.parametrize("spread", [4.0, 0.3])  # peaked: the 64 best hold top_p (partial top-k); flat: full sort
def test_top_p_keeps_the_official_set_with_or_without_the_full_sort(spread):
    g = torch.Generator().manual_seed(0)
    for top_p in (0.3, 0.6, 0.9):
        logits = torch.randn(2, 300, 512, generator=g) * spread
        assert bool((logits.softmax(-1).topk(64).values.sum(-1) >= top_p).all()) == (spread > 1)
        sorted_logits, sorted_idx = logits.sort(dim=-1)  # the official rule, written out
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[..., -1] = False
        expected = ~remove.scatter(-1, sorted_idx, remove)
        filtered = logits.clone()
        sample_top_k_top_p_(filtered, top_p=top_p, rng=torch.Generator().manual_seed(1))
        assert torch.equal(filtered.isfinite(), expected)
        assert 1 < expected.sum(-1).float().mean() < 512
