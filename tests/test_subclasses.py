"""Models trained on subclasses (the bundled emoji models' Unicode subgroups) beneath the classes a request
names: the draw of a subclass per image, the checkpoint round trip and the checks of a config's subclasses."""

import json
from collections import Counter

import pytest
import torch

import edifice
from edifice import MAR, VQVAE, MARConfig, MARPipeline, VQVAEConfig
from edifice.errors import CheckpointError
from edifice.pipeline import Subclasses

CLASSES = ["circle", "square", "triangle"]
SUB = Subclasses(("ring", "disc", "box", "wedge", "spike"), (0, 0, 1, 2, 2), (1.0, 3.0, 2.0, 1.0, 1.0))


@pytest.fixture
def pipe() -> MARPipeline:
    torch.manual_seed(1)
    tok = VQVAE(VQVAEConfig(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 1, 2), patch_nums=(4,)))
    mar = MAR(MARConfig(vocab_size=33, embed_dim=32, num_layers=1, num_heads=2, seq_len=16, num_classes=5))
    p = MARPipeline(tok, mar, CLASSES, defaults=dict(num_steps=2, labels=2))
    p.subclasses = SUB
    return p


def test_a_class_draws_its_subclasses_by_weight():
    rng = torch.Generator().manual_seed(0)
    drawn = SUB.draw(torch.tensor([0] * 4000 + [1, 2, 3, 3]), 3, rng)
    counts = Counter(drawn[:4000].tolist())
    assert set(counts) == {0, 1} and counts[1] / 4000 == pytest.approx(0.75, abs=0.03)  # weights 1 : 3
    assert drawn[4000] == 2 and drawn[4001] in (3, 4) and drawn[-2:].tolist() == [5, 5]  # 3 = unconditional


def test_the_pipeline_takes_classes_and_runs_the_model_on_drawn_subclasses(pipe):
    assert pipe.num_classes == 3 and pipe.model.num_classes == 5
    steps = list(pipe.stream(labels=0, batch_size=8, seed=4))
    assert steps[-1].labels.tolist() != [steps[-1].labels[0]] * 8 and set(steps[-1].labels.tolist()) <= {0, 1}
    again = list(pipe.stream(labels=0, batch_size=8, seed=4))
    assert torch.equal(again[-1].labels, steps[-1].labels) and torch.equal(again[-1].tokens, steps[-1].tokens)
    assert set(list(pipe.stream(batch_size=8, seed=4))[-1].labels.tolist()) <= {3, 4}  # the default class, 2
    assert list(pipe.stream(labels=-1, batch_size=2, seed=4))[-1].labels.tolist() == [5, 5]
    mixed = list(pipe.stream(labels=[1, 2, 0], seed=4))[-1]
    assert mixed.labels[0] == 2 and mixed.labels[1] in (3, 4) and mixed.labels[2] in (0, 1)
    names = [SUB.names[i] for i in mixed.labels.tolist()]
    assert pipe.subclass_note(mixed) == "drawn as " + ", ".join(names) and names[0] == "box"
    drawn = list(pipe.stream(labels=None, batch_size=6))  # classes drawn too; the seed is reported
    repeat = list(pipe.stream(labels=None, batch_size=6, seed=drawn[-1].seed))
    assert torch.equal(drawn[-1].labels, repeat[-1].labels)
    assert list(pipe.stream(labels=[3], seed=0))[-1].labels.tolist() == [5]  # class 3: unconditional
    with pytest.raises(ValueError, match="unknown class 4"):
        list(pipe.stream(labels=[4], seed=0))  # 4 is a subclass label, not a class


def test_subclasses_survive_the_checkpoint_and_are_checked(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "ck")
    back = edifice.load(tmp_path / "ck", device="cpu")
    assert back.subclasses == SUB and back.class_names == CLASSES
    assert torch.equal(back.generate(labels=1, seed=0), pipe.generate(labels=1, seed=0))
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    bad = {"too few": {**SUB.to_dict(), "names": ["a"] * 4, "classes": [0, 0, 1, 2], "weights": [1] * 4},
           "class outside": {**SUB.to_dict(), "classes": [0, 0, 1, 2, 3]},
           "class without one": {**SUB.to_dict(), "classes": [0, 0, 0, 2, 2]},
           "zero weight": {**SUB.to_dict(), "weights": [1, 1, 0, 1, 1]},
           "long name": {**SUB.to_dict(), "names": ["x" * 201, *SUB.names[1:]]},
           "not lists": {"names": "ring"}, "a path": "/etc/passwd"}
    for why, value in bad.items():
        (tmp_path / "ck" / "config.json").write_text(json.dumps({**config, "subclasses": value}))
        with pytest.raises(CheckpointError, match="subclasses") as e:
            edifice.load(tmp_path / "ck", device="cpu")
        assert "edifice version" in str(e.value), why
    plain = {k: v for k, v in config.items() if k != "subclasses"}  # no subclasses: 5 classes, unnamed 3 and 4
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**plain, "classes": None}))
    assert edifice.load(tmp_path / "ck", device="cpu").num_classes == 5
