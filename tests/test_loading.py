"""edifice checkpoints, presets, placement and the convert command, without a Hub (see test_loading_hub.py)."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import edifice
from edifice import checkpoint, loading, presets
from edifice.__main__ import main
from edifice.errors import CheckpointError, CheckpointNotFoundError, EdificeError, UnknownPresetError
from edifice.generative.mar import MAR, MARConfig, MARPipeline
from edifice.tokenizers.vqvae import VQVAE, VQVAEConfig

FIX = Path(__file__).parent / "fixtures" / "var"
VAE, VAR = FIX / "vae_tiny.pth", FIX / "var_tiny.pth"
GREEDY = dict(labels=[3, 7], cfg=1.5, top_k=1, top_p=0.0, seed=0)


@pytest.fixture
def var_pipe():
    return edifice.load_official_var(VAE, VAR, device="cpu")


@pytest.fixture(scope="module")
def golden():
    return load_file(FIX / "var_golden.safetensors")


def tensors(pipe) -> dict:
    return {f"{p}.{k}": v for p, m in (("tokenizer", pipe.tokenizer), ("model", pipe.model))
            for k, v in m.state_dict().items()}


def assert_same_tensors(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype, k
        assert torch.equal(ta[k], tb[k]), k


def tiny_mar() -> MARPipeline:
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                            patch_nums=(4,), using_sa=False, using_mid_sa=False))
    mar = MAR(MARConfig(vocab_size=17, embed_dim=64, num_layers=2, num_heads=2, seq_len=16, num_classes=3))
    return MARPipeline(vae, mar, class_names=["a", "b", "c"], defaults={"num_steps": 4, "temperature": 1.0})


# -- the checkpoint format ------------------------------------------------------------------------------------
def test_var_round_trip_is_identical(var_pipe, golden, tmp_path):
    var_pipe.class_names, var_pipe.defaults = [f"class {i}" for i in range(10)], {"cfg": 1.5, "top_k": 1}
    folder = var_pipe.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["format"], config["kind"], config["image_size"]) == ("edifice", "var", 64)
    assert config["model"]["patch_nums"] == [1, 2, 3, 4] and config["classes"][3] == "class 3"
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: edifice" in card and "license: mit" in card

    loaded = edifice.load(folder)
    assert isinstance(loaded, edifice.VARPipeline) and loaded.device.type == "cpu"
    assert_same_tensors(var_pipe, loaded)
    assert (loaded.class_names, loaded.defaults) == (var_pipe.class_names, var_pipe.defaults)
    images = loaded.generate(labels=[3, 7], top_p=0.0, seed=0)  # cfg and top_k from the saved defaults
    assert torch.equal(images, var_pipe.generate(**GREEDY))
    torch.testing.assert_close(images, golden["greedy_cfg1.5.img"], atol=1e-4, rtol=0)


def test_bf16_round_trip_and_dtype_on_load(tmp_path):
    pipe = loading.place(edifice.load_official_var(VAE, VAR, device="cpu"), "cpu", "bf16")
    assert pipe.model.blocks[0].attn.mat_qkv.weight.dtype == torch.bfloat16
    assert pipe.model.head.weight.dtype == pipe.tokenizer.encoder.conv_in.weight.dtype == torch.float32
    pipe.save_pretrained(tmp_path / "bf16")
    assert_same_tensors(pipe, edifice.load(tmp_path / "bf16", dtype="bf16"))
    upcast = edifice.load(tmp_path / "bf16")  # auto on the CPU: float32
    assert upcast.model.blocks[0].attn.mat_qkv.weight.dtype == torch.float32
    assert torch.equal(upcast.model.blocks[0].attn.mat_qkv.weight, pipe.model.blocks[0].attn.mat_qkv.weight.float())


def test_mar_round_trip_is_identical(tmp_path):
    pipe = tiny_mar()
    loaded = edifice.load(pipe.save_pretrained(tmp_path / "mar"), kind="mar")
    assert isinstance(loaded, MARPipeline)
    assert (loaded.defaults, loaded.class_names) == (pipe.defaults, ["a", "b", "c"])
    assert_same_tensors(pipe, loaded)
    assert torch.equal(loaded.model.pos_LC, pipe.model.pos_LC)  # non-persistent buffer: rebuilt, not left on meta
    kwargs = dict(labels=[0, 2], cfg=2.0, seed=3)
    assert torch.equal(loaded.generate(**kwargs), pipe.generate(**kwargs))


def test_save_never_leaves_a_half_written_folder(var_pipe, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "model_card", fail)
    with pytest.raises(OSError):
        var_pipe.save_pretrained(tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one
    monkeypatch.undo()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / ".gitattributes").write_text("keep me")
    var_pipe.save_pretrained(tmp_path / "ck")  # into an existing folder: files replaced, others kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert (tmp_path / "ck" / ".gitattributes").read_text() == "keep me"
    assert edifice.load(tmp_path / "ck").num_classes == 10


def test_imagenet_classes_are_stored_by_name(var_pipe):
    names = presets.class_list("imagenet")
    assert len(names) == 1000 and len(set(names)) == 999  # "crane" is a bird (134) and a machine (517)
    assert (names[0], names[207], names[980]) == ("tench, Tinca tinca", "golden retriever", "volcano")
    var_pipe.class_names = list(names)
    assert checkpoint.config_of(var_pipe)["classes"] == "imagenet"


# -- errors ---------------------------------------------------------------------------------------------------
def test_truncated_or_corrupt_safetensors(var_pipe, tmp_path):
    folder = var_pipe.save_pretrained(tmp_path / "ck")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: could not be read .*truncated or corrupt"):
        edifice.load(folder)
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        edifice.load(folder)


def test_damaged_config(var_pipe, tmp_path):
    folder = var_pipe.save_pretrained(tmp_path / "ck")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        edifice.load(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "depth": 3}}))
    with pytest.raises(CheckpointError, match="the model tensors do not match config.json"):
        edifice.load(folder)


def test_wrong_model_kind(var_pipe, tmp_path):
    folder = var_pipe.save_pretrained(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="holds a VAR checkpoint, not MAR"):
        edifice.load(folder, kind="mar")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "kind": "diffusion"}))
    with pytest.raises(CheckpointError, match="kind 'diffusion', which this edifice cannot load"):
        edifice.load(folder)
    with pytest.raises(CheckpointError, match="preset 'var-d16' is a VAR model, not MAR"):
        edifice.load("var-d16", kind="mar")  # refused before any download


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="holds no config.json"):
        edifice.load(tmp_path)
    with pytest.raises(CheckpointError, match="is a file; pass the checkpoint folder"):
        edifice.load(VAR)
    with pytest.raises(UnknownPresetError, match="not a preset.*presets: .*var-d16"):
        edifice.load(str(tmp_path / "no-such-folder"))


# -- presets --------------------------------------------------------------------------------------------------
def test_official_presets():
    table = presets.presets()
    for depth, size in ((16, 256), (20, 256), (24, 256), (30, 256), (36, 512)):
        p = table[f"var-d{depth}"]
        assert (p.kind, p.source, p.repo, p.image_size, p.classes) == ("var", "official-var", "FoundationVision/var",
                                                                      size, "imagenet")
        assert p.files == {"vae": "vae_ch160v4096z32.pth", "var": f"var_d{depth}.pth"}
        assert p.download_bytes > 4 * p.params > 0 and p.defaults["top_k"] == 900
    assert table["var-d16"].defaults == {"cfg": 1.5, "top_k": 900, "top_p": 0.96, "more_smooth": False}
    assert presets.find_official(["vae_ch160v4096z32.pth", "var_d36.pth"]).name == "var-d36"


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UnknownPresetError, match="unknown preset 'var-d99'; presets: emoji-var, emoji-mar, var-d16"):
        presets.get("var-d99")
    with pytest.raises(UnknownPresetError, match="'var-d99' is not a preset.*presets: emoji-var"):
        edifice.load("var-d99")


def test_bundled_preset_not_trained_yet(tmp_path):
    presets.register("test-bundled", kind="var", source="folder", path=str(tmp_path / "emoji-var"))
    try:
        with pytest.raises(CheckpointNotFoundError, match="bundled checkpoint expected in .*emoji-var.*train it"):
            edifice.load("test-bundled")
    finally:
        presets.unregister("test-bundled")


def test_presets_from_env_var_and_register(tmp_path, monkeypatch, var_pipe):
    folder = var_pipe.save_pretrained(tmp_path / "ck")
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"my-var": {"kind": "var", "source": "folder", "path": str(folder),
                                            "defaults": {"cfg": 4.0}}}))
    monkeypatch.setenv(presets.ENV_VAR, str(extra))
    assert edifice.load("my-var").defaults == {"cfg": 4.0}  # the preset's defaults win over the checkpoint's
    extra.write_text(json.dumps({"bad": {"kind": "var", "source": "folder", "path": "x", "size": 1}}))
    with pytest.raises(EdificeError, match="unknown fields \\['size'\\]"):
        presets.presets()


# -- placement ------------------------------------------------------------------------------------------------
def test_auto_device_and_dtype(monkeypatch):
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert loading.resolve_device("auto") == torch.device("cpu")
    assert loading.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert loading.resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert loading.resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert loading.resolve_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert loading.resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        loading.resolve_dtype("int8", torch.device("cpu"))


def test_offload_map_when_the_model_does_not_fit(var_pipe):
    model, gpu = var_pipe.model, torch.device("cuda", 1)
    total, block = loading.nbytes(model), loading.nbytes(model.blocks[0])
    assert loading.offload_map(model, int(total / loading.GPU_HEADROOM) + 1, gpu) is None
    free = int((total - block) / loading.GPU_HEADROOM) + 1  # room for everything but one block
    device_map = loading.offload_map(model, free, gpu)
    assert device_map["blocks.0"] == 1 and device_map["blocks.1"] == "cpu"
    assert {k for k, v in device_map.items() if v == "cpu"} == {"blocks.1"}
    assert {"pos_1LC", "lvl_1L", "class_emb", "head", "head_nm"} <= device_map.keys()
    with pytest.raises(EdificeError, match="too little even with offloading"):
        loading.offload_map(model, (total - 2 * block) // 2, gpu)


def test_offloaded_blocks_give_the_same_images(var_pipe, golden, tmp_path):
    """The hooks offloading uses, on the CPU: the last block's weights live on disk and are loaded when it runs
    (on a GPU they live in CPU RAM instead, with the same hooks)."""
    free = int((loading.nbytes(var_pipe.model) - loading.nbytes(var_pipe.model.blocks[0])) / loading.GPU_HEADROOM)
    device_map = loading.offload_map(var_pipe.model, free + 1, torch.device("cuda", 0))
    device_map = {k: "disk" if v == "cpu" else "cpu" for k, v in device_map.items()}
    loading.dispatch(var_pipe.model, device_map, torch.device("cpu"), offload_dir=tmp_path)
    assert var_pipe.model.blocks[1].attn.mat_qkv.weight.is_meta
    torch.testing.assert_close(var_pipe.generate(**GREEDY), golden["greedy_cfg1.5.img"], atol=1e-4, rtol=0)


# -- python -m edifice convert --------------------------------------------------------------------------------
def test_convert_command(tmp_path, golden, capsys):
    classes = tmp_path / "names.txt"
    classes.write_text("\n".join(f"n{i}" for i in range(10)))
    assert main(["convert", "--var-vae", str(VAE), "--var", str(VAR), "--out", str(tmp_path / "out"),
                 "--classes", str(classes)]) == 0
    assert "load it with edifice.load(" in capsys.readouterr().out
    pipe = edifice.load(tmp_path / "out")
    assert pipe.class_names[9] == "n9"
    torch.testing.assert_close(pipe.generate(**GREEDY), golden["greedy_cfg1.5.img"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("damage", ["truncated", "namespace", "swapped"])
def test_convert_refuses_bad_files(tmp_path, capsys, damage):
    bad = tmp_path / "var_bad.pth"
    if damage == "truncated":
        bad.write_bytes(VAR.read_bytes()[:100_000])
        expected = "truncated or corrupt"
    elif damage == "namespace":  # an object that is not a tensor: refused by weights_only=True
        torch.save({"args": argparse.Namespace(depth=16), "model": torch.load(VAR)}, bad)
        expected = "refused to unpickle: it needs argparse.Namespace"
    else:
        bad.write_bytes(VAE.read_bytes())
        expected = "expected a VAR transformer state dict (keys like"
    assert main(["convert", "--var-vae", str(VAE), "--var", str(bad), "--out", str(tmp_path / "out")]) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert message.startswith("error: ") and expected in message
    assert not (tmp_path / "out").exists()
    assert main(["convert", "--var", str(VAR), "--out", str(tmp_path / "out")]) == 1
    assert "convert: also give --var-vae" in capsys.readouterr().err


def test_loading_runs_no_initialisation():
    """Modules are built empty and assigned: in a fresh process, loading an edifice folder and the official pair
    never initialises a meta tensor, whose Python reference ops import torch._dynamo (2.5 s on a GPU machine)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import sys, edifice; edifice.load(sys.argv[1], device='cpu'); "
            "edifice.load_official_var(sys.argv[2], sys.argv[3], device='cpu'); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(root / "checkpoints" / "emoji-var"),
                          str(FIX / "vae_tiny.pth"), str(FIX / "var_tiny.pth")],
                         capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_skip_meta_init_skips_only_meta_tensors():
    from edifice.official import skip_meta_init

    init = torch.nn.init.normal_
    with skip_meta_init():
        real, meta = torch.zeros(1000), torch.zeros(1000, device="meta")
        assert torch.nn.init.normal_(meta) is meta
        torch.nn.init.normal_(real)
    assert torch.nn.init.normal_ is init and real.std() > 0.5
