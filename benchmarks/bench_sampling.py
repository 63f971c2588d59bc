"""Sampling speed of the streamed decode: time to the first record, per step and per image, and the
streaming overhead (streamed with a preview at every step / a plain ``generate``, which decodes the final image
once), at batch 1 and 8, in each dtype, with full, fast and latent previews; for VAR
also the KV-cache path against a no-cache recompute of the same model (every scale re-runs the whole
prefix with the block-causal mask).

    python benchmarks/bench_sampling.py [--models emoji-var,emoji-mar] [--dtypes fp32,bf16] [--repeats 3]
    python benchmarks/bench_sampling.py --models random:var-d16,random:mar-b --batches 1 --repeats 1 \
        --mar-steps 16 --diffusion-steps 25 --out sampling-official-size

Models: presets, folders or Hub ids, or ``random:NAME``, a randomly initialised model of an official size
(nothing to download): ``var-d16``, ``var-d30`` (VAR with the official VQ-VAE), ``mar-b-discrete`` (the
discrete MAR at MAR-B's size: 24 blocks of 768 over a 16x16 map of 4096 codes) and ``mar-b`` / ``mar-l`` /
``mar-h`` (the official MAR-B/L/H with its diffusion head and the KL-16 VAE; the head's output layer is
zeroed as in the official init, so the random sampler stays finite). Timings do not depend on the weights'
values. MAR with diffusion head uses ``--mar-steps`` AR steps and ``--diffusion-steps`` diffusion steps.

Prints the machine, torch version and dtype with every table and writes benchmarks/results/<--out>.json (with
plain images per second and, on a GPU, the peak GPU memory of the last streamed run).
Each number is the median of ``--repeats`` runs after one warm-up run (``--no-warmup``: none).
On CUDA, VAR replays each scale and MAR with diffusion head each diffusion loop as a CUDA graph (the default;
the warm-up run captures them); ``--eager`` times them without. ``--previews`` picks the streamed modes ('' times
plain generations only).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import save_report  # noqa: E402

import edifice  # noqa: E402
from edifice import loading  # noqa: E402
from edifice.generative import mar, mar_diffusion, var  # noqa: E402
from edifice.generative.var import VAR  # noqa: E402
from edifice.pipeline import resolve_labels  # noqa: E402
from edifice.tokenizers.klvae import KLVAE  # noqa: E402
from edifice.tokenizers.vqvae import VQVAE, VQVAEConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gpu_gb(device: torch.device) -> float | None:
    """Peak GPU memory since the last reset, GB; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def timed_stream(pipe, **kw) -> tuple[float, float, list[float]]:
    """(seconds to the first record, seconds in all, seconds per step) of one streamed generation."""
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)
    t0 = time.perf_counter()
    first, per_step = None, []
    for step in pipe.stream(**kw):
        first = first if first is not None else time.perf_counter() - t0
        per_step.append(step.seconds)
    sync(pipe.device)
    return first, time.perf_counter() - t0, per_step


@torch.inference_mode()
def var_recompute(var: VAR, vae, labels, cfg: float, seed: int) -> float:
    """Greedy VAR sampling without a KV cache: scale k runs the whole prefix 0..k again (block-causal mask)."""
    device = var.lvl_1L.device
    rng = torch.Generator(device=device).manual_seed(seed)
    label_B = resolve_labels(labels, 1, var.num_classes, rng, device)
    B, K = label_B.shape[0], len(var.patch_nums)
    labels_2B = torch.cat((label_B, torch.full_like(label_B, var.num_classes)))
    t0 = time.perf_counter()
    idx = []
    for si, pn in enumerate(var.patch_nums):
        ids = list(range(si + 1))
        x = vae.quantize.idx_to_var_input([*idx, None], ids) if si else None
        logits = var(labels_2B, x.repeat(2, 1, 1) if x is not None else None, ids)[:, -pn * pn:]
        t = cfg * si / (K - 1)
        idx.append(((1 + t) * logits[:B] - t * logits[B:]).argmax(-1))
    vae.fhat_to_img(vae.quantize.idx_to_fhat(idx))
    sync(device)
    return time.perf_counter() - t0


