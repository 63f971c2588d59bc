"""The edifice checkpoint format: one folder that a pipeline is saved to, pushed to the Hub from and loaded from.

::

    config.json        {"format": "edifice", "format_version": 1, "kind": "var", "image_size": 256,
                        "tokenizer": {tokenizer config fields}, "model": {model config fields},
                        "classes": "imagenet" | ["name", ...] | null, "defaults": {sampling settings},
                        "subclasses": {"names": [...], "classes": [...], "weights": [...]}  (only when present)}
    model.safetensors  tensors "tokenizer.<name>" and "model.<name>" (state dicts, any float dtype),
                       metadata {"format": "pt"} (accelerate refuses safetensors files without it)
    README.md          model card: library_name edifice, license, tags

``classes`` is the name of a class list shipped in ``assets/`` when the pipeline's names equal one (ImageNet's
1000), else the list itself. ``defaults`` are the sampling settings the checkpoint's author recommends;
``pipeline.generate()`` uses them unless told otherwise (``labels`` and ``seed`` among them name the showcase
the app opens on). ``subclasses``, when a model was trained on finer labels than its classes, lists them (see
:class:`edifice.pipeline.Subclasses`); the model then has one class label per subclass.

Model families are looked up in :data:`FAMILIES` by ``kind``; a new family is one entry there. A config.json
is not trusted: its values are checked against the config dataclass's field types and sane bounds
(:func:`config_from_dict`), and the modules are built with their parameters on the meta device by
:func:`edifice.official.build`, which refuses a config that would allocate more than the file's tensors or
not rebuild exactly their names and shapes (read from the safetensors header) before any weights are read;
the file's tensors are then assigned with ``strict=True``. No random initialisation runs.
Writes go to a temporary folder first, so a failure never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import types
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from huggingface_hub import HfApi, ModelCardData
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import presets
from .errors import CheckpointError, CheckpointNotFoundError
from .generative.fractalgen import (
    FractalGen,
    FractalGenConfig,
    FractalGenPipeline,
    PixelTokenizer,
    PixelTokenizerConfig,
)
from .generative.llamagen import LlamaGen, LlamaGenConfig, LlamaGenPipeline
from .generative.mar import MAR, MARConfig, MARPipeline
from .generative.mar_diffusion import DiffusionMAR, DiffusionMARConfig, DiffusionMARPipeline
from .generative.maskgit import MaskGIT, MaskGITConfig, MaskGITPipeline
from .generative.var import VAR, VARConfig, VARPipeline
from .official import build, load_safetensors
from .pipeline import Pipeline, Subclasses
from .tokenizers.klvae import KLVAE, KLVAEConfig
from .tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig
from .tokenizers.vqvae import VQVAE, VQVAEConfig

FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
FILES = (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME)  # what save_pretrained writes
REQUIRED = (CONFIG_NAME, WEIGHTS_NAME)  # what loading needs
MAX_INT, MAX_ITEMS = 2 ** 20, 1024  # bounds of any integer and any list in a model or tokenizer config


@dataclass(frozen=True)
class Family:
    """What it takes to rebuild a pipeline of one kind from its two configs and state dicts."""

    pipeline: type[Pipeline]  # called as pipeline(tokenizer, model, class_names, defaults)
    config: type  # model config dataclass with to_dict(); model(config) builds the generator
    model: type[nn.Module]
    tokenizer_config: type = VQVAEConfig
    tokenizer: type[nn.Module] = VQVAE


FAMILIES: dict[str, Family] = {
    "var": Family(VARPipeline, VARConfig, VAR),
    "mar": Family(MARPipeline, MARConfig, MAR),
    "mar-diffusion": Family(DiffusionMARPipeline, DiffusionMARConfig, DiffusionMAR, KLVAEConfig, KLVAE),
    "maskgit": Family(MaskGITPipeline, MaskGITConfig, MaskGIT, LlamaGenVQConfig, LlamaGenVQ),
    "llamagen": Family(LlamaGenPipeline, LlamaGenConfig, LlamaGen, LlamaGenVQConfig, LlamaGenVQ),
    # pixel space: the identity PixelTokenizer has no weights, so the file holds only "model." tensors
    "fractalgen": Family(FractalGenPipeline, FractalGenConfig, FractalGen, PixelTokenizerConfig, PixelTokenizer),
}


# -- writing --------------------------------------------------------------------------------------------------
def config_of(pipeline: Pipeline) -> dict:
    """The config.json of a pipeline."""
    if pipeline.kind not in FAMILIES:
        raise CheckpointError(f"cannot save a {type(pipeline).__name__}: kind {pipeline.kind!r} is not one of "
                              f"{', '.join(FAMILIES)}")
    names = pipeline.class_names
    config = {"format": "edifice", "format_version": FORMAT_VERSION, "kind": pipeline.kind,
              "image_size": pipeline.tokenizer.cfg.image_size,
              "tokenizer": pipeline.tokenizer.cfg.to_dict(), "model": pipeline.model.cfg.to_dict(),
              "classes": None if names is None else presets.class_list_name(names) or list(names),
              "defaults": pipeline.defaults}
    if pipeline.subclasses is not None:
        config["subclasses"] = pipeline.subclasses.to_dict()
    return config


def model_card(pipeline: Pipeline, *, repo_id: str | None = None, license: str = "mit",
               base_model: str | None = None) -> str:
    """README.md of a checkpoint: Hub metadata (library_name edifice, license, tags) and how to load it."""
    kind = pipeline.kind
    tags = ["edifice", kind, "image-generation"] + (["class-conditional"] if pipeline.num_classes else [])
    data = ModelCardData(library_name="edifice", license=license, base_model=base_model, tags=tags)
    params = sum(p.numel() for m in (pipeline.tokenizer, pipeline.model) for p in m.parameters())
    n_classes = len(pipeline.class_names) if pipeline.class_names else pipeline.num_classes
    sub = pipeline.subclasses
    classes = f"{n_classes} classes" + (f" drawn as {len(sub.names)} subclasses" if sub else "")
    spec = repo_id or "path/to/this/folder"
    return (f"---\n{data.to_yaml()}\n---\n\n# {kind.upper()} checkpoint for edifice\n\n"
            f"A {kind.upper()} image generator ({params / 1e6:.1f}M parameters, {classes}, "
            f"{pipeline.tokenizer.cfg.image_size} px) in the edifice checkpoint format: `config.json` "
            f"(architecture, classes, recommended sampling) and `model.safetensors` (tokenizer and generator).\n\n"
            f"```python\nimport edifice\n\npipe = edifice.load(\"{spec}\")\nimages = pipe.generate(seed=0)  "
            f"# [B, 3, H, W] in [0, 1]\n```\n")


def save_pretrained(pipeline: Pipeline, folder: str | Path, *, repo_id: str | None = None, license: str = "mit",
                    base_model: str | None = None) -> Path:
    """Write ``pipeline`` as an edifice checkpoint folder (config.json, model.safetensors, README.md).

    Everything is written to a temporary folder beside ``folder`` first. A new ``folder`` then appears in one
    rename. An existing one is swapped whole: its other files are copied into the new one, the old folder is
    renamed away, the new one renamed in, and only then is the old one deleted. On any failure before the
    swap the old folder is untouched, and a failure between the two renames puts it back, so ``folder``
    always holds either the old checkpoint or the new one, never a mix of their files.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; pass a folder path to save to")
    config = config_of(pipeline)
    tensors = {f"{prefix}.{name}": t.detach().contiguous()
               for prefix, module in (("tokenizer", pipeline.tokenizer), ("model", pipeline.model))
               for name, t in module.state_dict().items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    try:
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CARD_NAME).write_text(model_card(pipeline, repo_id=repo_id, license=license, base_model=base_model))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if folder.is_dir():
            _swap(folder, tmp)
        else:
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _swap(folder: Path, new: Path) -> None:
    """Replace the folder ``folder`` by ``new`` (a sibling), keeping ``folder``'s files that ``new`` lacks."""
    for entry in folder.iterdir():
        if not (new / entry.name).exists():
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, new / entry.name)
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    try:
        os.rename(folder, trash / folder.name)
        try:
            os.rename(new, folder)
        except BaseException:
            os.rename(trash / folder.name, folder)
            raise
    finally:
        if folder.is_dir():  # else the old checkpoint is still in trash: keep it
            shutil.rmtree(trash, ignore_errors=True)


