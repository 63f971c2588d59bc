"""What the app and the loaders see of a model family: a tokenizer, a generator model and a streaming sampler.

Every family subclasses :class:`Pipeline`: ``stream(**kwargs)`` yields one record per step (MAR, discrete or
with diffusion head) or scale (VAR), each carrying at least ``step``, ``num_steps``, ``tokens``, ``image``
([B, 3, H, W] in [0, 1] or None when previews are off), ``seconds``, ``labels`` and ``seed``;
``generate(**kwargs)`` returns the final images. ``defaults`` holds the sampling settings recommended for the
checkpoint; explicit arguments win. ``labels`` and ``seed`` there, when a checkpoint names them, are its
showcase: the class and seed the app opens on (so ``generate()`` with neither draws that showcase).

A family also describes itself, so that a UI can be built without naming it (``app.py`` names no family):

- ``family`` (display name), ``step_name`` ("scale", "step", ...), ``legend`` (how to read the token view) and
  ``uncertainty_legend``;
- :meth:`Pipeline.controls`: its sampling settings as :class:`Control` s (``stream()`` keyword, type, range,
  default = the checkpoint's recommended value, one line of help); :meth:`Control.check` converts and checks
  a visitor's value before any work starts;
- :meth:`Pipeline.status`: one status line per step record (:meth:`Pipeline.subclass_note` adds the subclasses a
  model with :class:`Subclasses` drew); :meth:`Pipeline.token_view`: the record's token
  map as a picture; :meth:`Pipeline.token_stats`: what the model believed at every position (top candidates,
  probability of the drawn token, entropy) as a compact :class:`TokenStats`, from which
  :func:`edifice.render.uncertainty_view` and :meth:`TokenStats.inspect` draw the uncertainty map and one
  position's candidates;
- :meth:`Pipeline.estimate_seconds`: the wall time a request will take here, when the family can say.

Shared sampling pieces live here once: :func:`new_seed`, :func:`resolve_labels`, :class:`Subclasses` (a model
trained on finer labels than the classes a request names), :func:`cfg_mix`, :func:`sample_top_k_top_p_`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    fixed addresses, so not with accelerate's offloading) and ``EDIFICE_CUDA_GRAPHS`` is not ``0`` (the app sets
    it on ZeroGPU, where every generation runs in a fresh worker); True demands it; False never."""
    if cuda_graphs is None and os.environ.get("EDIFICE_CUDA_GRAPHS") == "0":
        return False
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


# -- shared sampling pieces -----------------------------------------------------------------------------------
def new_seed() -> int:
    """A fresh seed for ``seed=None`` (reported in every step record, so the run can be repeated)."""
    return int(torch.randint(0, 2 ** 31 - 1, (1,)).item())


def resolve_labels(labels, batch_size: int, num_classes: int, rng: torch.Generator, device) -> torch.Tensor:
    """Labels as the official samplers read them: None = drawn uniformly from ``rng`` (its first draw), an int
    = that class for the whole batch (negative = unconditional, i.e. the null class ``num_classes``), a list
    = one class per image."""
    if labels is None:
        uniform = torch.full((1, num_classes), 1.0 / num_classes, device=device)
        return torch.multinomial(uniform, batch_size, replacement=True, generator=rng).reshape(batch_size)
    if isinstance(labels, int):
        labels = [num_classes if labels < 0 else labels] * batch_size
    label_B = torch.as_tensor(labels if torch.is_tensor(labels) else list(labels), device=device).long()
    bad = [int(x) for x in label_B.tolist() if not 0 <= x <= num_classes]
    if bad:
        raise ValueError(f"unknown class {bad[0]}: this model has classes 0..{num_classes - 1} "
                         f"({num_classes} = unconditional)")
    return label_B


