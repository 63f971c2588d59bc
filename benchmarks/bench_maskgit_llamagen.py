"""Sampling speed of Halton-MaskGIT and LlamaGen at the released sizes with random weights (nothing to download):
seconds per image of a plain ``generate`` and of a streamed run with previews, the preview decode costs, and for
LlamaGen the KV cache against a no-cache recompute of the whole prefix for every token (same tokens).

    python benchmarks/bench_maskgit_llamagen.py [--models maskgit-256-tiny,maskgit-256-small,llamagen-b-256]
        [--batches 1,8] [--maskgit-steps 8] [--nocache-block 64] [--repeats 1] [--out sampling-maskgit-llamagen]
    python benchmarks/bench_maskgit_llamagen.py --models llamagen-b-256 --batches 1 --only-kv --repeats 3 \
        --out sampling-llamagen-kv

Models: ``maskgit-<res>-<size>`` (the Halton-MaskGIT releases, Halton sampler, w 1.0) and ``llamagen-<size>-<res>``
(the c2i GPTs, cfg 2.0), each with the 72M LlamaGen VQ-16 tokenizer. Timings do not depend on the weights'
values. MaskGIT runs ``--maskgit-steps`` steps (the authors use 32; a step costs the same whatever their number, so
the table also gives the 32-step time as 32 x the per-step time). The no-cache LlamaGen run uses a GPT of the same
width and depth with ``--nocache-block`` image tokens (its cost grows with the square of the length), against
the cached run of that same model. The streamed run uses ``preview="latent"`` at every record; ``full`` and
``fast`` previews are given as ``generate`` plus the measured cost of one decode in that mode times the records
before the last (a decode costs the same whatever the tokens; at 256 px the exact VQ decode costs more than a
whole MaskGIT step on a CPU). Each number is the median of ``--repeats`` runs; each model runs once first (warm-up)
at the first batch size. Prints a table; writes benchmarks/results/<--out>.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import save_report, timed  # noqa: E402

from edifice.generative.llamagen import LlamaGen, LlamaGenConfig, LlamaGenPipeline  # noqa: E402
from edifice.generative.maskgit import MaskGIT, MaskGITConfig, MaskGITPipeline  # noqa: E402
from edifice.official_llamagen import release_args  # noqa: E402
from edifice.official_maskgit import RELEASES  # noqa: E402
from edifice.tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig  # noqa: E402


def build(name: str, block: int | None = None):
    """A random-weight pipeline of a released size (``block`` overrides LlamaGen's image tokens)."""
    family, a, b = name.split("-")
    if family == "maskgit":
        cfg = MaskGITConfig(**RELEASES[f"ImageNet_{a}_{b}"])
        return MaskGITPipeline(LlamaGenVQ(LlamaGenVQConfig(image_size=int(a))), MaskGIT(cfg).eval())
    cfg = LlamaGenConfig(**release_args(f"c2i_{a.upper()}_{b}"))
    if block is not None:
        cfg.block_size = block
    return LlamaGenPipeline(LlamaGenVQ(LlamaGenVQConfig(image_size=cfg.grid * 16)), LlamaGen(cfg).eval())


def settings(pipe) -> dict:
    if pipe.kind == "maskgit":
        return dict(sampler="halton", cfg=1.0, randomize=True)
    return dict(cfg=2.0)


@torch.inference_mode()
def bench(pipe, name: str, batch: int, args, warmup: bool) -> dict:
    kw = dict(labels=list(range(batch)), seed=0, **settings(pipe))
    if args.only_kv:
        return kv_row(name, batch, kw, args)
    if pipe.kind == "maskgit":
        kw["num_steps"] = args.maskgit_steps
    records = len(list(pipe.stream(preview=False, **kw)))
    row = {"model": name, "batch": batch, "params_M": round(sum(p.numel() for p in pipe.model.parameters()) / 1e6, 1),
           "records": records}
    row["generate_s"] = timed(lambda: pipe.generate(**kw), args.repeats, warmup)
    tokens = next(pipe.stream(preview=False, **kw)).tokens
    pipe.render(tokens, "latent")  # fits the tokenizer's latent -> RGB map once (about 8 full decodes), untimed
    row["stream_latent_s"] = timed(lambda: list(pipe.stream(preview="latent", **kw)), args.repeats)
    for mode in ("full", "fast", "latent"):
        row[f"decode_{mode}_s"] = timed(lambda mode=mode: pipe.render(tokens, mode), args.repeats, warmup)
    for mode in ("full", "fast"):  # a preview at every record but the last, which generate decodes too
        row[f"stream_{mode}_s_est"] = row["generate_s"] + (records - 1) * row[f"decode_{mode}_s"]
    row["s_per_image"] = row["generate_s"] / batch
    if pipe.kind == "maskgit":
        row["s_per_step"] = (row["generate_s"] - row["decode_full_s"]) / records
        row["s_32_steps_est"] = 32 * row["s_per_step"] + row["decode_full_s"]
    elif batch == 1 and args.nocache_block:
        row.update(kv_row(name, batch, kw, args))
    return row


def kv_row(name: str, batch: int, kw: dict, args) -> dict:
    """KV cache on against off on a GPT of the same width and depth with ``--nocache-block`` image tokens: runs
    alternate (on, off, on, off, ...) ``--repeats`` times after a warm-up of each, so a busy machine slows both
    alike; the ratio is the median of the pairs'."""
    small = build(name, args.nocache_block)
    kw = dict(kw, preview=False)

    def on():
        return list(small.stream(**kw))[-1].tokens

    def off():
        return list(small.stream(kv_cache=False, **kw))[-1].tokens

    same = bool(torch.equal(on(), off()))
    pairs = [(timed(on, 1), timed(off, 1)) for _ in range(args.repeats)]
    return {"model": name, "batch": batch, "nocache_block": args.nocache_block, "kv_same_tokens": same,
            "kv_on_s": statistics.median(p[0] for p in pairs), "kv_off_s": statistics.median(p[1] for p in pairs),
            "kv_off_over_on": statistics.median(p[1] / p[0] for p in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="maskgit-256-tiny,maskgit-256-small,llamagen-b-256")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--maskgit-steps", type=int, default=8)
    parser.add_argument("--nocache-block", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only-kv", action="store_true", help="LlamaGen: only the KV cache on/off pairs")
    parser.add_argument("--out", default="sampling-maskgit-llamagen")
    args = parser.parse_args()
    rows = []
    print(f"{platform.machine()} · {torch.get_num_threads()} threads · torch {torch.__version__} · fp32 · CPU")
    head = (f"{'model':<18} {'B':>2} {'rec':>4} {'generate s':>10} {'s/img':>7} {'latent x':>8} {'fast x':>7} "
            f"{'full x':>7} {'decode full/fast/latent s':>26} {'extra':>30}")
    print(head)
    for name in args.models.split(","):
        torch.manual_seed(0)
        pipe = build(name)
        for i, batch in enumerate(int(b) for b in args.batches.split(",")):
            r = bench(pipe, name, batch, args, warmup=i == 0)
            rows.append(r)
            if args.only_kv:
                print(f"{name} B={batch} @{r['nocache_block']} tokens: KV on {r['kv_on_s']:.2f} s, off "
                      f"{r['kv_off_s']:.2f} s, off/on {r['kv_off_over_on']:.2f}x, same tokens {r['kv_same_tokens']}")
                continue
            g = r["generate_s"]
            extra = (f"32 steps ≈ {r['s_32_steps_est']:.1f} s" if "s_32_steps_est" in r else
                     f"KV off/on {r['kv_off_s'] / r['kv_on_s']:.1f}x @{r['nocache_block']}" if "kv_on_s" in r else "")
            print(f"{name:<18} {batch:>2} {r['records']:>4} {g:>10.2f} {r['s_per_image']:>7.2f} "
                  f"{r['stream_latent_s'] / g:>8.2f} {r['stream_fast_s_est'] / g:>7.2f} "
                  f"{r['stream_full_s_est'] / g:>7.2f} "
                  f"{r['decode_full_s']:>10.2f}/{r['decode_fast_s']:.2f}/{r['decode_latent_s']:.3f} {extra:>30}",
                  flush=True)
    machine = (f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32, "
               f"MaskGIT {args.maskgit_steps} steps")
    save_report(args.out, machine, rows)


if __name__ == "__main__":
    main()