def push_to_hub(pipeline: Pipeline, repo_id: str, *, private: bool | None = None, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload edifice checkpoint",
                license: str = "mit", base_model: str | None = None) -> str:
    """Upload ``pipeline`` as an edifice checkpoint to the Hub repository ``repo_id`` (created if missing).

    Uses the token of ``hf auth login`` / ``HF_TOKEN`` unless ``token`` is given and honours ``HF_ENDPOINT``.
    ``revision`` names a branch (created if missing); ``private`` applies when the repository is created.
    Returns the commit URL. Afterwards ``edifice.load(repo_id)`` loads it anywhere.
    """
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(pipeline, Path(tmp) / "checkpoint", repo_id=repo_id, license=license,
                                 base_model=base_model)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                   commit_message=commit_message)
    return commit.commit_url


# -- reading --------------------------------------------------------------------------------------------------
def read_config(folder: str | Path) -> dict:
    """config.json of a checkpoint folder, checked for format and kind."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        what = "does not exist" if not folder.exists() else f"holds no {CONFIG_NAME}"
        raise CheckpointNotFoundError(f"{folder}: {what}, so it is not an edifice checkpoint; pass a folder "
                                      "written by save_pretrained or `python -m edifice convert`")
    try:
        config = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is damaged, save or download it again") \
            from None
    if not isinstance(config, dict) or config.get("format") != "edifice":
        raise CheckpointError(f"{path}: not an edifice config (no \"format\": \"edifice\"); pass a folder written "
                              "by save_pretrained or `python -m edifice convert`")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer edifice (format {config['format_version']}, this one "
                              f"reads {FORMAT_VERSION}); upgrade edifice")
    if config.get("kind") not in FAMILIES:
        raise CheckpointError(f"{path}: a checkpoint of kind {config.get('kind')!r}, which this edifice cannot "
                              f"load (kinds: {', '.join(FAMILIES)})")
    return config


def load_pretrained(folder: str | Path, kind: str | None = None) -> Pipeline:
    """The pipeline in an edifice checkpoint folder, on the CPU in the dtypes it was saved in.

    ``kind`` ("var", "mar") makes a checkpoint of another kind an error. Nothing is built before the config
    has passed :func:`config_from_dict`; modules are then built by :func:`edifice.official.build` against the
    tensor shapes of the file's header before its tensors are read, so a config cannot make a load allocate
    more than its weights. Device and dtype placement is :func:`edifice.loading.place`'s job.
    """
    folder = Path(folder)
    config = read_config(folder)
    if kind is not None and config["kind"] != kind:
        raise CheckpointError(f"{folder}: holds a {config['kind'].upper()} checkpoint, not {kind.upper()}; "
                              f"load it as {config['kind']} or pass a {kind} checkpoint")
    family = FAMILIES[config["kind"]]
    where = folder / CONFIG_NAME
    names = _class_names(config.get("classes"), where)
    defaults = config.get("defaults")
    if defaults is not None and not isinstance(defaults, dict):
        raise CheckpointError(f"{where}: \"defaults\" must be an object of sampling settings or null; the file was "
                              "edited or written by another edifice version")
    subclasses = _subclasses(config.get("subclasses"), names, config.get("model"), where)
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(f"{folder}: has {CONFIG_NAME} but no {WEIGHTS_NAME}; copy or download "
                                      "the whole folder again")
    shapes = _split(_header_shapes(path), path)
    roles = (("tokenizer", family.tokenizer, family.tokenizer_config), ("model", family.model, family.config))
    configs = {role: config_from_dict(config_cls, config.get(role), f"{where}: {role}") for role, _, config_cls
               in roles}
    modules = {role: build(module_cls, configs[role], shapes[role], f"{path}: the {role}", CONFIG_NAME)
               for role, module_cls, _ in roles}
    for role, tensors in _split(load_safetensors(path, remedy="save or download it again"), path).items():
        modules[role].load_state_dict(tensors, strict=True, assign=True)
    tokenizer, model = modules["tokenizer"].eval(), modules["model"].eval()
    try:
        pipe = family.pipeline(tokenizer, model, names, defaults)
    except ValueError as e:
        raise CheckpointError(f"{folder}: the tokenizer and model do not fit together ({e})") from None
    if subclasses is not None:
        pipe.subclasses = subclasses
    return pipe


def _header_shapes(path: Path) -> dict[str, tuple]:
    """Tensor name -> shape from a safetensors header, without reading the data."""
    try:
        with safe_open(path, framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: could not be read ({e}); the file is truncated or corrupt, save or download "
                              "it again") from None


def _split(tensors: dict, path: Path) -> dict[str, dict]:
    """``{"tokenizer": ..., "model": ...}`` from the file's ``tokenizer.<name>`` / ``model.<name>`` entries."""
    parts = {"tokenizer": {}, "model": {}}
    for key, t in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix not in parts:
            raise CheckpointError(f"{path}: unexpected tensor {key[:80]!r} (names start with 'tokenizer.' or "
                                  "'model.'); the file was not written by edifice")
        parts[prefix][name] = t
    return parts


