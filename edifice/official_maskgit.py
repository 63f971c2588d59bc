"""Read the authors' Halton-MaskGIT files unchanged (valeoai/Halton-MaskGIT, Hub ``llvictorll/Halton-MaskGIT``) and
the LlamaGen VQ-16 tokenizer they use (``vq_ds16_c2i.pt``, FoundationVision/LlamaGen).

Layouts: the tokenizer is ``{'model': state_dict}``; a MaskGIT checkpoint is the authors' ``Trainer.save_network``
dict ``{'iter', 'global_epoch', 'model_state_dict', 'optimizer_state_dict'}`` (a bare state dict is accepted
too), its keys possibly prefixed ``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``), which are removed as
the authors' loader does. ``head.weight`` is the tied copy of ``tok_emb.weight``: checked equal, then dropped.

Attention heads cannot be read from the weights, so a ``config`` names them: a released model's name
(``"ImageNet_256_tiny"`` ... ``"ImageNet_384_large"``, a file name such as ``ImageNet_256_small.pth`` works),
or a dict ``{"vq": {...}, "maskgit": {...}}`` of the authors' constructor arguments (the VQ's ``ModelArgs``
plus ``ch`` and ``num_res_blocks``; ``Transformer(...)``'s). Without one, the heads of the released widths
are used (384 and 512: 6, 768: 12, 1024: 16). Every config is checked against the tensors' shapes before the
model is built; everything else is read from the shapes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights

from . import hub
from .errors import CheckpointError
from .generative.maskgit import MaskGIT, MaskGITConfig, MaskGITPipeline
from .official import _assemble, _count, load_torch_file, skip_meta_init
from .tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig

# The released Halton-MaskGIT models: Transformer(...) arguments by name (Trainer/cls_trainer.py get_network).
RELEASES = {
    "ImageNet_256_tiny": dict(input_size=16, hidden_dim=384, depth=6, heads=6, mlp_dim=1536),
    "ImageNet_256_small": dict(input_size=16, hidden_dim=512, depth=12, heads=6, mlp_dim=2048),
    "ImageNet_256_base": dict(input_size=16, hidden_dim=768, depth=12, heads=12, mlp_dim=3072),
    "ImageNet_384_small": dict(input_size=24, hidden_dim=512, depth=12, heads=6, mlp_dim=2048),
    "ImageNet_384_base": dict(input_size=24, hidden_dim=768, depth=12, heads=12, mlp_dim=3072),
    "ImageNet_384_large": dict(input_size=24, hidden_dim=1024, depth=24, heads=16, mlp_dim=4096),
}
HEADS_BY_WIDTH = {384: 6, 512: 6, 768: 12, 1024: 16}
# The VQ's ModelArgs fields that only matter in training (accepted and ignored) and those that must hold.
VQ_TRAINING_ARGS = ("commit_loss_beta", "entropy_loss_ratio", "dropout_p")
MASKGIT_TRAINING_ARGS = ("dropout",)


def strip_prefixes(sd: dict) -> dict:
    """Keys without every ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) part, as the authors' loaders."""
    return {k.replace("module.", "").replace("_orig_mod.", ""): v for k, v in sd.items()}


