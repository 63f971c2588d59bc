"""What the app and the loaders see of a model family: a tokenizer, a generator model and a streaming sampler.

Every family subclasses :class:`Pipeline`: ``stream(**kwargs)`` yields one record per step (MAR) or scale
(VAR), each carrying at least ``step``, ``num_steps``, ``tokens``, ``image`` ([B, 3, H, W] in [0, 1] or None
when previews are off), ``seconds``, ``labels`` and ``seed``; ``generate(**kwargs)`` returns the final
images. ``defaults`` holds the sampling settings recommended for the checkpoint; explicit arguments win.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


class Pipeline:
    kind: str = ""  # "var" | "mar"

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