@dataclass(frozen=True)
class Subclasses:
    """Finer labels a model was trained on beneath the classes a visitor picks: the bundled ``emoji-mar`` learned
    the 98 Unicode subgroups ("animal-bird", "phone", ...) of the 9 emoji categories. A small model asked for a class
    as wide as "Objects" (phones to shirts) draws a class-average blob; asked for a subgroup it draws one thing.

    The pipeline still takes classes: for class c it draws one of c's subclasses per image, with probability
    proportional to its weight (its training images), from the seed, and runs the model on that subclass, so
    p(image | c) = sum over s of p(s | c) p(image | s). The step records' ``labels`` are the model's labels,
    the drawn subclasses (``len(names)`` = unconditional)."""

    names: tuple[str, ...]  # model label i is subclass names[i]
    classes: tuple[int, ...]  # the class each subclass belongs to
    weights: tuple[float, ...]  # > 0, relative within a class

    def problem(self, class_names: list[str] | None, model_classes: int) -> str | None:
        """Why these subclasses cannot sit under ``class_names`` on a model with ``model_classes`` labels."""
        n = len(self.names)
        if not class_names:
            return "subclasses need the class names they belong to"
        if len(self.classes) != n or len(self.weights) != n:
            return f"{n} subclass names but {len(self.classes)} classes and {len(self.weights)} weights"
        if n != model_classes:
            return f"{n} subclasses but the model has {model_classes} class labels"
        if any(not isinstance(c, int) or not 0 <= c < len(class_names) for c in self.classes):
            return f"a subclass belongs to a class outside 0..{len(class_names) - 1}"
        if any(not isinstance(w, (int, float)) or not 0 < w < math.inf for w in self.weights):
            return "subclass weights must be positive numbers"
        if set(self.classes) != set(range(len(class_names))):
            return "every class needs at least one subclass"
        return None

    def draw(self, class_B: torch.Tensor, num_classes: int, rng: torch.Generator) -> torch.Tensor:
        """Model labels ``[B]`` for class labels ``[B]`` (on the CPU): one subclass of each image's class drawn
        from ``rng``; the unconditional class ``num_classes`` maps to the model's null label ``len(names)``."""
        weight_S = torch.tensor(self.weights, dtype=torch.float64)
        class_S = torch.tensor(self.classes)
        out = [len(self.names) if c == num_classes else
               int(torch.multinomial(torch.where(class_S == c, weight_S, 0.0), 1, generator=rng))
               for c in class_B.tolist()]
        return torch.tensor(out, dtype=torch.long)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "classes": list(self.classes), "weights": list(self.weights)}


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance ``u + scale (c - u)`` (scale 1 = the conditional prediction). VAR's official
    ``(1 + t) c - t u`` is the same with scale = 1 + t but rounds differently, so VAR keeps its own form."""
    return uncond + scale * (cond - uncond)


TOP_P_CANDIDATES = 64  # top-p looks at this many best tokens before falling back to a full sort


def sample_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                        rng: torch.Generator | None = None) -> torch.Tensor:
    """Filter logits in place (top-k keeps ties at the threshold; top-p always keeps the best token) and draw
    one token per position with a single ``torch.multinomial`` call, as the official VAR sampler does.

    Top-p is the official rule (drop a token where the ascending cumulative sum of the sorted probabilities is
    <= 1 - top_p) on a full sort. When the vocabulary is larger than ``TOP_P_CANDIDATES`` and that many best
    tokens hold at least ``top_p`` in every row, the same rule is computed from them alone (keep a token when
    the probability above it is < top_p): a partial top-k instead of a full sort, 5x cheaper on a CPU, which
    can differ from the full sort only by float rounding at the threshold."""
    B, l, V = logits_BlV.shape
    if top_k > 0:
        kth = logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        best = logits_BlV.softmax(dim=-1).topk(TOP_P_CANDIDATES, dim=-1) if V > TOP_P_CANDIDATES else None
        if best is not None and bool((best.values.sum(dim=-1) >= top_p).all()):
            keep = best.values.cumsum(dim=-1).sub_(best.values) < top_p
            keep[..., 0] = True
            remove = torch.ones_like(logits_BlV, dtype=torch.bool).scatter_(-1, best.indices, ~keep)
        else:
            sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
            remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
            remove[..., -1:] = False
            remove = remove.scatter(-1, sorted_idx, remove)
        logits_BlV.masked_fill_(remove, -torch.inf)
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=rng).view(B, l)


# -- how a family describes itself ----------------------------------------------------------------------------
CONTROL_KINDS = ("int", "float", "bool", "choice", "multi")


@dataclass(frozen=True)
class Control:
    """One sampling setting of a family as a UI shows it. ``name`` is the ``stream()`` keyword; ``kind`` one of
    int / float / bool / choice (one of ``choices``) / multi (a list drawn from ``choices``); ``default`` is the
    checkpoint's recommended value; ``help`` one line for the UI; ``when`` the one setting it depends on."""

    name: str
    kind: str
    default: object
    label: str
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()
    when: tuple = ()  # (name, value): it matters only while control `name` has `value` (a UI may hide it)

    def shown(self, values: dict) -> bool:
        """Whether this control matters with these settings (see ``when``)."""
        return not self.when or values.get(self.when[0]) == self.when[1]

    def __post_init__(self):
        if self.kind not in CONTROL_KINDS:
            raise ValueError(f"control kind must be one of {CONTROL_KINDS}, got {self.kind!r}")

    def check(self, value):
        """``value`` converted to this control's type (numbers may come as strings from an HTTP client), or a
        ValueError that names the control and its allowed values; a NaN, an infinity or a number out of range
        never reaches a sampler."""
        name = f"{self.label} ({self.name})"
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("true", "false"):
                return str(value).strip().lower() == "true"
            raise ValueError(f"{name} must be true or false, got {_short(value)}")
        if self.kind == "choice":
            for c in self.choices:
                if value == c or str(value) == str(c):
                    return c
            raise ValueError(f"{name} must be one of {', '.join(map(str, self.choices))}; got {_short(value)}")
        if self.kind == "multi":
            values = [value] if isinstance(value, str | int | float) else value
            if not isinstance(values, list | tuple) or not values:
                raise ValueError(f"{name} must be a non-empty list of {', '.join(map(str, self.choices))}")
            return [Control(self.name, "choice", None, self.label, choices=self.choices).check(v) for v in values]
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or (self.kind == "int" and number != int(number)):
            what = "a whole number" if self.kind == "int" else "a number"
            raise ValueError(f"{name} must be {what}{self._range()}, got {_short(value)}")
        number = int(number) if self.kind == "int" else number
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None
                                                                    and number > self.maximum):
            raise ValueError(f"{name} must be{self._range()}, got {_short(value)}")
        return number

    def _range(self) -> str:
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f" from {lo:g} to {hi:g}"
        if lo is not None:
            return f" of at least {lo:g}"
        return f" of at most {hi:g}" if hi is not None else ""


