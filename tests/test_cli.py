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


def test_average_checkpoints_means_the_generators_and_refuses_another_tokenizer(tmp_path):
    """scripts/average_checkpoints.py: the generator tensors are the mean of the sources', the tokenizer and the
    first source's config are kept, and a checkpoint with another tokenizer is refused."""
    import importlib.util
    from pathlib import Path

    import pytest

    script = Path(__file__).resolve().parents[1] / "scripts" / "average_checkpoints.py"
    spec = importlib.util.spec_from_file_location("average_checkpoints", script)
    avg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(avg)

    a = tiny_var()
    b = tiny_var()
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(torch.randn_like(p))
    fa, fb = a.save_pretrained(tmp_path / "a"), b.save_pretrained(tmp_path / "b")
    avg.main([str(fa), str(fb), "--out", str(tmp_path / "soup")])
    soup = edifice.load(str(tmp_path / "soup"), device="cpu")
    for (name, p), pa, pb in zip(soup.model.named_parameters(), a.model.parameters(), b.model.parameters(),
                                 strict=True):
        assert torch.allclose(p, (pa + pb) / 2, atol=1e-6), name
    assert torch.equal(soup.tokenizer.decoder.conv_out.weight, a.tokenizer.decoder.conv_out.weight)
    assert soup.defaults == a.defaults and "the mean of" in (tmp_path / "soup" / "README.md").read_text()

    with torch.no_grad():
        b.tokenizer.decoder.conv_out.weight.add_(1)
    fc = b.save_pretrained(tmp_path / "c")
    with pytest.raises(SystemExit, match="tokenizer differs"):
        avg.main([str(fa), str(fc), "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="new folder"):
        avg.main([str(fa), str(fb), "--out", str(fa)])
