"""GPU checks of VAR sampling at official sizes (random weights): which SDPA kernel runs, and the per-scale
transformer pass run eagerly, replayed as CUDA graphs (``cuda_graphs=True``) and under ``torch.compile``.

    python benchmarks/bench_gpu.py [--models var-d16,var-d30] [--dtypes bf16,fp16,fp32] [--batches 1,8]
        [--compile var-d16] [--out gpu]

SDPA: the ATen attention ops that one generation ran (from a torch.profiler trace: the op's name says the
backend PyTorch picked, e.g. ``_scaled_dot_product_flash_attention``) with their CUDA time, then each backend
forced in turn with ``torch.nn.attention.sdpa_kernel`` (an error means it cannot take these inputs), timed.

Timing: plain generations (no previews; top-k 900, top-p 0.96, CFG 1.5, as the official recipe; eager unless the
variant says otherwise), the median
of ``--repeats`` after a first call that is reported on its own (it includes graph capture or compilation).
Tokens of every variant are compared with the eager ones at the same seed. ``--compile`` names the models whose
blocks are also tried under ``torch.compile`` (default mode, and "reduce-overhead", which adds PyTorch's own
CUDA graphs); compiling takes minutes. Prints tables, writes benchmarks/results/<--out>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_sampling import DTYPES, machine, make  # noqa: E402
from report import save_report  # noqa: E402

SETTINGS = dict(cfg=1.5, top_k=900, top_p=0.96, seed=0, preview=False, cuda_graphs=False)


@torch.inference_mode()
def run(pipe, batch: int, **kw) -> tuple[float, list[torch.Tensor], list[float]]:
    """(seconds, token maps of every scale, seconds per scale) of one plain generation."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    steps = list(pipe.stream(labels=list(range(batch)), **{**SETTINGS, **kw}))
    pipe.decode(steps[-1])
    torch.cuda.synchronize()
    return time.perf_counter() - t0, [s.tokens for s in steps], [s.seconds for s in steps]


def timed(pipe, batch: int, repeats: int, **kw) -> dict:
    first, tokens, _ = run(pipe, batch, **kw)
    torch.cuda.reset_peak_memory_stats()
    runs = [run(pipe, batch, **kw) for _ in range(repeats)]
    return {"first_s": first, "median_s": statistics.median(r[0] for r in runs), "tokens": tokens,
            "per_scale_ms": [round(1e3 * statistics.median(r[2][j] for r in runs), 3) for j in range(len(tokens))],
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9}


def agreement(tokens, reference) -> float:
    """Fraction of token ids equal to the reference run's, over all scales."""
    same = sum(int((a == b).sum()) for a, b in zip(tokens, reference, strict=True))
    return same / sum(a.numel() for a in reference)


def attention_ops(pipe, batch: int) -> dict[str, float]:
    """ATen SDPA ops of one generation and their CUDA time in ms."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        run(pipe, batch)
    ops = {}
    for e in prof.key_averages():
        if e.key.startswith(("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention",
                             "aten::_cudnn_attention")):
            ops[e.key] = round(getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) / 1e3, 3)
    return ops


def forced_backends(pipe, batch: int, repeats: int) -> dict[str, str]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                out[backend.name] = f"{1e3 * timed(pipe, batch, repeats)['median_s']:.1f} ms"
        except RuntimeError as e:
            out[backend.name] = "unavailable: " + str(e).strip().splitlines()[0][:160]
    return out


@torch.inference_mode()
def decoder_costs(vae, batches, repeats: int) -> list[dict]:
    """Milliseconds per preview of one 16x16 latent (what a streamed VAR adds per scale): the exact decode as
    the pipeline runs it (fp32), the same under bf16 autocast, fast previews of an 8x8 and a 4x4 latent, and
    the linear latent map."""
    rows = []
    for batch in batches:
        f = torch.randn(batch, vae.Cvae, 16, 16, device=vae.post_quant_conv.weight.device)
        cases = {"full": lambda f=f: vae.preview(f), "fast 8x8": lambda f=f: vae.preview(f, 8),
                 "fast 4x4": lambda f=f: vae.preview(f, 4), "latent": lambda f=f: vae.latent_preview(f)}

        def autocast(f=f):
            with torch.autocast(f.device.type, dtype=torch.bfloat16):
                return vae.preview(f)

        cases["full, bf16 autocast"] = autocast
        for name, fn in cases.items():
            fn(), fn()
            times = []
            for _ in range(repeats):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            rows.append({"section": "decoder", "batch": batch, "preview": name,
                         "ms": 1e3 * statistics.median(times)})
    print("\npreview decode of a 16x16 latent (ms): " + "; ".join(
        f"B{r['batch']} {r['preview']} {r['ms']:.2f}" for r in rows))
    return rows


@contextlib.contextmanager
def compiled_blocks(var, mode: str):
    """The transformer blocks under torch.compile for the duration of the block."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # one graph per scale shape: allow them all
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    blocks = var.blocks
    var.blocks = nn.ModuleList(torch.compile(b, mode=mode) for b in blocks)
    try:
        yield
    finally:
        var.blocks = blocks
        torch._dynamo.reset()


