"""FractalGen sampling speed: seconds per image for a plain ``generate`` and the streaming overhead (every
top-level step streamed, and ``stream_depth`` at its deepest, a record after every pixel-head call), at batch 1.

    python benchmarks/bench_fractalgen.py [--models random:fractalmar_in64,random:fractalar_in64] \
        [--num-iter 8,4] [--cfg 5.0] [--repeats 1] [--out fractalgen]

Models: presets, folders or Hub ids, or ``random:NAME``, a randomly initialised official size (``fractalar_in64``,
``fractalmar_in64``, ``fractalmar_{base,large,huge}_in256``; nothing to download; timings do not depend on the
weights' values). ``--num-iter`` sets the MAR levels' steps (the README's 64,16 at 64 px take minutes on a small
CPU; AR levels always take one step per patch, so FractalAR-64 runs its full 256 x 16 steps whatever it says).
``--top-steps N`` times only the first N top-level steps of a streamed image and scales the time per step to the
whole image (for FractalAR-64, whose 256 x 16 AR steps take too long on a small CPU to run four times): every
top-level step does the same work (one patch's level-1 steps and pixels) but for a KV cache one entry longer.
Prints the machine and torch version with the table and writes benchmarks/results/<--out>.json. Each number is
the median of ``--repeats`` runs after one warm-up round (``--no-warmup``: none). What is compared is timed in
turn, call by call (plain, streamed, streamed deep; ours and the authors' pixel head), so a shared machine's drift
between minutes moves them together.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import save_report, timed, timed_in_turn  # noqa: E402

import edifice  # noqa: E402
from edifice.generative.fractalgen import (  # noqa: E402
    CONFIGS,
    FractalGen,
    FractalGenPipeline,
    PixelTokenizer,
    PixelTokenizerConfig,
)


def build(spec: str, device: str) -> FractalGenPipeline:
    if spec.startswith("random:"):
        torch.manual_seed(0)
        model = FractalGen(CONFIGS[spec.removeprefix("random:")])
        return FractalGenPipeline(PixelTokenizer(PixelTokenizerConfig(model.cfg.img_size)), model.to(device))
    return edifice.load(spec, device=device, dtype="fp32")


def official_style_head(head, cond_RC: torch.Tensor, temperature: float, rng: torch.Generator) -> torch.Tensor:
    """The authors' PixelLoss.sample without CFG: the whole [cond, r, g, b] sequence runs once per channel."""
    ids = torch.zeros(cond_RC.shape[0], 3, dtype=torch.long)
    for i in range(3):
        torch.randn((cond_RC.shape[0], 3), generator=rng)
        logits = head.logits(ids, cond_RC)[:, i] * temperature
        ids[:, i] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=rng)[:, 0]
    return ids


@torch.inference_mode()
def head_rows(pipe: FractalGenPipeline, rows: int, repeats: int) -> dict:
    """One pixel-head call on ``rows`` conditions: ours (KV cache, one token per channel) against the authors'
    way (three full passes); the same ids either way."""
    head = pipe.model.levels()[-1]
    cond = torch.randn(rows, head.cond_proj.in_features, generator=torch.Generator().manual_seed(0))
    ours = head.sample(cond, 1.02, 1.0, 1e-4, torch.Generator().manual_seed(1))
    theirs = official_style_head(head, cond, 1.02, torch.Generator().manual_seed(1))
    t_ours, t_theirs = timed_in_turn([lambda: head.sample(cond, 1.02, 1.0, 1e-4, torch.Generator()),
                                      lambda: official_style_head(head, cond, 1.02, torch.Generator())],
                                     repeats, True, pipe.device)
    return dict(head_rows=rows, head_ms=t_ours * 1e3, head_official_style_ms=t_theirs * 1e3,
                head_same_ids=bool(torch.equal(ours, theirs)))


