"""What the app and the loaders see of a model family: a tokenizer, a generator model and a streaming sampler.

Every family subclasses :class:`Pipeline`: ``stream(**kwargs)`` yields one record per step (MAR, discrete or
with diffusion head) or scale
(VAR), each carrying at least ``step``, ``num_steps``, ``tokens``, ``image`` ([B, 3, H, W] in [0, 1] or None
when previews are off), ``seconds``, ``labels`` and ``seed``; ``generate(**kwargs)`` returns the final
images. ``defaults`` holds the sampling settings recommended for the checkpoint; explicit arguments win.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

PREVIEW_MODES = (True, False, None, "full", "fast", "latent")


def check_preview(preview) -> None:
    """``preview``: True / "full" (exact), "fast" (a smaller latent decoded, blocky), "latent" (a linear
    latent -> RGB map, near-free, colours only; see :mod:`edifice.tokenizers.latent_rgb`), False / None (no
    images). The last step is always decoded exactly."""
    if preview not in PREVIEW_MODES:
        raise ValueError(f"preview must be True/'full', 'fast', 'latent' or False, got {preview!r}")


def resolve_cuda_graphs(model: nn.Module, cuda_graphs: bool | None) -> bool:
    """Whether a sampler replays CUDA graphs: None = whenever the whole model is on one CUDA device (graphs need
    fixed addresses, so not with accelerate's offloading); True demands it; False never."""
    devices = {p.device for p in model.parameters()}
    offloaded = any(hasattr(m, "_hf_hook") for m in model.modules())
    whole = len(devices) == 1 and next(iter(devices)).type == "cuda" and not offloaded
    if cuda_graphs and not whole:
        where = "partly offloaded to CPU" if offloaded else "on " + ", ".join(sorted(map(str, devices)))
        raise ValueError(f"cuda_graphs=True needs the whole model on one CUDA device; it is {where}. Leave "
                         "cuda_graphs at None (automatic) or pass False.")
    return whole if cuda_graphs is None else bool(cuda_graphs)


def weights_key(module: nn.Module) -> tuple[int, ...]:
    """The addresses of a module's parameters: CUDA graphs captured against them go stale when any moves."""
    return tuple(p.data_ptr() for p in module.parameters())


def warm_up(fn: Callable[[], object], device: torch.device) -> None:
    """Run ``fn`` once on a side stream before capturing it: cuBLAS workspaces and kernel choices are then made
    outside the capture."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)


def capture(fn: Callable[[], torch.Tensor], pool=None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """``fn()`` captured as a CUDA graph, and its output, which every replay rewrites. Other threads may use
    CUDA meanwhile (``capture_error_mode="thread_local"``)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = fn()
    return graph, out


class Pipeline:
    kind: str = ""  # "var" | "mar" | "mar-diffusion"

    def __init__(self, tokenizer: nn.Module, model: nn.Module, class_names: list[str] | None = None,
                 defaults: dict | None = None):
        self.tokenizer, self.model = tokenizer.eval(), model.eval()
        self.class_names = list(class_names) if class_names is not None else None
        self.defaults = dict(defaults or {})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def _sample(self, **kwargs) -> Iterator:
        raise NotImplementedError

    def decode(self, step) -> torch.Tensor:
        """Final image ``[B, 3, H, W]`` in [0, 1] of a step record (decoded even when previews were off)."""
        raise NotImplementedError

    def stream(self, **kwargs) -> Iterator:
        return self._sample(**{**self.defaults, **kwargs})

    @torch.inference_mode()
    def generate(self, **kwargs) -> torch.Tensor:
        *_, last = self.stream(**{**kwargs, "preview": False})
        return self.decode(last)

    def save_pretrained(self, folder, **card) -> Path:
        """Write this pipeline as an edifice checkpoint folder (config.json, model.safetensors, README.md) that
        ``edifice.load(folder)`` reads back. ``card``: ``license``, ``base_model``, ``repo_id`` for the model
        card. See :mod:`edifice.checkpoint`."""
        from .checkpoint import save_pretrained  # the checkpoint module imports every pipeline family

        return save_pretrained(self, folder, **card)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload this pipeline as an edifice checkpoint to the Hub repository ``repo_id`` (created if missing)
        with huggingface_hub; afterwards ``edifice.load(repo_id)`` loads it. Needs a write token
        (``hf auth login`` or ``HF_TOKEN``). ``kwargs``: ``private``, ``token``, ``revision`` (a branch),
        ``commit_message``, ``license``, ``base_model``. Returns the commit URL."""
        from .checkpoint import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)