def _class_names(classes, where: Path) -> list[str] | None:
    """A config's ``classes``: null, the name of a list shipped in ``assets/`` (never a path), or the names."""
    if classes is None:
        return None
    if isinstance(classes, str):
        shipped = sorted(p.name.removesuffix("_classes.txt") for p in presets.ASSETS.glob("*_classes.txt"))
        if classes not in shipped:  # a name, never a path: the list is looked up among the shipped ones only
            raise CheckpointError(f"{where}: \"classes\" names {classes[:40]!r}, which is not a class list shipped "
                                  f"with edifice ({', '.join(shipped)}); store the names themselves")
        return list(presets.class_list(classes))
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        return classes
    raise CheckpointError(f"{where}: \"classes\" must be null, a shipped list's name or a list of names, not "
                          f"{_shown(classes)}; the file was edited or written by another edifice version")


def _subclasses(value, names: list[str] | None, model: dict | None, where: Path) -> Subclasses | None:
    """A config's ``subclasses``: absent, or names, classes and weights that fit the classes and the model's
    ``num_classes`` (checked before anything is built)."""
    if value is None:
        return None
    fix = "the file was edited or written by another edifice version"
    if not isinstance(value, dict) or set(value) != {"names", "classes", "weights"} or not all(
            isinstance(v, list) and len(v) <= 100_000 for v in value.values()):
        raise CheckpointError(f"{where}: \"subclasses\" must be an object of three lists, names, classes and "
                              f"weights; {fix}")
    if not all(isinstance(n, str) and 0 < len(n) <= 200 for n in value["names"]) or any(
            isinstance(c, bool) for c in value["classes"]):
        raise CheckpointError(f"{where}: \"subclasses\" names must be strings of 1 to 200 characters and classes "
                              f"integers; {fix}")
    sub = Subclasses(tuple(value["names"]), tuple(value["classes"]), tuple(value["weights"]))
    model_classes = model.get("num_classes") if isinstance(model, dict) else None
    problem = sub.problem(names, model_classes if isinstance(model_classes, int) else -1)
    if problem:
        raise CheckpointError(f"{where}: \"subclasses\": {problem}; {fix}")
    return sub


