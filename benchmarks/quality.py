"""Measure what the bundled emoji models learned, and write it into their model cards.

    python benchmarks/quality.py --data data/emoji [--n-per-class 16] [--write-cards]

- Tokenizers: PSNR of reconstructions of the held-out images, and codebook usage (share of codes used).
- Generators: a small CNN classifier of the emoji categories is trained on the training split (its held-out
  accuracy is reported); for N generated images per class we report class fidelity (the classifier agrees
  with the requested class; chance = 1/9) and the Fréchet distance between the classifier's penultimate
  features of generated and of held-out images (FD, lower is better; held-out vs training images gives the
  floor). VAR at its full scale list and two shorter lists; MAR at 8, 16 and 64 steps, temperature 0 and 1.
- A contact sheet (one row per class) is saved beside each model card (``samples.png``).

Prints a table, writes ``benchmarks/results/quality.json`` and, with ``--write-cards``, a "Quality" section
in ``checkpoints/<model>/README.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edifice  # noqa: E402
from edifice import render  # noqa: E402
from edifice.data import ImageFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MARK = ("<!-- quality:begin -->", "<!-- quality:end -->")


class Classifier(nn.Module):
    """Four stride-2 conv blocks + global average pooling: 64x64 RGB in [0, 1] -> class logits."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for a, b in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x):
        return self.head(self.features(x * 2 - 1))


def stack(folder: ImageFolder) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as tensors: images ``[N, 3, 64, 64]`` in [0, 1] and labels ``[N]``."""
    xs, ys = zip(*(folder[i] for i in range(len(folder))), strict=True)
    return (torch.stack(xs) + 1) / 2, torch.tensor(ys)


def train_classifier(x, y, num_classes: int, epochs: int = 12, seed: int = 0) -> Classifier:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = Classifier(num_classes)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    clf.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 63, 64):
            idx = perm[i:i + 64]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(clf(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return clf.eval()


@torch.no_grad()
def predict(clf: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.cat([clf.features(xb * 2 - 1) for xb in x.split(256)])
    return clf.head(feats).argmax(1), feats


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` (float64)."""
    a, b = a.double(), b.double()
    mu = (a.mean(0) - b.mean(0)).square().sum()
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(ca)
    sa = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(sa @ cb @ sa).clamp_min(0).sqrt().sum()
    return float(mu + ca.trace() + cb.trace() - 2 * cross)


@torch.no_grad()
def tokenizer_quality(pipe, x: torch.Tensor) -> dict:
    vae = pipe.tokenizer
    idx, recon = [], []
    for xb in x.split(128):
        ids = vae.img_to_idx(xb * 2 - 1)
        idx.append(torch.cat(ids, 1))
        recon.append(vae.idx_to_img(ids).add(1).div(2))
    recon = torch.cat(recon)
    mse = (recon - x).square().flatten(1).mean(1)
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()
    used = torch.cat(idx).unique().numel()
    return {"psnr_db": round(psnr, 2), "codebook_usage": round(used / vae.vocab_size, 3), "codes_used": used,
            "codebook_size": vae.vocab_size}


@torch.no_grad()
def generate(pipe, n_per_class: int, num_classes: int, seed: int, **kw) -> tuple[torch.Tensor, torch.Tensor, float]:
    imgs, labels, t0 = [], [], time.perf_counter()
    for c in range(num_classes):
        imgs.append(pipe.generate(labels=c, batch_size=n_per_class, seed=seed + c, **kw))
        labels.append(torch.full((n_per_class,), c))
    return torch.cat(imgs).clamp(0, 1), torch.cat(labels), time.perf_counter() - t0


def contact_sheet(imgs: torch.Tensor, labels: torch.Tensor, num_classes: int, per_row: int, path: Path) -> None:
    rows = [render.image_grid(imgs[labels == c][:per_row], target=64, gap=2) for c in range(num_classes)]
    sheet = Image.new("RGB", (rows[0].width, sum(r.height + 2 for r in rows)), (255, 255, 255))
    for i, r in enumerate(rows):
        sheet.paste(r, (0, i * (r.height + 2)))
    sheet.save(path)


def settings_for(pipe) -> list[tuple[str, dict]]:
    if pipe.kind == "var":
        full = pipe.scales
        shorter = [full[:1] + full[1::2], [full[0], full[1], full[-1]]]
        shorter = [s if s[-1] == full[-1] else s + [full[-1]] for s in shorter]
        return [(f"scales {s}", {"scales": s}) for s in [full, *shorter]]
    return [(f"{k} steps, T={t}", {"num_steps": k, "temperature": t}) for k in (8, 16, 64) if k <= pipe.seq_len
            for t in (0.0, 1.0)]


