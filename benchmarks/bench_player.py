"""What the decode player costs: recording every step for the timeline (the image at native size, the token view
as PNG, a thumbnail file and the token statistics: 8 candidates, the drawn probability and the entropy at every
position) against the same streamed generation unrecorded and a plain ``generate``; and the memory one stored
run takes.

    python benchmarks/bench_player.py [--models emoji-var,emoji-mar,random:var-d16] [--batches 1,4] [--repeats 3]

Models as in bench_sampling.py (presets, folders, Hub ids or ``random:NAME``). Prints a table and writes
benchmarks/results/<--out>.json. Each number is the median of ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from bench_sampling import machine, make, sync  # noqa: E402
from report import save_report, timed  # noqa: E402

import app  # noqa: E402


def stream_only(pipe, **kw) -> None:
    for _ in pipe.stream(**kw):
        pass
    sync(pipe.device)


def stream_recorded(pipe, **kw) -> app.Run:
    """The app's recording of a run (app.Run.add per step), without the web server."""
    run = app.Run("bench", pipe.family, pipe.step_name, kw["seed"], kw["batch_size"])
    for step in pipe.stream(**kw):
        run.add(pipe, step)
    sync(pipe.device)
    run.cleanup()
    return run


def stats_ms(pipe, **kw) -> float:
    """Milliseconds of token_stats per step (what the uncertainty view and inspection read)."""
    records = list(pipe.stream(**kw))
    t0 = time.perf_counter()
    for step in records:
        pipe.token_stats(step)
    return 1e3 * (time.perf_counter() - t0) / len(records)


def bench(spec: str, batches, repeats: int) -> list[dict]:
    pipe = make(spec, "fp32")
    rows = []
    for B in batches:
        kw = dict(labels=1, batch_size=B, seed=0)
        stream_recorded(pipe, **kw)  # warm-up
        plain = timed(partial(pipe.generate, **kw), repeats, device=pipe.device)
        streamed = timed(partial(stream_only, pipe, **kw), repeats)
        recorded = timed(partial(stream_recorded, pipe, **kw), repeats)
        run = stream_recorded(pipe, **kw)
        rows.append(dict(model=spec, family=pipe.family, batch=B, steps=len(run.frames), plain_s=plain,
                         stream_s=streamed, recorded_s=recorded, recording_overhead=recorded / streamed,
                         token_stats_ms_per_step=stats_ms(pipe, **kw), run_bytes=run.nbytes(),
                         bytes_per_step=run.nbytes() / len(run.frames)))
        r = rows[-1]
        print(f"{spec:<18} {B:>2} {r['steps']:>5} {plain:>9.3f} {streamed:>10.3f} {recorded:>11.3f} "
              f"{r['recording_overhead']:>8.2f}x {r['token_stats_ms_per_step']:>12.2f} "
              f"{r['run_bytes'] / 2 ** 20:>9.2f} {r['bytes_per_step'] / 2 ** 10:>10.1f}", flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="emoji-var,emoji-mar")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="player")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    print(f"{machine()} · fp32 · previews full")
    print(f"{'model':<18} {'B':>2} {'steps':>5} {'plain (s)':>9} {'stream (s)':>10} {'recorded (s)':>11} "
          f"{'overhead':>9} {'stats (ms/step)':>12} {'run (MB)':>9} {'/step (KB)':>10}")
    rows = [r for spec in args.models.split(",") for r in bench(spec, [int(b) for b in args.batches.split(",")],
                                                                args.repeats)]
    return save_report(args.out, machine(), rows)


if __name__ == "__main__":
    main()
