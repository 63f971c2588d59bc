"""Load the authors' FractalGen checkpoints (LTH14/fractalgen) unchanged.

The released files are training checkpoints, ``checkpoint-last.pth``, one per model, hosted on Dropbox rather
than the Hugging Face Hub (the authors' ``util/download.py`` saves them as
``pretrained_models/<model>/checkpoint-last.pth``). The weights are under ``'model'`` (float32, no EMA copy in
this codebase); an ``'args'`` entry, if present, is main_fractalgen's ``argparse.Namespace``, the one class
allowed besides tensors when reading with ``torch.load(weights_only=True)``.

The architecture comes from ``config`` (an official model name or the authors' constructor arguments) or is
read from the weights: levels, generator kinds, widths, depths, patch sizes, image size, classes, guiding
pixels and ``num_conds`` all show in the key names and shapes. Attention heads do not: they come from the
official widths (1024: 16, 768: 12, 512: 8, ...) or from ``config["num_heads_list"]``. A config is checked
against every tensor's shape before the model is built; the model is built on the meta device and the tensors
assigned, so no time goes into a random initialisation. When the architecture is one of the five released
models, the pipeline gets the ImageNet class names and the authors' sampling recipe (``presets.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights

from . import presets
from .errors import CheckpointError, CheckpointNotFoundError
from .generative.fractalgen import (
    CONFIGS,
    FractalGen,
    FractalGenConfig,
    FractalGenConfigError,
    FractalGenPipeline,
    PixelTokenizer,
    PixelTokenizerConfig,
)
from .official import load_torch_file, skip_meta_init

SOURCE = "official-fractalgen"
# Attention heads of the official widths (generator levels and pixel heads), from the five factories.
HEADS_BY_WIDTH = {1280: 16, 1024: 16, 768: 12, 640: 8, 512: 8, 384: 6, 320: 4, 256: 4, 192: 3, 128: 4, 64: 4}
ARCHITECTURE = ("img_size_list", "embed_dim_list", "num_blocks_list", "num_heads_list", "class_num", "num_conds")


def read_checkpoint(path: str | Path) -> tuple[dict, argparse.Namespace | None]:
    """The state dict under ``'model'`` and the training arguments (or None) of a ``checkpoint-last.pth``."""
    ckpt = load_torch_file(path, allow=(argparse.Namespace,))
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        sd, args = ckpt["model"], ckpt.get("args")
    else:
        sd, args = ckpt, None
    if not isinstance(sd, dict) or "class_emb.weight" not in sd or "generator.patch_emb.weight" not in sd:
        keys = ", ".join(sorted(sd)[:3]) if isinstance(sd, dict) else type(sd).__name__
        raise CheckpointError(f"{path}: not a FractalGen checkpoint (expected weights under 'model' with keys like "
                              f"'class_emb.weight', 'generator.patch_emb.weight'; found {keys})")
    return sd, args if isinstance(args, argparse.Namespace) else None


def _count(sd: dict, prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.")
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_config(sd: dict, args: argparse.Namespace | None = None, given: dict | None = None) -> FractalGenConfig:
    """A :class:`FractalGenConfig` from the weights (and the training ``args`` where the weights cannot tell),
    with ``given`` (the authors' constructor arguments) taking precedence; what neither shows is named."""
    given = dict(given or {})
    gens, prefix = [], ""
    while f"{prefix}generator.patch_emb.weight" in sd:
        gens.append(prefix + "generator.")
        prefix += "next_fractal."
    if f"{prefix}r_codebook.weight" not in sd:
        raise CheckpointError(f"the weights end without a pixel head (no '{prefix}r_codebook.weight'); not a complete "
                              "FractalGen checkpoint")
    kinds = ["mar" if f"{g}mask_token" in sd else "ar" for g in gens] + ["ar"]  # the last entry is never used
    dims = [sd[f"{g}patch_emb.weight"].shape[0] for g in gens] + [sd[f"{prefix}cond_proj.weight"].shape[0]]
    depths = [_count(sd, g) for g in gens] + [_count(sd, prefix)]
    patch = [math.isqrt(sd[f"{g}patch_emb.weight"].shape[1] // 3) for g in gens]
    gp = [f"{g}pix_proj.weight" in sd for g in gens]
    pos = [sd[f"{g}pos_embed_learned"].shape[1] for g in gens]
    seqs = [None] + [(patch[k - 1] // patch[k]) ** 2 for k in range(1, len(gens))]
    conds = {pos[k] - seqs[k] - gp[k] for k in range(1, len(gens)) if kinds[k] == "mar"}
    num_conds = given.get("num_conds", next(iter(conds), getattr(args, "num_conds", None)))
    if num_conds is None:
        num_conds = 1 if kinds[0] == "ar" else None
    if num_conds is None:
        raise CheckpointError("cannot tell num_conds from these weights (their only MAR level is the top one); pass "
                              "config={'num_conds': N} (the released FractalMAR models use 5; command line: "
                              "--fractalgen-config '{\"num_conds\": N}')")
    seqs[0] = pos[0] - (1 if kinds[0] == "ar" else num_conds)
    grid = math.isqrt(max(seqs[0], 0))
    if grid * grid != seqs[0] or grid == 0:
        raise CheckpointError(f"the top level's {pos[0]} positions do not make a square grid with num_conds "
                              f"{num_conds}; pass the right num_conds in config")
    heads = given.get("num_heads_list")
    if heads is None:
        unknown = sorted({d for d in dims if d not in HEADS_BY_WIDTH})
        if unknown:
            raise CheckpointError(f"cannot tell the attention heads of width(s) {unknown} (the weights do not show "
                                  f"them; official widths: {sorted(HEADS_BY_WIDTH)}); pass config={{'num_heads_list': "
                                  f"[...]}} with one entry per level ({len(dims)}; command line: --fractalgen-config "
                                  "'{\"num_heads_list\": [...]}')")
        heads = [HEADS_BY_WIDTH[d] for d in dims]
    fields = dict(img_size_list=[patch[0] * grid] + patch, embed_dim_list=dims, num_blocks_list=depths,
                  num_heads_list=heads, generator_type_list=kinds, class_num=sd["class_emb.weight"].shape[0],
                  guiding_pixel=any(gp), num_conds=num_conds,
                  r_weight=float(getattr(args, "r_weight", 5.0)),
                  label_drop_prob=float(getattr(args, "label_drop_prob", 0.1)))
    try:
        return FractalGenConfig.from_official({**fields, **given})
    except (FractalGenConfigError, TypeError) as e:
        raise CheckpointError(f"bad FractalGen config: {e}") from None


def check_shapes(cfg: FractalGenConfig, sd: dict, path) -> None:
    """Every tensor of ``sd`` against the model ``cfg`` describes (built on the meta device), before loading."""
    with init_empty_weights(), skip_meta_init():
        expected = {k: tuple(v.shape) for k, v in FractalGen(cfg).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else "") + \
               (", " if missing and unexpected else "") + \
               (f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "")
        raise CheckpointError(f"{path}: the weights do not fit the config ({what}); check the model name or the "
                              "constructor arguments")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{path}: {k} has shape {list(sd[k].shape)} but the config makes {list(shape)}; "
                                  "check the model name or the constructor arguments")


def official_name(cfg: FractalGenConfig) -> str | None:
    """The released model this architecture is, or None."""
    def arch(c: FractalGenConfig):
        return ([getattr(c, f) for f in ARCHITECTURE] + [c.generator_type_list[:-1]]
                + [[c.has_guiding_pixel(l) for l in range(c.num_levels - 1)]])
    return next((name for name, c in CONFIGS.items() if arch(c) == arch(cfg)), None)


def official_preset(name: str) -> presets.Preset | None:
    return next((p for p in presets.presets().values() if p.source == SOURCE and p.config.get("name") == name), None)


def resolve_config(config, sd: dict, args) -> FractalGenConfig:
    if config is None or isinstance(config, dict):
        return infer_config(sd, args, config)
    if isinstance(config, FractalGenConfig):
        return config
    if config not in CONFIGS:
        raise CheckpointError(f"unknown FractalGen model {config!r}; official names: {', '.join(CONFIGS)} (or pass "
                              "a dict of the authors' constructor arguments)")
    return FractalGenConfig(**CONFIGS[config].to_dict())


def fractalgen_from_state_dict(sd: dict, cfg: FractalGenConfig, device=None, dtype=None, class_names=None,
                               defaults=None, path="the weights") -> FractalGenPipeline:
    """Build a :class:`FractalGenPipeline` from the authors' state dict without a random initialisation."""
    check_shapes(cfg, sd, path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with init_empty_weights(), skip_meta_init():
        model = FractalGen(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    model.to(device)  # the RoPE tables are buffers built for real on the CPU
    if dtype is not None and dtype != torch.float32:
        model.cast(dtype)
    tokenizer = PixelTokenizer(PixelTokenizerConfig(cfg.img_size))
    return FractalGenPipeline(tokenizer, model, class_names=class_names, defaults=defaults)


def load_official_fractalgen(path, config=None, device=None, dtype=None) -> FractalGenPipeline:
    """The authors' ``checkpoint-last.pth`` as a ready pipeline.

    ``config``: an official name (``fractalar_in64``, ``fractalmar_in64``, ``fractalmar_base_in256``,
    ``fractalmar_large_in256``, ``fractalmar_huge_in256``), a dict of the authors' ``FractalGen(...)`` arguments
    (``img_size_list``, ``embed_dim_list``, ``num_blocks_list``, ``num_heads_list``, ``generator_type_list``,
    ``class_num``, ``guiding_pixel``, ``num_conds``, ``r_weight``; the rest inferred), or None: everything read
    from the weights. ``dtype`` (e.g. bf16 on a GPU) applies to the generators; the pixel heads stay float32.
    A released architecture gets the ImageNet class names and the authors' recommended sampling.
    """
    sd, args = read_checkpoint(path)
    cfg = resolve_config(config, sd, args)
    name = official_name(cfg)
    preset = official_preset(name) if name else None
    classes = list(presets.class_list(preset.classes)) if preset and preset.classes else None
    return fractalgen_from_state_dict(sd, cfg, device, dtype, classes, dict(preset.defaults) if preset else None,
                                      path)


def parse_config(text: str | None):
    """``--fractalgen-config``: an official name, a JSON dict, or a JSON file holding one."""
    if text is None or text in CONFIGS:
        return text
    source = Path(text).read_text() if Path(text).is_file() else text
    try:
        value = json.loads(source)
    except json.JSONDecodeError:
        raise CheckpointError(f"--fractalgen-config {text!r}: neither an official name ({', '.join(CONFIGS)}) nor "
                              "a JSON dict of the authors' constructor arguments") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"--fractalgen-config {text!r}: expected a JSON dict of constructor arguments")
    return value


def preset_folder(preset: presets.Preset, spec: str) -> Path:
    """The folder holding an ``official-fractalgen`` preset's files, or what to do when they are missing (the
    authors host them outside the Hub, so edifice cannot download them)."""
    folder = preset.folder
    missing = [name for name in preset.files.values() if not (folder / name).is_file()]
    if missing:
        target = folder / missing[0]
        size = f" ({preset.download_bytes / 2 ** 30:.1f} GiB)" if preset.download_bytes else ""
        raise CheckpointNotFoundError(
            f"preset {spec!r}: the authors host {missing[0]}{size} outside the Hugging Face Hub; download it from "
            f"{preset.url or 'the link in the LTH14/fractalgen README'} and save it as {target}, then load "
            f"{spec!r} again (or convert it: python -m edifice convert --fractalgen {target} "
            f"--fractalgen-config {preset.config.get('name', 'NAME')} --out DIR)")
    return folder
