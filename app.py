"""edifice: watch image generators think. The Gradio app: a decode player over any family's streamed steps.

    python app.py                      # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
    python app.py --allow-local        # also accept local checkpoint folders in the model box

The app names no model family. A pipeline says which sampling settings it takes (``pipe.controls()``), what
one step is called, its status line, its token view and what it believed at every token position
(``edifice.pipeline``); the page maps the controls onto a fixed set of widget slots (numbers, choices,
switches, lists), so a new family needs no change here.

The player: every run's steps are kept on the server for that browser session (bounded: MAX_FRAMES frames
per run, token statistics for the first RUN_BYTES of a run, RUNS_PER_SESSION runs per session, MAX_SESSIONS
sessions, and EDIFICE_TIMELINE_MB of frames in all; the oldest sessions go first). A timeline scrubs through
them during and after the run, Play replays it, the watch speed paces the display only (the run itself goes as
fast as it computes and its timings stay true), clicking a token shows the model's candidates there, Compare
runs two settings side by side, and Edit regenerates part of an image, streamed the same way.

Environment: EDIFICE_DEFAULT_MODEL (preset or Hub repo id shown first), EDIFICE_ALLOW_LOCAL=1 (same as
--allow-local), EDIFICE_MAX_QUEUE (queue bound, default 16), EDIFICE_MAX_SECONDS (the longest generation a
request may ask for, by the family's own estimate on this device; default 600 on a CPU, 120 on a GPU),
EDIFICE_TIMELINE_MB (memory for stored timelines, default 512).
"""

from __future__ import annotations

import argparse
import atexit
import io
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

try:  # on a ZeroGPU Space `spaces` must be imported before anything initialises CUDA
    import spaces
except ImportError:
    spaces = None

import gradio as gr
import numpy as np
import torch
from PIL import Image

import edifice
import edifice.presets
from edifice import render
from edifice.checkpoint import FAMILIES
from edifice.errors import EdificeError
from edifice.pipeline import shorten
from edifice.serving import PipelineCache

MAX_IMAGES = 4
MAX_LOADED = 2  # pipelines kept in memory
MAX_FRAMES = 1024  # steps stored per run; later steps still stream but are not kept for the timeline
RUNS_PER_SESSION = 3  # the latest run and a comparison's two
MAX_SESSIONS = 32
RUN_BYTES = 256 * 2 ** 20  # a run's token statistics stop being kept past this (FractalGen's are per pixel)
TIMELINE_BYTES = int(float(os.environ.get("EDIFICE_TIMELINE_MB", "512")) * 2 ** 20)
MAX_SPEC_CHARS = 200
SEED_MAX = 2 ** 63 - 1
ON_ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
if ON_ZERO_GPU:  # every generation runs in a fresh forked worker: CUDA graphs would be captured anew each time
    os.environ.setdefault("EDIFICE_CUDA_GRAPHS", "0")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
ALLOW_LOCAL = os.environ.get("EDIFICE_ALLOW_LOCAL") == "1"
PACES = {"as fast as it computes": 0.0, "0.1 s per step": 0.1, "0.25 s per step": 0.25, "0.5 s per step": 0.5,
         "1 s per step": 1.0, "2 s per step": 2.0}
# widget slots the page maps a family's controls onto, by control kind
SLOTS = {"multi": 2, "choice": 4, "number": 12, "bool": 3}  # in page order: structure first
SLOT_OF = {"int": "number", "float": "number", "choice": "choice", "bool": "bool", "multi": "multi"}
WORKDIR = Path(tempfile.mkdtemp(prefix="edifice-app-"))  # animations, PNGs, thumbnails; removed with their run
atexit.register(shutil.rmtree, WORKDIR, ignore_errors=True)
ASSETS = Path(__file__).parent / "assets"
CSS = """
#live img, #tokens img, #uncertainty img, #live-a img, #live-b img, #tokens-a img, #tokens-b img,
.filmstrip img { image-rendering: pixelated; }
#tokens img, #uncertainty img { cursor: crosshair; }
.legend { font-size: 0.85em; opacity: 0.85; }
"""


def fail(message: str):
    """A visitor's mistake: a readable message in the page, one line at most in the log, no traceback."""
    raise gr.Error(shorten(message, 400), print_exception=False)


# -- models ---------------------------------------------------------------------------------------------------
def model_choices() -> list[tuple[str, str]]:
    """(label, spec) for the picker: bundled models that are present first, then Hub downloads with size."""
    bundled, hub = [], []
    for p in edifice.presets.presets().values():
        family = FAMILIES[p.kind].pipeline.family if p.kind in FAMILIES else p.kind
        if p.source == "folder":
            if (p.folder / "config.json").is_file():
                bundled.append((f"{p.name} · {family} · bundled", p.name))
        else:
            size = f" · download {p.download_bytes / 1e9:.1f} GB" if p.download_bytes else " · download"
            px = f" · {p.image_size}px" if p.image_size else ""
            hub.append((f"{p.name} · {family}{px}{size}", p.name))
    return bundled + hub


def default_model() -> str:
    """EDIFICE_DEFAULT_MODEL, else the first bundled model (works offline), else the first preset."""
    return os.environ.get("EDIFICE_DEFAULT_MODEL") or model_choices()[0][1]


def model_cache(allow_local: bool) -> PipelineCache:
    """Loaded pipelines, locked per model (a slow download blocks no one else). In public mode (no
    --allow-local) a spec is only a preset or a Hub repo id, never a path, errors name no server path, and a Hub
    repo larger than EDIFICE_MAX_DOWNLOAD_GB (default 5; presets exempt) is refused before downloading."""
    limit = None if allow_local else int(float(os.environ.get("EDIFICE_MAX_DOWNLOAD_GB", "5")) * 1e9)
    return PipelineCache(MAX_LOADED, allow_local=allow_local, max_download_bytes=limit)


MODELS = model_cache(ALLOW_LOCAL)
ACTIVE = {"runs": 0}  # generations in progress (Stop must bring this back down: the generator's cleanup ran)


def check_spec(spec) -> str:
    """Presets and Hub repo ids only; a local folder needs --allow-local (a public Space must not read disk)."""
    spec = str(spec if spec is not None else "").strip() or default_model()
    if len(spec) > MAX_SPEC_CHARS:
        fail(f"a model name has at most {MAX_SPEC_CHARS} characters; pick one from the list.")
    if spec in edifice.presets.presets() or REPO_ID.match(spec):
        return spec
    if ALLOW_LOCAL and Path(spec).is_dir():
        return spec
    fail(f"'{shorten(spec)}' is neither a preset nor a Hub repo id (org/name); pick one from the list"
         + ("" if ALLOW_LOCAL else " (local folders are accepted only when the app is started with --allow-local)")
         + ".")


