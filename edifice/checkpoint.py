"""The edifice checkpoint format: one folder that a pipeline is saved to, pushed to the Hub from and loaded from.

::

    config.json        {"format": "edifice", "format_version": 1, "kind": "var", "image_size": 256,
                        "tokenizer": {tokenizer config fields}, "model": {model config fields},
                        "classes": "imagenet" | ["name", ...] | null, "defaults": {sampling settings}}
    model.safetensors  tensors "tokenizer.<name>" and "model.<name>" (state dicts, any float dtype),
                       metadata {"format": "pt"} (accelerate refuses safetensors files without it)
    README.md          model card: library_name edifice, license, tags

``classes`` is the name of a class list shipped in ``assets/`` when the pipeline's names equal one (ImageNet's
1000), else the list itself. ``defaults`` are the sampling settings the checkpoint's author recommends;
``pipeline.generate()`` uses them unless told otherwise.

Model families are looked up in :data:`FAMILIES` by ``kind``; a new family is one entry there. Weights are
materialised without a random initialisation: the modules are built under accelerate's
``init_empty_weights`` (parameters on the meta device, buffers built for real, so non-persistent buffers
such as MAR's position table exist; ``torch.nn.init`` skipped, see ``official.skip_meta_init``) and the file's
tensors are assigned with ``strict=True``.
Writes go to a temporary folder first, so a failure never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from accelerate import init_empty_weights
from huggingface_hub import HfApi, ModelCardData
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
from .official import load_safetensors, skip_meta_init
from .pipeline import Pipeline
from .tokenizers.klvae import KLVAE, KLVAEConfig
from .tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig
from .tokenizers.vqvae import VQVAE, VQVAEConfig

FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
FILES = (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME)  # what save_pretrained writes
REQUIRED = (CONFIG_NAME, WEIGHTS_NAME)  # what loading needs


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
    return {"format": "edifice", "format_version": FORMAT_VERSION, "kind": pipeline.kind,
            "image_size": pipeline.tokenizer.cfg.image_size,
            "tokenizer": pipeline.tokenizer.cfg.to_dict(), "model": pipeline.model.cfg.to_dict(),
            "classes": None if names is None else presets.class_list_name(names) or list(names),
            "defaults": pipeline.defaults}


def model_card(pipeline: Pipeline, *, repo_id: str | None = None, license: str = "mit",
               base_model: str | None = None) -> str:
    """README.md of a checkpoint: Hub metadata (library_name edifice, license, tags) and how to load it."""
    kind = pipeline.kind
    tags = ["edifice", kind, "image-generation"] + (["class-conditional"] if pipeline.num_classes else [])
    data = ModelCardData(library_name="edifice", license=license, base_model=base_model, tags=tags)
    params = sum(p.numel() for m in (pipeline.tokenizer, pipeline.model) for p in m.parameters())
    classes = len(pipeline.class_names) if pipeline.class_names else pipeline.num_classes
    spec = repo_id or "path/to/this/folder"
    return (f"---\n{data.to_yaml()}\n---\n\n# {kind.upper()} checkpoint for edifice\n\n"
            f"A {kind.upper()} image generator ({params / 1e6:.1f}M parameters, {classes} classes, "
            f"{pipeline.tokenizer.cfg.image_size} px) in the edifice checkpoint format: `config.json` "
            f"(architecture, classes, recommended sampling) and `model.safetensors` (tokenizer and generator).\n\n"
            f"```python\nimport edifice\n\npipe = edifice.load(\"{spec}\")\nimages = pipe.generate(seed=0)  "
            f"# [B, 3, H, W] in [0, 1]\n```\n")


def save_pretrained(pipeline: Pipeline, folder: str | Path, *, repo_id: str | None = None, license: str = "mit",
                    base_model: str | None = None) -> Path:
    """Write ``pipeline`` as an edifice checkpoint folder (config.json, model.safetensors, README.md).

    Everything is written to a temporary folder beside ``folder`` first. A new ``folder`` then appears in
    one rename; in an existing one each file is replaced by a rename (other files there are kept), so a
    crash leaves either the old or the new file, never a partial one.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; pass a folder path to save to")
    config = config_of(pipeline)
    tensors = {f"{prefix}.{name}": t.detach().contiguous()
               for prefix, module in (("tokenizer", pipeline.tokenizer), ("model", pipeline.model))
               for name, t in module.state_dict().items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / CARD_NAME).write_text(model_card(pipeline, repo_id=repo_id, license=license, base_model=base_model))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if folder.is_dir():
            for name in FILES:  # each file appears whole; other files in the folder are kept
                os.replace(tmp / name, folder / name)
        else:
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


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

    ``kind`` ("var", "mar") makes a checkpoint of another kind an error. Device and dtype placement is
    :func:`edifice.loading.place`'s job.
    """
    folder = Path(folder)
    config = read_config(folder)
    if kind is not None and config["kind"] != kind:
        raise CheckpointError(f"{folder}: holds a {config['kind'].upper()} checkpoint, not {kind.upper()}; "
                              f"load it as {config['kind']} or pass a {kind} checkpoint")
    family = FAMILIES[config["kind"]]
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(f"{folder}: has {CONFIG_NAME} but no {WEIGHTS_NAME}; copy or download "
                                      "the whole folder again")
    tensors = load_safetensors(path, remedy="save or download it again")
    parts = {"tokenizer": {}, "model": {}}
    for key, t in tensors.items():
        prefix, _, name = key.partition(".")
        if prefix not in parts:
            raise CheckpointError(f"{path}: unexpected tensor {key!r} (names start with 'tokenizer.' or "
                                  "'model.'); the file was not written by edifice")
        parts[prefix][name] = t
    tokenizer = _materialise(family.tokenizer, family.tokenizer_config, config["tokenizer"], parts["tokenizer"],
                             path, "tokenizer")
    model = _materialise(family.model, family.config, config["model"], parts["model"], path, "model")
    classes = config.get("classes")
    names = presets.class_list(classes) if isinstance(classes, str) else classes
    try:
        return family.pipeline(tokenizer, model, names, config.get("defaults"))
    except ValueError as e:
        raise CheckpointError(f"{folder}: the tokenizer and model do not fit together ({e})") from None


def _materialise(module_cls, config_cls, cfg_fields: dict, state_dict: dict, path: Path, role: str) -> nn.Module:
    try:
        cfg = config_cls(**cfg_fields)
    except TypeError as e:
        raise CheckpointError(f"{path.with_name(CONFIG_NAME)}: bad {role} config ({e}); the file was edited or "
                              "written by another edifice version") from None
    with init_empty_weights(), skip_meta_init():
        module = module_cls(cfg)
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: the {role} tensors do not match config.json ({first}); the checkpoint "
                              "is damaged or was edited") from None
    return module.eval()
