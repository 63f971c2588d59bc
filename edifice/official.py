"""Load the official checkpoint files unchanged, inferring every architecture setting from the state dicts.

VAR (FoundationVision/var): ``vae_ch160v4096z32.pth`` + ``var_d16.pth`` ... ``var_d36.pth``, plain pickled
state dicts. MAR (LTH14/mar, Hub mirror jadechoghari/mar): the KL-16 VAE as ``kl16.safetensors`` (flat) or
``kl16.ckpt`` (``{'model': ...}``) and the generator as ``mar-{base,large,huge}.safetensors`` (flat) or a
training checkpoint ``checkpoint-last.pth`` (``{'model', 'model_ema', ...}``: the EMA weights are used, as
the authors' evaluation does). Pickles are read with ``torch.load(weights_only=True)`` (MAR training
checkpoints may also hold their ``argparse.Namespace`` of arguments, the one class allowed besides tensors);
models are built on the meta device and the tensors assigned, so no time or memory goes into a random
initialisation.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import re
import threading
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .errors import CheckpointError
from .generative.mar_diffusion import CONFIGS, DiffusionMAR, DiffusionMARConfig, DiffusionMARPipeline
from .generative.var import VAR, VARConfig, VARPipeline
from .tokenizers.klvae import KLVAE, KLVAEConfig
from .tokenizers.vqvae import VQVAE, VQVAEConfig

KINDS = {
    "var-vae": "a VAR VQ-VAE state dict (keys like 'quantize.embedding.weight', 'encoder.conv_in.weight')",
    "var": "a VAR transformer state dict (keys like 'class_emb.weight', 'lvl_1L', 'blocks.0.attn.mat_qkv.weight')",
    "kl-vae": "a KL VAE state dict (keys like 'encoder.conv_in.weight', 'quant_conv.weight'), e.g. kl16.safetensors",
    "mar": "a MAR (diffusion-loss) state dict (keys like 'z_proj.weight', 'diffloss.net.input_proj.weight'), e.g. "
           "mar-base.safetensors",
}


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path or download it again")
    return path


def load_safetensors(path: str | Path, remedy: str = "download it again") -> dict:
    """A ``.safetensors`` file's tensors, with one-line errors for missing or truncated files (``remedy`` ends
    the message)."""
    path = _existing(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: could not be read ({e}); the file is truncated or corrupt, {remedy}") \
            from None


def load_torch_file(path: str | Path, allow: tuple = ()) -> dict:
    """``torch.load(weights_only=True)`` with one-line errors for missing, truncated or unsafe files."""
    path = _existing(path)
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            what = f"it needs {found.group(1)}" if found else "it holds more than tensors"
            raise CheckpointError(f"{path}: refused to unpickle: {what}; only plain state dicts of tensors are "
                                  "loaded, for safety (torch.load weights_only=True)") from None
        raise CheckpointError(f"{path}: could not be read ({first}); the file is truncated or corrupt, "
                              "download it again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: could not be read as a PyTorch checkpoint ({first}); the file is "
                              "truncated or corrupt, download it again") from None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def describe_state_dict(sd) -> str:
    """Name the kind of checkpoint a state dict is, for error messages."""
    if not isinstance(sd, dict):
        return f"a {type(sd).__name__}, not a state dict"
    keys = set(sd)
    if {"model", "model_ema"} & keys or "args" in keys:
        return "a training checkpoint (keys 'model'/'model_ema'/'args'), e.g. the official MAR checkpoint-last.pth"
    if "quantize.embedding.weight" in keys and "encoder.conv_in.weight" in keys:
        return "a VAR VQ-VAE state dict"
    if "class_emb.weight" in keys and "lvl_1L" in keys:
        return "a VAR transformer state dict"
    if any(k.startswith("diffloss.") for k in keys):
        return "a MAR (diffusion-loss) transformer state dict"
    if "encoder.conv_in.weight" in keys and "quant_conv.weight" in keys:
        return "a KL VAE state dict (e.g. MAR's kl16)"
    sample = ", ".join(sorted(keys)[:3])
    return f"an unrecognised state dict ({len(keys)} keys, e.g. {sample})"


def _expect(sd, kind: str, path) -> None:
    found = describe_state_dict(sd)
    wanted = {"var-vae": "a VAR VQ-VAE state dict", "var": "a VAR transformer state dict",
              "kl-vae": "a KL VAE state dict (e.g. MAR's kl16)",
              "mar": "a MAR (diffusion-loss) transformer state dict"}[kind]
    if found != wanted:
        raise CheckpointError(f"{path}: expected {KINDS[kind]}, found {found}")


MAX_SCALES = 64  # VAR scales a file may describe (the official models have 10)


@contextlib.contextmanager
def _inferring(family: str):
    """A state dict lacking a tensor the inference reads (or with a zero-sized one) is a one-line error."""
    try:
        yield
    except (KeyError, IndexError, ZeroDivisionError) as e:
        raise CheckpointError(f"the state dicts do not describe a {family} ({type(e).__name__}: {e}); pass the "
                              "official files unchanged") from None


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_var_config(sd: dict) -> VARConfig:
    """Every VARConfig field from key names and shapes (patch_nums from the ``lvl_1L`` level buffer)."""
    C = sd["class_emb.weight"].shape[1]
    levels = sd["lvl_1L"].reshape(-1).long()
    if levels.numel() and not 0 <= int(levels.min()) <= int(levels.max()) < MAX_SCALES:  # bincount sizes by max
        raise CheckpointError(f"the VAR's lvl_1L holds scale numbers outside 0..{MAX_SCALES - 1}; the file is "
                              "damaged or not a VAR")
    counts = torch.bincount(levels).tolist()
    patch_nums = tuple(math.isqrt(c) for c in counts)
    if not counts or any(pn * pn != c for pn, c in zip(patch_nums, counts, strict=True)):
        raise CheckpointError("the VAR's lvl_1L does not hold a square token map per scale; the file is damaged "
                              "or not a VAR")
    l2 = "blocks.0.attn.scale_mul_1H11" in sd
    heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else C // 64
    return VARConfig(vocab_size=sd["head.weight"].shape[0], z_channels=sd["word_embed.weight"].shape[1],
                     num_classes=sd["class_emb.weight"].shape[0] - 1, depth=_count(sd, r"blocks\.(\d+)\."),
                     embed_dim=C, num_heads=heads, mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / C,
                     shared_aln="shared_ada_lin.1.weight" in sd, attn_l2_norm=l2, patch_nums=patch_nums)


def infer_vqvae_config(sd: dict, patch_nums) -> VQVAEConfig:
    """Every VQVAEConfig field from key names and shapes; ``patch_nums`` come from the paired transformer."""
    V, Cvae = sd["quantize.embedding.weight"].shape
    ch, in_ch = sd["encoder.conv_in.weight"].shape[:2]
    levels = _count(sd, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    n_phi = _count(sd, r"quantize\.quant_resi\.qresi_ls\.(\d+)\.")
    return VQVAEConfig(vocab_size=V, z_channels=Cvae, ch=ch, ch_mult=ch_mult,
                       num_res_blocks=_count(sd, r"encoder\.down\.0\.block\.(\d+)\."), in_channels=in_ch,
                       quant_conv_ks=sd["quant_conv.weight"].shape[-1], quant_resi=0.5 if n_phi else 0.0,
                       share_quant_resi=n_phi or 1, patch_nums=tuple(patch_nums),
                       using_sa=f"encoder.down.{levels - 1}.attn.0.qkv.weight" in sd,
                       using_mid_sa="encoder.mid.attn_1.qkv.weight" in sd)


def var_from_state_dicts(vae_sd: dict, var_sd: dict, device=None, dtype=None,
                         class_names=None, defaults=None) -> VARPipeline:
    """Build a :class:`VARPipeline` from two official state dicts without a random initialisation."""
    with _inferring("VAR"):
        var_cfg = infer_var_config(var_sd)
        vae_cfg = infer_vqvae_config(vae_sd, var_cfg.patch_nums)
    if vae_cfg.vocab_size != var_cfg.vocab_size or vae_cfg.z_channels != var_cfg.z_channels:
        raise CheckpointError(f"the VQ-VAE (codebook {vae_cfg.vocab_size}x{vae_cfg.z_channels}) does not match "
                              f"the transformer (vocabulary {var_cfg.vocab_size}, latent {var_cfg.z_channels})")
    return _assemble(VARPipeline, (VQVAE, vae_cfg, vae_sd), (VAR, var_cfg, var_sd), device, dtype, class_names,
                     defaults)


INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                  "xavier_normal_", "kaiming_uniform_", "kaiming_normal_")


@contextlib.contextmanager
def skip_meta_init():
    """Inside, ``torch.nn.init`` leaves meta tensors alone (real ones are initialised as usual), for modules built
    empty whose weights a checkpoint assigns next. Initialising a meta tensor runs PyTorch's Python reference
    ops, and their first use imports ``torch._dynamo`` (sympy and all): 2.5 s of a fresh process on the H100
    machine, where it made loading VAR-d16 cost 4.7x reading its bytes (benchmarks/README.md)."""
    saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}

    def skipping(init):
        return lambda tensor, *args, **kwargs: tensor if tensor.is_meta else init(tensor, *args, **kwargs)

    for name, init in saved.items():
        setattr(torch.nn.init, name, skipping(init))
    try:
        yield
    finally:
        for name, init in saved.items():
            setattr(torch.nn.init, name, init)


MAX_DERIVED_BYTES = 64 * 2 ** 20  # buffers a config makes that no file holds (MAR's position table: 65k x 256)
MIN_TENSOR_LIMIT = 4 * 2 ** 20  # elements any one tensor of a build may have when the file's tensors are smaller
_build_lock = threading.Lock()  # init_empty_weights and skip_meta_init patch torch globally: one build at a time


def build(module_cls, cfg, shapes: dict[str, tuple], where: str, config: str = "its config"):
    """``module_cls(cfg)`` with its parameters on the meta device (buffers built for real, ``torch.nn.init``
    skipped), checked against the tensors it must hold (``shapes``: name -> shape) before any weights are read.

    A config is not trusted: one number can ask for gigabytes (MAR's seq_len sizes a position table no file
    holds, VAR's scale list an L x L mask, any width a parameter that is allocated before it moves to the meta
    device). So the constructor runs under :class:`_BuildBudget`, which refuses before it runs any torch call
    that would make a tensor larger than the file's largest (at least ``MIN_TENSOR_LIMIT`` elements) and stops a
    constructor registering far more submodules than ``shapes`` could fill; then the state dict must have exactly
    these names and shapes, and the buffers no file holds may take at most ``MAX_DERIVED_BYTES``. This works for
    any module class, so a new family needs nothing here. Every failure is a one-line :class:`CheckpointError`
    starting with ``where`` (e.g. "x.safetensors: the model") and calling the config ``config``."""
    limit = max([math.prod(s) for s in shapes.values()] + [MIN_TENSOR_LIMIT])
    try:
        with _build_lock, init_empty_weights(), skip_meta_init(), _BuildBudget(limit, 4 * len(shapes) + 64):
            module = module_cls(cfg)
    except _OverBudget as e:
        raise CheckpointError(f"{where}: {config} asks for {e}; the checkpoint is damaged or was edited") from None
    except Exception as e:  # whatever a bad config makes a constructor raise (ValueError, assert, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: {config} does not build a {module_cls.__name__} ({first[:200]}); the "
                              "checkpoint is damaged or was edited") from None
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    missing, unexpected = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected.keys())
    if missing or unexpected:
        what = "; ".join(f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                         for label, names in (("missing", missing), ("unexpected", unexpected)) if names)
        raise CheckpointError(f"{where} tensors do not match {config} ({what}); the checkpoint is damaged or was "
                              "edited")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise CheckpointError(f"{where} tensor {name} is {list(shapes[name])} but {config} makes "
                                  f"{list(shape)}; the checkpoint is damaged or was edited")
    derived = sum(b.numel() * b.element_size() for name, b in module.named_buffers() if name not in expected)
    if derived > MAX_DERIVED_BYTES:
        raise CheckpointError(f"{where}: {config} asks for {derived / 2 ** 20:.0f} MiB of tables that no file "
                              f"holds (the limit is {MAX_DERIVED_BYTES // 2 ** 20} MiB); the checkpoint was edited")
    return module


def materialise(module_cls, cfg, state_dict: dict, where: str, config: str = "its config"):
    """:func:`build`, then ``state_dict``'s tensors assigned (strict), in eval mode."""
    module = build(module_cls, cfg, {name: tuple(t.shape) for name, t in state_dict.items()}, where, config)
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval()