def preview_control(defaults: dict) -> Control:
    """The preview-mode control every family with a latent decoder takes (see :func:`check_preview`)."""
    return Control("preview", "choice", defaults.get("preview", "full"), "Preview",
                   "full: decode the whole latent (exact); fast: a smaller latent (cheaper, blocky); latent: colours "
                   "from a linear map of the latent (nearly free); the last step is always exact",
                   choices=("full", "fast", "latent"))


def check_settings(controls: list[Control], settings: dict | None, family: str = "this model") -> dict:
    """Settings by name (from a UI or an API client), each converted and range-checked by its Control; a missing
    or None value is the control's default. A ValueError names an unknown setting (with the ones ``family``
    takes) or says what a control accepts."""
    by_name = {c.name: c for c in controls}
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ValueError("settings must be a JSON object of setting names and values, e.g. {\"cfg\": 2.0}.")
    unknown = [k for k in settings if k not in by_name]
    if unknown:
        raise ValueError(f"{family} has no setting '{shorten(unknown[0], 40)}'; it takes: {', '.join(by_name)}.")
    return {name: c.default if settings.get(name) is None else c.check(settings[name]) for name, c in by_name.items()}


def shorten(text, limit: int = 80) -> str:
    """A visitor's text as echoed in a message or a log: cut to ``limit`` characters, saying how long it was."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _short(value, limit: int = 40) -> str:
    """A visitor's value as echoed in a message: its repr, shortened."""
    return shorten(repr(value), limit)


