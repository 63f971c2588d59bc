"""Time from a request to the first streamed update and to the last, through gradio_client against the app
launched on 127.0.0.1, for the bundled models (VAR all scales; MAR 16 steps), with full and fast previews.

    python benchmarks/bench_app.py [--repeats 5]

Prints a table and writes benchmarks/results/app.json. Each number is the median of ``--repeats`` requests
after one warm-up request. What the browser adds on top (fetching each frame's PNG) is not included.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from report import save_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(client, **kw) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    job = client.submit(**kw, api_name="/generate")
    first, n = None, 0
    for _ in job:
        first = first if first is not None else time.perf_counter() - t0
        n += 1
    job.result()
    return first, time.perf_counter() - t0, n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    import app

    demo = app.build_demo()
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    client = Client(url, download_files=False, verbose=False)
    rows = []
    try:
        for model, extra in (("emoji-var", {}), ("emoji-mar", {"steps": 16})):
            for preview in ("full", "fast", "latent"):
                kw = dict(model=model, class_name="6", seed=0, preview=preview, **extra)
                one(client, **kw)  # warm-up (loads the model)
                runs = [one(client, **kw) for _ in range(args.repeats)]
                rows.append({"model": model, "preview": preview, "updates": runs[0][2],
                             "first_update_s": statistics.median(r[0] for r in runs),
                             "last_update_s": statistics.median(r[1] for r in runs)})
    finally:
        client.close()
        demo.close()
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\n{machine} · gradio_client against {url}")
    print(f"{'model':<10} {'preview':<7} {'updates':>7} {'first update (s)':>16} {'last update (s)':>15}")
    for r in rows:
        print(f"{r['model']:<10} {r['preview']:<7} {r['updates']:>7} {r['first_update_s']:>16.3f} "
              f"{r['last_update_s']:>15.3f}")
    return save_report("app", machine, rows)


if __name__ == "__main__":
    main()