def unwrap(ckpt, path, keys: tuple[str, ...]) -> dict:
    """The state dict inside an authors' checkpoint: the first of ``keys`` present, else the dict itself."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict")
    for key in keys:
        if isinstance(ckpt.get(key), dict):
            return strip_prefixes(ckpt[key])
    return strip_prefixes(ckpt)


def check_shapes(module_cls, cfg, sd: dict, path, what: str) -> None:
    """The tensors a ``module_cls(cfg)`` has must be exactly those of ``sd`` (names and shapes); the first
    difference becomes a one-line error, before anything is built for real."""
    with init_empty_weights(), skip_meta_init():
        expected = {k: tuple(v.shape) for k, v in module_cls(cfg).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in sd.items()}
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = [k for k in sorted(expected.keys() & found.keys()) if expected[k] != found[k]]
    if missing or extra or wrong:
        if wrong:
            detail = f"{wrong[0]} is {list(found[wrong[0]])}, the config makes {list(expected[wrong[0]])}"
        elif missing:
            detail = f"it lacks {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        else:
            detail = f"it has unexpected {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        raise CheckpointError(f"{path}: does not fit the {what} config ({detail}); pass the config of the model "
                              "these weights belong to")


def _check_args(args: dict, allowed: set, path, what: str) -> None:
    if not isinstance(args, dict):
        raise CheckpointError(f"the {what} config must be a dict of the authors' arguments, got {type(args).__name__}")
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise CheckpointError(f"{path}: unknown {what} argument {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


# -- the VQ-16 tokenizer -------------------------------------------------------------------------------------------
def load_vq_state_dict(path) -> dict:
    sd = unwrap(load_torch_file(path), path, ("model", "state_dict"))
    if "quantize.embedding.weight" not in sd or "encoder.conv_blocks.0.res.0.conv1.weight" not in sd:
        raise CheckpointError(f"{path}: not a LlamaGen VQ tokenizer (no 'quantize.embedding.weight' / "
                              "'encoder.conv_blocks.0.res.0.conv1.weight'); pass vq_ds16_c2i.pt")
    return sd


def vq_config(sd: dict, args: dict | None, image_size: int, path) -> LlamaGenVQConfig:
    """The tokenizer's config from its tensors, or from the authors' ``ModelArgs`` (+ ch, num_res_blocks) checked
    against them."""
    V, C = sd["quantize.embedding.weight"].shape
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = _count(sd, r"encoder\.conv_blocks\.(\d+)\.")
    inferred = dict(codebook_size=V, codebook_embed_dim=C, ch=ch,
                    ch_mult=tuple(sd[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch
                                  for i in range(levels)),
                    num_res_blocks=_count(sd, r"encoder\.conv_blocks\.0\.res\.(\d+)\."),
                    z_channels=sd["encoder.conv_out.weight"].shape[0],
                    codebook_show_usage="quantize.codebook_used" in sd)
    if args:
        allowed = {"codebook_size", "codebook_embed_dim", "codebook_l2_norm", "codebook_show_usage",
                   "encoder_ch_mult", "decoder_ch_mult", "z_channels", "ch", "num_res_blocks", *VQ_TRAINING_ARGS}
        _check_args(args, allowed, path, "VQ")
        if args.get("codebook_l2_norm", True) is not True:
            raise CheckpointError(f"{path}: codebook_l2_norm=False is not supported (every released LlamaGen VQ "
                                  "normalises its codes); use a tokenizer trained with it")
        enc, dec = args.get("encoder_ch_mult"), args.get("decoder_ch_mult")
        if enc is not None and dec is not None and list(enc) != list(dec):
            raise CheckpointError(f"{path}: encoder_ch_mult {list(enc)} differs from decoder_ch_mult {list(dec)}; "
                                  "only equal ones are supported (as in every released model)")
        given = {k: v for k, v in args.items() if k in inferred}
        if enc is not None or dec is not None:
            given["ch_mult"] = tuple(enc if enc is not None else dec)
        inferred.update(given)
    cfg = LlamaGenVQConfig(**inferred, image_size=image_size)
    check_shapes(LlamaGenVQ, cfg, sd, path, "VQ tokenizer")
    return cfg


# -- Halton-MaskGIT ------------------------------------------------------------------------------------------------
def release_name(config) -> str | None:
    """A released model's name from a name or file name (``ImageNet_256_small.pth``), else None."""
    if not isinstance(config, str | Path):
        return None
    name = re.sub(r"\.pth?$", "", Path(str(config)).name)
    matches = [r for r in RELEASES if r.lower() == name.lower()]
    if not matches:
        raise CheckpointError(f"unknown Halton-MaskGIT model {str(config)!r}; released: {', '.join(RELEASES)} "
                              "(or pass a dict {'vq': {...}, 'maskgit': {...}} of the authors' arguments)")
    return matches[0]


