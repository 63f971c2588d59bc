"""Loading cost of a VAR-d16-sized checkpoint (random weights: the 310M transformer + the 109M VQ-VAE) from a
local folder into a ready pipeline, against just reading the file's bytes; peak RAM (and, on a GPU, peak GPU
memory) while loading.

    python benchmarks/bench_load.py [--dir /tmp/edifice-bench-load] [--device cuda] [--out load-gpu]

Two formats: the edifice folder (model.safetensors) and the official pair of .pth pickles
(``load_official_var``). Every measurement runs in a fresh process (page cache warm, as for a second load
from the Hub cache) and reports wall time and the process's peak RSS above its RSS after imports. Prints a
table, writes benchmarks/results/load.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from report import save_report

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch, edifice
from edifice.official import load_official_var
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 1e6
base = rss_mb()
what, device, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
cuda = device.startswith('cuda')
if cuda:
    torch.zeros(1, device=device)  # CUDA context first, outside the timed part
t0 = time.perf_counter()
if what == 'read':
    n = sum(len(open(p, 'rb').read()) for p in paths)
elif what == 'edifice':
    pipe = edifice.load(paths[0], device=device, dtype='fp32')
elif what == 'official':
    pipe = load_official_var(paths[0], paths[1], device=device)
if cuda:
    torch.cuda.synchronize()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB -> MB (Linux)
gpu = torch.cuda.max_memory_allocated() / 1e6 if cuda else None
print(json.dumps({{'seconds': seconds, 'peak_above_base_mb': peak - base, 'after_mb': rss_mb() - base,
                  'peak_gpu_mb': gpu}}))
"""


def measure(what: str, paths: list[Path], device: str = "cpu") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), what, device, *map(str, paths)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_checkpoints(folder: Path) -> tuple[Path, Path, Path]:
    """d16-sized random weights, saved once as an edifice folder and as the two official pickles."""
    sys.path.insert(0, str(ROOT))
    import torch

    from edifice.generative import var as var_mod

    edifice_dir, vae_pth, var_pth = folder / "var-d16-random", folder / "vae.pth", folder / "var_d16.pth"
    if not (edifice_dir / "model.safetensors").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        d = var_mod.recommended_defaults()
        torch.manual_seed(0)
        vae, var = var_mod.build_tokenizer(**d["tokenizer"]), var_mod.build(**d["model"])
        torch.save(vae.state_dict(), vae_pth)
        torch.save(var.state_dict(), var_pth)
        var_mod.VARPipeline(vae, var).save_pretrained(edifice_dir)
    return edifice_dir, vae_pth, var_pth


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/edifice-bench-load"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where the pipeline is loaded to (cpu, cuda)")
    ap.add_argument("--out", default="load", help="name of the JSON report in benchmarks/results/")
    args = ap.parse_args(argv)
    edifice_dir, vae_pth, var_pth = make_checkpoints(args.dir)
    cases = {"edifice folder": ("edifice", [edifice_dir], [edifice_dir / "model.safetensors"]),
             "official .pth pair": ("official", [vae_pth, var_pth], [vae_pth, var_pth])}
    rows = []
    for name, (what, paths, files) in cases.items():
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        measure("read", files)  # warm the page cache
        read = min((measure("read", files) for _ in range(args.repeats)), key=lambda r: r["seconds"])
        load = min((measure(what, paths, args.device) for _ in range(args.repeats)), key=lambda r: r["seconds"])
        rows.append({"format": name, "size_mb": size_mb, "read_s": read["seconds"], "load_s": load["seconds"],
                     "load_over_read": load["seconds"] / read["seconds"],
                     "peak_ram_mb": load["peak_above_base_mb"], "peak_over_size": load["peak_above_base_mb"] / size_mb,
                     "resident_after_mb": load["after_mb"], "device": args.device,
                     "peak_gpu_mb": load["peak_gpu_mb"]})
    machine = f"{platform.machine()} CPU, load to {args.device}, torch (subprocess), python {platform.python_version()}"
    print(f"\n{machine} · best of {args.repeats} fresh processes, page cache warm")
    print(f"{'format':<20} {'size (MB)':>9} {'read (s)':>8} {'load (s)':>8} {'load/read':>9} {'peak RAM (MB)':>13} "
          f"{'peak/size':>9} {'peak GPU (MB)':>13}")
    for r in rows:
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        print(f"{r['format']:<20} {r['size_mb']:>9.0f} {r['read_s']:>8.2f} {r['load_s']:>8.2f} "
              f"{r['load_over_read']:>8.2f}x {r['peak_ram_mb']:>13.0f} {r['peak_over_size']:>8.2f}x {gpu:>13}")
    return save_report(args.out, machine, rows)


if __name__ == "__main__":
    main()
