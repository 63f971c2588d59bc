"""``edifice.load``: any checkpoint the way users have it, as a ready pipeline on the best device.

A spec is, in this order of precedence: a local folder holding an edifice checkpoint; a preset name (see
:mod:`edifice.presets`; official presets convert the authors' files while loading); a Hub repository id
``org/name`` holding an edifice checkpoint. Downloads go through :func:`edifice.hub.fetch`.

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

import torch
from accelerate import dispatch_model
from torch import nn

from . import checkpoint, hub, presets
from .errors import CheckpointError, CheckpointNotFoundError, EdificeError, UnknownPresetError
from .official import load_official_mar, load_official_var
from .official_fractalgen import load_official_fractalgen, preset_folder
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
    "official-fractalgen": lambda files, config: load_official_fractalgen(
        files["model"], config.get("name", config.get("constructor")), device="cpu"),
    "official-maskgit": load_maskgit_preset,  # its VQ comes from LlamaGen's repo (config["vq_repo"])
    "official-llamagen": load_llamagen_preset,
    "official-fractalgen": lambda files, config: load_official_fractalgen(files["model"], config.get("name"),
                                                                          device="cpu"),
}
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
GPU_HEADROOM = 0.85  # share of free GPU memory the weights may use; the rest is for activations and KV cache


def load(spec: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
         revision: str | None = None, *, kind: str | None = None) -> Pipeline:
    """A ready pipeline (VAR or MAR) from a local folder, a preset name or a Hub repo id ``org/name``.

    ``revision`` (branch, tag or commit) applies to Hub repositories and Hub-hosted presets. ``kind``
    ("var", "mar", "mar-diffusion") makes a checkpoint of another kind an error. Presets and pinned commits
    already in the Hub cache load without contacting the Hub; a repo at a branch is checked for updates and
    falls back to the cache when the Hub cannot be reached.
    """
    spec = str(spec)
    target = _resolve(spec)
    if isinstance(target, Preset) and kind is not None and target.kind != kind:
        raise CheckpointError(f"preset {spec!r} is a {target.kind.upper()} model, not {kind.upper()}; "
                              f"pick a {kind} preset")
    folder = _fetch(target, spec, revision, prefer_cache=True)
    pipe = _read_preset(target, folder) if isinstance(target, Preset) else checkpoint.load_pretrained(folder, kind)
    return place(pipe, device, dtype)


def download(spec: str, revision: str | None = None, *, force: bool = False) -> Path:
    """Fetch a preset's or Hub repo's files into the Hub cache (checking a branch for updates; ``force``
    downloads again) without loading them; returns the folder holding them."""
    return _fetch(_resolve(spec), spec, revision, prefer_cache=False, force=force)


def _resolve(spec: str) -> Path | Preset | str:
    """What a spec names: a local folder (Path), a preset, or a Hub repo id (str)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    table = presets.presets()
    if spec in table:
        return table[spec]
    if path.exists():
        raise CheckpointError(f"{spec}: is a file; pass the checkpoint folder (config.json + model.safetensors), "
                              "or convert official .pth files with `python -m edifice convert`")
    if REPO_ID.fullmatch(spec):
        return spec
    raise UnknownPresetError(f"{spec!r} is not a preset, a local folder or a Hub repo id (org/name); "
                             f"presets: {', '.join(table)}")


def _fetch(target: Path | Preset | str, spec: str, revision: str | None, *, prefer_cache: bool,
           force: bool = False) -> Path:
    if isinstance(target, Path):
        if revision is not None:
            raise EdificeError(f"{spec} is a local folder; revision applies only to Hub repositories and presets")
        return target
    if isinstance(target, str):
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
    if p.source == "official-fractalgen":  # the authors host these outside the Hub: read from ``path``
        return preset_folder(p, spec)
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