def load(spec, progress=None):
    spec = check_spec(spec)
    if progress is not None:
        progress(0, desc=f"loading {spec}")
    try:
        return MODELS.get(spec)
    except EdificeError as e:
        fail(str(e))


def class_choices(pipe) -> list[str]:
    names = pipe.class_names or [f"class {i}" for i in range(pipe.num_classes)]
    return ["random", "unconditional"] + [f"{i} · {n}" for i, n in enumerate(names)]


def showcase_class(pipe) -> str:
    """The class shown first: the checkpoint's recommended ``labels`` when it names one, else the first."""
    choices = class_choices(pipe)
    label = pipe.defaults.get("labels")
    if isinstance(label, int) and 0 <= label < pipe.num_classes:
        return choices[label + 2]
    return choices[2] if len(choices) > 2 else "random"


def showcase_seed(pipe) -> int:
    """The seed shown first: the checkpoint's recommended ``seed`` when it names one, else 0."""
    seed = pipe.defaults.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= SEED_MAX else 0


def parse_class(value, pipe) -> int | None:
    """'random' -> None (drawn from the seed), 'unconditional' -> -1, '207 · name' / '207' / a name -> index."""
    value = str(value if value is not None else "random").strip()
    if value == "random":
        return None
    if value == "unconditional":
        return -1
    head = value.split("·")[0].strip()
    if head.lstrip("-").isdigit() and len(head) < 10:
        idx = int(head)
    elif pipe.class_names and value in pipe.class_names:
        idx = pipe.class_names.index(value)
    else:
        fail(f"unknown class '{shorten(value)}': choose one from the list, 'random' or 'unconditional'.")
    if not 0 <= idx < pipe.num_classes:
        fail(f"unknown class {idx}: this model has classes 0..{pipe.num_classes - 1}.")
    return idx


def parse_common(seed, randomize_seed, num_images) -> tuple[int, int]:
    """(seed, number of images) checked before any work."""
    try:
        n = float(num_images)
        assert math.isfinite(n) and n == int(n) and 1 <= n <= MAX_IMAGES
    except (TypeError, ValueError, AssertionError):
        fail(f"images must be a whole number from 1 to {MAX_IMAGES}, got {shorten(repr(num_images), 40)}.")
    if str(randomize_seed).lower() == "true":
        return int(torch.randint(0, 2 ** 31 - 1, (1,)).item()), int(n)
    try:
        s = float(seed) if not isinstance(seed, int) else seed
        assert (isinstance(s, int) or (math.isfinite(s) and s == int(s))) and 0 <= int(s) <= SEED_MAX
    except (TypeError, ValueError, AssertionError, OverflowError):
        fail(f"the seed must be a whole number from 0 to 2^63 - 1, got {shorten(repr(seed), 40)}.")
    return int(s), int(n)


# -- controls: a family's settings on the page's slots --------------------------------------------------------
def assign_slots(controls) -> dict[str, list]:
    """Each control onto the next free slot of its kind: {"number": [Control | None, ...], ...}."""
    slots = {kind: [None] * n for kind, n in SLOTS.items()}
    for c in controls:
        kind = SLOT_OF[c.kind]
        free = slots[kind].index(None) if None in slots[kind] else None
        if free is None:
            raise RuntimeError(f"more {kind} controls than the page has slots ({SLOTS[kind]}): add slots")
        slots[kind][free] = c
    return slots


def slot_controls(pipe) -> list:
    """The page's slots in order, each holding a Control or None."""
    slots = assign_slots(pipe.controls())
    return [c for kind in SLOTS for c in slots[kind]]


def slot_update(c, values: dict) -> dict:
    """A slot showing control ``c`` (hidden when empty, or when ``c`` does not matter with these ``values``)."""
    if c is None:
        return gr.update(visible=False)
    common = dict(visible=c.shown(values), label=c.label, info=c.help, value=c.default)
    if c.kind in ("choice", "multi"):
        return gr.update(choices=list(c.choices), **common)
    if c.kind in ("int", "float"):
        return gr.update(step=c.step or (1 if c.kind == "int" else 0.1), **common)
    return gr.update(**common)


def settings_from_slots(pipe, values) -> dict:
    return {c.name: v for c, v in zip(slot_controls(pipe), values, strict=True) if c is not None}


def check_settings(pipe, settings) -> dict:
    """A family's settings from the page or the API, checked by its Controls (edifice.pipeline.check_settings):
    a missing or None value is the checkpoint's recommended one; a mistake is the visitor's message."""
    try:
        return edifice.pipeline.check_settings(pipe.controls(), settings, pipe.family)
    except ValueError as e:
        fail(str(e))


def settings_report(pipe, settings: dict, num_images: int) -> tuple[str, float | None]:
    """The family's remark on checked settings and the seconds they take here (None when it cannot tell, e.g.
    with no GPU outside a ZeroGPU call); a ValueError says why they cannot run."""
    note = pipe.settings_note(**settings)
    try:
        return note, pipe.estimate_seconds(**settings, batch_size=num_images)
    except RuntimeError:
        return note, None


# -- the timeline store ---------------------------------------------------------------------------------------
@dataclass
class Frame:
    status: str
    seconds: float
    image: int  # index into Run.images of the latest image at this step, -1 before the first
    tokens_png: bytes  # the token view (PNG: flat colours compress well)
    stats: object | None  # edifice.pipeline.TokenStats or None

    def nbytes(self) -> int:
        return len(self.tokens_png) + (self.stats.nbytes() if self.stats is not None else 0) + 200


@dataclass
class Run:
    spec: str
    family: str
    step_name: str
    seed: int
    num_images: int
    frames: list = field(default_factory=list)
    images: list = field(default_factory=list)  # uint8 [H, W, 3] native-size grids (only steps that made one)
    thumbs: list = field(default_factory=list)  # (path, caption) for the gallery
    thumb_frames: list = field(default_factory=list)  # the frame (timeline step - 1) of each thumbnail
    num_steps: int = 0
    done: bool = False
    stopped: bool = False
    limited: bool = False  # stopped at EDIFICE_MAX_SECONDS
    started: float = field(default_factory=time.perf_counter)
    folder: Path = field(default_factory=lambda: WORKDIR / uuid.uuid4().hex)
    files: tuple = (None, None, None)
    bytes: int = 0  # memory its frames and images take
    play_from: int | None = None  # where Play put the timeline, for the next tick (see tick)

    def nbytes(self) -> int:
        return self.bytes

    def add(self, pipe, step) -> Frame | None:
        """Record one step record (image, token view, stats); returns the frame, or None past MAX_FRAMES."""
        self.num_steps = step.num_steps
        if step.image is not None:
            grid = np.asarray(render.image_grid(step.image, target=1))
            self.images.append(grid)
            self.bytes += grid.nbytes
            self.folder.mkdir(parents=True, exist_ok=True)
            thumb = self.folder / f"thumb{len(self.frames):04d}.png"
            Image.fromarray(grid).resize(_fit(grid, 96), Image.NEAREST).save(thumb)
            self.thumbs.append((str(thumb), f"{self.step_name} {step.step + 1}"))
            self.thumb_frames.append(len(self.frames))
        if len(self.frames) >= MAX_FRAMES:
            return None
        buf = io.BytesIO()
        pipe.token_view(step).save(buf, format="PNG", compress_level=1)
        stats = pipe.token_stats(step) if self.nbytes() < RUN_BYTES else None  # past the bound: pictures only
        status = " · ".join(filter(None, (pipe.status(step), pipe.subclass_note(step))))
        frame = Frame(status, step.seconds, len(self.images) - 1, buf.getvalue(), stats)
        self.frames.append(frame)
        self.bytes += frame.nbytes()
        return frame

    def cleanup(self):
        shutil.rmtree(self.folder, ignore_errors=True)


