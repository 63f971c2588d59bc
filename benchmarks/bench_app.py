"""Time from a request to the first streamed update and to the last, through gradio_client against the app
launched on 127.0.0.1, for the bundled models (VAR all scales; MAR 16 steps), with full and fast previews.

    python benchmarks/bench_app.py [--repeats 5]
    python benchmarks/bench_app.py --clients 4 8     # what a public server must survive, per client count

Prints a table and writes benchmarks/results/app.json. Each number is the median of ``--repeats`` requests
after one warm-up request. What the browser adds on top (fetching each frame's PNG) is not included.

``--clients N ...`` starts ``python app.py`` on 127.0.0.1 (a free port; loopback only) and, for each N, sends
N /generate requests (model, class and seed only) from N gradio_client clients at once, then cancels a
running generation (emoji-mar, 64 steps, 4 images) and records how long the server's CPU stays busy (used CPU
time sampled every 0.1 s; idle = under 0.25 CPU-seconds per second), then runs ``--generations`` requests one
after another and records the server's RSS after each. Everything is bounded: at most 16 clients,
``--timeout`` seconds per phase. The app's /generate settings are the only ones used: model, class_name, seed,
num_images and settings.
Writes benchmarks/results/app-clients.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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
    ap.add_argument("--clients", type=int, nargs="+", help="parallel client counts (at most 16 each)")
    ap.add_argument("--model", default="emoji-var", help="--clients: the model every request uses")
    ap.add_argument("--generations", type=int, default=50, help="--clients: sequential requests for the RSS trend")
    ap.add_argument("--timeout", type=float, default=600, help="--clients: seconds each phase may take")
    args = ap.parse_args(argv)
    if args.clients:
        return clients_report(args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    import app

    demo = app.build_demo()
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    client = Client(url, download_files=False, verbose=False)
    rows = []
    try:
        for model, extra in (("emoji-var", {}), ("emoji-mar", {"num_steps": 16})):
            for preview in ("full", "fast", "latent"):
                kw = dict(model=model, class_name="6", seed=0, settings={"preview": preview, **extra})
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



# -- --clients: a server under load ------------------------------------------------------------------------------
def clients_report(args) -> dict:
    import psutil
    from gradio_client import Client

    if not all(1 <= n <= 16 for n in args.clients):
        raise SystemExit("--clients: each count must be 1..16 (the app's queue holds 16)")
    server, url, log = start_server(args.timeout)
    proc = psutil.Process(server.pid)
    rows = []
    try:
        Client(url, verbose=False).predict(model=args.model, class_name="random", seed=0, api_name="/generate")
        for n in args.clients:
            rows.append({"clients": n, **parallel(url, n, args.model, args.timeout),
                         **cancel_idle(url, proc, args.timeout)})
        rss = rss_trend(url, proc, args.model, args.generations, args.timeout)
        for row in rows:
            row.update(rss)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\n{machine} · python app.py at {url} · model {args.model}")
    print(f"{'clients':>7} {'completed':>9} {'median (s)':>10} {'slowest (s)':>11} {'cancel -> idle (s)':>18}")
    for r in rows:
        print(f"{r['clients']:>7} {r['completed']:>9} {r['median_s']:>10.1f} {r['slowest_s']:>11.1f} "
              f"{r['cancel_idle_s']:>18.2f}{'' if r['cancelled_while_running'] else ' (run had ended)'}")
    rss = rows[0]["rss_mb"]
    print(f"RSS over {len(rss)} sequential generations: first {rss[0]:.0f} MB, max {max(rss):.0f} MB, "
          f"last {rss[-1]:.0f} MB")
    return save_report("app-clients", machine, rows)


def start_server(timeout: float):
    """``python app.py`` on a free loopback port; returns (process, url, log file) once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tempfile.NamedTemporaryFile("w", prefix="edifice-app-", suffix=".log", delete=False)  # caller closes
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return server, url, log
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit(f"python app.py did not start; see {log.name}") from None
            time.sleep(1)


def parallel(url: str, n: int, model: str, timeout: float) -> dict:
    """n clients, each sending one /generate at the same moment; how many complete and when."""
    from gradio_client import Client

    clients = [Client(url, verbose=False, download_files=False) for _ in range(n)]
    done, start = {}, threading.Barrier(n + 1)

    def one(i):
        start.wait()
        t0 = time.perf_counter()
        clients[i].predict(model=model, class_name="random", seed=i, api_name="/generate")
        done[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=max(0.0, timeout - (time.perf_counter() - t0)))
    for c in clients:
        c.close()
    return {"completed": len(done), "slowest_s": max(done.values(), default=float("nan")),
            "median_s": statistics.median(done.values()) if done else float("nan")}


def cancel_idle(url: str, proc, timeout: float) -> dict:
    """Seconds from cancelling a running generation (emoji-mar, 64 steps, 4 images: several seconds on a CPU)
    until the server's CPU is idle, and whether it was still running when cancelled."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    job = client.submit(model="emoji-mar", class_name="random", seed=1, num_images=4, settings={"num_steps": 64},
                        api_name="/generate")
    deadline = time.monotonic() + timeout
    while len(job.outputs()) < 4 and not job.done() and time.monotonic() < deadline:  # the run is streaming
        time.sleep(0.01)
    running = not job.done()
    job.cancel()
    cancelled, last = time.perf_counter(), _cpu(proc)
    while time.perf_counter() - cancelled < 30:
        time.sleep(0.1)
        now = _cpu(proc)
        if now - last < 0.025:  # under 0.25 CPU-seconds per second in this 0.1 s
            break
        last = now
    idle = time.perf_counter() - cancelled
    client.close()
    return {"cancel_idle_s": round(idle, 2), "cancelled_while_running": running}


def _cpu(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def rss_trend(url: str, proc, model: str, generations: int, timeout: float) -> dict:
    """The server's RSS (MB) after each of ``generations`` requests sent one after another."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    rss, t0 = [], time.monotonic()
    for seed in range(generations):
        if time.monotonic() - t0 > timeout:
            break
        client.predict(model=model, class_name="random", seed=seed, api_name="/generate")
        rss.append(proc.memory_info().rss / 2 ** 20)
    client.close()
    return {"generations": len(rss), "rss_mb": [round(r, 1) for r in rss]}


if __name__ == "__main__":
    main()