def load_maskgit_state_dict(path) -> dict:
    sd = unwrap(load_torch_file(path), path, ("model_state_dict", "model", "state_dict"))
    if "tok_emb.weight" not in sd or "last_norm.norm_final.weight" not in sd:
        raise CheckpointError(f"{path}: not a Halton-MaskGIT transformer (no 'tok_emb.weight' / "
                              "'last_norm.norm_final.weight'); pass ImageNet_256_*.pth or ImageNet_384_*.pth")
    head = sd.pop("head.weight", None)
    if head is not None and not torch.equal(head, sd["tok_emb.weight"]):
        raise CheckpointError(f"{path}: head.weight differs from tok_emb.weight, but Halton-MaskGIT ties them; "
                              "the file is damaged or not a Halton-MaskGIT checkpoint")
    return sd


def maskgit_config(sd: dict, args: dict | None, path) -> MaskGITConfig:
    """The transformer's config: sizes from the tensors, heads from ``args`` or the released widths; ``args``
    (the authors' ``Transformer(...)`` arguments) are checked against the tensors."""
    D = sd["tok_emb.weight"].shape[1]
    inferred = dict(input_size=round(sd["pos_emb.weight"].shape[0] ** 0.5), hidden_dim=D,
                    codebook_size=sd["tok_emb.weight"].shape[0] - 1, depth=_count(sd, r"transformer\.layers\.(\d+)\."),
                    nclass=sd["cls_emb.weight"].shape[0] - 1, register=sd["reg_tokens.weight"].shape[0])
    args = dict(args or {})
    _check_args(args, {"input_size", "hidden_dim", "codebook_size", "depth", "heads", "mlp_dim", "nclass",
                       "register", "proj", *MASKGIT_TRAINING_ARGS}, path, "MaskGIT")
    if args.pop("proj", 1) != 1:
        raise CheckpointError(f"{path}: proj != 1 is not supported (the authors' code crashes with it too)")
    for key in MASKGIT_TRAINING_ARGS:
        args.pop(key, None)
    if "heads" not in args:
        if D not in HEADS_BY_WIDTH:
            raise CheckpointError(f"{path}: cannot tell the attention heads of a {D}-wide Halton-MaskGIT (released "
                                  f"widths: {sorted(HEADS_BY_WIDTH)}); pass config={{'maskgit': {{'heads': N}}}}")
        args["heads"] = HEADS_BY_WIDTH[D]
    if "mlp_dim" not in args:
        args["mlp_dim"] = 4 * D  # every released model; only its 256-rounded 2/3 shows in the weights
    cfg = MaskGITConfig(**{**inferred, **args})
    check_shapes(MaskGIT, cfg, sd, path, "Halton-MaskGIT")
    return cfg


def split_config(config, part: str) -> tuple[dict | None, dict | None]:
    """(vq args, model args) of a ``config`` dict ``{"vq": ..., part: ...}``."""
    if config is None:
        return None, None
    if not isinstance(config, dict) or not set(config) <= {"vq", part}:
        raise CheckpointError(f"config must be a released model's name or a dict {{'vq': {{...}}, '{part}': {{...}}}} "
                              f"of the authors' arguments, got {str(config)[:80]}")
    return config.get("vq"), config.get(part)


def maskgit_from_state_dicts(vq_sd: dict, model_sd: dict, config=None, device=None, dtype=None, class_names=None,
                             defaults=None, paths=("VQ", "MaskGIT")) -> MaskGITPipeline:
    name = release_name(config)
    vq_args, model_args = (None, RELEASES[name]) if name else split_config(config, "maskgit")
    model_cfg = maskgit_config(model_sd, model_args, paths[1])
    vq_cfg = vq_config(vq_sd, vq_args, model_cfg.input_size * vq_stride(vq_sd), paths[0])
    if vq_cfg.codebook_size != model_cfg.codebook_size:
        raise CheckpointError(f"{paths[0]}: the tokenizer has {vq_cfg.codebook_size} codes but the MaskGIT "
                              f"{paths[1]} reads {model_cfg.codebook_size}; pass the VQ it was trained with")
    return _assemble(MaskGITPipeline, (LlamaGenVQ, vq_cfg, vq_sd), (MaskGIT, model_cfg, model_sd), device, dtype,
                     class_names, defaults)