class Timelines:
    """Runs kept per browser session (``gr.Request.session_hash``), bounded as the module docstring says."""

    def __init__(self):
        self.sessions: OrderedDict[str, list[Run]] = OrderedDict()
        self.lock = threading.Lock()

    def start(self, session: str, run: Run, keep: int = RUNS_PER_SESSION) -> Run:
        with self.lock:
            runs = self.sessions.pop(session, [])
            runs.append(run)
            for old in runs[:-keep]:
                old.cleanup()
            self.sessions[session] = runs[-keep:]
            while len(self.sessions) > MAX_SESSIONS:
                for old in self.sessions.popitem(last=False)[1]:
                    old.cleanup()
        return run

    def trim(self):
        """Forget the oldest sessions (never the newest) while the frames kept exceed EDIFICE_TIMELINE_MB."""
        with self.lock:
            total = sum(r.nbytes() for rs in self.sessions.values() for r in rs)
            while len(self.sessions) > 1 and total > TIMELINE_BYTES:
                for old in self.sessions.popitem(last=False)[1]:
                    total -= old.nbytes()
                    old.cleanup()

    def latest(self, session: str, n: int = 1) -> list[Run]:
        with self.lock:
            return list(self.sessions.get(session, [])[-n:])


TIMELINES = Timelines()


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def _fit(grid: np.ndarray, target: int) -> tuple[int, int]:
    k = target / max(grid.shape[:2])
    return max(1, round(grid.shape[1] * k)), max(1, round(grid.shape[0] * k))


def upscale(grid: np.ndarray, target: int = 256) -> Image.Image:
    """A native-size image grid enlarged by a whole factor with nearest-neighbour, so pixels stay crisp."""
    k = render.upscale_factor(grid.shape[0], target)
    img = Image.fromarray(grid)
    return img.resize((img.width * k, img.height * k), Image.NEAREST) if k > 1 else img


def frame_view(run: Run, i: int) -> tuple:
    """(live image, token view, uncertainty view, status, step numbers) of frame i."""
    f = run.frames[i]
    live = upscale(run.images[f.image]) if f.image >= 0 else None
    tokens = Image.open(io.BytesIO(f.tokens_png))
    uncertainty = render.uncertainty_view(f.stats) if f.stats is not None else None
    return live, tokens, uncertainty, f.status, step_numbers(run, i)


def step_numbers(run: Run, i: int) -> str:
    f = run.frames[i]
    elapsed = sum(x.seconds for x in run.frames[: i + 1])
    parts = [f"**{run.step_name} {i + 1}** of {run.num_steps}", f"{f.seconds * 1e3:.1f} ms",
             f"{elapsed:.2f} s so far"]
    if f.stats is not None:
        drawn = f.stats.drawn_prob[~f.stats.drawn_prob.isnan()]
        if drawn.numel():
            parts.append(f"mean p(drawn) {drawn.mean():.3f}")
        ent = f.stats.entropy[~f.stats.entropy.isnan() & (f.stats.drawn >= 0)]
        if ent.numel():
            parts.append(f"mean entropy {ent.mean():.2f} nats")
    return " · ".join(parts)


def timings(run: Run) -> list[list]:
    rows = [[i + 1, f.status, round(f.seconds * 1e3, 1)] for i, f in enumerate(run.frames)]
    return rows + [["total", "", round(sum(f.seconds for f in run.frames) * 1e3, 1)]]


def save_outputs(run: Run, final: torch.Tensor | None = None) -> tuple[str, str, str]:
    """The decode as GIF and WebP (one frame per stored image) and the last image as PNG, in the run's folder
    (removed with the run; Gradio's copies are removed by its delete_cache); none for a run stopped before its
    first image."""
    if final is None and not run.images:
        return None, None, None
    run.folder.mkdir(parents=True, exist_ok=True)
    stem = f"{run.family.split()[0].lower()}-seed{run.seed}" + ("-stopped" if run.stopped else "")
    frames = [upscale(g) for g in run.images]
    gif = render.save_animation(frames, run.folder / f"{stem}.gif")
    webp = render.save_animation(frames, run.folder / f"{stem}.webp")
    png = run.folder / f"{stem}.png"
    (render.image_grid(final, target=1) if final is not None else Image.fromarray(run.images[-1])).save(png)
    run.files = (str(gif), str(webp), str(png))
    return run.files


# -- generation -----------------------------------------------------------------------------------------------
def prepare(model, class_name, seed, randomize_seed, num_images, settings, progress=None):
    """Everything checked before any work: (pipe, labels, seed, images, settings, expected seconds)."""
    pipe = load(model, progress)
    labels = parse_class(class_name, pipe)
    seed, n = parse_common(seed, randomize_seed, num_images)
    settings = check_settings(pipe, settings)
    try:
        _, seconds = settings_report(pipe, settings, n)
    except ValueError as e:
        fail(str(e))
    limit = max_seconds(pipe)
    if seconds is not None and seconds > limit:
        fail(f"these settings would take about {_duration(seconds)} here; this app allows {_duration(limit)} per "
             f"generation (EDIFICE_MAX_SECONDS). Lower the steps, the diffusion steps or the images.")
    return pipe, labels, seed, n, settings, seconds


