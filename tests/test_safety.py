"""What a public server needs from the library (issue 14): configs that cannot exhaust memory, specs that are
never read as paths, errors that name no server path, a download limit, loads that do not block each other,
and saves that never leave a folder that does not load.

Each test fails on the main branch before this issue: there a config's numbers were trusted (a seq_len of
2,000,000 built a 3 GB float64 table), ``edifice.load`` had no ``allow_local``/``max_download_bytes`` and read
``org/name@rev`` as nothing, the app's ModelCache held one lock while loading, and ``save_pretrained``
replaced an existing folder's files one rename at a time.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

import edifice
from edifice import checkpoint, presets
from edifice.checkpoint import FAMILIES
from edifice.errors import CheckpointError, CheckpointNotFoundError, EdificeError, HubUnreachableError
from tests.tiny_models import tiny_mar, tiny_mar_diffusion, tiny_var

ROOT = Path(__file__).resolve().parents[1]
EMOJI_VAR, EMOJI_MAR = ROOT / "checkpoints" / "emoji-var", ROOT / "checkpoints" / "emoji-mar"
VAR_FIX, MAR_FIX = Path(__file__).parent / "fixtures" / "var", Path(__file__).parent / "fixtures" / "mar"


# -- item 1: a config cannot make a load allocate memory -----------------------------------------------------------
def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint folder ``src`` (weights linked) whose config.json ``edit`` changed."""
    dst.mkdir()
    os.symlink(src / "model.safetensors", dst / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config, separators=(",", ":")))
    return dst


CONFIG_ATTACKS = {  # name -> (checkpoint, edit of its config.json)
    "mar seq_len 2,000,000 (the issue's 805-byte config)": ("mar", lambda c: c["model"].update(seq_len=2_000_000)),
    "mar seq_len 400,000 (within the integer bound)": ("mar", lambda c: c["model"].update(seq_len=400_000)),
    "var 199 scales in the model (an L x L mask)": ("var", lambda c: c["model"].update(patch_nums=[*range(1, 200)])),
    "var 199 scales in both": ("var", lambda c: [c[k].update(patch_nums=[*range(1, 200)]) for k in ("model",
                                                                                                    "tokenizer")]),
    "var depth 1,000,000": ("var", lambda c: c["model"].update(depth=1_000_000)),
    "var tokenizer width 100,000": ("var", lambda c: c["tokenizer"].update(ch=100_000)),
    "mar-diffusion image 2^20 px": ("mar-diffusion", lambda c: c["model"].update(img_size=2 ** 20, vae_stride=1)),
    "var depth 'eight'": ("var", lambda c: c["model"].update(depth="eight")),
    "var no tokenizer": ("var", lambda c: c.pop("tokenizer")),
    "var classes 5": ("var", lambda c: c.update(classes=5)),
    "var classes a path": ("var", lambda c: c.update(classes="../../../etc/passwd")),
    "mar unknown field": ("mar", lambda c: c["model"].update(layers=3)),
    "mar NaN mlp_ratio": ("mar", lambda c: c["model"].update(mlp_ratio=float("nan"))),
    "mar defaults a list": ("mar", lambda c: c.update(defaults=[1])),
}

# Loads every folder named on the command line in one fresh process whose address space may grow by at most
# 1.5 GiB (so a regression fails here instead of exhausting the machine), and prints for each the error and
# how much the peak RSS grew.
CHILD = """
import json, resource, sys
import edifice
from edifice.official import load_official_mar, load_official_var
edifice.load(sys.argv[1], device="cpu")  # warm-up: allocator and imports
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 2 ** 29, resource.RLIM_INFINITY))
out = {}
for arg in sys.argv[2:]:
    name, *paths = arg.split("::")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        if len(paths) == 1:
            edifice.load(paths[0], device="cpu")
        else:
            (load_official_var if "var" in name else load_official_mar)(*paths, device="cpu")
        error = None
    except Exception as e:
        error = [type(e).__name__, str(e)]
    out[name] = {"error": error, "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024}
print(json.dumps(out))
"""


