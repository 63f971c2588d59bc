"""``edifice.load``: any checkpoint the way users have it, as a ready pipeline on the best device.

A spec is, in this order of precedence: a local folder holding an edifice checkpoint; a preset name (see
:mod:`edifice.presets`; official presets convert the authors' files while loading); a Hub repository id
``org/name`` holding an edifice checkpoint; ``org/name@rev`` (or a preset ``name@rev``) names a revision too.
Downloads go through :func:`edifice.hub.fetch`.

In a server open to anyone, ``load(spec, allow_local=False, max_download_bytes=N)``: a spec is then only a
preset or a Hub repo id, never read as a path (``checkpoints/emoji-var`` is looked up on the Hub), error
messages name no server path (the Hub cache, ``HF_HOME``, the project and home folders), and a Hub repo whose
files are larger than N bytes is refused before any download (sizes from the Hub's file metadata; presets
are exempt). Specs and revisions echoed in messages are cut to ``SHOWN`` characters.

Placement (:func:`place`): ``device="auto"`` is CUDA, else MPS, else CPU. ``dtype="auto"`` is float32 on
the CPU and bfloat16 on a GPU (float16 where bfloat16 is unsupported). The dtype applies to the generator
only, through its ``cast`` method where it has one (VAR keeps its AdaLN head in float32, as the official
code does); the tokenizer always runs in float32. A generator whose weights do not fit in 85% of the free
GPU memory is dispatched with accelerate's ``dispatch_model`` instead of crashing: everything but a tail of
its transformer blocks stays on the GPU and those blocks are offloaded to CPU RAM, each loading all its
weights when it runs (with a warning: every step then copies them over). The device map is computed here
(:func:`offload_map`) rather than by ``infer_auto_device_map(...)``/``device_map="auto"``, which places
modules in registration order and would offload VAR's head and position tables (registered after the
blocks), which the sampler reads directly.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from itertools import chain
from pathlib import Path

import httpx2
import torch
from accelerate import dispatch_model
from huggingface_hub import HfApi, constants, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id
from torch import nn

from . import checkpoint, hub, presets
from .errors import CheckpointError, CheckpointNotFoundError, EdificeError, UnknownPresetError
from .official import load_official_mar, load_official_var
from .official_fractalgen import load_official_fractalgen, preset_folder
from .official_llamagen import load_preset as load_llamagen_preset
from .official_maskgit import fetch_preset as fetch_maskgit_preset
from .official_maskgit import load_preset as load_maskgit_preset
from .pipeline import Pipeline
from .presets import Preset

# Official sources: (files as role -> local path, the preset's config) -> a float32 pipeline on the CPU.
OFFICIAL_LOADERS: dict[str, Callable[[dict[str, Path], dict], Pipeline]] = {
    "official-var": lambda files, config: load_official_var(files["vae"], files["var"], device="cpu"),
    "official-mar": lambda files, config: load_official_mar(files["vae"], files["mar"], device="cpu", **config),
    "official-maskgit": load_maskgit_preset,  # its VQ comes from LlamaGen's repo (config["vq_repo"])
    "official-llamagen": load_llamagen_preset,
    "official-fractalgen": lambda files, config: load_official_fractalgen(
        files["model"], config.get("name", config.get("constructor")), device="cpu"),
}
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
REVISION = re.compile(r"[\w.-]+(/[\w.-]+)*")  # a branch, tag or commit; refs/pr/1
SHOWN = 80  # characters of a spec that messages echo
MAX_DOWNLOAD_ENV = "EDIFICE_MAX_DOWNLOAD_GB"  # the setting a server reads max_download_bytes from (messages name it)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
GPU_HEADROOM = 0.85  # share of free GPU memory the weights may use; the rest is for activations and KV cache


def load(spec: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
         revision: str | None = None, *, kind: str | None = None, allow_local: bool = True,
         max_download_bytes: int | None = None) -> Pipeline:
    """A ready pipeline (VAR or MAR) from a local folder, a preset name or a Hub repo id ``org/name``.

    ``revision`` (branch, tag or commit) applies to Hub repositories and Hub-hosted presets. ``kind``
    ("var", "mar", "mar-diffusion") makes a checkpoint of another kind an error. Presets and pinned commits
    already in the Hub cache load without contacting the Hub; a repo at a branch is checked for updates and
    falls back to the cache when the Hub cannot be reached. ``allow_local=False`` and ``max_download_bytes``
    are for servers (see the module docstring).
    """
    spec, folder = str(spec), None
    try:
        target, revision = _resolve(spec, revision, allow_local)
        shown = _shown(spec)
        if isinstance(target, Preset) and kind is not None and target.kind != kind:
            raise CheckpointError(f"preset {shown!r} is a {target.kind.upper()} model, not {kind.upper()}; "
                                  f"pick a {kind} preset")
        limit = None if isinstance(target, Preset) else max_download_bytes
        folder = _fetch(target, shown, revision, prefer_cache=True, max_bytes=limit)
        pipe = _read_preset(target, folder) if isinstance(target, Preset) else checkpoint.load_pretrained(folder, kind)
    except EdificeError as e:
        if allow_local:
            raise
        raise type(e)(_without_paths(str(e), folder, _shown(spec))) from None
    return place(pipe, device, dtype)


def download(spec: str, revision: str | None = None, *, force: bool = False) -> Path:
    """Fetch a preset's or Hub repo's files into the Hub cache (checking a branch for updates; ``force``
    downloads again) without loading them; returns the folder holding them."""
    target, revision = _resolve(spec, revision, allow_local=True)
    return _fetch(target, _shown(spec), revision, prefer_cache=False, force=force)


def _resolve(spec: str, revision: str | None, allow_local: bool) -> tuple[Path | Preset | str, str | None]:
    """What a spec names (a local folder as a Path, only with ``allow_local``; a preset; a Hub repo id as a str)
    and the revision (``revision``, or the ``@rev`` of the spec)."""
    table = presets.presets()
    if not spec.strip():
        raise UnknownPresetError(f"no model named; pass a preset ({', '.join(table)}) or a Hub repo id org/name")
    local = _local(Path(spec).expanduser()) if allow_local else None
    if local == "folder":
        return Path(spec).expanduser(), revision
    name, at, rev = spec.partition("@")
    if at:
        if revision is not None and revision != rev:
            raise EdificeError(f"{_shown(spec)} names revision {_shown(rev)!r} but revision={_shown(revision)!r} was "
                               "passed; give one of them")
        revision = rev
    if revision is not None and (not REVISION.fullmatch(revision) or ".." in revision or len(revision) > 128):
        raise UnknownPresetError(f"{_shown(revision)!r} is not a revision; pass a branch, tag or commit hash")
    if name in table:
        return table[name], revision
    if local == "file":
        raise CheckpointError(f"{spec}: is a file; pass the checkpoint folder (config.json + model.safetensors), "
                              "or convert official .pth files with `python -m edifice convert`")
    if _is_repo_id(name):
        return name, revision
    what = "a preset, a local folder or a Hub repo id" if allow_local else "a preset or a Hub repo id"
    raise UnknownPresetError(f"{_shown(spec)!r} is not {what} (org/name); presets: {', '.join(table)}")


def _local(path: Path) -> str | None:
    """"folder", "file" or None (nothing there, or a name the file system refuses, e.g. too long)."""
    try:
        return "folder" if path.is_dir() else "file" if path.exists() else None
    except OSError:
        return None


def _is_repo_id(name: str) -> bool:
    """``org/name`` as the Hub accepts it (no '..' or '--', at most 96 characters)."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return bool(REPO_ID.fullmatch(name))


