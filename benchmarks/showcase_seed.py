"""The seed the app shows first for a bundled model: of seeds 0 .. N-1, the one whose single images the reference
classifier of ``quality.py`` recognises best over every class.

    python benchmarks/showcase_seed.py checkpoints/emoji-var [--seeds 32] [--data data/emoji]

A seed is the same noise whatever the class, so an unlucky one spoils every class at once (seed 0 of emoji-var
drew a blob in all nine). For each seed the model draws one image per class at its recommended settings (batch 1,
as the app does), and each image is scored by the classifier's probability of the class asked for; the showcase
is the seed with the highest mean. The table also says for how many classes the classifier names the class asked
for, and the share over all seeds, so a card can say how typical the showcase is. Store the choice with
``python -m edifice resave MODEL --out MODEL --dtype fp16 --set seed=N`` (the app reads ``defaults["seed"]``).
Writes benchmarks/results/showcase_<model>.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402
from report import save_report  # noqa: E402

import edifice  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a checkpoint folder")
    ap.add_argument("--seeds", type=int, default=32, help="seeds 0 .. N-1 are tried")
    ap.add_argument("--data", type=Path, default=quality.ROOT / "data" / "emoji", help="the reference data")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    names, x_tr, y_tr, _, _ = quality.splits(args.data)
    clf = quality.train_classifier(x_tr, y_tr, len(names), seed=0)
    pipe = edifice.load(args.model, device="cpu")
    classes = torch.arange(len(names))
    rows = []
    print(f"{'seed':>5} {'p(class asked)':>15} {'named right':>12}")
    with torch.no_grad():
        for seed in range(args.seeds):
            imgs = torch.cat([pipe.generate(labels=c, seed=seed, batch_size=1) for c in classes.tolist()]).clamp(0, 1)
            probs = clf.head(clf.features(imgs * 2 - 1)).softmax(1)
            rows.append({"seed": seed, "p_asked": probs[classes, classes].mean().item(),
                         "named_right": int((probs.argmax(1) == classes).sum())})
            print(f"{seed:>5} {rows[-1]['p_asked']:>15.3f} {rows[-1]['named_right']:>9} / {len(names)}", flush=True)
    best = max(rows, key=lambda r: r["p_asked"])
    share = sum(r["named_right"] for r in rows) / (len(rows) * len(names))
    print(f"\nshowcase seed {best['seed']}: p {best['p_asked']:.3f}, {best['named_right']} / {len(names)} classes "
          f"named right (over all {args.seeds} seeds: {share:.0%}); store it: python -m edifice resave {args.model} "
          f"--out {args.model} --dtype fp16 --set seed={best['seed']}")
    return save_report(f"showcase_{Path(args.model).name}", f"{platform.machine()}, torch {torch.__version__}",
                       rows + [{"showcase": best["seed"], "named_right_share": share}])


if __name__ == "__main__":
    main()