def first_steps(pipe: FractalGenPipeline, settings: dict, n: int) -> None:
    """Stream an image and stop after its first ``n`` top-level steps."""
    for i, _ in enumerate(pipe.stream(**settings)):
        if i + 1 == n:
            break


def measure(spec: str, args, device: torch.device) -> dict:
    pipe = build(spec, args.device)
    K = pipe.model.cfg.num_levels
    iters = [int(x) for x in args.num_iter.split(",")][:K - 1]
    iters += [iters[-1]] * (K - 1 - len(iters))
    settings = dict(labels=[207], num_iter_list=iters, cfg=args.cfg, cfg_schedule="constant", temperature=1.02,
                    seed=0)
    steps = [pipe.model.cfg.seq_len(l) if pipe.model.cfg.generator_type_list[l] == "ar"
             else min(pipe.model.cfg.seq_len(l), n) for l, n in enumerate(iters)]
    if args.top_steps:
        n = min(args.top_steps, steps[0])
        part = timed(lambda: first_steps(pipe, settings, n), args.repeats, not args.no_warmup, device)
        return dict(model=spec, batch=1, cfg=args.cfg, steps=steps, top_steps_timed=n, partial_s=part,
                    s_per_top_step=part / n, image_s_estimate=part / n * steps[0], **head_rows(pipe, 32, 5))
    counts = {}

    def stream(depth: int):
        counts[depth] = sum(1 for _ in pipe.stream(**settings, stream_depth=depth))

    plain, top, deep = timed_in_turn([lambda: pipe.generate(**settings), lambda: stream(0), lambda: stream(K - 1)],
                                     args.repeats, not args.no_warmup, device)
    return dict(model=spec, batch=1, cfg=args.cfg, steps=steps, generate_s=plain, stream_s=top,
                stream_records=counts[0], deep_stream_s=deep, deep_records=counts[K - 1],
                stream_overhead=top / plain - 1, deep_overhead=deep / plain - 1, **head_rows(pipe, 32, 5))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="random:fractalmar_in64,random:fractalar_in64")
    parser.add_argument("--num-iter", default="8,4", help="MAR levels' steps, comma-separated (AR levels ignore it)")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance (doubles the rows when != 1)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--top-steps", type=int, default=0,
                        help="time only this many top-level steps and scale to the image (0: whole images)")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="fractalgen")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    machine = (f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}, {device.type}" +
               (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    rows = [measure(spec, args, device) for spec in args.models.split(",")]
    print(f"\n{machine}")
    if args.top_steps:
        print(f"{'model':<30} {'steps':<12} {'cfg':>4} {'timed steps':>11} {'s/step':>8} {'image (s, est.)':>15} "
              f"{'head ms (32 px)':>16} {'authors-style':>13}")
        for r in rows:
            print(f"{r['model']:<30} {','.join(map(str, r['steps'])):<12} {r['cfg']:>4g} {r['top_steps_timed']:>11} "
                  f"{r['s_per_top_step']:>8.3f} {r['image_s_estimate']:>15.1f} {r['head_ms']:>16.2f} "
                  f"{r['head_official_style_ms']:>13.2f}")
        return save_report(args.out, machine, rows)
    print(f"{'model':<30} {'steps':<12} {'cfg':>4} {'generate (s)':>12} {'stream (s)':>10} {'records':>7} "
          f"{'deep (s)':>9} {'records':>8} {'head ms (32 px)':>16} {'authors-style':>13}")
    for r in rows:
        print(f"{r['model']:<30} {','.join(map(str, r['steps'])):<12} {r['cfg']:>4g} {r['generate_s']:>12.2f} "
              f"{r['stream_s']:>10.2f} {r['stream_records']:>7} {r['deep_stream_s']:>9.2f} {r['deep_records']:>8} "
              f"{r['head_ms']:>16.2f} {r['head_official_style_ms']:>13.2f}")
    return save_report(args.out, machine, rows)


if __name__ == "__main__":
    main()
