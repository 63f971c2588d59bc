"""`python -m edifice resave`: storage dtype and recommended sampling of a checkpoint, model card kept."""

import torch
from safetensors import safe_open

import edifice
from edifice.__main__ import main
from tests.tiny_models import tiny_var


def test_resave_fp16_with_new_defaults(tmp_path):
    src = tiny_var().save_pretrained(tmp_path / "src")
    with open(src / "README.md", "a") as f:
        f.write("\n## Training\n\ntrained for 3 steps\n")
    out = tmp_path / "out"
    assert main(["resave", str(src), "--out", str(out), "--dtype", "fp16", "--set", "cfg=2.5", "top_k=7"]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes["tokenizer.decoder.conv_out.weight"] == "F16" and dtypes["model.blocks.0.ffn.fc1.weight"] == "F16"
    assert dtypes["model.head.weight"] == "F32"  # VAR keeps its AdaLN head in float32
    assert (out / "model.safetensors").stat().st_size < 0.6 * (src / "model.safetensors").stat().st_size
    assert "## Training\n\ntrained for 3 steps" in (out / "README.md").read_text()
    pipe = edifice.load(str(out), device="cpu")
    assert pipe.defaults["cfg"] == 2.5 and pipe.defaults["top_k"] == 7
    assert pipe.tokenizer.decoder.conv_out.weight.dtype == pipe.model.blocks[0].ffn.fc1.weight.dtype == torch.float32
    assert pipe.generate(labels=[0], seed=0).shape == (1, 3, 32, 32)


def test_resave_rejects_malformed_settings(tmp_path, capsys):
    src = tiny_var().save_pretrained(tmp_path / "src")
    assert main(["resave", str(src), "--out", str(tmp_path / "out"), "--set", "cfg"]) == 1
    assert "key=value" in capsys.readouterr().err