def max_seconds(pipe) -> float:
    default = "600" if pipe.device.type == "cpu" else "120"
    return float(os.environ.get("EDIFICE_MAX_SECONDS", default))


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def stream_run(pipe, run: Run, labels, settings, progress=None):
    """Drive one generation, recording every step in ``run``; yields (step record, frame or None). A run that
    passes EDIFICE_MAX_SECONDS is stopped (``run.limited``): no visitor holds the generation slot longer, even
    with a family that cannot estimate its time beforehand."""
    ACTIVE["runs"] += 1
    limit = max_seconds(pipe)
    try:
        last = None
        for step in pipe.stream(labels=labels, batch_size=run.num_images, seed=run.seed, **settings):
            if run.stopped:
                break
            if time.perf_counter() - run.started > limit:
                run.stopped = run.limited = True
                break
            frame = run.add(pipe, step)
            last = step
            if progress is not None:
                progress((step.step + 1, step.num_steps), desc="generating", unit=pipe.step_name + "s")
            yield step, frame
        if last is not None and not run.stopped:
            run.done = True
            save_outputs(run, last.image if last.image is not None else pipe.decode(last))
    except ValueError as e:  # settings the family refuses only once it runs
        fail(str(e))
    finally:  # also runs when Stop closes the generator at its next yield
        ACTIVE["runs"] -= 1
        TIMELINES.trim()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# outputs of a run, in this order: live, tokens, uncertainty, status, numbers, timeline, gallery, timings,
# gif, webp, png, run info
CLEARED = (None, None, None, "", "", gr.update(value=0, maximum=1), [], None, None, None, None, "")


def generate_api(model=None, class_name="random", seed=0, randomize_seed=False, num_images=1, settings=None,
                 request: gr.Request = None, progress=gr.Progress()):
    """/generate: one update per step (live image, token view, uncertainty view, status, step numbers, timeline,
    filmstrip, timings, GIF, WebP, PNG, run info); the last carries the timings and the three files. ``settings``:
    the family's own settings by name ({"scales": [1, 2, 4], "cfg": 3}); missing ones take the checkpoint's
    recommended values, so model, class and seed alone reproduce what the page shows for them."""
    yield from run_generation(model, class_name, seed, randomize_seed, num_images, settings, 0.0, request, progress)


def run_generation(model, class_name, seed, randomize_seed, num_images, settings, pace, request, progress,
                   slots=None, edit=None):
    """The run behind /generate, /edit and the page's Generate and Edit (which send their ``slots`` instead of
    ``settings``). ``edit``: (image, mask, region) as :func:`edit_inputs` takes them."""
    yield CLEARED  # a new run clears the last one's outputs, also when it fails below
    if slots is not None:
        settings = settings_from_slots(load(model), slots)
    pipe, labels, seed, n, settings, seconds = prepare(model, class_name, seed, randomize_seed, num_images,
                                                       settings, progress)
    if edit is not None:
        settings = {**settings, **edit_inputs(pipe, *edit)}
    run = TIMELINES.start(session_of(request), Run(check_spec(model), pipe.family, pipe.step_name, seed, n))
    wait = f" · expected wait ≈ {_duration(seconds)}" if seconds is not None and seconds > 1 else ""
    what = "editing with" if edit is not None else "starting"
    yield (*(gr.update(),) * 11, f"{what} {pipe.family} · seed {seed}{wait}")
    for step, frame in stream_run(pipe, run, labels, settings, progress):
        k = len(run.frames)
        info = (f"computed {step.step + 1}/{step.num_steps} {pipe.step_name}s in "
                f"{time.perf_counter() - run.started:.2f} s")
        gallery = list(run.thumbs) if step.image is not None else gr.update()
        if pace > 0 or frame is None:  # the player's timer shows the frames at the chosen pace
            yield (*(gr.update(),) * 5, gr.update(maximum=max(k, 1)), gallery, *(gr.update(),) * 4, info)
            continue
        live, tokens, unc, status, numbers = frame_view(run, k - 1)
        yield (live if step.image is not None else gr.update(), tokens, unc, status, numbers,
               gr.update(maximum=max(k, 1), value=k), gallery, *(gr.update(),) * 4, info)
    if run.done:
        total = time.perf_counter() - run.started
        info = (f"done in {total:.2f} s · seed {seed} · {pipe.device.type} / "
                f"{str(pipe.dtype).removeprefix('torch.')} · {len(run.frames)} {pipe.step_name}s on the timeline")
        yield (*(gr.update(),) * 7, timings(run), *run.files, info)
    elif run.limited:
        yield (*(gr.update(),) * 7, timings(run), *save_outputs(run),
               f"stopped at {pipe.step_name} {len(run.frames)}/{run.num_steps}: this app allows "
               f"{_duration(max_seconds(pipe))} per generation (EDIFICE_MAX_SECONDS); lower the steps or images")


def generate_page(model, class_name, seed, randomize_seed, num_images, pace, slots, request, progress):
    """Generate on the page: as /generate, with the watch speed; at a pace the player's timer shows the steps."""
    pace = PACES.get(pace, 0.0)
    for j, out in enumerate(run_generation(model, class_name, seed, randomize_seed, num_images, None, pace,
                                           request, progress, slots=slots)):
        yield (*out, gr.Timer(value=pace, active=True) if pace > 0 and j == 1 else gr.update())


def zero_gpu_seconds(model=None, class_name=None, seed=None, randomize_seed=None, num_images=1, settings=None,
                     *args, **kwargs) -> int:
    """The GPU time to ask ZeroGPU for, from /generate's own arguments, by the family's own rule."""
    spec = str(model or default_model())
    preset = edifice.presets.presets().get(spec)
    kind = preset.kind if preset else MODELS.get(spec).kind if spec in MODELS else None  # loaded Hub/folder models
    family = FAMILIES[kind].pipeline if kind in FAMILIES else edifice.pipeline.Pipeline
    try:
        return family.gpu_seconds(settings if isinstance(settings, dict) else {}, int(num_images or 1))
    except (TypeError, ValueError):
        return 60


def run_seconds(model, class_name, seed, randomize_seed, num_images, settings, pace, request, progress, slots=None,
                edit=None) -> int:
    """zero_gpu_seconds of a run_generation call (the page sends slots: read them when its model is loaded)."""
    spec = str(model or default_model())
    if slots is not None and spec in MODELS:
        settings = settings_from_slots(MODELS.get(spec), slots)
    return zero_gpu_seconds(spec, num_images=num_images, settings=settings)


def compare_seconds(model_a=None, settings_a=None, model_b=None, settings_b=None, class_name=None, seed=None,
                    num_images=1, *args, **kwargs) -> int:
    return (zero_gpu_seconds(model_a, num_images=num_images, settings=settings_a)
            + zero_gpu_seconds(model_b, num_images=num_images, settings=settings_b))


def on_gpu(fn, seconds):
    """On ZeroGPU, ``fn`` with a GPU attached for ``seconds(*args)`` (the request's own estimate); elsewhere fn."""
    return spaces.GPU(duration=seconds)(fn) if spaces is not None else fn


run_generation = on_gpu(run_generation, run_seconds)  # /generate, /edit and the page's Generate and Edit