def median(xs):
    return statistics.median(xs)


def timed_generate(pipe, **kw) -> float:
    """Seconds of a plain generation: no previews, the final image decoded once."""
    t0 = time.perf_counter()
    pipe.generate(**kw)
    sync(pipe.device)
    return time.perf_counter() - t0


def random_model(name: str):
    """A randomly initialised pipeline of an official size (see the module docstring), on the CPU in fp32."""
    rec = var.recommended_defaults()
    if name in ("var-d16", "var-d30"):
        depth = int(name[-2:])
        model = dict(rec["model"], hidden_size=64 * depth, num_layers=depth, num_heads=depth)
        return var.VARPipeline(var.build_tokenizer(**rec["tokenizer"]), var.build(**model),
                               defaults=rec["sampling"])
    if name == "mar-b-discrete":
        tok = VQVAE(VQVAEConfig(vocab_size=4096, z_channels=32, ch=160, patch_nums=(16,)))
        model = mar.MAR(mar.MARConfig(vocab_size=4097, embed_dim=768, num_layers=24, num_heads=12, seq_len=256,
                                      num_classes=1000, dropout=0.0))
        return mar.MARPipeline(tok, model, defaults=dict(num_steps=16, cfg=3.0, temperature=1.0))
    if name in ("mar-b", "mar-l", "mar-h"):
        size = {"b": "base", "l": "large", "h": "huge"}[name[-1]]
        model = mar_diffusion.DiffusionMAR(mar_diffusion.CONFIGS[f"mar_{size}"])
        torch.nn.init.zeros_(model.diffloss.net.final_layer.linear.weight)
        return mar_diffusion.DiffusionMARPipeline(KLVAE(), model, defaults=dict(cfg=2.9, cfg_schedule="linear"))
    raise SystemExit(f"unknown random model {name!r}: var-d16, var-d30, mar-b-discrete, mar-b, mar-l, mar-h")


def make(spec: str, dtype_name: str):
    if spec.startswith("random:"):
        device = loading.resolve_device("auto")
        with torch.device(device):  # random init where the model runs: seconds on a GPU, a minute for d30 on CPU
            pipe = random_model(spec.removeprefix("random:"))
        return loading.place(pipe, device, dtype_name)
    return edifice.load(spec, dtype=dtype_name)


def bench(spec: str, dtype_name: str, repeats: int, batches=(1, 8), mar_steps: int = 64,
          diffusion_steps: int = 100, warmup: bool = True, eager: bool = False,
          modes=("full", "fast", "latent")) -> list[dict]:
    pipe = make(spec, dtype_name)
    kw_model = {"mar": dict(num_steps=16), "var": {},
                "mar-diffusion": dict(num_steps=mar_steps, num_sampling_steps=diffusion_steps)}[pipe.kind]
    if eager and pipe.kind != "mar":
        kw_model["cuda_graphs"] = False
    name = spec + (" eager" if eager and pipe.device.type == "cuda" and pipe.kind != "mar" else "")
    rows = []
    for batch in batches:
        kw = dict(labels=list(range(batch)), seed=0, **kw_model)
        if warmup:
            timed_generate(pipe, **kw)
        plain = median(timed_generate(pipe, **kw) for _ in range(repeats))
        if not modes:
            rows.append({"model": name, "kind": pipe.kind, "dtype": dtype_name, "batch": batch, "preview": "none",
                         "settings": kw_model, "plain_s": plain, "per_image_s": plain / batch,
                         "images_per_s": batch / plain, "peak_gpu_gb": peak_gpu_gb(pipe.device)})
        for mode in modes:
            if warmup:
                timed_stream(pipe, preview=mode, **kw)
            runs = [timed_stream(pipe, preview=mode, **kw) for _ in range(repeats)]
            total, steps = median(r[1] for r in runs), len(runs[0][2])
            rows.append({"model": name, "kind": pipe.kind, "dtype": dtype_name, "batch": batch,
                         "preview": mode, "steps": steps, "settings": kw_model,
                         "first_record_s": median(r[0] for r in runs), "total_s": total, "plain_s": plain,
                         "per_image_s": total / batch, "images_per_s": batch / plain,
                         "peak_gpu_gb": peak_gpu_gb(pipe.device), "per_step_ms": 1e3 * total / steps,
                         "streaming_overhead": total / plain})
        row = rows[-max(len(modes), 1)]
        if pipe.kind == "var" and batch == 1:
            cached = [timed_stream(pipe, preview=False, labels=[0], seed=0, top_k=1, **kw_model)[1]
                      for _ in range(repeats)]
            recompute = [var_recompute(pipe.var, pipe.vae, [0], pipe.defaults.get("cfg", 1.5), 0)
                         for _ in range(repeats)]
            row["kv_cache_s"], row["recompute_s"] = median(cached), median(recompute)
            row["recompute_over_kv_cache"] = row["recompute_s"] / row["kv_cache_s"]
    return rows


