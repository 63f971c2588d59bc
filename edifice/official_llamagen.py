"""Read the authors' LlamaGen class-to-image files unchanged (FoundationVision/LlamaGen, Hub
``FoundationVision/LlamaGen``): the VQ-16 tokenizer ``vq_ds16_c2i.pt`` and a GPT ``c2i_B_256.pt`` ... ``c2i_3B_384.pt``.

The GPT is ``{'model': ...}`` (DDP training), ``{'module': ...}``, ``{'state_dict': ...}`` or, for the FSDP-trained
XXL and 3B, the bare state dict; ``module.`` / ``_orig_mod.`` key prefixes are removed and a stored ``freqs_cis``
is ignored (it is computed). The authors load with ``strict=False``; here every other key must match.

Attention heads cannot be read from the weights, so ``config`` names them: a released model's name (``"GPT-B"``
... ``"GPT-3B"``, or a file name such as ``c2i_L_384.pt``), or a dict ``{"vq": {...}, "gpt": {...}}`` of the
authors' ``ModelArgs`` (and the VQ's, plus ``ch`` and ``num_res_blocks``). Without one, the heads of the
released widths are used (768: 12, 1024: 16, 1280: 20, 1536: 24, 3200: 32). The config is checked against the
tensors' shapes before the model is built.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .errors import CheckpointError
from .generative.llamagen import LlamaGen, LlamaGenConfig, LlamaGenPipeline
from .official import _assemble, _count, load_torch_file
from .official_maskgit import (
    _check_args,
    check_shapes,
    load_vq_state_dict,
    preset_model_config,
    split_config,
    unwrap,
    vq_config,
    vq_stride,
)
from .tokenizers.llamagen_vq import LlamaGenVQ

# GPT_models of autoregressive/models/gpt.py: (n_layer, n_head, dim).
RELEASES = {"GPT-B": (12, 12, 768), "GPT-L": (24, 16, 1024), "GPT-XL": (36, 20, 1280), "GPT-XXL": (48, 24, 1536),
            "GPT-XXXL": (48, 40, 2560), "GPT-1B": (22, 32, 2048), "GPT-3B": (24, 32, 3200), "GPT-7B": (32, 32, 4096)}
HEADS_BY_WIDTH = {dim: heads for _, heads, dim in RELEASES.values()}
TRAINING_ARGS = ("initializer_range", "token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p",
                 "drop_path_rate", "caption_dim", "max_batch_size", "max_seq_len")
KEPT_ARGS = ("dim", "n_layer", "n_head", "multiple_of", "ffn_dim_multiplier", "rope_base", "norm_eps", "vocab_size",
             "num_classes", "cls_token_num", "block_size")


def release_args(config) -> dict | None:
    """``ModelArgs`` of a released GPT from ``"GPT-L"`` or a file name ``c2i_L_384.pt`` (block size from the
    resolution), else None."""
    if not isinstance(config, str | Path):
        return None
    name = Path(str(config)).name
    file = re.fullmatch(r"c2i_(\w+?)_(256|384|512)(?:\.pt)?", name)
    key = f"GPT-{file.group(1)}" if file else name
    matches = [r for r in RELEASES if r.lower() == key.lower()]
    if not matches:
        raise CheckpointError(f"unknown LlamaGen GPT {str(config)!r}; released: {', '.join(RELEASES)} or file "
                              "names like c2i_B_256.pt (or pass a dict {'vq': {...}, 'gpt': {...}} of the authors' "
                              "ModelArgs)")
    n_layer, n_head, dim = RELEASES[matches[0]]
    args = dict(n_layer=n_layer, n_head=n_head, dim=dim)
    if file:
        args["block_size"] = (int(file.group(2)) // 16) ** 2
    return args


def load_gpt_state_dict(path) -> dict:
    sd = unwrap(load_torch_file(path), path, ("model", "module", "state_dict"))
    sd.pop("freqs_cis", None)
    if "tok_embeddings.weight" not in sd or "cls_embedding.embedding_table.weight" not in sd:
        raise CheckpointError(f"{path}: not a LlamaGen class-to-image GPT (no 'tok_embeddings.weight' / "
                              "'cls_embedding.embedding_table.weight'); pass c2i_B_256.pt ... c2i_3B_384.pt")
    return sd


def gpt_config(sd: dict, args: dict | None, path) -> LlamaGenConfig:
    """Sizes from the tensors, heads from ``args`` or the released widths, the block size (image tokens) from
    ``args`` or 256 (16 x 16; the weights of 256 and 384 px models have the same shapes)."""
    V, D = sd["tok_embeddings.weight"].shape
    inferred = dict(dim=D, vocab_size=V, n_layer=_count(sd, r"layers\.(\d+)\."),
                    num_classes=sd["cls_embedding.embedding_table.weight"].shape[0] - 1)
    args = dict(args or {})
    _check_args(args, {*KEPT_ARGS, *TRAINING_ARGS, "n_kv_head", "class_dropout_prob", "model_type"}, path, "GPT")
    if args.get("model_type", "c2i") != "c2i":
        raise CheckpointError(f"{path}: model_type {args['model_type']!r} is not supported; only class-to-image "
                              "(c2i) GPTs are")
    if args.get("n_kv_head") not in (None, args.get("n_head", HEADS_BY_WIDTH.get(D))):
        raise CheckpointError(f"{path}: grouped-query attention (n_kv_head < n_head) is not supported (the authors' "
                              "KV cache crashes with it; no released model uses it)")
    if args.get("class_dropout_prob", 0.1) <= 0:
        raise CheckpointError(f"{path}: class_dropout_prob 0 means no null class, so no CFG; not supported")
    if args.get("cls_token_num", 1) != 1:
        raise CheckpointError(f"{path}: cls_token_num must be 1 for a class-to-image GPT")
    args = {k: v for k, v in args.items() if k in KEPT_ARGS}
    if "n_head" not in args:
        if D not in HEADS_BY_WIDTH:
            raise CheckpointError(f"{path}: cannot tell the attention heads of a {D}-wide GPT (released widths: "
                                  f"{sorted(HEADS_BY_WIDTH)}); pass config={{'gpt': {{'n_head': N}}}}")
        args["n_head"] = HEADS_BY_WIDTH[D]
    cfg = LlamaGenConfig(**{**inferred, **args})
    if math.isqrt(cfg.block_size) ** 2 != cfg.block_size:
        raise CheckpointError(f"{path}: block_size {cfg.block_size} is not a square token grid")
    if cfg.head_dim % 4:
        raise CheckpointError(f"{path}: head dimension {cfg.head_dim} is not a multiple of 4 (2-D rotary embedding)")
    check_shapes(LlamaGen, cfg, sd, path, "LlamaGen GPT")
    return cfg


def llamagen_from_state_dicts(vq_sd: dict, gpt_sd: dict, config=None, device=None, dtype=None, class_names=None,
                              defaults=None, paths=("VQ", "GPT")) -> LlamaGenPipeline:
    named = release_args(config)
    vq_args, gpt_args = (None, named) if named is not None else split_config(config, "gpt")
    gpt_cfg = gpt_config(gpt_sd, gpt_args, paths[1])
    vq_cfg = vq_config(vq_sd, vq_args, gpt_cfg.grid * vq_stride(vq_sd), paths[0])
    if vq_cfg.codebook_size != gpt_cfg.vocab_size:
        raise CheckpointError(f"{paths[0]}: the tokenizer has {vq_cfg.codebook_size} codes but the GPT {paths[1]} "
                              f"has a {gpt_cfg.vocab_size}-token vocabulary; pass the VQ it was trained with")
    return _assemble(LlamaGenPipeline, (LlamaGenVQ, vq_cfg, vq_sd), (LlamaGen, gpt_cfg, gpt_sd), device, dtype,
                     class_names, defaults)


def load_official_llamagen(vq_path, gpt_path, config=None, device=None, dtype=None) -> LlamaGenPipeline:
    """The LlamaGen ``vq_ds16_c2i.pt`` + a c2i GPT ``c2i_*.pt`` as a ready pipeline.

    ``config``: None (heads of the released widths; 256 px unless the GPT's file name says 384), a released
    model's name (``"GPT-L"``, ``"c2i_L_384"``) or a dict ``{"vq": {...}, "gpt": {...}}`` of the authors'
    ``ModelArgs`` (``block_size`` = image tokens: 256 at 256 px, 576 at 384 px). ``dtype`` (e.g. bf16 on a GPU)
    applies to the GPT; the tokenizer stays float32.
    """
    if config is None and re.fullmatch(r"c2i_\w+?_(256|384|512)\.pt", Path(str(gpt_path)).name):
        config = Path(str(gpt_path)).name
    vq_sd, gpt_sd = load_vq_state_dict(vq_path), load_gpt_state_dict(gpt_path)
    return llamagen_from_state_dicts(vq_sd, gpt_sd, config, device, dtype, paths=(vq_path, gpt_path))


def load_preset(files: dict[str, Path], config: dict) -> LlamaGenPipeline:
    """An ``official-llamagen`` preset's files as a float32 pipeline on the CPU (``config``: ``name`` or
    ``arguments``, see :func:`edifice.official_maskgit.preset_model_config`)."""
    return load_official_llamagen(files["vq"], files["gpt"], preset_model_config(config), device="cpu")

