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
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