def test_config_attacks_are_one_line_errors_without_memory(tmp_path):
    """Every attack on config.json, for every bundled family, is a one-line CheckpointError raised before the
    process grows by more than 100 MB; so are official files whose shapes describe absurd models (VAR scale
    numbers up to 10^9 that sized a bincount, MAR encoder positions fewer than its tokens)."""
    sources = {"var": EMOJI_VAR, "mar": EMOJI_MAR,
               "mar-diffusion": tiny_mar_diffusion().save_pretrained(tmp_path / "mar-diffusion")}
    args = [f"{name}::{edited(sources[kind], tmp_path / f'attack{i}', edit)}"
            for i, (name, (kind, edit)) in enumerate(CONFIG_ATTACKS.items())]
    var_sd = torch.load(VAR_FIX / "var_tiny.pth", weights_only=True)
    var_sd["lvl_1L"][0, -1] = 10 ** 9
    torch.save(var_sd, tmp_path / "var_bad.pth")
    args.append(f"official var scale 10^9::{VAR_FIX / 'vae_tiny.pth'}::{tmp_path / 'var_bad.pth'}")
    mar_ck = torch.load(MAR_FIX / "tiny_mar_checkpoint-last.pth", weights_only=False)
    for sd in (mar_ck["model"], mar_ck["model_ema"]):
        sd["encoder_pos_embed_learned"] = sd["encoder_pos_embed_learned"][:, :3]
    torch.save({k: mar_ck[k] for k in ("model", "model_ema")}, tmp_path / "mar_bad.pth")
    args.append(f"official mar positions::{MAR_FIX / 'tiny_kl16.safetensors'}::{tmp_path / 'mar_bad.pth'}")

    done = subprocess.run([sys.executable, "-c", CHILD, str(EMOJI_MAR), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == len(args)
    for name, result in results.items():
        assert result["error"] is not None, f"{name}: loaded"
        kind, message = result["error"]
        assert kind == "CheckpointError", f"{name}: {kind}: {message[:300]}"
        assert "\n" not in message and len(message) < 400, f"{name}: {message}"
        assert result["rss_growth_mb"] < 100, f"{name}: RSS grew by {result['rss_growth_mb']:.0f} MB"
    assert "model.seq_len is 2000000" in results["mar seq_len 2,000,000 (the issue's 805-byte config)"]["error"][1]
    assert "not a class list shipped" in results["var classes a path"]["error"][1]


SAMPLE = {int: 1, float: 1.0, bool: False, str: "a", tuple: [1], list: [1]}  # a value of each annotated type


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_every_family_refuses_wrong_types_field_by_field(kind):
    """Generic over FAMILIES (families added later are covered): for the model and tokenizer config of each,
    a wrong type in any field, a missing required field or an unknown one is a CheckpointError naming it."""
    from edifice.checkpoint import config_from_dict

    family = FAMILIES[kind]
    for config_cls in (family.config, family.tokenizer_config):
        hints = typing.get_type_hints(config_cls)
        required = {f.name: SAMPLE.get(typing.get_origin(hints[f.name]) or hints[f.name], 1)
                    for f in fields(config_cls) if f.init and f.default is MISSING and f.default_factory is MISSING}
        for f in fields(config_cls):
            if f.init:
                with pytest.raises(CheckpointError, match=rf"^x.*\b{f.name}\b"):
                    config_from_dict(config_cls, {**required, f.name: {"not": "a setting"}}, "x")
        for name in required:
            with pytest.raises(CheckpointError, match=rf"x: missing {name}"):
                config_from_dict(config_cls, {k: v for k, v in required.items() if k != name}, "x")
        with pytest.raises(CheckpointError, match="x: unknown bogus"):
            config_from_dict(config_cls, {**required, "bogus": 1}, "x")


# -- item 2: public mode reads no local path and names none ------------------------------------------------------
def test_public_mode_reads_no_local_path(fake_hub):
    """``checkpoints/emoji-var`` exists, but with allow_local=False it is a Hub repo id (asked of the Hub, not
    found there); a path that exists and one that does not get the same message."""
    assert edifice.load("checkpoints/emoji-var", device="cpu").kind == "var"  # library default: the folder
    with pytest.raises(CheckpointNotFoundError, match="no repository checkpoints/emoji-var on") as err:
        edifice.load("checkpoints/emoji-var", allow_local=False)
    assert ("GET", "/api/models/checkpoints/emoji-var/revision/main") in fake_hub.requests
    assert str(ROOT) not in str(err.value)

    def message(spec):
        with pytest.raises(EdificeError) as err:
            edifice.load(spec, allow_local=False)
        return str(err.value).replace(spec, "SPEC")

    assert message("/etc") == message("/etc-missing") == message("/etc/passwd") == message("~")
    assert "not a preset or a Hub repo id" in message("/etc")
    assert message("../main/checkpoints") == message("../main/checkpointsx")  # '..' is no repo id


def test_public_errors_name_no_server_path(fake_hub, tmp_path):
    """Unreachable Hub and a damaged Hub checkpoint: the library message names HF_HOME and the snapshot path
    (useful on one's own machine); the public one names neither."""
    folder = edited(EMOJI_VAR, tmp_path / "bad", lambda c: c["model"].update(depth=3))
    fake_hub.add_commit("edifice-test/bad", {p.name: p.read_bytes() for p in folder.iterdir()})
    with pytest.raises(CheckpointError) as library:
        edifice.load("edifice-test/bad")
    with pytest.raises(CheckpointError) as public:
        edifice.load("edifice-test/bad", allow_local=False)
    assert constants.HF_HUB_CACHE in str(library.value)
    assert str(public.value).startswith("edifice-test/bad/model.safetensors: the model tensors do not match")
    fake_hub.stop()
    with pytest.raises(HubUnreachableError) as public:
        edifice.load("edifice-test/other", allow_local=False)
    for path in (constants.HF_HOME, constants.HF_HUB_CACHE, str(Path.home()), str(ROOT)):
        assert path not in str(public.value)


def test_spec_forms(fake_hub, tmp_path):
    """``org/name@rev`` is ``org/name`` at revision ``rev``; "" names no model (not a local path); a
    100,000-character spec gets a short message in both modes."""
    from edifice.loading import SHOWN

    pipe = tiny_var()
    pipe.defaults = {"cfg": 1.0}
    old = fake_hub.add_commit("edifice-test/ck", {p.name: p.read_bytes()
                                                  for p in pipe.save_pretrained(tmp_path / "a").iterdir()})
    pipe.defaults = {"cfg": 2.0}
    fake_hub.add_commit("edifice-test/ck", {p.name: p.read_bytes()
                                            for p in pipe.save_pretrained(tmp_path / "b").iterdir()})
    assert edifice.load(f"edifice-test/ck@{old}", allow_local=False).defaults == {"cfg": 1.0}
    assert edifice.load("edifice-test/ck", revision=old).defaults == {"cfg": 1.0}
    assert edifice.load("edifice-test/ck@main").defaults == {"cfg": 2.0}
    with pytest.raises(EdificeError, match="names revision 'main' but revision='v1' was passed"):
        edifice.load("edifice-test/ck@main", revision="v1")
    for spec in ("", "  "):
        for allow_local in (True, False):
            with pytest.raises(EdificeError, match="no model named; pass a preset"):
                edifice.load(spec, allow_local=allow_local)
    for allow_local in (True, False):
        with pytest.raises(EdificeError) as err:
            edifice.load("a" * 100_000, allow_local=allow_local)
        assert "a" * (SHOWN + 1) not in str(err.value) and "(100000 characters)" in str(err.value)
    with pytest.raises(EdificeError, match="is not a revision"):
        edifice.load("edifice-test/ck@../../x", allow_local=False)


# -- item 3: download limit and a cache whose loads do not block each other -------------------------------------
def test_download_limit(fake_hub, tmp_path):
    """A repo larger than max_download_bytes is refused before any file is downloaded, with its size, the limit
    and the setting; under the limit it loads, and once cached it needs no download; presets are exempt."""
    folder = tiny_var().save_pretrained(tmp_path / "ck")
    size = sum((folder / f).stat().st_size for f in checkpoint.REQUIRED)
    fake_hub.add_commit("edifice-test/big", {p.name: p.read_bytes() for p in folder.iterdir()})
    with pytest.raises(EdificeError) as err:
        edifice.load("edifice-test/big", allow_local=False, max_download_bytes=size - 1)
    message = str(err.value)
    assert f"its files are {size / 1e6:.2f} MB, more than this server downloads ({(size - 1) / 1e6:.2f} MB" in message
    assert "EDIFICE_MAX_DOWNLOAD_GB" in message and "\n" not in message
    assert not [path for method, path in fake_hub.requests if "/resolve/" in path]
    assert edifice.load("edifice-test/big", max_download_bytes=size).kind == "var"
    assert edifice.load("edifice-test/big", max_download_bytes=1).kind == "var"  # cached: nothing to download

    fake_hub.add_commit("edifice-test/var-tiny", {n: (VAR_FIX / n).read_bytes() for n in ("vae_tiny.pth",
                                                                                        "var_tiny.pth")})
    presets.register("test-var-tiny", kind="var", source="official-var", repo="edifice-test/var-tiny",
                     files={"vae": "vae_tiny.pth", "var": "var_tiny.pth"})
    try:
        assert edifice.load("test-var-tiny", allow_local=False, max_download_bytes=1).kind == "var"
    finally:
        presets.unregister("test-var-tiny")


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_cache_loads_do_not_block_each_other(fake_hub, tmp_path):
    """While one spec's download hangs (the fake Hub holds its weights): a loaded spec is returned, another spec
    loads, and a second request for the hanging spec waits for the first; released, both get one pipeline,
    downloaded once. The app's old ModelCache held one lock while loading: there the first two calls wait."""
    from edifice.serving import PipelineCache

    folder = tiny_var().save_pretrained(tmp_path / "slow")
    fake_hub.add_commit("edifice-test/slow", {p.name: p.read_bytes() for p in folder.iterdir()})
    fake_hub.held["model.safetensors"] = release = threading.Event()
    local_a, local_b = tiny_var().save_pretrained(tmp_path / "a"), tiny_mar().save_pretrained(tmp_path / "b")
    cache = PipelineCache(2, device="cpu")
    loaded = cache.get(str(local_a))
    results = {}

    def get(name, spec):
        results[name] = cache.get(spec)

    slow = [threading.Thread(target=get, args=(name, "edifice-test/slow"), daemon=True) for name in ("s1", "s2")]
    slow[0].start()
    wait_for(lambda: ("GET", "model.safetensors") in [(m, p.rsplit("/", 1)[1]) for m, p in fake_hub.requests],
             "the download")
    slow[1].start()
    others = [threading.Thread(target=get, args=("a", str(local_a)), daemon=True),
              threading.Thread(target=get, args=("b", str(local_b)), daemon=True)]
    for t in others:
        t.start()
        t.join(timeout=120)
        assert not t.is_alive(), "a request waited for another spec's load"
    assert results["a"] is loaded and results["b"].kind == "mar"
    assert "s1" not in results and "s2" not in results and slow[0].is_alive()  # still held
    release.set()
    for t in slow:
        t.join(timeout=120)
    assert results["s1"] is results["s2"] and results["s1"].kind == "var"
    assert sum(p.endswith("/model.safetensors") for m, p in fake_hub.requests if m == "GET") == 1
    assert len(cache) == 2 and str(local_a) not in cache  # least recently used made room


# -- item 8: save_pretrained into an existing folder -----------------------------------------------------------
def test_save_into_existing_folder_survives_a_failure_at_every_step(tmp_path, monkeypatch):
    """The k-th file operation of the save (rename, replace, copy, delete, write) fails, for every k: the folder
    then loads as the old checkpoint or the new one, and its other files are kept. The old save replaced
    config.json, model.safetensors and README.md one by one, so a failure after the first left a mix."""
    old, new = tiny_var(), tiny_mar()
    targets = [(os, "rename"), (os, "replace"), (shutil, "copy2"), (shutil, "copytree"), (shutil, "rmtree"),
               (checkpoint, "save_file"), (Path, "write_text")]
    outcomes = set()
    for k in range(1, 100):
        folder = tmp_path / f"run{k}" / "ck"
        old.save_pretrained(folder)
        (folder / "samples.png").write_bytes(b"png")
        calls = {"n": 0}

        def failing(original, calls=calls, k=k):
            def call(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == k:
                    raise OSError(f"killed at file operation {k}")
                return original(*args, **kwargs)
            return call

        with monkeypatch.context() as m:
            for owner, name in targets:
                m.setattr(owner, name, failing(getattr(owner, name)))
            try:
                new.save_pretrained(folder)
                failed = False
            except OSError:
                failed = True
        kind = edifice.load(folder, device="cpu").kind
        outcomes.add(kind)
        assert kind in ("var", "mar") and (folder / "samples.png").read_bytes() == b"png"
        if not failed:
            break
    assert not failed and outcomes == {"var", "mar"} and k > 4
