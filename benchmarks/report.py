"""What the benchmarks share: the median wall time of a call, and the JSON every benchmark writes to
benchmarks/results/ (date, machine and the table's rows)."""

import json
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def save_report(name: str, machine: str, rows: list[dict]) -> dict:
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def timed(fn, repeats: int = 1, warmup: bool = False, device: torch.device | None = None) -> float:
    """Median seconds of ``repeats`` calls of ``fn()`` (after one untimed call with ``warmup``), waiting for a
    CUDA ``device`` to finish each one."""
    return timed_in_turn([fn], repeats, warmup, device)[0]


def timed_in_turn(fns, repeats: int = 1, warmup: bool = False, device: torch.device | None = None) -> list[float]:
    """Median seconds of each of ``fns``, called in turn ``repeats`` times (after one untimed round with
    ``warmup``). On a shared machine whose speed drifts by 20% between minutes, times taken in turn can be
    compared with each other; times taken minutes apart cannot."""
    if warmup:
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]