def _shown(text: str) -> str:
    """``text`` cut to ``SHOWN`` characters, for messages that echo what a user typed."""
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text)} characters)"


def _without_paths(message: str, folder: Path | None, spec: str) -> str:
    """``message`` naming no server path: the checkpoint folder becomes the spec; the Hub cache, HF_HOME, the
    project folder and the home folder become their names."""
    for path, name in ((folder, spec), (constants.HF_HUB_CACHE, "<Hub cache>"), (constants.HF_HOME, "<HF_HOME>"),
                       (presets.PROJECT_ROOT, "<edifice>"), (Path.home(), "~")):
        if path is not None:
            message = message.replace(str(path), name)
    return message


def _check_download_size(repo_id: str, files, revision: str | None, max_bytes: int, asked: str) -> None:
    """Refuse before downloading when ``files`` of ``repo_id`` at ``revision`` that are not cached yet add up to
    more than ``max_bytes`` (sizes from the Hub's file metadata)."""
    try:
        info = HfApi().model_info(repo_id, revision=revision or constants.DEFAULT_REVISION, files_metadata=True)
    except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.ConnectError, httpx2.TimeoutException):
        return  # hub.fetch explains a missing repo or revision, or falls back to the cache when offline
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    todo = [f for f in files if f in sizes and not isinstance(try_to_load_from_cache(repo_id, f, revision=info.sha),
                                                              str)]
    total = sum(sizes[f] or 0 for f in todo)
    if total > max_bytes or any(sizes[f] is None for f in todo):
        size = "of unknown size" if any(sizes[f] is None for f in todo) else _size(total)
        raise EdificeError(f"{asked}: its files are {size}, more than this server downloads ({_size(max_bytes)}; "
                           f"{MAX_DOWNLOAD_ENV} sets it); pick a preset or a smaller model")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _fetch(target: Path | Preset | str, spec: str, revision: str | None, *, prefer_cache: bool,
           force: bool = False, max_bytes: int | None = None) -> Path:
    if isinstance(target, Path):
        if revision is not None:
            raise EdificeError(f"{spec} is a local folder; revision applies only to Hub repositories and presets")
        return target
    if isinstance(target, str):
        if max_bytes is not None:
            _check_download_size(target, checkpoint.REQUIRED, revision, max_bytes, spec)
        return hub.fetch(target, checkpoint.REQUIRED, revision, asked=spec, force=force)
    p = target
    if p.source == "folder":
        if not (p.folder / checkpoint.CONFIG_NAME).is_file():
            raise CheckpointNotFoundError(f"preset {spec!r} is a bundled checkpoint expected in {p.folder}, which "
                                          "does not hold one yet; train it (see README) or pick another preset")
        return p.folder
    if p.source == "official-fractalgen":  # the authors host these outside the Hub: read from ``path``
        return preset_folder(p, spec)
    if p.source == "official-maskgit":  # two Hub repos: the tokenizer is LlamaGen's
        return fetch_maskgit_preset(p, spec, revision, prefer_cache=prefer_cache, force=force)
    if p.source == "hub":
        files = checkpoint.REQUIRED
    elif p.source in OFFICIAL_LOADERS:
        files = list(p.files.values())
    else:
        raise EdificeError(f"preset {spec!r} has source {p.source!r}, which this edifice cannot load "
                           f"(sources: folder, hub, {', '.join(OFFICIAL_LOADERS)})")
    return hub.fetch(p.repo, files, revision or p.revision, asked=spec, prefer_cache=prefer_cache, force=force)


