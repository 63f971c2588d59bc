"""edifice.load and `python -m edifice download` against a real HTTP server posing as the Hub (tests/fakehub.py).

The real huggingface_hub client runs: cache layout, revision resolution, offline fallback and its errors.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, hf_hub_download
from safetensors.torch import load_file

import edifice
from edifice import presets
from edifice.errors import CheckpointNotFoundError, HubUnreachableError

FIX = Path(__file__).parent / "fixtures" / "var"
ROOT = Path(__file__).parents[1]
TINY = {"kind": "var", "source": "official-var", "repo": "edifice-test/var-tiny",
        "files": {"vae": "vae_tiny.pth", "var": "var_tiny.pth"}, "image_size": 64,
        "defaults": {"cfg": 1.5, "top_k": 1, "top_p": 0.0}}


@pytest.fixture
def tiny_preset(fake_hub):
    """Preset "test-var-tiny": the official-format tiny golden files served by the fake Hub."""
    fake_hub.add_commit(TINY["repo"], {name: (FIX / name).read_bytes() for name in TINY["files"].values()})
    yield presets.register("test-var-tiny", **TINY)
    presets.unregister("test-var-tiny")


@pytest.fixture
def edifice_repo(fake_hub, tmp_path):
    """Hub repo "edifice-test/ckpt" with two commits of an edifice checkpoint: the old one (returned) has
    cfg 1.5 as default, the newer one on main cfg 3.0 and a class embedding times two."""
    pipe = edifice.load_official_var(FIX / "vae_tiny.pth", FIX / "var_tiny.pth", device="cpu")

    def commit(folder):
        return fake_hub.add_commit("edifice-test/ckpt", {p.name: p.read_bytes() for p in folder.iterdir()})

    pipe.defaults = {"cfg": 1.5}
    old = commit(pipe.save_pretrained(tmp_path / "old"))
    pipe.defaults = {"cfg": 3.0}
    pipe.model.class_emb.weight.data.mul_(2)
    commit(pipe.save_pretrained(tmp_path / "new"))
    return old


def downloads(hub) -> list[str]:
    return sorted(path.rsplit("/", 1)[1] for method, path in hub.requests if method == "GET" and "/resolve/" in path)


def test_preset_downloads_once_and_gives_the_golden_images(fake_hub, tiny_preset):
    pipe = edifice.load("test-var-tiny")
    assert downloads(fake_hub) == ["vae_tiny.pth", "var_tiny.pth"]
    images = pipe.generate(labels=[3, 7], seed=0)  # cfg 1.5, top_k 1, top_p 0 from the preset
    golden = load_file(FIX / "var_golden.safetensors")["greedy_cfg1.5.img"]
    torch.testing.assert_close(images, golden, atol=1e-4, rtol=0)

    fake_hub.requests.clear()
    again = edifice.load("test-var-tiny")
    assert fake_hub.requests == []  # served from the cache without a request
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                  pipe.model.state_dict().values(), strict=True))
    fake_hub.stop()
    assert edifice.load("test-var-tiny").defaults == TINY["defaults"]  # Hub gone, files cached: works


def test_repo_latest_and_pinned_revision(fake_hub, edifice_repo):
    latest = edifice.load("edifice-test/ckpt")
    pinned = edifice.load("edifice-test/ckpt", revision=edifice_repo)
    assert (latest.defaults, pinned.defaults) == ({"cfg": 3.0}, {"cfg": 1.5})
    assert torch.equal(latest.model.class_emb.weight, 2 * pinned.model.class_emb.weight)

    fake_hub.requests.clear()
    edifice.load("edifice-test/ckpt", revision=edifice_repo)
    assert fake_hub.requests == []  # a cached commit needs no request
    edifice.load("edifice-test/ckpt")
    assert fake_hub.requests == [("GET", "/api/models/edifice-test/ckpt/revision/main")]  # a branch is checked


def test_missing_repo_revision_or_file(fake_hub, tiny_preset, edifice_repo):
    with pytest.raises(CheckpointNotFoundError, match="edifice-test/nope: no repository edifice-test/nope on http"):
        edifice.load("edifice-test/nope")
    with pytest.raises(CheckpointNotFoundError, match="edifice-test/ckpt has no revision 'v9'"):
        edifice.load("edifice-test/ckpt", revision="v9")
    presets.register("test-missing-file", **{**TINY, "files": {"vae": "vae_tiny.pth", "var": "var_d99.pth"}})
    try:
        with pytest.raises(CheckpointNotFoundError, match="test-missing-file: .* has no file var_d99.pth"):
            edifice.load("test-missing-file")
    finally:
        presets.unregister("test-missing-file")


def test_hub_stopped_with_the_files_cached(fake_hub, edifice_repo):
    first = edifice.load("edifice-test/ckpt")
    fake_hub.stop()
    again = edifice.load("edifice-test/ckpt")  # the branch cannot be checked: the cached snapshot is used
    assert again.defaults == first.defaults
    assert torch.equal(again.model.class_emb.weight, first.model.class_emb.weight)


def test_hub_stopped_without_the_files(fake_hub, tiny_preset):
    fake_hub.stop()
    with pytest.raises(HubUnreachableError) as err:
        edifice.load("test-var-tiny")
    message = str(err.value)
    for part in ("test-var-tiny: could not reach the Hugging Face Hub", f"HF_HOME={constants.HF_HOME}",
                 "connect, or run `python -m edifice download test-var-tiny` where you are online",
                 "or pass a local folder"):
        assert part in message
    cache = Path(constants.HF_HUB_CACHE)
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file() and p.suffix == ".pth"]


def test_offline_mode_without_the_files(fake_hub, tiny_preset, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE is set .*unset HF_HUB_OFFLINE, or run"):
        edifice.load("test-var-tiny")
    assert fake_hub.requests == []


def test_download_command_then_offline_load(fake_hub, tiny_preset, tmp_path):
    extra = tmp_path / "presets.json"
    extra.write_text(json.dumps({"test-var-tiny": TINY}))
    env = {**os.environ, "HF_HUB_CACHE": constants.HF_HUB_CACHE, presets.ENV_VAR: str(extra)}
    done = subprocess.run([sys.executable, "-m", "edifice", "download", "test-var-tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip().rsplit(": ", 1)[1])
    assert sorted(p.name for p in folder.iterdir()) == ["vae_tiny.pth", "var_tiny.pth"]
    assert folder.is_relative_to(constants.HF_HUB_CACHE)
    fake_hub.stop()
    assert edifice.load("test-var-tiny").num_classes == 10  # prefetched: loads with the Hub gone


def test_files_preloaded_by_hf_hub_download_are_used(fake_hub, tiny_preset):
    """What a Space's `preload_from_hub` does at build time: plain hf_hub_download of each file."""
    for name in TINY["files"].values():
        hf_hub_download(TINY["repo"], name)
    fake_hub.requests.clear()
    assert edifice.load("test-var-tiny").num_classes == 10
    assert fake_hub.requests == []
