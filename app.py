"""edifice: watch MAR and VAR image generators think. The Gradio app (thin: the logic lives in `edifice/`).

    python app.py                      # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
    python app.py --allow-local        # also accept local checkpoint folders in the model box

Environment: EDIFICE_DEFAULT_MODEL (preset or Hub repo id shown first), EDIFICE_ALLOW_LOCAL=1 (same as
--allow-local), EDIFICE_MAX_QUEUE (queue bound, default 16).
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

try:  # on a ZeroGPU Space `spaces` must be imported before anything initialises CUDA
    import spaces
except ImportError:
    spaces = None

import gradio as gr
import torch

import edifice
import edifice.presets
from edifice import render
from edifice.errors import EdificeError

MAX_IMAGES = 4
MAX_LOADED = 2  # pipelines kept in memory
# MAR with diffusion head: the authors' best-FID recipe, 256 steps x 100 diffusion steps, takes about 12 minutes
# for MAR-B on 2 CPU cores, and on an H100 at batch 1 11-22 s with CUDA graphs or a minute eagerly, as on ZeroGPU
# (launch-bound: 25,600 small diffusion-head calls; benchmarks/README.md). So the controls start lower: about a
# minute on a CPU, and on a GPU the authors' own demo's 64 steps (3.5 s; 16 s eagerly). The user can raise
# them; the page states the expected wait.
START_STEPS = {"cpu": (32, 25), "gpu": (64, 100)}  # (steps, diffusion steps)
# ZeroGPU (eager): seconds of one AR step x one diffusion step at batch 1 (MAR-H on an H100: 2.85 ms; MAR-B 2.4)
MAR_CALL_SECONDS = 0.003
KIND_NAMES = {"var": "VAR", "mar": "MAR (discrete)", "mar-diffusion": "MAR (diffusion head)"}
# On a GPU, VAR replays each scale and MAR each diffusion loop as a CUDA graph (4-5x faster at batch 1), captured
# on first use and kept. ZeroGPU runs every generation in a fresh forked worker, where the captures would be paid
# each time and graphs have not been tried, so there both sample eagerly.
CUDA_GRAPHS = False if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true") else None
PREVIEWS = 16  # MAR with diffusion head: default preview interval = steps / PREVIEWS (decoding is the costly part)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
ALLOW_LOCAL = os.environ.get("EDIFICE_ALLOW_LOCAL") == "1"
CSS = (Path(__file__).parent / "assets" / "app.css").read_text() if (Path(__file__).parent / "assets"
                                                                      / "app.css").exists() else None


# -- models ---------------------------------------------------------------------------------------------------
def model_choices() -> list[tuple[str, str]]:
    """(label, spec) for the picker: bundled models that are present first, then Hub downloads with size."""
    bundled, hub = [], []
    for p in edifice.presets.presets().values():
        if p.source == "folder":
            if (p.folder / "config.json").is_file():
                bundled.append((f"{p.name} · {KIND_NAMES.get(p.kind, p.kind)} · bundled", p.name))
        else:
            size = f" · download {p.download_bytes / 1e9:.1f} GB" if p.download_bytes else " · download"
            px = f" · {p.image_size}px" if p.image_size else ""
            hub.append((f"{p.name} · {KIND_NAMES.get(p.kind, p.kind)}{px}{size}", p.name))
    return bundled + hub


def default_model() -> str:
    """EDIFICE_DEFAULT_MODEL, else the first bundled model (works offline), else the first preset."""
    return os.environ.get("EDIFICE_DEFAULT_MODEL") or model_choices()[0][1]


class ModelCache:
    """A small LRU of loaded pipelines; loading is serialised so two visitors never load the same model twice."""

    def __init__(self, capacity: int):
        self.capacity, self.items, self.lock = capacity, OrderedDict(), threading.Lock()

    def get(self, spec: str):
        with self.lock:
            if spec in self.items:
                self.items.move_to_end(spec)
                return self.items[spec]
            pipe = edifice.load(spec)
            self.items[spec] = pipe
            while len(self.items) > self.capacity:
                self.items.popitem(last=False)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return pipe


MODELS = ModelCache(MAX_LOADED)
ACTIVE = {"runs": 0}  # generations in progress (Stop must bring this back down: the generator's cleanup ran)


def check_spec(spec: str) -> str:
    """Presets and Hub repo ids only; a local folder needs --allow-local (a public Space must not read disk)."""
    spec = (spec or "").strip()
    if spec in edifice.presets.presets() or REPO_ID.match(spec):
        return spec
    if Path(spec).exists():
        if ALLOW_LOCAL:
            return spec
        raise gr.Error(f"'{spec}' is a local path; local folders are accepted only when the app is started "
                       "with --allow-local (or EDIFICE_ALLOW_LOCAL=1).")
    raise gr.Error(f"'{spec}' is neither a preset nor a Hub repo id (org/name); pick one from the list.")


def load(spec: str, progress=None):
    spec = check_spec(spec)
    if progress is not None:
        progress(0, desc=f"loading {spec}")
    try:
        return MODELS.get(spec)
    except EdificeError as e:
        raise gr.Error(str(e)) from None


def class_choices(pipe) -> list[str]:
    names = pipe.class_names or [f"class {i}" for i in range(pipe.num_classes)]
    return ["random", "unconditional"] + [f"{i} · {n}" for i, n in enumerate(names)]


def parse_class(value, pipe) -> int | None:
    """'random' -> None (drawn from the seed), 'unconditional' -> -1, '207 · name' / '207' / a name -> index."""
    value = str(value if value is not None else "random").strip()
    if value == "random":
        return None
    if value == "unconditional":
        return -1
    head = value.split("·")[0].strip()
    if head.lstrip("-").isdigit():
        idx = int(head)
    elif pipe.class_names and value in pipe.class_names:
        idx = pipe.class_names.index(value)
    else:
        raise gr.Error(f"unknown class '{value}': choose one from the list, 'random' or 'unconditional'.")
    if not 0 <= idx < pipe.num_classes:
        raise gr.Error(f"unknown class {idx}: this model has classes 0..{pipe.num_classes - 1}.")
    return idx


# -- controls follow the model --------------------------------------------------------------------------------
def on_model_change(spec, progress=gr.Progress()):
    pipe = load(spec, progress)
    d = pipe.defaults
    kind = pipe.kind
    is_var, is_diff = kind == "var", kind == "mar-diffusion"
    classes = class_choices(pipe)
    info = (f"**{spec}** · {KIND_NAMES[kind]} · {pipe.image_size}×{pipe.image_size} px · {pipe.num_classes} classes"
            f" · {pipe.device.type} / {str(pipe.dtype).removeprefix('torch.')}")
    steps = min(d.get("num_steps", 16), pipe.seq_len) if not is_var else 16
    diffusion_steps = d.get("num_sampling_steps", 100)
    where = "cpu" if pipe.device.type == "cpu" else "gpu"
    start = tuple(min(a, b) for a, b in zip((steps, diffusion_steps), START_STEPS[where], strict=True))
    if is_diff and start != (steps, diffusion_steps):
        info += (f"  \nOn this {where.upper()} the steps start at {start[0]} and the diffusion steps at {start[1]} "
                 f"(the authors use {steps} and {diffusion_steps} for their best FID); raise them if you can wait.")
        steps, diffusion_steps = start
    return (
        info,
        gr.update(choices=classes, value=classes[2] if len(classes) > 2 else "random"),
        gr.update(visible=is_var),
        gr.update(visible=not is_var),
        gr.update(choices=pipe.scales if is_var else [], value=pipe.scales if is_var else []),
        gr.update() if is_var else gr.update(maximum=pipe.seq_len, value=steps),
        gr.update(value=d.get("temperature", 1.0)),
        gr.update(value=d.get("cfg", 1.5 if is_var else 1.0)),
        gr.update(value=d.get("top_k", 0)),
        gr.update(value=d.get("top_p", 0.0)),
        gr.update(value=d.get("more_smooth", False)),
        gr.update(value=d.get("schedule", "cosine"), visible=not is_diff),
        gr.update(value=d.get("randomness", 0.0), visible=not is_diff),
        gr.update(visible=is_diff),
        gr.update(value=d.get("cfg_schedule", "linear")),
        gr.update(value=diffusion_steps),
        gr.update(value=max(1, steps // PREVIEWS)),
    )


def expected_wait(spec, steps, diffusion_steps, cfg, num_images, preview, preview_every) -> str:
    """MAR with diffusion head: the wall time a generation will take here, said before it starts."""
    try:
        pipe = MODELS.get(check_spec(spec))
    except (EdificeError, gr.Error):
        return ""
    if pipe.kind != "mar-diffusion":
        return ""
    try:
        seconds = pipe.estimate_seconds(num_steps=int(steps), num_sampling_steps=int(diffusion_steps),
                                        cfg=float(cfg), batch_size=int(num_images), preview=preview,
                                        preview_every=int(preview_every), cuda_graphs=CUDA_GRAPHS)
    except (ValueError, TypeError, RuntimeError):  # settings Generate will explain; no GPU outside a ZeroGPU call
        return ""
    hint = " · fewer steps or diffusion steps shorten it" if seconds > 60 else ""
    return f"Expected wait ≈ {_duration(seconds)} on {pipe.device.type}{hint}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def explain_scales(spec, scales):
    """Inline check of the scale toggles (shown under them, before Generate is pressed)."""
    try:
        pipe = MODELS.get(check_spec(spec))
    except (EdificeError, gr.Error):  # a model that cannot load: the model box already shows why
        return ""
    if pipe.kind != "var":
        return ""
    try:
        edifice.generative.var.check_scales(sorted(int(s) for s in scales or []), pipe.scales)
    except ValueError as e:
        return f"⚠️ {e}"
    return f"{len(scales)} scales · {sum(int(s) ** 2 for s in scales)} tokens"


# -- generation ----------------------------------------------------------------------------------------------
def status_line(pipe, step) -> str:
    ms = f"{step.seconds * 1e3:.0f} ms"
    if pipe.kind == "var":
        return f"scale {step.step + 1}/{step.num_steps} · {step.patch_size}×{step.patch_size} · {ms}"
    shown = int((~step.mask[0]).sum())
    line = f"step {step.step + 1}/{step.num_steps} · {shown}/{step.mask.shape[1]} revealed"
    return f"{line} · cfg {step.cfg:.2f} · {ms}" if pipe.kind == "mar-diffusion" else f"{line} · {ms}"


def generate(model: str = "", class_name: str = "random", scales: list | None = None, steps: int = 16,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0, cfg: float = 1.5,
             more_smooth: bool = False, schedule: str = "cosine", randomness: float = 0.0, seed: int = 0,
             randomize_seed: bool = False, num_images: int = 1, preview: str = "full", cfg_schedule: str = "linear",
             diffusion_steps: int = 100, preview_every: int = 1, progress=gr.Progress()):
    """Stream one generation: yields (live image, token view, status, filmstrip, timings, GIF, WebP, PNG).

    MAR with diffusion head first yields the expected wait, then decodes a preview every ``preview_every``
    steps (the live image and filmstrip change only then; the token view and status change every step)."""
    pipe = load(model or default_model())
    labels = parse_class(class_name, pipe)
    n = int(num_images)  # 1..MAX_IMAGES: the slider refuses anything else, for API calls too
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item()) if randomize_seed else int(seed)
    kw = dict(labels=labels, batch_size=n, cfg=float(cfg), temperature=float(temperature), seed=seed, preview=preview)
    if pipe.kind == "var":
        kw.update(scales=sorted(int(s) for s in scales) if scales else None, top_k=int(top_k), top_p=float(top_p),
                  more_smooth=bool(more_smooth), cuda_graphs=CUDA_GRAPHS)
        colors = render.codebook_colors(pipe.tokenizer.quantize.embedding.weight)
    elif pipe.kind == "mar":
        kw.update(num_steps=int(steps), schedule=schedule, randomness=float(randomness))
    else:
        kw.update(num_steps=int(steps), cfg_schedule=cfg_schedule, num_sampling_steps=int(diffusion_steps),
                  preview_every=int(preview_every), cuda_graphs=CUDA_GRAPHS)
    frames, thumbs, rows, t0 = [], [], [], time.perf_counter()
    ACTIVE["runs"] += 1
    try:
        stream = pipe.stream(**kw)
        if pipe.kind == "mar-diffusion":
            wait = _duration(pipe.estimate_seconds(**kw))
            yield gr.update(), gr.update(), f"starting · expected wait ≈ {wait}", gr.update(), None, None, None, None
        for step in stream:
            if step.image is not None:
                live = render.image_grid(step.image)
                frames.append(live)
                thumbs.append(render.image_grid(step.image[:1], target=64, gap=0))
            if pipe.kind == "var":
                tokens = render.var_token_view(step.tokens, colors)
            elif pipe.kind == "mar":
                tokens = render.mar_token_view(step.mask, step.confidence, step.revealed)
            else:
                tokens = render.latent_token_view(step.tokens, step.mask, step.revealed)
            rows.append([step.step + 1, step.patch_size if pipe.kind == "var" else int(step.revealed[0].sum()),
                         round(step.seconds * 1e3, 1)])
            progress((step.step + 1, step.num_steps), desc="generating",
                     unit="scales" if pipe.kind == "var" else "steps")
            status = status_line(pipe, step)
            if step.step + 1 < step.num_steps:
                shown = (live, render.filmstrip(thumbs)) if step.image is not None else (gr.update(), gr.update())
                yield shown[0], tokens, status, shown[1], None, None, None, None
                continue
            total = time.perf_counter() - t0  # the last step also carries the timings and the downloads
            rows.append(["total", "", round(total * 1e3, 1)])
            files = save_outputs(frames, step.image, f"{pipe.kind}-seed{seed}")
            status += (f" · done in {total:.2f} s · seed {seed} · {pipe.device.type} / "
                       f"{str(pipe.dtype).removeprefix('torch.')}")
            yield live, tokens, status, render.filmstrip(thumbs), rows, *files
    except ValueError as e:  # bad scale list, steps out of range, unknown class: the library's own message
        raise gr.Error(str(e)) from None
    finally:  # also runs when Stop closes the generator at its next yield
        ACTIVE["runs"] -= 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def save_outputs(frames, images, stem: str) -> list[str]:
    """The decode as GIF and WebP (one frame per step) and the final images as PNG, in a fresh temp folder."""
    out = Path(tempfile.mkdtemp(prefix="edifice-"))
    gif = render.save_animation(frames, out / f"{stem}.gif")
    webp = render.save_animation(frames, out / f"{stem}.webp")
    png = out / f"{stem}.png"
    render.image_grid(images, target=1).save(png)
    return [str(gif), str(webp), str(png)]


GENERATE_PARAMS = inspect.signature(generate)


def zero_gpu_seconds(*args, **kwargs) -> int:
    """The GPU time to ask ZeroGPU for, from /generate's own arguments: 60 s (its default, ample for VAR and the
    discrete MAR), or for MAR with diffusion head 1.5x the H100 estimate of these settings plus 15 s, when that
    is longer. A request shorter than the work is cut off; a longer one waits longer in the queue."""
    a = GENERATE_PARAMS.bind_partial(*args, **kwargs).arguments
    spec = a.get("model") or default_model()
    preset = edifice.presets.presets().get(spec)
    kind = preset.kind if preset else getattr(MODELS.items.get(spec), "kind", None)  # loaded Hub/folder models
    if kind != "mar-diffusion":
        return 60
    calls = int(a.get("steps", 16)) * int(a.get("diffusion_steps", 100)) * (1 + 0.1 * (int(a.get("num_images", 1)) - 1))
    return max(60, math.ceil(1.5 * calls * MAR_CALL_SECONDS + 15))


if spaces is not None:  # ZeroGPU: a GPU is attached for the duration of each generation only
    generate = spaces.GPU(duration=zero_gpu_seconds)(generate)


# -- layout ---------------------------------------------------------------------------------------------------
def initial_state() -> tuple[str, list[str], list[int], list[int]]:
    """Default model, its class choices, the scale toggles (its sizes plus the official 256/512 px lists, so API
    calls for any VAR model pass Gradio's choice check; the model's own list replaces them in the page) and
    its trained scales. A default that cannot load leaves the page working with a notice."""
    spec = default_model()
    sizes = set(edifice.generative.var.PATCH_NUMS_256) | set(edifice.generative.var.PATCH_NUMS_512)
    try:
        pipe = MODELS.get(check_spec(spec))
    except (EdificeError, gr.Error) as e:
        gr.Warning(f"default model {spec} could not be loaded: {e}")
        return spec, ["random"], sorted(sizes), []
    own = pipe.scales if pipe.kind == "var" else []
    return spec, class_choices(pipe), sorted(sizes | set(own)), own


def build_demo() -> gr.Blocks:
    spec, classes, all_sizes, own_sizes = initial_state()
    with gr.Blocks(title="edifice — watch MAR and VAR think") as demo:
        gr.Markdown("# edifice\nWatch image generators think: **VAR** paints coarse-to-fine, one scale at a time; "
                    "**MAR** reveals a token map step by step: the discrete one most confident first, the paper's "
                    "MAR (diffusion head) in a random order, each token drawn by a small diffusion model.")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model = gr.Dropdown(model_choices(), value=spec, label="Model", allow_custom_value=True,
                                    info="A preset, or a Hub repo id (org/name) holding an edifice checkpoint")
                info = gr.Markdown()
                class_name = gr.Dropdown(classes, value="random", label="Class", filterable=True,
                                         allow_custom_value=True)
                with gr.Group(visible=True) as var_box:
                    scales = gr.CheckboxGroup(all_sizes, value=own_sizes, label="Scales (VAR)",
                                              info="Token-map sizes to generate: start with 1, skip any others")
                    scale_msg = gr.Markdown()
                    with gr.Row():
                        top_k = gr.Number(0, label="Top-k", precision=0, minimum=0, info="0 = off")
                        top_p = gr.Slider(0.0, 1.0, 0.0, step=0.01, label="Top-p", info="0 = off")
                    more_smooth = gr.Checkbox(False, label="More smooth (Gumbel soft codes)")
                with gr.Group(visible=False) as mar_box:
                    steps = gr.Slider(1, 256, 16, step=1, label="Steps (MAR)")
                    schedule = gr.Radio(["cosine", "linear"], value="cosine", label="Schedule")
                    randomness = gr.Slider(0.0, 10.0, 0.0, step=0.5, label="Ranking randomness",
                                           info="Gumbel noise on the confidence ranking (MaskGIT), annealed")
                    with gr.Column(visible=False) as diff_box:
                        cfg_schedule = gr.Radio(["linear", "constant"], value="linear", label="CFG schedule",
                                                info="linear: guidance ramps from 1 to CFG as tokens fill in")
                        diffusion_steps = gr.Slider(2, 1000, 100, step=1, label="Diffusion steps",
                                                    info="per token, by the diffusion head (authors: 100)")
                        preview_every = gr.Slider(1, 64, 1, step=1, label="Preview every k steps",
                                                  info="decoding a preview is the costly part on a CPU")
                        wait_msg = gr.Markdown()
                preview = gr.Radio(["full", "fast", "latent"], value="full", label="Preview",
                                   info="full: decode the whole latent (exact); fast: decode a smaller latent "
                                        "(cheaper, blurry or blocky); latent: colours from a linear map of the "
                                        "latent (nearly free, no detail); the final image is always exact")
                temperature = gr.Slider(0.0, 2.0, 1.0, step=0.05, label="Temperature", info="0 = greedy")
                cfg = gr.Slider(0.0, 10.0, 1.5, step=0.1, label="CFG")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    randomize = gr.Checkbox(False, label="Randomize seed")
                num_images = gr.Slider(1, MAX_IMAGES, 1, step=1, label="Images")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary")
                    stop = gr.Button("Stop", variant="stop")
            with gr.Column(scale=2):
                with gr.Row():
                    live = gr.Image(label="Live", type="pil", format="png", height=300, interactive=False,
                                    elem_id="live")
                    tokens = gr.Image(label="Tokens", type="pil", format="png", height=300, interactive=False)
                gr.Markdown("**Tokens** — VAR: the current scale's token map, one colour per code (similar codes, "
                            "similar colours). MAR: dark = still hidden, colour = confidence of the chosen token "
                            "(purple 0 → yellow 1), white outline = revealed in this step. MAR with diffusion head: "
                            "colour = the token's latent channels (fixed projection).", elem_classes="legend")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                strip = gr.Image(label="Filmstrip", type="pil", format="png", height=90, interactive=False)
                timings = gr.Dataframe(headers=["step", "size / revealed", "ms"], label="Timings", interactive=False,
                                       max_height=260)
                with gr.Row():
                    gif = gr.File(label="Animation (GIF)")
                    webp = gr.File(label="Animation (WebP)")
                    png = gr.File(label="Final image (PNG)")

        controls = [info, class_name, var_box, mar_box, scales, steps, temperature, cfg, top_k, top_p, more_smooth,
                    schedule, randomness, diff_box, cfg_schedule, diffusion_steps, preview_every]
        model.change(on_model_change, model, controls, api_name="select_model", show_progress_on=info)
        demo.load(on_model_change, model, controls, api_visibility="private", show_progress_on=info)
        scales.change(explain_scales, [model, scales], scale_msg, api_visibility="private", show_progress="hidden")
        wait_inputs = [model, steps, diffusion_steps, cfg, num_images, preview, preview_every]
        for control in wait_inputs[1:]:
            control.change(expected_wait, wait_inputs, wait_msg, api_visibility="private", show_progress="hidden")
        run = go.click(generate, [model, class_name, scales, steps, temperature, top_k, top_p, cfg, more_smooth,
                                  schedule, randomness, seed, randomize, num_images, preview, cfg_schedule,
                                  diffusion_steps, preview_every],
                       [live, tokens, status, strip, timings, gif, webp, png], api_name="generate",
                       concurrency_id="gpu", concurrency_limit=1, show_progress_on=status)
        stop.click(None, None, None, cancels=[run], api_visibility="private")
    demo.queue(max_size=int(os.environ.get("EDIFICE_MAX_QUEUE", "16")))
    return demo


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-local", action="store_true", help="accept local checkpoint folders (not on a Space)")
    args = parser.parse_args()
    ALLOW_LOCAL = ALLOW_LOCAL or args.allow_local
    build_demo().launch(css=CSS)