def bench_model(name: str, dtype: str, batches, repeats: int, compile_too: bool, decoder: bool) -> list[dict]:
    pipe = make(f"random:{name}", dtype)
    var = pipe.var
    rows = decoder_costs(pipe.vae, batches, repeats) if decoder else []
    weights_gb = sum(p.numel() * p.element_size() for p in var.parameters()) / 1e9
    for batch in batches:
        eager = timed(pipe, batch, repeats)
        row = {"model": name, "dtype": dtype, "batch": batch, "weights_gb": weights_gb,
               "attention_ops_ms": attention_ops(pipe, batch),
               "variants": {"eager": eager}}
        if batch == 1:
            row["forced_sdpa"] = forced_backends(pipe, batch, repeats)
        variants = {"cuda graphs": (contextlib.nullcontext(), dict(cuda_graphs=True))}
        if compile_too:
            variants["compile"] = (compiled_blocks(var, "default"), {})
            variants["compile reduce-overhead"] = (compiled_blocks(var, "reduce-overhead"), {})
        for vname, (ctx, kw) in variants.items():
            try:
                with ctx:
                    row["variants"][vname] = timed(pipe, batch, repeats, **kw)
            except Exception as e:  # a variant that fails is a finding, not the end of the run
                row["variants"][vname] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"}
        var._graphs = (None,)
        for v in row["variants"].values():
            if "tokens" in v:
                v["token_agreement"] = agreement(v.pop("tokens"), eager["tokens"]) if v is not eager else 1.0
        eager.pop("tokens", None)
        rows.append({"section": "var", **row})
        print_row(row)
    del pipe, var
    torch.cuda.empty_cache()
    return rows


def print_row(r: dict) -> None:
    print(f"\n{r['model']} {r['dtype']} batch {r['batch']} · weights {r['weights_gb']:.2f} GB · "
          f"SDPA ops: {r['attention_ops_ms']}")
    for backend, res in r.get("forced_sdpa", {}).items():
        print(f"  forced {backend:<20} {res}")
    print(f"  {'variant':<26} {'first (ms)':>10} {'median (ms)':>11} {'images/s':>8} {'vs eager':>8} "
          f"{'tokens = eager':>14} {'peak GPU (GB)':>13}")
    base = r["variants"]["eager"]["median_s"]
    for name, v in r["variants"].items():
        if "error" in v:
            print(f"  {name:<26} {v['error']}")
            continue
        print(f"  {name:<26} {1e3 * v['first_s']:>10.1f} {1e3 * v['median_s']:>11.2f} "
              f"{r['batch'] / v['median_s']:>8.1f} {base / v['median_s']:>7.2f}x {v['token_agreement']:>14.4f} "
              f"{v['peak_gpu_gb']:>13.2f}")
    print("  per scale (ms): " + "; ".join(f"{n} {v['per_scale_ms']}" for n, v in r["variants"].items()
                                           if "per_scale_ms" in v))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="var-d16,var-d30")
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", default="", help="models whose blocks are also tried under torch.compile")
    ap.add_argument("--out", default="gpu")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA device")
    assert set(args.dtypes.split(",")) <= set(DTYPES), args.dtypes
    batches = [int(b) for b in args.batches.split(",")]
    print(machine())
    rows = []
    for name in args.models.split(","):
        for dtype in args.dtypes.split(","):
            rows += bench_model(name, dtype, batches, args.repeats, name in args.compile.split(","), not rows)
            save_report(args.out, machine(), rows)  # after every model, so a cut-off run keeps what it measured
    return save_report(args.out, machine(), rows)


if __name__ == "__main__":
    main()