# -- editing ------------------------------------------------------------------------------------------------
REGIONS = ("painted", "centre", "all but the centre", "left half", "right half", "top half", "bottom half")


def region_mask(region: str, size: int) -> np.ndarray:
    """A named region to regenerate as a [size, size] 0/1 mask (the centre: the middle half of each side)."""
    m, h, q = np.zeros((size, size), np.float32), size // 2, size // 4
    if region == "centre":
        m[q:size - q, q:size - q] = 1
    elif region == "all but the centre":
        m[:] = 1
        m[q:size - q, q:size - q] = 0
    elif region in ("left half", "right half"):
        m[:, :h] = region == "left half"
        m[:, h:] = region == "right half"
    elif region in ("top half", "bottom half"):
        m[:h] = region == "top half"
        m[h:] = region == "bottom half"
    else:
        fail(f"the region must be one of {', '.join(REGIONS)}; got {shorten(repr(region), 40)}.")
    return m


def to_rgb(img: Image.Image) -> Image.Image:
    """Any image file's pixels as 8-bit RGB: 16-bit scaled, alpha composited on white, greyscale repeated."""
    if img.mode in ("I;16", "I;16B", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr / (65535.0 if arr.max() > 255 else 255.0) * 255).clip(0, 255).astype(np.uint8))
    img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert("RGB")


def fit(img: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """The centred square of an image, resized to ``size`` (the model's)."""
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), resample)


