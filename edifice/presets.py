"""The preset registry and the class lists shipped in ``assets/``: short names for the checkpoints users load.

All built-in presets live in one data file, ``edifice/presets.json``; each entry is a :class:`Preset`.
A preset's ``source`` says where its weights come from:

- ``"folder"``: an edifice checkpoint bundled in the repository (``path``, relative to the project root),
  e.g. ``checkpoints/emoji-var``, written by the training issue. Until it is trained the folder does not
  exist and loading the preset says so.
- ``"hub"``: an edifice checkpoint in a Hub repository (``repo`` at ``revision``).
- ``"official-var"`` / ``"official-mar"``: the authors' own files in a Hub repository, converted while
  loading; ``files`` maps each role the loader needs (``vae`` and ``var`` / ``mar``) to a file name, and
  ``config`` holds architecture settings the files cannot show (attention heads of a non-official width).

Official VAR presets: ``var-d16`` ... ``var-d30`` (256 px) and ``var-d36`` (512 px) from
``FoundationVision/var`` with the shared ``vae_ch160v4096z32.pth``. ``params`` counts tokenizer +
transformer; ``download_bytes`` is the fp32 tensor bytes of both files computed from their state-dict
shapes (the files themselves were not downloaded; pickle overhead adds a few KB). The recommended sampling
``defaults`` are the authors': for 256 px the README's FID recipe (cfg 1.5, top_k 900, top_p 0.96,
more_smooth off; the README notes cfg up to 5 or more_smooth "for better visual quality"); for d36 the only
setting the authors publish for it, the zero-shot-edit notebook's (cfg 3, top_k 900, top_p 0.95,
more_smooth on). Official revisions are ``main``: the authors publish no tags, and the 2024-04 replacement
of d16/d30 (L2-normalised attention) is what every current user has.

Official Halton-MaskGIT presets (kind ``"maskgit"``, source ``"official-maskgit"``): ``maskgit-256-tiny`` ...
``maskgit-384-large`` from ``llvictorll/Halton-MaskGIT``; ``files`` = ``vq`` and ``model``, the ``vq`` file taken
from another repo, ``config["vq_repo"]`` (LlamaGen's), at ``config["vq_revision"]``. Official LlamaGen presets
(kind ``"llamagen"``, source ``"official-llamagen"``): ``llamagen-b-256`` ... ``llamagen-3b-384`` from
``FoundationVision/LlamaGen`` (``files`` = ``vq`` and ``gpt``). For both, ``config["name"]`` is the released
model (heads are not in the weights) or ``config["arguments"]`` the authors' constructor arguments; recipes and
sizes are explained in the README (Presets).

Official FractalGen presets (kind ``"fractalgen"``, source ``"official-fractalgen"``): ``fractalar-in64``,
``fractalmar-in64``, ``fractalmar-base-in256``, ``fractalmar-large-in256``, ``fractalmar-huge-in256``. The authors
host their ``checkpoint-last.pth`` files on Dropbox, not the Hub, so they are read from ``path`` (default
``pretrained_models/``, the authors' own layout) with ``files`` under it; ``url`` says where to download them,
and loading a preset whose file is missing says what to do (:func:`edifice.official_fractalgen.preset_folder`).
``config`` names the official architecture; ``defaults`` are the README's FID recipes
(``shared/golden/fractalgen``): cfg 11 / 6.5 / 29 / 21 / 19 on the linear schedule, temperature 1.03 / 1.02 / 1.1,
filter threshold 1e-4, num_iter_list 64,16 (64,16,16 at 256 px; AR levels always take one step per patch).

Official MAR presets (kind ``"mar-diffusion"``): ``mar-base``, ``mar-large``, ``mar-huge`` from
``jadechoghari/mar`` (the mirror the authors' README links), with the KL-16 VAE. ``mar-base`` does not use
the repo's flat ``mar-base.safetensors``: a third-party audit found it equal to the non-EMA ``model`` weights
(FID 5.56 instead of 2.31), so the preset reads ``model_ema`` from the authors' ``checkpoint-last.pth`` (with
``kl16.ckpt``), deleted from main but kept at commit ``773c9bd``, which the preset pins. For MAR-L and MAR-H
the flat safetensors are the only Hub files; whether they are EMA is not documented. ``download_bytes`` are
the files' sizes (MAR-B, VAE) or fp32 tensor bytes from the shapes (MAR-L/H). ``defaults`` are the authors'
best-FID recipe (README/paper): 256 autoregressive steps, 100 diffusion steps, linear CFG schedule,
temperature 1.0 and CFG 2.9 / 3.0 / 3.2; the README's faster setting is 64 steps.

Adding presets without editing the package (tests, private mirrors, a Space's own checkpoints):
``register(name, kind=..., source=..., ...)`` in Python, or ``EDIFICE_PRESETS=/path/a.json:/path/b.json``
(files in the same format as ``presets.json``, read at every lookup and overriding built-ins by name).

Class lists: ``assets/<name>_classes.txt``, one class per line in class-index order. ``imagenet`` holds the
1000 ImageNet-1k classes as WordNet lemmas (from timm's ``imagenet_synsets.txt`` +
``imagenet_synset_to_lemma.txt``); note that "crane" is both class 134 (bird) and 517 (machine).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

from .errors import EdificeError, UnknownPresetError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ASSETS = PROJECT_ROOT / "assets"
PRESETS_FILE = Path(__file__).with_name("presets.json")
ENV_VAR = "EDIFICE_PRESETS"
LOCAL_SOURCES = ("folder", "official-fractalgen")  # files on disk (``path``), not on the Hub


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # "var" | "mar" | "mar-diffusion": the pipeline family the weights make
    source: str  # "folder" | "hub" | "official-var" | "official-mar" (see the module docstring)
    repo: str | None = None  # Hub repository id (sources other than "folder")
    revision: str | None = None  # branch, tag or commit of ``repo``; None = main
    files: dict[str, str] = field(default_factory=dict)  # role -> file name (official sources)
    path: str | None = None  # source "folder": checkpoint folder, relative to the project root or absolute
    image_size: int | None = None
    classes: str | None = None  # name of a class list in assets/ ("imagenet"); None = the checkpoint's own
    params: int | None = None  # parameter count, tokenizer + generator
    download_bytes: int | None = None  # what a first load downloads (for the app to show)
    defaults: dict = field(default_factory=dict)  # recommended sampling settings
    config: dict = field(default_factory=dict)  # official sources: settings the files cannot show
    url: str | None = None  # "official-fractalgen": where the authors host the files (outside the Hub)
    description: str = ""

    def __post_init__(self):
        if self.source in LOCAL_SOURCES and not self.path:
            raise EdificeError(f"preset {self.name!r}: a {self.source!r} preset needs a 'path'")
        if self.source not in LOCAL_SOURCES and not self.repo:
            raise EdificeError(f"preset {self.name!r}: a {self.source!r} preset needs a Hub 'repo'")
        if self.source.startswith("official-") and not self.files:
            raise EdificeError(f"preset {self.name!r}: an official preset needs its 'files'")

    @property
    def folder(self) -> Path:
        """The checkpoint folder of a ``"folder"`` preset."""
        return PROJECT_ROOT / self.path


_registered: dict[str, Preset] = {}


def _read(path: Path) -> dict[str, Preset]:
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EdificeError(f"{path}: could not read presets ({e}); fix the file or unset {ENV_VAR}") from None
    known = {f.name for f in fields(Preset)} - {"name"}
    out = {}
    for name, entry in entries.items():
        unknown = set(entry) - known
        if unknown:
            raise EdificeError(f"{path}: preset {name!r} has unknown fields {sorted(unknown)}; "
                               f"allowed: {sorted(known)}")
        out[name] = Preset(name=name, **entry)
    return out


def presets() -> dict[str, Preset]:
    """Every preset: built-ins, then the ``EDIFICE_PRESETS`` files, then :func:`register` calls (later wins)."""
    table = dict(_read(PRESETS_FILE))
    for extra in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        table.update(_read(Path(extra)))
    table.update(_registered)
    return table


def get(name: str) -> Preset:
    table = presets()
    if name not in table:
        raise UnknownPresetError(f"unknown preset {name!r}; presets: {', '.join(table)} "
                                 "(or pass a local folder or a Hub repo id org/name)")
    return table[name]


def register(name: str, **entry) -> Preset:
    """Add (or replace) a preset for this process, e.g. a test checkpoint on a local Hub."""
    _registered[name] = preset = Preset(name=name, **entry)
    return preset


def unregister(name: str) -> None:
    _registered.pop(name, None)


def find_official(filenames) -> Preset | None:
    """The official preset made of exactly these file names (so converted files get its classes and
    recommended sampling), or None."""
    names = set(filenames)
    for p in presets().values():
        if p.source.startswith("official-") and set(p.files.values()) == names:
            return p
    return None


@cache
def class_list(name: str) -> tuple[str, ...]:
    """The class names of ``assets/<name>_classes.txt``, in class-index order."""
    path = ASSETS / f"{name}_classes.txt"
    if not path.is_file():
        shipped = sorted(p.name.removesuffix("_classes.txt") for p in ASSETS.glob("*_classes.txt"))
        raise EdificeError(f"no class list {name!r} in {ASSETS}; shipped lists: {', '.join(shipped) or 'none'}")
    return tuple(path.read_text().splitlines())


def class_list_name(names) -> str | None:
    """The name of the shipped class list equal to ``names``, or None (so checkpoints store a name, not
    1000 strings)."""
    names = tuple(names)
    for path in sorted(ASSETS.glob("*_classes.txt")):
        name = path.name.removesuffix("_classes.txt")
        if class_list(name) == names:
            return name
    return None