def vq_stride(vq_sd: dict) -> int:
    """Pixels per token side: 2 ** (levels - 1)."""
    return 2 ** (_count(vq_sd, r"encoder\.conv_blocks\.(\d+)\.") - 1)


def load_official_maskgit(vq_path, model_path, config=None, device=None, dtype=None) -> MaskGITPipeline:
    """The LlamaGen ``vq_ds16_c2i.pt`` + a Halton-MaskGIT ``ImageNet_*.pth`` as a ready pipeline.

    ``config``: None (heads of the released widths), a released model's name (``"ImageNet_256_small"``) or a dict
    ``{"vq": {...}, "maskgit": {...}}`` of the authors' arguments; checked against the tensors. ``dtype`` (e.g.
    bf16 on a GPU) applies to the transformer; the tokenizer stays float32.
    """
    vq_sd, model_sd = load_vq_state_dict(vq_path), load_maskgit_state_dict(model_path)
    return maskgit_from_state_dicts(vq_sd, model_sd, config, device, dtype, paths=(vq_path, model_path))


# -- presets ---------------------------------------------------------------------------------------------------------
def tokenizer_file(config: dict, name: str, asked: str, *, prefer_cache: bool = True, force: bool = False) -> Path:
    """The VQ file of an ``official-maskgit`` preset: it lives in LlamaGen's Hub repo (``vq_repo`` in the
    preset's ``config``, at ``vq_revision``), not in the authors' Halton-MaskGIT repo."""
    folder = hub.fetch(config["vq_repo"], [name], config.get("vq_revision"), asked=asked, prefer_cache=prefer_cache,
                       force=force)
    return folder / name


def fetch_preset(preset, spec: str, revision: str | None, *, prefer_cache: bool, force: bool = False) -> Path:
    """Both Hub repos of an ``official-maskgit`` preset: the tokenizer's (LlamaGen) and the transformer's; returns
    the transformer's folder (``files["model"]``)."""
    tokenizer_file(preset.config, preset.files["vq"], spec, prefer_cache=prefer_cache, force=force)
    return hub.fetch(preset.repo, [preset.files["model"]], revision or preset.revision, asked=spec,
                     prefer_cache=prefer_cache, force=force)


def load_preset(files: dict[str, Path], config: dict) -> MaskGITPipeline:
    """An ``official-maskgit`` preset's files (as :func:`fetch_preset` left them) as a float32 pipeline on the CPU."""
    vq = tokenizer_file(config, files["vq"].name, config.get("name", "the preset"))
    return load_official_maskgit(vq, files["model"], preset_model_config(config), device="cpu")


def preset_model_config(config: dict):
    """The ``config`` argument of the official loaders from a preset's ``config``: a released model's ``name``,
    or ``arguments``, the dict of the authors' constructor arguments (e.g. a test model's)."""
    return config.get("name") or config.get("arguments")


def parse_cli_config(text: str | None):
    """``--model-config``: None, a released model's name (checked by the loader), or the authors' arguments as a
    JSON dict (text, or a file holding it)."""
    inline = text is not None and text.lstrip().startswith("{")
    if text is None or not inline and not Path(text).is_file():
        return text
    try:
        value = json.loads(text if inline else Path(text).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"--model-config: not valid JSON ({e}); pass a released model's name or a JSON dict "
                              "{\"vq\": {...}, \"maskgit\" or \"gpt\": {...}}") from None
    if not isinstance(value, dict):
        raise CheckpointError("--model-config: expected a JSON dict {\"vq\": {...}, \"maskgit\" or \"gpt\": {...}}")
    return value