def card_section(name: str, rep: dict, names: list[str]) -> str:
    tok, clf = rep["tokenizer"], rep["classifier"]
    lines = [MARK[0], "## Quality", "",
             f"Measured by `benchmarks/quality.py` on {rep['date']} ({rep['machine']}); {rep['n_per_class']} "
             f"images per class, classes: {', '.join(names)}.", "",
             f"- Tokenizer: PSNR **{tok['psnr_db']} dB** on the {clf['heldout_images']} held-out images; codebook "
             f"usage **{tok['codebook_usage']:.0%}** ({tok['codes_used']}/{tok['codebook_size']} codes).",
             f"- Reference classifier (small CNN trained on the training split): held-out accuracy "
             f"**{clf['heldout_accuracy']:.1%}** (chance {1 / len(names):.1%}); FD held-out vs training images "
             f"{clf['fd_heldout_vs_train']:.2f} (the floor).", "",
             "| setting | class fidelity | FD vs held-out | seconds / image |", "|---|---|---|---|"]
    for s in rep["settings"]:
        lines.append(f"| {s['setting']} | {s['class_fidelity']:.1%} | {s['fd']:.2f} | {s['seconds_per_image']:.3f} |")
    lines += ["", "Contact sheet (one row per class, in the order above; default sampling settings):", "",
              "![samples](samples.png)", MARK[1]]
    return "\n".join(lines)


def write_card(folder: Path, section: str) -> None:
    card = folder / "README.md"
    text = card.read_text() if card.exists() else ""
    pattern = re.compile(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    card.write_text(text.rstrip() + "\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "emoji"), help="dataset built by python -m edifice.data")
    ap.add_argument("--models", default="emoji-var,emoji-mar", help="presets or checkpoint folders")
    ap.add_argument("--n-per-class", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-cards", action="store_true", help="write the Quality section into the model cards")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    train = ImageFolder(Path(args.data) / "train", 64)
    held = ImageFolder(Path(args.data) / "heldout", 64)
    names = train.class_names
    x_tr, y_tr = stack(train)
    x_ho, y_ho = stack(held)
    t0 = time.perf_counter()
    clf = train_classifier(x_tr, y_tr, len(names), seed=args.seed)
    pred_ho, feat_ho = predict(clf, x_ho)
    _, feat_tr = predict(clf, x_tr)
    classifier = {"heldout_accuracy": float((pred_ho == y_ho).float().mean()), "heldout_images": len(x_ho),
                  "train_seconds": round(time.perf_counter() - t0, 1),
                  "fd_heldout_vs_train": frechet(feat_ho, feat_tr)}
    print(f"classifier: held-out accuracy {classifier['heldout_accuracy']:.1%} ({len(names)} classes), "
          f"FD floor {classifier['fd_heldout_vs_train']:.2f}")

    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} "
              f"threads, torch {torch.__version__}", "n_per_class": args.n_per_class, "classifier": classifier,
              "models": {}}
    for spec in args.models.split(","):
        pipe = edifice.load(spec, device="cpu")
        if list(pipe.class_names or []) != names:
            raise SystemExit(f"{spec}: its classes {pipe.class_names} are not the dataset's {names}")
        rep = {"tokenizer": tokenizer_quality(pipe, x_ho), "classifier": classifier, "settings": [],
               "date": report["date"], "machine": report["machine"], "n_per_class": args.n_per_class}
        print(f"\n{spec}: tokenizer PSNR {rep['tokenizer']['psnr_db']} dB, codebook usage "
              f"{rep['tokenizer']['codebook_usage']:.0%}")
        print(f"{'setting':<28} {'fidelity':>9} {'FD':>8} {'s/img':>7}")
        for label, kw in settings_for(pipe):
            imgs, labels, secs = generate(pipe, args.n_per_class, len(names), args.seed, **kw)
            pred, feats = predict(clf, imgs)
            row = {"setting": label, **kw, "class_fidelity": float((pred == labels).float().mean()),
                   "fd": frechet(feats, feat_ho), "seconds_per_image": secs / len(imgs)}
            rep["settings"].append(row)
            print(f"{label:<28} {row['class_fidelity']:>9.1%} {row['fd']:>8.2f} {row['seconds_per_image']:>7.3f}")
        report["models"][spec] = rep
        if args.write_cards:
            folder = edifice.presets.get(spec).folder if spec in edifice.presets.presets() else Path(spec)
            imgs, labels, _ = generate(pipe, 8, len(names), args.seed)
            contact_sheet(imgs, labels, len(names), 8, folder / "samples.png")
            write_card(folder, card_section(spec, rep, names))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