def machine() -> str:
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{device}; torch {torch.__version__}; python {platform.python_version()}"


def print_table(rows: list[dict], header: str) -> None:
    print(f"\n{header}")
    print(f"{'model':<24} {'dtype':<5} {'B':>2} {'preview':<7} {'steps':>5} {'first (ms)':>10} {'stream (s)':>10} "
          f"{'plain (s)':>9} {'/image (s)':>10} {'/step (ms)':>10} {'overhead':>8} {'kv cache / recompute (s)':>25}")
    for r in rows:
        if r["preview"] == "none":
            print(f"{r['model']:<24} {r['dtype']:<5} {r['batch']:>2} {'none':<7} {'':>5} {'':>10} {'':>10} "
                  f"{r['plain_s']:>9.3f} {r['per_image_s']:>10.3f}")
            continue
        kv = f"{r['kv_cache_s']:.3f} / {r['recompute_s']:.3f} ({r['recompute_over_kv_cache']:.2f}x)" \
            if "kv_cache_s" in r else ""
        print(f"{r['model']:<24} {r['dtype']:<5} {r['batch']:>2} {r['preview']:<7} {r['steps']:>5} "
              f"{1e3 * r['first_record_s']:>10.1f} {r['total_s']:>10.3f} {r['plain_s']:>9.3f} "
              f"{r['per_image_s']:>10.3f} {r['per_step_ms']:>10.1f} {r['streaming_overhead']:>7.2f}x {kv:>25}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="emoji-var,emoji-mar")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--mar-steps", type=int, default=64, help="AR steps of MAR with diffusion head")
    ap.add_argument("--diffusion-steps", type=int, default=100, help="its diffusion steps")
    ap.add_argument("--out", default="sampling", help="name of the JSON report in benchmarks/results/")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up runs (for runs of many seconds)")
    ap.add_argument("--eager", action="store_true", help="VAR and MAR with diffusion head without CUDA graphs")
    ap.add_argument("--previews", default="full,fast,latent", help="streamed modes to time ('' = plain only)")
    args = ap.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    all_rows = []
    for dtype_name in args.dtypes.split(","):
        rows = [r for spec in args.models.split(",")
                for r in bench(spec, dtype_name, args.repeats, batches, args.mar_steps, args.diffusion_steps,
                               not args.no_warmup, args.eager, [m for m in args.previews.split(",") if m])]
        print_table(rows, f"{machine()} · dtype {dtype_name} (generator; tokenizer fp32)")
        all_rows += rows
    return save_report(args.out, machine(), all_rows)


if __name__ == "__main__":
    main()