def config_from_dict(config_cls: type, values, where: str):
    """``config_cls(**values)`` once every value has its field's annotated type (int, float, bool, str, tuple or
    list of those, ``X | None``) and a sane size: integers within ±``MAX_INT``, lists of at most ``MAX_ITEMS``,
    finite floats; no unknown or missing fields. Any config dataclass works, so a new family needs nothing here.
    A value that fails is a one-line :class:`CheckpointError` naming the field (``where`` starts it)."""
    remedy = "the file was edited or written by another edifice version"
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: missing or not an object of settings ({_shown(values)}); {remedy}")
    hints = typing.get_type_hints(config_cls)
    known = {f.name: f for f in fields(config_cls) if f.init}
    unknown = sorted(set(values) - set(known))
    missing = [n for n, f in known.items() if n not in values and f.default is MISSING and
               f.default_factory is MISSING]
    if unknown or missing:
        what = "; ".join(f"{label} {', '.join(names)[:120]}" for label, names in (("unknown", unknown),
                                                                                ("missing", missing)) if names)
        raise CheckpointError(f"{where}: {what} field(s) for a {config_cls.__name__}; {remedy}")
    for name, value in values.items():
        wanted = _type_error(value, hints.get(name))
        if wanted:
            raise CheckpointError(f"{where}.{name} is {_shown(value)}, not {wanted}; {remedy}")
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: not a valid {config_cls.__name__} ({str(e)[:200]}); {remedy}") from None


def _type_error(value, hint) -> str | None:
    """None when ``value`` fits the annotation ``hint``, else what was wanted; unknown annotations pass (the
    constructor, run on the meta device by check_build, decides)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        wanted = [_type_error(value, arg) for arg in args]
        return None if None in wanted else " or ".join(wanted)
    if hint is type(None):
        return None if value is None else "null"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT
        return None if ok else f"an integer within ±{MAX_INT}"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            and abs(value) <= MAX_INT
        return None if ok else "a finite number"
    if hint is str:
        return None if isinstance(value, str) and len(value) <= 256 else "a short string"
    if origin in (tuple, list):
        item = args[0] if args else None
        if not isinstance(value, list | tuple) or len(value) > MAX_ITEMS:
            return f"a list of at most {MAX_ITEMS} items"
        bad = next((w for v in value if (w := _type_error(v, item))), None)
        return f"a list of {bad}s" if bad else None
    return None


def _shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that echo what a file or a user gave."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