class _OverBudget(Exception):
    pass


class _BuildBudget(TorchFunctionMode):
    """Inside, in this thread: a torch call that would make a tensor of more than ``max_elements`` raises
    :class:`_OverBudget` before it runs, and so does registering more than ``max_modules`` submodules.

    Sizes are known before a call runs for factories (``zeros``, ``full``, ``arange``, ``randn``, ... from their
    size arguments, ``repeat`` from its counts) and for elementwise calls (the broadcast of the tensor
    arguments' shapes: the outer products position tables and masks are made of); any other call is checked
    after it runs, its first oversized result stopping the build."""

    def __init__(self, max_elements: int, max_modules: int):
        super().__init__()
        self.max_elements, self.modules_left, self.thread = max_elements, max_modules, threading.get_ident()

    def __enter__(self):
        self.hook = torch.nn.modules.module.register_module_module_registration_hook(self._count)
        return super().__enter__()

    def __exit__(self, *exc):
        self.hook.remove()
        return super().__exit__(*exc)

    def _count(self, module, name, submodule):
        if threading.get_ident() == self.thread:  # the hook is global; other threads' modules are not counted
            self.modules_left -= 1
            if self.modules_left < 0:
                raise _OverBudget("far more layers than the checkpoint has tensors")

    def _check(self, elements: int):
        if elements > self.max_elements:
            raise _OverBudget(f"a tensor of {elements:,} elements, more than any the checkpoint holds")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if name in _FACTORIES:
            self._check(_factory_elements(name, args, kwargs))
        elif name in ("repeat", "tile") and tensors:
            self._check(tensors[0].numel() * math.prod(a for a in args[1:] if isinstance(a, int)) *
                        math.prod(next((a for a in args[1:] if isinstance(a, tuple | list)), ())))
        elif len(tensors) > 1:
            self._check(_broadcast_elements([t.shape for t in tensors]))
        out = func(*args, **kwargs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._check(t.numel())
        return out


_FACTORIES = {"zeros", "ones", "empty", "full", "rand", "randn", "randint", "arange", "linspace", "logspace", "eye",
              "new_zeros", "new_ones", "new_empty", "new_full"}


def _factory_elements(name: str, args: tuple, kwargs: dict) -> int:
    """Elements a factory call makes, from its arguments."""
    numbers = [a for a in args if isinstance(a, int | float) and not isinstance(a, bool)]
    if name == "arange":
        start, end, step = (0, *numbers, 1)[-3:] if len(numbers) < 3 else numbers[:3]
        start, end, step = kwargs.get("start", start), kwargs.get("end", end), kwargs.get("step", step)
        return max(0, math.ceil((end - start) / step)) if step else 0
    if name in ("linspace", "logspace"):
        return int(kwargs.get("steps", numbers[2] if len(numbers) > 2 else 0))
    if name == "eye":
        return int(numbers[0]) * int(numbers[1] if len(numbers) > 1 else numbers[0]) if numbers else 0
    size = kwargs.get("size", next((a for a in args if isinstance(a, tuple | list | torch.Size)), None))
    if size is None:  # zeros(2, 3)
        size = [a for a in numbers if isinstance(a, int)]
    return math.prod(int(n) for n in size)


def _broadcast_elements(shapes: list) -> int:
    """Elements of the broadcast of ``shapes``, or 0 when they do not broadcast (not an elementwise call)."""
    out = 1
    for i in range(1, max(len(s) for s in shapes) + 1):
        sizes = {s[-i] for s in shapes if len(s) >= i} - {1}
        if len(sizes) > 1:
            return 0
        out *= sizes.pop() if sizes else 1
    return out


def _assemble(pipeline, tokenizer: tuple, model: tuple, device, dtype, class_names, defaults):
    """``pipeline(tokenizer, model)`` from (module class, config, state dict) pairs, each module built by
    :func:`materialise` and moved; ``dtype`` goes to the generator's ``cast``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    modules = [materialise(cls, cfg, sd, f"the official {role}", "the config inferred from it").to(device)
               for role, (cls, cfg, sd) in (("tokenizer", tokenizer), ("generator", model))]
    if dtype is not None and dtype != torch.float32:
        modules[1].cast(dtype)
    return pipeline(*modules, class_names=class_names, defaults=defaults)


def load_official_var(vae_path, var_path, device=None, dtype=None) -> VARPipeline:
    """The official ``vae_ch160v4096z32.pth`` + ``var_dNN.pth`` as a ready pipeline.

    Depth, width, heads, classes, vocabulary, latent channels, encoder width and residual-block count,
    patch_nums and shared-vs-per-block AdaLN are all read from the two files. ``dtype`` (e.g. bf16 on GPU)
    applies to the transformer blocks; the head and the VQ-VAE stay float32.
    """
    vae_sd, var_sd = load_torch_file(vae_path), load_torch_file(var_path)
    _expect(vae_sd, "var-vae", vae_path)
    _expect(var_sd, "var", var_path)
    return var_from_state_dicts(vae_sd, var_sd, device, dtype)


# -- MAR (diffusion head) -----------------------------------------------------------------------------------------
def load_state_dict_file(path: str | Path) -> dict:
    """A ``.safetensors`` file, or a pickle read with ``weights_only=True`` (``argparse.Namespace`` allowed)."""
    if Path(path).suffix == ".safetensors":
        return load_safetensors(path)
    return load_torch_file(path, allow=(argparse.Namespace,))


def unwrap_training_checkpoint(sd: dict, path) -> dict:
    """The weights inside a training checkpoint: ``model_ema`` if present (what the authors evaluate), else
    ``model``; a flat state dict is returned as is."""
    if isinstance(sd, dict) and ("model_ema" in sd or "model" in sd):
        inner = sd.get("model_ema") if sd.get("model_ema") is not None else sd.get("model")
        if not isinstance(inner, dict):
            raise CheckpointError(f"{path}: its 'model'/'model_ema' entry is not a state dict")
        return inner
    return sd


def infer_klvae_config(sd: dict, image_size: int = 256) -> KLVAEConfig:
    """Every KLVAEConfig field from key names and shapes."""
    ch, in_ch = sd["encoder.conv_in.weight"].shape[:2]
    levels = _count(sd, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    z_channels, embed_dim = sd["post_quant_conv.weight"].shape[:2]
    return KLVAEConfig(embed_dim=embed_dim, z_channels=z_channels, ch=ch, ch_mult=ch_mult,
                       num_res_blocks=_count(sd, r"encoder\.down\.0\.block\.(\d+)\."), in_channels=in_ch,
                       using_sa=f"encoder.down.{levels - 1}.attn.0.q.weight" in sd, image_size=image_size)


# Attention heads are not visible in the weights; the official factories fix them per width.
HEADS_BY_WIDTH = {c.encoder_embed_dim: c.encoder_num_heads for c in CONFIGS.values()}


def infer_mar_diffusion_config(sd: dict, vae_cfg: KLVAEConfig, **overrides) -> DiffusionMARConfig:
    """Every DiffusionMARConfig field from the state dict and its VAE's config. The attention heads come from
    the official widths (768: 12, 1024: 16, 1280: 16); other widths need ``encoder_num_heads`` and
    ``decoder_num_heads`` in ``overrides``."""
    De, token_dim = sd["z_proj.weight"].shape
    Dd = sd["decoder_embed.weight"].shape[0]
    L = sd["diffusion_pos_embed_learned"].shape[1]
    p = math.isqrt(token_dim // vae_cfg.embed_dim)
    if p * p * vae_cfg.embed_dim != token_dim or math.isqrt(L) ** 2 != L:
        raise CheckpointError(f"the MAR's {token_dim}-channel tokens on {L} positions do not fit the VAE's "
                              f"{vae_cfg.embed_dim}-channel latents")
    if sd["encoder_pos_embed_learned"].shape[1] < L:
        raise CheckpointError(f"the MAR's encoder positions are fewer than its {L} token positions; the file is "
                              "damaged or not a MAR")
    fields = dict(img_size=math.isqrt(L) * p * vae_cfg.stride, vae_stride=vae_cfg.stride, patch_size=p,
                  vae_embed_dim=vae_cfg.embed_dim, encoder_embed_dim=De,
                  encoder_depth=_count(sd, r"encoder_blocks\.(\d+)\."), decoder_embed_dim=Dd,
                  decoder_depth=_count(sd, r"decoder_blocks\.(\d+)\."),
                  mlp_ratio=sd["encoder_blocks.0.mlp.fc1.weight"].shape[0] / De,
                  class_num=sd["class_emb.weight"].shape[0],
                  buffer_size=sd["encoder_pos_embed_learned"].shape[1] - L,
                  diffloss_d=_count(sd, r"diffloss\.net\.res_blocks\.(\d+)\."),
                  diffloss_w=sd["diffloss.net.input_proj.weight"].shape[0])
    for side, width in (("encoder", De), ("decoder", Dd)):
        key = f"{side}_num_heads"
        if key not in overrides and width not in HEADS_BY_WIDTH:
            raise CheckpointError(f"cannot tell the attention heads of a {width}-wide MAR {side} (the official "
                                  f"widths are {sorted(HEADS_BY_WIDTH)}); pass encoder_num_heads= and "
                                  "decoder_num_heads= (command line: --mar-heads ENC DEC)")
        fields[key] = overrides.get(key, HEADS_BY_WIDTH.get(width))
    return DiffusionMARConfig(**{**fields, **overrides})


def mar_from_state_dicts(vae_sd: dict, mar_sd: dict, device=None, dtype=None, class_names=None, defaults=None,
                         **config) -> DiffusionMARPipeline:
    """Build a :class:`DiffusionMARPipeline` from the two official state dicts without a random initialisation.
    ``config``: DiffusionMARConfig fields the weights do not show (attention heads of non-official widths)."""
    with _inferring("MAR"):
        vae_cfg = infer_klvae_config(vae_sd)
        mar_cfg = infer_mar_diffusion_config(mar_sd, vae_cfg, **config)
    vae_cfg.image_size = mar_cfg.img_size
    return _assemble(DiffusionMARPipeline, (KLVAE, vae_cfg, vae_sd), (DiffusionMAR, mar_cfg, mar_sd), device, dtype,
                     class_names, defaults)


def load_official_mar(vae_path, mar_path, device=None, dtype=None, **config) -> DiffusionMARPipeline:
    """The KL-16 VAE (``kl16.safetensors`` or ``kl16.ckpt``) + a MAR (``mar-base.safetensors`` ... or
    ``checkpoint-last.pth``, EMA weights preferred) as a ready pipeline.

    Widths, depths, classes, buffer size, token layout and the diffusion head's size are read from the files;
    ``config`` names what they cannot show (``encoder_num_heads``/``decoder_num_heads`` for non-official
    widths). ``dtype`` (e.g. bf16 on GPU) applies to the transformer; the diffusion head and the VAE stay
    float32.
    """
    vae_sd = unwrap_training_checkpoint(load_state_dict_file(vae_path), vae_path)
    mar_sd = unwrap_training_checkpoint(load_state_dict_file(mar_path), mar_path)
    _expect(vae_sd, "kl-vae", vae_path)
    _expect(mar_sd, "mar", mar_path)
    return mar_from_state_dicts(vae_sd, mar_sd, device, dtype, **config)
