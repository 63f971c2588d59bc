"""Full, fast and latent previews side by side: every streamed frame of one generation per mode and model, and the time
each run took, as one picture for the README.

    python benchmarks/preview_compare.py [--models emoji-var,emoji-mar] [--seed 3] [--repeats 5]

Writes benchmarks/results/preview_modes.png (a row of frames per model and mode, labelled with the
median streamed time) and benchmarks/results/preview_compare.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_sampling import machine  # noqa: E402
from report import RESULTS, save_report  # noqa: E402

import edifice  # noqa: E402
from edifice import render  # noqa: E402

LABEL_W, THUMB = 230, 64


def frames_and_time(pipe, mode: str, seed: int, repeats: int) -> tuple[list[Image.Image], float]:
    kw = dict(labels=0, seed=seed, preview=mode, **({"num_steps": 16} if pipe.kind == "mar" else {}))
    frames = [render.image_grid(s.image, target=THUMB, gap=0) for s in pipe.stream(**kw)]  # also the warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in pipe.stream(**kw):
            pass
        times.append(time.perf_counter() - t0)
    return frames, statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="emoji-var,emoji-mar")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rows, strips = [], []
    for spec in args.models.split(","):
        pipe = edifice.load(spec, device="cpu")
        for mode in ("full", "fast", "latent"):
            frames, seconds = frames_and_time(pipe, mode, args.seed, args.repeats)
            rows.append({"model": spec, "preview": mode, "frames": len(frames), "streamed_s": seconds})
            strips.append((f"{spec} · {mode}\n{seconds * 1e3:.0f} ms streamed", render.filmstrip(frames, 16)))
            print(f"{spec:<10} {mode:<5} {len(frames):>3} frames {seconds * 1e3:8.1f} ms")
    width = LABEL_W + max(s.width for _, s in strips)
    sheet = Image.new("RGB", (width, sum(s.height + 8 for _, s in strips)), "white")
    draw, font, y = ImageDraw.Draw(sheet), ImageFont.load_default(size=14), 0
    for label, strip in strips:
        draw.multiline_text((6, y + 6), label, fill=(20, 20, 20), font=font)
        sheet.paste(strip, (LABEL_W, y))
        y += strip.height + 8
    RESULTS.mkdir(parents=True, exist_ok=True)
    sheet.save(RESULTS / "preview_modes.png")
    return save_report("preview_compare", machine(), rows)


if __name__ == "__main__":
    main()