def _read_preset(p: Preset, folder: Path) -> Pipeline:
    if p.source in OFFICIAL_LOADERS:
        pipe = OFFICIAL_LOADERS[p.source]({role: folder / name for role, name in p.files.items()}, p.config)
    else:
        pipe = checkpoint.load_pretrained(folder, p.kind)
    if pipe.kind != p.kind:
        raise CheckpointError(f"preset {p.name!r} should be a {p.kind.upper()} model but its files hold a "
                              f"{pipe.kind.upper()} one; fix the preset entry")
    if p.classes:
        pipe.class_names = list(presets.class_list(p.classes))
    if p.defaults:
        pipe.defaults = dict(p.defaults)
    return pipe


# -- placement -----------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" is CUDA, else MPS, else CPU; a CUDA device gets its index (the current one if none is given)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" is float32 on the CPU, else bfloat16 where supported, else float16; or a name from DTYPES."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        return torch.bfloat16 if _bf16_supported(device) else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        torch.zeros(1, dtype=torch.bfloat16, device=device)
        return True
    except (RuntimeError, TypeError):
        return False


def place(pipe: Pipeline, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> Pipeline:
    """Move a pipeline to ``device`` with its generator in ``dtype`` (see the module docstring)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    model = pipe.model.cast(dtype) if hasattr(pipe.model, "cast") else pipe.model.to(dtype)
    pipe.tokenizer.float().to(device)
    device_map = offload_map(model, torch.cuda.mem_get_info(device)[0], device) if device.type == "cuda" else None
    if device_map is None:
        model.to(device)
        return pipe
    offloaded = sum(d == "cpu" for d in device_map.values())
    warnings.warn(f"{type(model).__name__}: its {_gb(nbytes(model))} of weights do not fit in the free memory of "
                  f"{device}; {offloaded} of {len(model.blocks)} blocks are offloaded to CPU RAM with accelerate "
                  "(slower; free GPU memory to avoid it)", stacklevel=3)
    dispatch(model, device_map, device)
    return pipe


def dispatch(model: nn.Module, device_map: dict[str, int | str], device: torch.device, **kwargs) -> nn.Module:
    """``accelerate.dispatch_model`` as edifice's generators need it: an offloaded block loads all its weights
    when it runs (attention reads its qkv weight directly, so per-submodule hooks would miss it). ``kwargs``
    go to ``dispatch_model`` (e.g. ``offload_dir`` for "disk" entries)."""
    with warnings.catch_warnings():  # accelerate wants the root tensors in the map, then warns they are not modules
        warnings.filterwarnings("ignore", message="The following device_map keys do not match any submodules")
        return dispatch_model(model, device_map, main_device=device,
                              preload_module_classes=[type(model.blocks[0]).__name__], **kwargs)


def nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in chain(module.parameters(), module.buffers()))


def offload_map(model: nn.Module, free_bytes: int, device: torch.device) -> dict[str, int | str] | None:
    """None when the model fits in ``GPU_HEADROOM`` of ``free_bytes``; else an accelerate device map that
    keeps everything but the last transformer blocks (``model.blocks``) on the GPU and offloads those."""
    budget, total = int(free_bytes * GPU_HEADROOM), nbytes(model)
    if total <= budget:
        return None
    blocks = getattr(model, "blocks", None)
    fixed = total - (sum(nbytes(b) for b in blocks) if isinstance(blocks, nn.ModuleList) else 0)
    if not isinstance(blocks, nn.ModuleList) or fixed > budget:
        raise EdificeError(f"{type(model).__name__} needs {_gb(total)} of weights but {device} has {_gb(free_bytes)} "
                           "free, too little even with offloading; free GPU memory or pass device='cpu'")
    gpu = device.index or 0
    top = chain(model.named_parameters(recurse=False), model.named_buffers(recurse=False), model.named_children())
    device_map: dict[str, int | str] = {name: gpu for name, _ in top if name != "blocks"}
    used, fits = fixed, True
    for i, block in enumerate(blocks):
        fits = fits and used + nbytes(block) <= budget
        used += nbytes(block) if fits else 0
        device_map[f"blocks.{i}"] = gpu if fits else "cpu"
    return device_map


def _gb(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GiB"