def edit_inputs(pipe, image, mask, region) -> dict:
    """``image=`` and ``mask=`` for ``pipe.stream``: the picture cropped to a square and resized to the model's
    size, and the mask (1 = regenerate) from the painted brush layer or a named region; refused before any
    work when the family cannot edit or an input is missing. ``image`` may be an ImageEditor value (a dict with
    its background and layers) or an image."""
    if not pipe.can_edit:
        able = ", ".join(f.pipeline.family for f in FAMILIES.values() if f.pipeline.can_edit)
        fail(f"{pipe.family} cannot edit images yet; pick a model whose family can ({able}).")
    layers = []
    if isinstance(image, dict):
        layers = [x for x in image.get("layers") or [] if x is not None]
        image = image.get("background") if image.get("background") is not None else image.get("composite")
    if not isinstance(image, Image.Image):
        fail("upload an image to edit, or press 'Use the last image'.")
    if max(image.size) > 4096:
        fail(f"the image is {image.width}x{image.height}; images up to 4096 px a side can be edited.")
    size = pipe.image_size
    picture = fit(to_rgb(image), size)
    if region != "painted":
        return {"image": picture, "mask": region_mask(region, size)}
    if isinstance(mask, Image.Image):
        layers = [mask]
    painted = np.zeros(image.size[::-1], bool)
    for layer in layers:
        alpha = np.asarray(layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L"))
        if alpha.shape != painted.shape:
            fail(f"the mask is {alpha.shape[1]}x{alpha.shape[0]} but the image {image.width}x{image.height}; "
                 "paint on the image itself.")
        painted |= alpha > 0
    if not painted.any():
        fail("nothing is painted: paint the region to regenerate with the brush, or choose a region.")
    m = fit(Image.fromarray(painted.astype(np.uint8) * 255), size, Image.BOX)
    return {"image": picture, "mask": (np.asarray(m) > 0).astype(np.float32)}


def last_image(request: gr.Request = None):
    """The last run's final image, into the editor."""
    run = current_run(request)
    if run is None or not run.done:
        fail("generate an image first, or upload one.")
    return {"background": run.files[2], "layers": [], "composite": run.files[2]}


def edit_api(model=None, class_name="unconditional", seed=0, num_images=1, settings=None, image=None, mask=None,
             region="painted", request: gr.Request = None, progress=gr.Progress()):
    """/edit: regenerate part of ``image`` and keep the rest, streamed like /generate. ``mask``: an image whose
    painted (opaque, or non-black) pixels are regenerated, or ``region`` one of REGIONS. The class edits
    (``class_name``); "unconditional" is plain in/outpainting."""
    yield from run_generation(model, class_name, seed, False, num_images, settings, 0.0, request, progress,
                              edit=(image, mask, region))


# -- the player -----------------------------------------------------------------------------------------------
def current_run(request) -> Run | None:
    runs = TIMELINES.latest(session_of(request))
    return runs[0] if runs else None


def show_frame(index, request: gr.Request = None):
    """Scrub: the timeline's step (1-based; 0 = none yet) on the live image, token view, uncertainty view,
    status and numbers; pauses playback."""
    run = current_run(request)
    i = int(float(index or 0))
    if run is None or not run.frames or i < 1:
        return (*(gr.update(),) * 5, gr.Timer(active=False))
    run.play_from = None
    return (*frame_view(run, min(i, len(run.frames)) - 1), gr.Timer(active=False))


def tick(index, request: gr.Request = None):
    """Play: the step after the timeline's, at the timer's pace; at the last stored step it waits for more while
    the run computes and stops once it has ended. The first tick after Play starts where Play put the timeline:
    a tick already on its way when Play was pressed carries the old step, and at the end it would stop the
    timer that Play has just started."""
    run = current_run(request)
    i = int(float(index or 0))
    if run is not None and run.play_from is not None:
        i, run.play_from = run.play_from, None
    if run is None or (i >= len(run.frames) and (run.done or run.stopped)):
        return (*(gr.update(),) * 6, gr.Timer(active=False))
    if i >= len(run.frames):
        return (*(gr.update(),) * 6, gr.update())
    return (*frame_view(run, i), gr.update(value=i + 1, maximum=max(len(run.frames), 1)), gr.update())


def play(index, pace, request: gr.Request = None):
    """Play from the timeline's step (from the start when it is at the end)."""
    run = current_run(request)
    if run is None or not run.frames:
        return gr.update(), gr.Timer(active=False)
    i = int(float(index or 0))
    run.play_from = 0 if i >= len(run.frames) else i
    return gr.update(value=run.play_from), gr.Timer(value=PACES.get(pace) or 0.4, active=True)


def pick_frame(request: gr.Request = None, evt: gr.SelectData = None):
    """A click on a filmstrip thumbnail: that step on the timeline."""
    run = current_run(request)
    if run is None or evt is None or not run.frames or not 0 <= evt.index < len(run.thumb_frames):
        return (*(gr.update(),) * 6, gr.Timer(active=False))
    i = min(run.thumb_frames[evt.index], len(run.frames) - 1)
    run.play_from = None
    return (*frame_view(run, i), gr.update(value=i + 1), gr.Timer(active=False))


def inspect_token(index, request: gr.Request = None, evt: gr.SelectData = None):
    """A click on the token or uncertainty view: the candidates the model had there at the timeline's step."""
    run = current_run(request)
    if run is None or not run.frames or evt is None:
        return gr.update(value=None), "Generate, then click a token."
    i = min(max(int(float(index or 0)), 1), len(run.frames)) - 1
    f = run.frames[i]
    if f.stats is None:
        return gr.update(value=None), "This step records no token statistics."
    where = render.locate(f.stats.grid, run.num_images, *evt.index)
    if where is None:
        return gr.update(value=None), "Click inside a token map."
    b, row, col = where
    info = f.stats.inspect(b, row, col)
    head = f"**image {b + 1}, token ({row}, {col})** at {run.step_name} {i + 1} · "
    if not info["candidates"]:
        when = info["heat"]
        return gr.update(value=None), head + f"{info['note']}; {info['heat_label']}: " + (
            "not drawn yet" if math.isnan(when) else f"{when:.2f}")
    drawn = (f"drawn: **{info['drawn']}** (p = {info['drawn_prob']:.3f})" if info["drawn"] is not None
             else "nothing drawn here at this step")
    return (gr.update(value=info["candidates"]),
            head + f"{drawn} · entropy {info['entropy']:.2f} nats · probabilities {info['note']}")


def stop_run(request: gr.Request = None):
    """Stop: the run ends at its next step; the timeline keeps what was made and the partial animation is
    offered."""
    run = current_run(request)
    if run is None or run.done or not run.frames:
        return (gr.update(),) * 4 + (gr.Timer(active=False),)
    run.stopped = True
    files = save_outputs(run)
    return (f"stopped at {run.step_name} {len(run.frames)}/{run.num_steps} · the timeline keeps the "
            f"{len(run.frames)} made", *files, gr.Timer(active=False))


# -- compare --------------------------------------------------------------------------------------------------
def describe(spec, settings) -> str:
    return f"**{spec}** · " + ", ".join(f"{k}={v}" for k, v in settings.items())


def pin_settings(model, slots):
    pipe = load(model)
    settings = check_settings(pipe, settings_from_slots(pipe, slots))
    return {"model": check_spec(model), "settings": settings}, "Run A: " + describe(check_spec(model), settings)


def compare_api(model_a=None, settings_a=None, model_b=None, settings_b=None, class_name="random", seed=0,
                num_images=1, request: gr.Request = None, progress=gr.Progress()):
    """/compare: run A then run B (same class and seed) through the one generation queue; one update per step:
    (live A, tokens A, status A, live B, tokens B, status B, progress slider, timings A, timings B)."""
    yield (None, None, "", None, None, "", gr.update(value=0), None, None)
    prepared = [prepare(m, class_name, seed, False, num_images, s, progress) for m, s in
                ((model_a, settings_a), (model_b, settings_b))]
    session = session_of(request)
    runs = []
    for j, (pipe, labels, s, n, settings, _) in enumerate(prepared):
        spec = check_spec((model_a, model_b)[j])
        run = TIMELINES.start(session + "/compare", Run(spec, pipe.family, pipe.step_name, s, n), keep=2)
        runs.append(run)
        for step, frame in stream_run(pipe, run, labels, settings, progress):
            if frame is None:
                continue
            live, tokens, _, status, _ = frame_view(run, len(run.frames) - 1)
            out = [gr.update()] * 9
            out[3 * j: 3 * j + 3] = [live if step.image is not None else gr.update(), tokens, status]
            yield tuple(out)
    if all(r.done for r in runs):
        yield (*(gr.update(),) * 6, gr.update(value=100), timings(runs[0]), timings(runs[1]))


compare_api = on_gpu(compare_api, compare_seconds)


def compare_page(pinned, model, class_name, seed, num_images, slots, request, progress):
    if not pinned:
        fail("Pin run A first: set a model and settings, press 'Use these settings as run A', then change them "
             "for run B.")
    pipe = load(model)
    yield from compare_api(pinned["model"], pinned["settings"], model, settings_from_slots(pipe, slots),
                           class_name, seed, num_images, request, progress)


def show_compare(percent, request: gr.Request = None):
    """The compare slider: both runs at the same fraction of their progress."""
    runs = TIMELINES.latest(session_of(request) + "/compare", 2)
    if len(runs) < 2:
        return (gr.update(),) * 6
    out = []
    for run in runs:
        if not run.frames:
            out += [gr.update()] * 3
            continue
        i = min(len(run.frames) - 1, max(0, math.ceil(float(percent) / 100 * len(run.frames)) - 1))
        live, tokens, _, status, _ = frame_view(run, i)
        out += [live, tokens, status]
    return tuple(out)


# -- page -----------------------------------------------------------------------------------------------------
def select_model(spec, progress=gr.Progress()):
    """/select_model: load a model; returns its description, class choices, the settings slots, a cleared run
    (a model switch clears the previous run's outputs) and, last, its showcase seed."""
    pipe = load(spec, progress)
    size = f"{pipe.image_size}×{pipe.image_size} px" if pipe.image_size else ""
    info = (f"**{check_spec(spec)}** · {pipe.family} · {size} · {pipe.num_classes} classes · "
            f"{pipe.device.type} / {str(pipe.dtype).removeprefix('torch.')} · at most "
            f"{_duration(max_seconds(pipe))} per generation")
    classes = class_choices(pipe)
    legend = f"**Tokens** — {pipe.legend}" + (f"  \n**Uncertainty** — {pipe.uncertainty_legend}"
                                              if pipe.uncertainty_legend else "")
    defaults = {c.name: c.default for c in pipe.controls()}
    note = settings_note(spec, 1, [defaults.get(c.name) if c is not None else None for c in slot_controls(pipe)])
    return (info, gr.update(choices=classes, value=showcase_class(pipe)), legend,
            *(slot_update(c, defaults) for c in slot_controls(pipe)), *CLEARED, None, "", note, check_spec(spec),
            showcase_seed(pipe))


def check_slots_belong(model, slots_for):
    """The page's settings slots mean what the model shown in them says: pressing Generate while another model
    loads would send the previous model's settings (e.g. MAR's steps as VAR's scales); say so instead."""
    spec = check_spec(model)
    if slots_for != spec:
        fail(f"The settings shown are still those of {slots_for or 'no model'}, not {spec}: wait until "
             f"{spec}'s settings show (pick it again if loading it failed), then press the button again.")


def slot_visibility(model, slots) -> list:
    """Show only the controls that matter with the current settings (e.g. one sampler's own settings)."""
    try:
        pipe = MODELS.get(check_spec(model))
    except (EdificeError, gr.Error):
        return [gr.update()] * len(slots)
    controls = slot_controls(pipe)
    values = {c.name: v for c, v in zip(controls, slots, strict=True) if c is not None}
    return [gr.update(visible=c is not None and c.shown(values)) for c in controls]


def settings_note(model, num_images, slots) -> str:
    """Under the settings: the family's remark on them and the expected wait, or why they cannot run."""
    try:
        pipe = MODELS.get(check_spec(model))
        settings = edifice.pipeline.check_settings(pipe.controls(), settings_from_slots(pipe, slots), pipe.family)
        note, seconds = settings_report(pipe, settings, int(num_images))
    except (EdificeError, gr.Error):
        return ""
    except ValueError as e:
        return f"⚠️ {e}"
    if seconds is not None:
        note = (note + " · " if note else "") + f"Expected wait ≈ {_duration(seconds)} on {pipe.device.type}"
        if seconds > max_seconds(pipe):
            note += f" · over this app's limit of {_duration(max_seconds(pipe))}: lower the steps"
    return note


def build_demo() -> gr.Blocks:
    spec = default_model()
    with gr.Blocks(title="edifice — watch image generators think", delete_cache=(600, 3600)) as demo:
        gr.Markdown("**edifice** · watch image generators think: pick a model, press **Generate**, scrub the "
                    "timeline, click a token to see what the model weighed there.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                model = gr.Dropdown(model_choices(), value=spec, label="Model", allow_custom_value=True)
                info = gr.Markdown(elem_classes="legend", elem_id="model-info")
                class_name = gr.Dropdown(["random"], value="random", label="Class", filterable=True,
                                         allow_custom_value=True)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
                run_info = gr.Markdown(elem_id="run-info")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, min_width=90)
                    randomize = gr.Checkbox(False, label="Random seed", min_width=90)
                with gr.Row():
                    num_images = gr.Slider(1, MAX_IMAGES, 1, step=1, label="Images", min_width=120)
                    pace = gr.Dropdown(list(PACES), value="as fast as it computes", label="Watch speed",
                                       min_width=120)
                with gr.Accordion("Settings", open=True):
                    slots = []
                    for kind, n in SLOTS.items():
                        for i in range(n):
                            if kind == "number":
                                slots.append(gr.Number(label=f"number {i}", visible=False))
                            elif kind == "choice":
                                slots.append(gr.Dropdown(["-"], value=None, label=f"choice {i}", visible=False,
                                                            allow_custom_value=True))
                            elif kind == "bool":
                                slots.append(gr.Checkbox(label=f"switch {i}", visible=False))
                            else:
                                slots.append(gr.CheckboxGroup(["-"], value=[], label=f"list {i}", visible=False))
                    note = gr.Markdown(elem_id="settings-note")
            with gr.Column(scale=3), gr.Tabs() as tabs:
                with gr.Tab("Watch", id="watch"):
                    with gr.Row():
                        live = gr.Image(label="Live", type="pil", format="png", height=280, interactive=False,
                                        elem_id="live")
                        tokens = gr.Image(label="Tokens (click one)", type="pil", format="png", height=280,
                                          interactive=False, elem_id="tokens")
                        uncertainty = gr.Image(label="Uncertainty (click one)", type="pil", format="png",
                                               height=280, interactive=False, elem_id="uncertainty")
                    with gr.Row():
                        timeline = gr.Slider(0, 1, 0, step=1, label="Timeline", elem_id="timeline", scale=5)
                        play_btn = gr.Button("Play", scale=0, min_width=80)
                        pause_btn = gr.Button("Pause", scale=0, min_width=80)
                    status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                    numbers = gr.Markdown(elem_id="numbers")
                    legend = gr.Markdown(elem_classes="legend")
                    gr.Markdown("The model box takes a preset or a Hub repo id (org/name) holding an edifice "
                                "checkpoint. Watch speed paces the display only: the run computes at full speed "
                                "and its timings stay true.", elem_classes="legend")
                    with gr.Row():
                        candidates = gr.Label(label="Candidates at the clicked token", num_top_classes=8,
                                              elem_id="candidates")
                        picked = gr.Markdown(elem_id="picked")
                    gallery = gr.Gallery(label="Filmstrip (click a step)", columns=12, height=220,
                                         allow_preview=False, elem_id="filmstrip", elem_classes="filmstrip")
                    timings_df = gr.Dataframe(headers=["step", "status", "ms"], label="Timings",
                                              interactive=False, max_height=240)
                    with gr.Row():
                        gif = gr.File(label="Animation (GIF)")
                        webp = gr.File(label="Animation (WebP)")
                        png = gr.File(label="Final image (PNG)")
                with gr.Tab("Edit", id="edit"):
                    gr.Markdown("Upload an image (or take the last one generated), paint what to regenerate with "
                                "the brush or choose a region, pick a class (or unconditional for plain in- and "
                                "outpainting) and press **Edit**: the edit streams in the Watch tab. The image is "
                                "cropped to a square and resized to the model's size; a token is regenerated "
                                "when any of its pixels is painted.")
                    edit_image = gr.ImageEditor(type="pil", label="Image (paint what to regenerate)", height=320,
                                                layers=False, sources=["upload", "clipboard"], elem_id="editor",
                                                brush=gr.Brush(colors=["#ff3355"], color_mode="fixed",
                                                               default_size=12))
                    with gr.Row():
                        region = gr.Radio(list(REGIONS), value="painted", label="Region to regenerate")
                    with gr.Row():
                        use_last = gr.Button("Use the last image")
                        edit_btn = gr.Button("Edit", variant="primary")
                    gr.Examples([[str(p), "centre"] for p in sorted((ASSETS / "examples").glob("*.png"))],
                                [edit_image, region], label="Examples (made by the bundled models)")
                with gr.Tab("Compare", id="compare"):
                    gr.Markdown("Set a model and settings, press **Use these settings as run A**, change the "
                                "model or any setting for run B, then **Compare**. Both runs use the class, "
                                "seed and images on the left, go through the one generation queue, and share "
                                "one timeline aligned by fraction of progress.")
                    pinned = gr.State(None)
                    with gr.Row():
                        pin = gr.Button("Use these settings as run A")
                        compare = gr.Button("Compare", variant="primary")
                    pinned_md = gr.Markdown("Run A: not set")
                    with gr.Row():
                        live_a = gr.Image(label="Run A", type="pil", format="png", height=240, elem_id="live-a")
                        tokens_a = gr.Image(label="Tokens A", type="pil", format="png", height=240,
                                            elem_id="tokens-a")
                        live_b = gr.Image(label="Run B", type="pil", format="png", height=240, elem_id="live-b")
                        tokens_b = gr.Image(label="Tokens B", type="pil", format="png", height=240,
                                            elem_id="tokens-b")
                    progress_pct = gr.Slider(0, 100, 0, step=1, label="Progress (%)", elem_id="compare-progress")
                    with gr.Row():
                        status_a = gr.Textbox(label="Status A", interactive=False, elem_id="status-a")
                        status_b = gr.Textbox(label="Status B", interactive=False, elem_id="status-b")
                    with gr.Row():
                        timings_a = gr.Dataframe(headers=["step", "status", "ms"], label="Timings A", max_height=200)
                        timings_b = gr.Dataframe(headers=["step", "status", "ms"], label="Timings B", max_height=200)
        timer = gr.Timer(0.4, active=False)
        # hidden inputs of the API endpoints (the page sends its slots instead)
        api_settings = gr.JSON(visible=False)
        api_go = gr.Button(visible=False)
        api_compare = gr.Button(visible=False)
        api_settings_b, api_model_b = gr.JSON(visible=False), gr.Textbox(visible=False)
        api_edit = gr.Button(visible=False)
        api_image, api_mask = gr.Image(type="pil", visible=False), gr.Image(type="pil", visible=False)
        api_region = gr.Textbox("painted", visible=False)

        run_outputs = [live, tokens, uncertainty, status, numbers, timeline, gallery, timings_df, gif, webp, png,
                       run_info]
        view = [live, tokens, uncertainty, status, numbers]
        slots_for = gr.State(None)  # the model whose settings the slots show (select_model sets it)
        selected = [info, class_name, legend, *slots, *run_outputs, candidates, picked, note, slots_for, seed]
        model.change(select_model, model, selected, api_name="select_model", show_progress_on=info)
        demo.load(select_model, model, selected, api_visibility="private", show_progress_on=info)
        # the page's handlers take their inputs as one dict (a set of components), so that the slots can be any
        # number and Gradio still passes the request (the browser session) by annotation
        page = {model, class_name, seed, randomize, num_images, pace, pinned, edit_image, region, slots_for, *slots}

        def values(d):  # the slots as the page sent them
            return [d[c] for c in slots]

        def checked(d):  # the slots for a run: refused while they still show another model's settings
            check_slots_belong(d[model], d[slots_for])
            return values(d)

        def on_generate(d, request: gr.Request, progress=gr.Progress()):
            yield from generate_page(d[model], d[class_name], d[seed], d[randomize], d[num_images], d[pace],
                                     checked(d), request, progress)

        def on_edit(d, request: gr.Request, progress=gr.Progress()):
            for j, out in enumerate(run_generation(d[model], d[class_name], d[seed], d[randomize], d[num_images],
                                                   None, PACES.get(d[pace], 0.0), request, progress,
                                                   slots=checked(d), edit=(d[edit_image], None, d[region]))):
                pace_on = PACES.get(d[pace], 0.0) > 0 and j == 1
                yield (*out, gr.Timer(value=PACES.get(d[pace]), active=True) if pace_on else gr.update(),
                       gr.Tabs(selected="watch") if j == 0 else gr.update())

        def on_compare(d, request: gr.Request, progress=gr.Progress()):
            yield from compare_page(d[pinned], d[model], d[class_name], d[seed], d[num_images], checked(d), request,
                                    progress)

        def shown(d):  # the slots show the model picked (else the switch's own update is on its way)
            try:
                check_slots_belong(d[model], d[slots_for])
            except gr.Error:
                return False
            return True

        for slot in [num_images, *slots]:
            slot.input(lambda d: settings_note(d[model], d[num_images], values(d)) if shown(d)
                       else gr.update(), page, note, api_visibility="private", trigger_mode="always_last",
                       show_progress="hidden")
        for slot in slots:
            slot.input(lambda d: slot_visibility(d[model], values(d)) if shown(d)
                       else [gr.update()] * len(slots), page, slots, api_visibility="private",
                       trigger_mode="always_last", show_progress="hidden")
        run = go.click(on_generate, page,
                       [*run_outputs, timer], api_visibility="private", concurrency_id="gpu", concurrency_limit=1,
                       show_progress_on=run_info)
        edit_run = edit_btn.click(on_edit, page, [*run_outputs, timer, tabs], api_visibility="private",
                                  concurrency_id="gpu", concurrency_limit=1, show_progress_on=run_info)
        use_last.click(last_image, None, edit_image, api_visibility="private")
        api_edit.click(edit_api, [model, class_name, seed, num_images, api_settings, api_image, api_mask, api_region],
                       run_outputs, api_name="edit", concurrency_id="gpu", concurrency_limit=1)
        api_go.click(generate_api, [model, class_name, seed, randomize, num_images, api_settings], run_outputs,
                     api_name="generate", concurrency_id="gpu", concurrency_limit=1, show_progress_on=run_info)
        stop.click(stop_run, None, [run_info, gif, webp, png, timer], cancels=[run, edit_run],
                   api_visibility="private")
        timeline.input(show_frame, timeline, [*view, timer], api_visibility="private", show_progress="hidden")
        timer.tick(tick, timeline, [*view, timeline, timer], api_visibility="private", show_progress="hidden",
                   concurrency_limit=None)
        play_btn.click(play, [timeline, pace], [timeline, timer], api_visibility="private")
        pause_btn.click(lambda: gr.Timer(active=False), None, timer, api_visibility="private")
        gallery.select(pick_frame, None, [*view, timeline, timer], api_visibility="private")
        for image in (tokens, uncertainty):
            image.select(inspect_token, timeline, [candidates, picked], api_visibility="private",
                         show_progress="hidden")
        pin.click(lambda d: pin_settings(d[model], checked(d)), page, [pinned, pinned_md], api_visibility="private")
        compare_outputs = [live_a, tokens_a, status_a, live_b, tokens_b, status_b, progress_pct, timings_a, timings_b]
        compare.click(on_compare, page, compare_outputs,
                      api_visibility="private", concurrency_id="gpu", concurrency_limit=1,
                      show_progress_on=[status_a, status_b])
        api_compare.click(compare_api, [model, api_settings, api_model_b, api_settings_b, class_name, seed,
                                        num_images], compare_outputs, api_name="compare", concurrency_id="gpu",
                          concurrency_limit=1)
        progress_pct.input(show_compare, progress_pct, [live_a, tokens_a, status_a, live_b, tokens_b, status_b],
                           api_visibility="private", show_progress="hidden")
    demo.queue(max_size=int(os.environ.get("EDIFICE_MAX_QUEUE", "16")))
    return demo


def launch(demo: gr.Blocks, **kwargs):
    """Launch with the app's limits: uploads at most 10 MB."""
    return demo.launch(css=CSS, max_file_size="10mb", **kwargs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-local", action="store_true", help="accept local checkpoint folders (not on a Space)")
    args = parser.parse_args()
    ALLOW_LOCAL = ALLOW_LOCAL or args.allow_local
    MODELS = model_cache(ALLOW_LOCAL)
    launch(build_demo())