@dataclass
class TokenStats:
    """What a model believed at every position of one step's token map (image b, position n = row * cols +
    col), kept compact for a player: the ``k`` best candidates with their probabilities, the drawn token and its
    probability, the entropy (nats), and ``heat``: the one number per position that the uncertainty view shows
    (in [0, 1], nan = not shown), named by ``heat_label``. ``note`` says which distribution the candidates come
    from (e.g. "after CFG and temperature, before top-k/top-p"); ``drawn`` is -1 where nothing was drawn.
    A family whose tokens have no distribution over a vocabulary (continuous tokens) has ``k = 0``."""

    grid: tuple[int, int]  # rows, cols of each image's token map
    top_ids: torch.Tensor  # [B, N, k] long
    top_probs: torch.Tensor  # [B, N, k] float32
    drawn: torch.Tensor  # [B, N] long, -1 = nothing drawn here at this step
    drawn_prob: torch.Tensor  # [B, N] float32, nan where nothing drawn
    entropy: torch.Tensor  # [B, N] float32, nan where not computed
    heat: torch.Tensor  # [B, N] float32 in [0, 1], nan = not shown
    heat_label: str
    note: str
    token_names: Callable[[int], str] | None = None

    @classmethod
    def from_logits(cls, logits_BNV: torch.Tensor, drawn_BN: torch.Tensor, grid: tuple[int, int], note: str,
                    temperature: float = 1.0, active_BN: torch.Tensor | None = None, heat: str = "drawn",
                    k: int = 8, token_names: Callable[[int], str] | None = None) -> TokenStats:
        """From logits (divided by ``temperature`` unless it is 0 or 1) and the drawn ids. ``active_BN``: the
        positions decided at this step (default all; elsewhere nothing is reported as drawn and the heat is
        nan). ``heat``: "drawn" = probability of the drawn token, "entropy" = entropy / log(V)."""
        logits = logits_BNV.detach().float()
        if temperature not in (0, 1):
            logits = logits / temperature
        logp = logits.log_softmax(-1)
        probs = logp.exp()
        top_probs, top_ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
        entropy = -(probs * logp).nan_to_num(0.0).sum(-1)
        active = torch.ones_like(drawn_BN, dtype=torch.bool) if active_BN is None else active_BN.bool()
        drawn = torch.where(active, drawn_BN, -1)
        drawn_prob = torch.where(active, probs.gather(-1, drawn_BN.clamp_min(0)[..., None])[..., 0], torch.nan)
        if heat == "drawn":
            value, label = drawn_prob, "probability of the drawn token"
        else:
            value, label = torch.where(active, entropy / math.log(probs.shape[-1]), torch.nan), "entropy / log V"
        return cls(grid, top_ids.cpu(), top_probs.cpu(), drawn.cpu(), drawn_prob.cpu(), entropy.cpu(),
                   value.clamp(0, 1).cpu(), label, note, token_names)

    def inspect(self, b: int, row: int, col: int) -> dict:
        """One position: ``{"position", "candidates": {name: prob}, "drawn", "drawn_prob", "entropy", "heat",
        "heat_label", "note"}``; names come from ``token_names`` (default ``"code 17"``)."""
        rows, cols = self.grid
        if not (0 <= b < self.heat.shape[0] and 0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"no token at image {b + 1}, row {row}, column {col}: the map is {rows}x{cols}")
        n, name = row * cols + col, self.token_names or (lambda i: f"code {i}")
        drawn = int(self.drawn[b, n])
        return {"position": (row, col), "note": self.note, "heat": float(self.heat[b, n]),
                "heat_label": self.heat_label,
                "candidates": {name(int(i)): float(p) for i, p in zip(self.top_ids[b, n], self.top_probs[b, n],
                                                                      strict=True)},
                "drawn": name(drawn) if drawn >= 0 else None, "drawn_prob": float(self.drawn_prob[b, n]),
                "entropy": float(self.entropy[b, n])}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.top_ids, self.top_probs, self.drawn, self.drawn_prob,
                                                          self.entropy, self.heat))


