"""Choose a checkpoint's recommended sampling settings by a sweep, scored as in ``quality.py``.

    python benchmarks/sweep_defaults.py checkpoints/emoji-var [--n-per-class 16] [--seed-sets 1]
        [--grid cfg=2,3,4 top_k=0,50]

Every combination of the grid is sampled (N images per class, the same seeds for each) and scored by the
reference classifier of ``quality.py``: class fidelity and FD against the held-out images. The rule: among the
settings whose class fidelity reaches the classifier's own held-out accuracy (samples as recognisable as real
emoji), the one with the lowest FD; if none does, the one with the highest fidelity. It prints the table, the
choice and the ``python -m edifice resave ... --set`` command that stores it, and writes
``benchmarks/results/sweep_<model>.json``. With ``--seed-sets S`` every setting is sampled with S seed sets
and judged by the means: at 32 images per class FD moves by a few tenths between seed sets (the cards'
"Sampling noise"), about what separates the neighbours of a sweep.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402  (benchmarks/quality.py: classifier, features, FD)

import edifice  # noqa: E402

GRIDS = {  # the settings that trade class fidelity against diversity, per family
    # VAR: the official sampler has no temperature; edifice's divides the guided logits by it before top-p
    "var": {"cfg": [3.0, 5.0, 8.0], "top_p": [0.0, 0.6, 0.8], "temperature": [0.6, 1.0]},
    "mar": {"cfg": [3.0, 4.0, 6.0], "temperature": [0.7, 0.9, 1.0]},  # ranking randomness stays 4.5: lower
    # collapses each class to near-copies (round 1's sweep, README "Bundled models")
}


def parse_grid(items: list[str]) -> dict:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        grid[key] = [json.loads(v) for v in values.split(",")]
    return grid


def choose(rows: list[dict], bar: float) -> dict:
    recognisable = [r for r in rows if r["class_fidelity"] >= bar]
    return min(recognisable, key=lambda r: r["fd"]) if recognisable else max(rows, key=lambda r: r["class_fidelity"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="checkpoint folder or preset")
    ap.add_argument("--data", default=str(quality.ROOT / "data" / "emoji"))
    ap.add_argument("--n-per-class", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seed-sets", type=int, default=1, help="seed sets per setting (scored by their means)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the classifier's numbers depend on it)")
    ap.add_argument("--grid", nargs="*", default=None, metavar="KEY=V1,V2", help="instead of the family's grid")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    names, x_tr, y_tr, x_ho, y_ho = quality.splits(args.data)
    clf = quality.train_classifier(x_tr, y_tr, len(names), seed=args.seed)
    pred_ho, feat_ho = quality.predict(clf, x_ho)
    mix = quality.class_shares(y_ho, len(names))
    bar = float((pred_ho == y_ho).float().mean())
    pipe = edifice.load(args.model, device="cpu")
    grid = parse_grid(args.grid) if args.grid else GRIDS[pipe.kind]
    print(f"{args.model}: classifier held-out accuracy {bar:.1%}; {len(list(itertools.product(*grid.values())))} "
          f"settings, {args.n_per_class} images per class")
    rows = []
    for values in itertools.product(*grid.values()):
        kw = dict(zip(grid, values, strict=True))
        sets = quality.seed_sets(pipe, clf, feat_ho, args.n_per_class, len(names), args.seed, args.seed_sets, mix,
                                 **kw)
        rows.append({**kw, "class_fidelity": sets["class_fidelity_mean"], "fd": sets["fd_mean"],
                     "fd_mix": sets["fd_mix_mean"], "seed_sets": sets})
        spread = f"; FD {quality.fmt(sets['fd'])}" if args.seed_sets > 1 else ""
        print("  ".join(f"{k}={v}" for k, v in kw.items()), f"fidelity {rows[-1]['class_fidelity']:.1%}",
              f"FD {rows[-1]['fd']:.2f} (at the held-out mix {rows[-1]['fd_mix']:.2f}{spread})", flush=True)
    best = choose(rows, bar)
    chosen = {k: best[k] for k in grid}
    print("\nchosen:", chosen, f"(fidelity {best['class_fidelity']:.1%}, FD {best['fd']:.2f})")
    print("store it: python -m edifice resave", args.model, "--out", args.model, "--dtype fp16 --set",
          " ".join(f"{k}={v}" for k, v in chosen.items()))
    out = quality.RESULTS / f"sweep_{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": args.model, "bar": bar, "n_per_class": args.n_per_class, "seed_sets": args.seed_sets,
              "grid": grid, "rows": rows, "chosen": chosen}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
