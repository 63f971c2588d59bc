"""`python -m edifice resave` (storage dtype, recommended sampling, model card kept) and `average` (model soups)."""

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


def test_average_means_the_generators_and_refuses_another_model(tmp_path, capsys):
    """`average`: the generator's float tensors are the mean of the sources' (VAR's float32 head exactly, in an
    fp16 file too), integer buffers, tokenizer, defaults and card come from the first source, and checkpoints
    of another tokenizer or architecture are refused before anything is written; dropout may differ."""
    a, b = tiny_var(), tiny_var()
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(torch.randn_like(p))
    b.model.cfg.drop_rate = 0.1  # a fine-tune with another dropout: the same layout, so it averages
    fa, fb = a.save_pretrained(tmp_path / "a"), b.save_pretrained(tmp_path / "b")
    with open(fa / "README.md", "a") as f:
        f.write("\n## Training\n\nround 6\n")
    assert main(["average", str(fa), str(fb), "--out", str(tmp_path / "soup")]) == 0
    soup = edifice.load(str(tmp_path / "soup"), device="cpu")
    for (name, p), pa, pb in zip(soup.model.named_parameters(), a.model.parameters(), b.model.parameters(),
                                 strict=True):
        torch.testing.assert_close(p, (pa + pb) / 2, atol=1e-6, rtol=0, msg=name)
    assert torch.equal(soup.model.lvl_1L, a.model.lvl_1L)
    assert torch.equal(soup.tokenizer.decoder.conv_out.weight, a.tokenizer.decoder.conv_out.weight)
    card = (tmp_path / "soup" / "README.md").read_text()
    assert soup.model.cfg.drop_rate == a.model.cfg.drop_rate != 0.1
    assert soup.defaults == a.defaults and "round 6" in card and f"the mean of `{fa}`, `{fb}`" in card

    assert main(["average", str(fa), str(fb), "--out", str(tmp_path / "half"), "--dtype", "fp16"]) == 0
    half = edifice.load(str(tmp_path / "half"), device="cpu")
    assert torch.equal(half.model.head.weight, soup.model.head.weight)  # float32 head: not rounded to fp16
    assert torch.equal(half.model.blocks[0].ffn.fc1.weight, soup.model.blocks[0].ffn.fc1.weight.half().float())

    with torch.no_grad():
        b.tokenizer.decoder.conv_out.weight.add_(1)
    fc = b.save_pretrained(tmp_path / "c")
    d = tiny_var()
    d.class_names = ["x", "y", "z"]
    fd = d.save_pretrained(tmp_path / "d")
    bad = tmp_path / "bad"
    for specs, out, message in (([fa, fc], bad, "another tokenizer"), ([fa, fd], bad, "differs from"),
                                ([fa], bad, "at least two"), ([fa, fb], fa, "new folder")):
        assert main(["average", *map(str, specs), "--out", str(out)]) == 1
        assert message in capsys.readouterr().err and not bad.exists()
    assert torch.equal(edifice.load(str(fa), device="cpu").model.head.weight, a.model.head.weight)