class Pipeline:
    kind: str = ""  # "var" | "mar" | "mar-diffusion" | ...: the checkpoint format's family key
    family: str = ""  # display name, e.g. "MAR (discrete)"
    step_name: str = "step"  # what one streamed record is called: "scale", "step", ...
    legend: str = ""  # how to read token_view, one or two sentences
    uncertainty_legend: str = ""  # what the uncertainty view (TokenStats.heat) shows, one sentence
    can_edit: bool = False  # stream() takes image= and mask= (see edifice.editing)

    def __init__(self, tokenizer: nn.Module, model: nn.Module, class_names: list[str] | None = None,
                 defaults: dict | None = None):
        self.tokenizer, self.model = tokenizer.eval(), model.eval()
        self.class_names = list(class_names) if class_names is not None else None
        self.defaults = dict(defaults or {})
        self.subclasses: Subclasses | None = None  # finer model labels beneath the classes (see Subclasses)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_classes(self) -> int:
        """The classes a request names (with subclasses, the model has more labels: see :class:`Subclasses`)."""
        return len(self.class_names) if self.subclasses is not None else self.model.num_classes

    @property
    def image_size(self) -> int:
        """Side of the square images, in pixels (the tokenizer's, unless the family says otherwise)."""
        return self.tokenizer.cfg.image_size

    def controls(self) -> list[Control]:
        """The sampling settings this family takes besides labels, seed and batch size (see :class:`Control`),
        with the checkpoint's recommended values as defaults."""
        return []

    def settings_note(self, **settings) -> str:
        """A one-line remark on a combination of settings (e.g. the tokens a scale list makes), shown before
        generating; a ValueError explains a combination that cannot run."""
        return ""

    def estimate_seconds(self, **settings) -> float | None:
        """Wall time a generation with these settings takes on this device, when the family can tell."""
        return None

    @classmethod
    def gpu_seconds(cls, settings: dict, batch_size: int = 1) -> int:
        """GPU time to reserve for one generation on a shared GPU (ZeroGPU's ``duration``) before the model is
        loaded: ZeroGPU's default 60 s, which every family's default settings fit on an H100."""
        return 60

    def status(self, step) -> str:
        """One line for a step record: ``"step 3/16 · 42 ms"`` plus what the family adds."""
        return f"{self.step_name} {step.step + 1}/{step.num_steps} · {step.seconds * 1e3:.0f} ms"

    def subclass_note(self, step) -> str:
        """With :class:`Subclasses`, what the record's images were drawn as, in order ("drawn as tool, heart");
        else ""."""
        if self.subclasses is None:
            return ""
        names = self.subclasses.names
        return "drawn as " + ", ".join(names[i] if i < len(names) else "unconditional" for i in step.labels.tolist())

    def token_view(self, step, target: int = 256):
        """The record's token map as a PIL image, the batch side by side (see :data:`legend`)."""
        raise NotImplementedError

    def token_stats(self, step) -> TokenStats | None:
        """What the model believed at every position of this record (see :class:`TokenStats`)."""
        return None

    def _sample(self, **kwargs) -> Iterator:
        raise NotImplementedError

    def decode(self, step) -> torch.Tensor:
        """Final image ``[B, 3, H, W]`` in [0, 1] of a step record (decoded even when previews were off)."""
        raise NotImplementedError

    def stream(self, **kwargs) -> Iterator:
        kwargs = {**self.defaults, **kwargs}
        if self.subclasses is not None:
            kwargs = self.draw_subclasses(**kwargs)
        return self._sample(**kwargs)

    def draw_subclasses(self, labels=None, batch_size: int = 1, seed: int | None = None, **kwargs) -> dict:
        """The sampler's arguments with the requested classes replaced by drawn subclasses (see
        :class:`Subclasses`). Classes (``labels=None``: drawn uniformly) and subclasses come from a CPU generator
        seeded with ``seed`` (drawn here when None, so the records report it), not from the sampler's own."""
        seed = new_seed() if seed is None else int(seed)
        rng = torch.Generator().manual_seed(seed)
        class_B = resolve_labels(labels, batch_size, self.num_classes, rng, "cpu")
        fine = self.subclasses.draw(class_B, self.num_classes, rng)
        return {**kwargs, "labels": fine.tolist(), "batch_size": len(fine), "seed": seed}

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
