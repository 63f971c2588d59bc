"""What a server needs around :func:`edifice.load`: a shared cache of loaded pipelines.

Many visitors at once: one may pick a model that takes minutes to download while others generate with models
already loaded, or load other ones. :class:`PipelineCache` therefore locks per spec, not as a whole: a load
blocks only the requests for the same spec (which then share its result, so a model is never loaded twice at
once), and a loaded spec is returned at once whatever else is loading.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from .loading import load
from .pipeline import Pipeline


class PipelineCache:
    """The ``capacity`` most recently used pipelines, each loaded once by ``edifice.load(spec, **options)``.

    ``options`` are :func:`edifice.load`'s keywords, the same for every spec; a public server passes
    ``allow_local=False`` and ``max_download_bytes``. Specs are compared as given (strip them first). A load
    that fails raises its error in the request that ran it; a request that waited on it loads again.
    """

    def __init__(self, capacity: int, **options):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity, self.options = capacity, options
        self._items: OrderedDict[str, Pipeline] = OrderedDict()
        self._loading: dict[str, _Loading] = {}  # spec -> its lock, while a request loads or waits for it
        self._lock = threading.Lock()  # guards the two dicts; never held during a load

    def get(self, spec: str) -> Pipeline:
        """The pipeline of ``spec``, loaded now if it is not in the cache (the least recently used one then
        makes room)."""
        with self._lock:
            if spec in self._items:
                self._items.move_to_end(spec)
                return self._items[spec]
            entry = self._loading.setdefault(spec, _Loading())
            entry.waiting += 1
        try:
            with entry.lock:
                with self._lock:
                    if spec in self._items:  # loaded by the request this one waited for
                        self._items.move_to_end(spec)
                        return self._items[spec]
                pipe = load(spec, **self.options)
                with self._lock:
                    self._items[spec] = pipe
                    evicted = len(self._items) > self.capacity
                    while len(self._items) > self.capacity:
                        self._items.popitem(last=False)
                if evicted and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                return pipe
        finally:
            with self._lock:
                entry.waiting -= 1
                if not entry.waiting:
                    del self._loading[spec]

    def __contains__(self, spec: str) -> bool:
        with self._lock:
            return spec in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class _Loading:
    """A spec being loaded: its lock and how many requests hold or wait for it."""

    def __init__(self):
        self.lock, self.waiting = threading.Lock(), 0
