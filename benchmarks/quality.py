"""Measure what the bundled emoji models learned, and write it into their model cards.

    python benchmarks/quality.py --data data/emoji [--n-per-class 32] [--seed-sets 3] [--baseline [REV]] [--write-cards]

- Tokenizers: PSNR of reconstructions of the held-out images, and codebook usage (share of codes used).
- Generators: a small CNN classifier of the emoji categories is trained on the training split (its held-out
  accuracy is reported); for N generated images per class we report class fidelity (the classifier agrees
  with the requested class; chance = 1/9) and the Fréchet distance between the classifier's penultimate
  features of generated and of held-out images (FD, lower is better). FD compares whole distributions, so it
  also counts the class mix: N images per class against a held-out split that is 20% People & Body and 4%
  Activities. "FD at the held-out mix" removes that term: each sample is weighted by its class's held-out
  share over its share among the samples (a weighted mean and covariance). Floors put both in scale: held-out
  vs all training images, and held-out vs N random training images per class, unweighted and weighted (FD is
  biased upward at small N, so these are what perfect samples would score). The tokenizer's reconstructions
  of the held-out images are scored too: what a perfect generator on these tokens would reach.
- Rows: the checkpoint's recommended settings first ("defaults"), then VAR at two shorter scale lists (with the
  share of the full list's fidelity they keep), MAR at 8 and 64 steps and greedy. Time to the first frame
  (one image, previews on) and to one whole image are medians of 7 runs after an untimed one, at the defaults;
  ``--baseline [REV]`` times the bundled checkpoints of an earlier commit (round 1's by default) in turn with
  today's and reports the ratios, which a busy shared machine moves far less than the times.
- Sampling noise: with 32 images per class FD moves by a few tenths between seed sets, so the defaults row is
  sampled with ``--seed-sets`` S seed sets (the first is the table's) and the cards give every set's score
  and the mean. With ``--baseline`` the earlier checkpoint is scored on the same seed sets at its own
  defaults, and the card gives today's mean FD as a share of its mean (the issue's bar: at most half of
  round 1's).
- A contact sheet (one row per class) is saved beside each model card (``samples.png``).

Prints a table, writes ``benchmarks/results/quality.json`` (or ``--json``) and, with ``--write-cards``, a
"Quality" section in ``checkpoints/<model>/README.md``. A run of some models (``--models emoji-mar``) keeps the
other models' entries of an existing JSON when its classifier scored the same (same data, seed and threads).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import timed_in_turn  # noqa: E402

import edifice  # noqa: E402
from edifice import render  # noqa: E402
from edifice.data import ImageFolder  # noqa: E402
from edifice.train import augment, load_tokenizer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROUND1 = "bd2c196"  # the last commit with the bundled models of round 1, which issue 18 measured
SEED_STRIDE = 1000  # seed sets start this far apart (class c of a set samples with its seed + c)
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
            xb = augment(x[idx], flip=True, shift=0, generator=g)
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


def frechet(a: torch.Tensor, b: torch.Tensor, weights_a: torch.Tensor | None = None) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` (float64); ``weights_a`` weights
    the rows of ``a`` (its mean and unbiased covariance become weighted ones)."""
    a, b = a.double(), b.double()
    w = None if weights_a is None else weights_a.double()
    mean_a = a.mean(0) if w is None else (a * w[:, None]).sum(0) / w.sum()
    mu = (mean_a - b.mean(0)).square().sum()
    ca, cb = torch.cov(a.T, aweights=w), torch.cov(b.T)
    ev, v = torch.linalg.eigh(ca)
    sa = v @ torch.diag(ev.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(sa @ cb @ sa).clamp_min(0).sqrt().sum()
    return float(mu + ca.trace() + cb.trace() - 2 * cross)


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A tokenizer's codes of images ``x`` in [0, 1], their reconstructions, and the PSNR (dB, the mean over
    images of each image's PSNR)."""
    idx, recon, device = [], [], next(vae.parameters()).device
    for xb in x.split(128):
        ids = vae.img_to_idx(xb.to(device) * 2 - 1)
        idx.append(torch.cat(ids, 1).cpu())
        recon.append(vae.idx_to_img(ids).float().add(1).div(2).cpu())
    recon = torch.cat(recon)
    mse = (recon - x).square().flatten(1).mean(1)
    return torch.cat(idx), recon, (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()


def tokenizer_quality(pipe, x: torch.Tensor, y: torch.Tensor, clf: Classifier, feat_ho: torch.Tensor) -> dict:
    vae = pipe.tokenizer
    idx, recon, psnr = reconstruct(vae, x)
    used = idx.unique().numel()
    pred, feats = predict(clf, recon.clamp(0, 1))
    return {"psnr_db": round(psnr, 2), "codebook_usage": round(used / vae.vocab_size, 3), "codes_used": used,
            "codebook_size": vae.vocab_size, "recon_fidelity": float((pred == y).float().mean()),
            "recon_fd": frechet(feats, feat_ho)}


@torch.no_grad()
def generate(pipe, n_per_class: int, num_classes: int, seed: int, **kw) -> tuple[torch.Tensor, torch.Tensor, float]:
    imgs, labels, t0 = [], [], time.perf_counter()
    for c in range(num_classes):
        imgs.append(pipe.generate(labels=c, batch_size=n_per_class, seed=seed + c, **kw))
        labels.append(torch.full((n_per_class,), c))
    return torch.cat(imgs).clamp(0, 1), torch.cat(labels), time.perf_counter() - t0


def class_shares(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's share of a labelled set, ``[num_classes]`` (float64, summing to 1)."""
    return torch.bincount(labels, minlength=num_classes).double() / len(labels)


def mix_weights(labels: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Per-image weights that give a labelled set the class shares ``mix`` (``[num_classes]``, summing to 1):
    each class's share in ``mix`` over its share in ``labels``."""
    return mix.double()[labels] / class_shares(labels, len(mix))[labels]


def score(pipe, clf: Classifier, feat_ho: torch.Tensor, n_per_class: int, num_classes: int, seed: int,
          mix: torch.Tensor, **kw) -> dict:
    """Class fidelity, FD against the held-out features, ``fd_mix`` (the FD of the samples weighted to the
    held-out class shares ``mix``) and seconds per image of N images per class."""
    imgs, labels, secs = generate(pipe, n_per_class, num_classes, seed, **kw)
    pred, feats = predict(clf, imgs)
    return {"class_fidelity": float((pred == labels).float().mean()), "fd": frechet(feats, feat_ho),
            "fd_mix": frechet(feats, feat_ho, mix_weights(labels, mix)), "seconds_per_image": secs / len(imgs)}


def seed_sets(pipe, clf: Classifier, feat_ho: torch.Tensor, n_per_class: int, num_classes: int, seed: int,
              sets: int, mix: torch.Tensor, first: dict | None = None, **kw) -> dict:
    """Class fidelity, FD and FD at the held-out mix for ``sets`` seed sets (``seed``, ``seed + 1000``, ...;
    class c of a set samples with its seed + c), each a list, and their means; at the checkpoint's defaults
    overridden by ``kw``. ``first``: the score of the first set when it is already known (the defaults row)."""
    seeds = [seed + SEED_STRIDE * k for k in range(sets)]
    rows = [first or score(pipe, clf, feat_ho, n_per_class, num_classes, seeds[0], mix=mix, **kw)]
    rows += [score(pipe, clf, feat_ho, n_per_class, num_classes, s, mix=mix, **kw) for s in seeds[1:]]
    out = {"seeds": seeds}
    for key in ("class_fidelity", "fd", "fd_mix"):
        out[key] = [r[key] for r in rows]
        out[f"{key}_mean"] = sum(out[key]) / len(rows)
    return out


def per_class_sample(y: torch.Tensor, n_per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``n_per_class`` random images of each class (seeded): real images drawn as the samples are."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([idx[torch.randperm(len(idx), generator=g)[:n_per_class]]
                      for idx in (torch.nonzero(y == c)[:, 0] for c in range(int(y.max()) + 1))])


def splits(data: str | Path) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class names, then the training and the held-out split as tensors (see :func:`stack`)."""
    train = ImageFolder(Path(data) / "train", 64)
    return (train.class_names, *stack(train), *stack(ImageFolder(Path(data) / "heldout", 64)))


def contact_sheet(imgs: torch.Tensor, labels: torch.Tensor, num_classes: int, per_row: int, path: Path) -> None:
    rows = [render.image_grid(imgs[labels == c][:per_row], target=64, gap=2) for c in range(num_classes)]
    sheet = Image.new("RGB", (rows[0].width, sum(r.height + 2 for r in rows)), (255, 255, 255))
    for i, r in enumerate(rows):
        sheet.paste(r, (0, i * (r.height + 2)))
    sheet.save(path)


def settings_for(pipe) -> list[tuple[str, dict]]:
    """The rows measured: the recommended settings, then the variations a visitor is offered."""
    d = {k: v for k, v in pipe.defaults.items() if k not in ("labels", "seed")}  # the app's showcase
    shown = ", ".join(f"{k}={v}" for k, v in d.items())
    rows = [(f"defaults ({shown})" if shown else "defaults", {})]
    if pipe.kind == "var":
        full = list(d.get("scales") or pipe.scales)
        shorter = [full[:1] + full[1::2], [full[0], full[1], full[-1]]]
        shorter = [s if s[-1] == full[-1] else s + [full[-1]] for s in shorter]
        return rows + [(f"scales {s}", {"scales": s}) for s in shorter]
    steps = d.get("num_steps", 16)
    return rows + [(f"{k} steps", {"num_steps": k}) for k in (8, 64) if k <= pipe.seq_len and k != steps] + [
        (f"{steps} steps, greedy (T=0)", {"temperature": 0.0})]


@torch.no_grad()
def latency(pipe, label: int, baseline=None) -> dict:
    """Seconds to the first streamed frame (previews on, as the app runs) and to one whole image: medians of 7
    runs after an untimed one, at each checkpoint's defaults. With a ``baseline`` pipeline the two are timed in
    turn, call by call, and the ratios reported: on a shared 2-core machine a time alone moves by 20% between
    runs, the ratio of two times taken in turn far less."""
    pipes = [pipe] if baseline is None else [pipe, baseline]
    first = timed_in_turn([lambda p=p: next(iter(p.stream(labels=label, batch_size=1, seed=0))) for p in pipes],
                          repeats=7, warmup=True)
    whole = timed_in_turn([lambda p=p: p.generate(labels=label, batch_size=1, seed=0) for p in pipes],
                          repeats=7, warmup=True)
    out = {"first_frame_seconds": first[0], "image_seconds": whole[0]}
    if baseline is not None:
        out["baseline"] = {"first_frame_seconds": first[1], "image_seconds": whole[1],
                           "first_frame_ratio": first[0] / first[1], "image_ratio": whole[0] / whole[1]}
    return out


def load_at(rev: str, folder: Path):
    """The bundled checkpoint ``folder`` as it was at git revision ``rev`` (extracted to a temporary folder and
    loaded on the CPU): an earlier round of a bundled model, to time against."""
    if not folder.resolve().is_relative_to(ROOT):
        raise SystemExit(f"--baseline {rev}: {folder} is not a checkpoint folder of this repository")
    rel = folder.resolve().relative_to(ROOT).as_posix()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, rel], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"--baseline {rev}: git archive found no {rel}: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp, filter="data")
        return edifice.load(Path(tmp) / rel, device="cpu")


def fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def pct(shares: list[float], names: list[str]) -> str:
    """Class shares as text, largest first: ``"20% People & Body, ..."``."""
    return ", ".join(f"{s:.0%} {n}" for s, n in sorted(zip(shares, names, strict=True), key=lambda t: -t[0]))


def card_section(name: str, rep: dict, names: list[str]) -> str:
    tok, clf = rep["tokenizer"], rep["classifier"]
    lines = [MARK[0], "## Quality", "",
             f"Measured by `benchmarks/quality.py` on {rep['date']} ({rep['machine']}); {rep['n_per_class']} "
             f"images per class, classes: {', '.join(names)}.", "",
             f"- Tokenizer: PSNR **{tok['psnr_db']} dB** on the {clf['heldout_images']} held-out images; codebook "
             f"usage **{tok['codebook_usage']:.0%}** ({tok['codes_used']}/{tok['codebook_size']} codes).",
             f"- Reference classifier (small CNN trained on the training split): held-out accuracy "
             f"**{clf['heldout_accuracy']:.1%}** (chance {1 / len(names):.1%}).",
             f"- Floors: FD of held-out vs all training images {clf['fd_heldout_vs_train']:.2f}; of held-out vs "
             f"{rep['n_per_class']} random training images per class {clf['fd_sample_floor']:.2f}, and "
             f"{clf['fd_mix_sample_floor']:.2f} at the held-out class mix (what perfect samples would score); the "
             f"tokenizer's reconstructions of the held-out images: class fidelity {tok['recon_fidelity']:.1%}, FD "
             f"{tok['recon_fd']:.2f}.",
             f"- FD counts the class mix too: the samples are {rep['n_per_class']} per class, the held-out images "
             f"{pct(clf['heldout_mix'], names)}. The column \"at the held-out mix\" weights each sample by its "
             "class's held-out share over its share among the samples, which takes that difference out.",
             f"- Time on this CPU at the defaults, one image: first frame **{rep['first_frame_seconds']:.3f} s**, "
             f"whole image **{rep['image_seconds']:.3f} s**" + (
                 f". Timed in turn with this model as it was at commit {b['rev']} (`--baseline {b['rev']}`), which "
                 f"took {b['first_frame_seconds']:.3f} s and {b['image_seconds']:.3f} s: "
                 f"**x{b['first_frame_ratio']:.2f}** and **x{b['image_ratio']:.2f}** its times (a ratio of times "
                 "taken in turn holds where this shared machine's speed does not)." if (b := rep.get("baseline"))
                 else "."), *seed_lines(rep), "",
             "| setting | class fidelity | FD vs held-out | FD at the held-out mix | seconds / image (batch of "
             f"{rep['n_per_class']}) |", "|---|---|---|---|---|"]
    for s in rep["settings"]:
        keeps = f" ({s['keeps_fidelity']:.0%} of the defaults')" if "keeps_fidelity" in s else ""
        lines.append(f"| {s['setting']} | {s['class_fidelity']:.1%}{keeps} | {s['fd']:.2f} | {s['fd_mix']:.2f} | "
                     f"{s['seconds_per_image']:.3f} |")
    lines += ["", "Contact sheet (one row per class, in the order above; default sampling settings):", "",
              "![samples](samples.png)", MARK[1]]
    return "\n".join(lines)


def seed_lines(rep: dict) -> list[str]:
    """The card's lines on sampling noise: the defaults over several seed sets, and the baseline's FD on them."""
    ss = rep.get("seed_sets")
    if not ss:
        return []
    pcts = " / ".join(f"{f:.1%}" for f in ss["class_fidelity"])
    lines = [f"- Sampling noise: at the defaults, seed sets {', '.join(map(str, ss['seeds']))} (the table's rows "
             f"use the first) score class fidelity {pcts}, FD {fmt(ss['fd'])} (mean **{ss['fd_mean']:.2f}**) and "
             f"{fmt(ss['fd_mix'])} at the held-out mix (mean {ss['fd_mix_mean']:.2f}): differences of a few tenths "
             "in FD are within this noise."] if len(ss["seeds"]) > 1 else []
    if (b := rep.get("baseline")) and "seed_sets" in b:
        lines.append(f"- Against commit {b['rev']} (`--baseline`), sampled at its own defaults on the same seed sets: "
                     f"FD {fmt(b['seed_sets']['fd'])} (mean {b['seed_sets']['fd_mean']:.2f}), at the held-out mix "
                     f"{fmt(b['seed_sets']['fd_mix'])} (mean {b['seed_sets']['fd_mix_mean']:.2f}). Today's mean FD is "
                     f"**{b['fd_ratio']:.0%}** of its mean, **{b['fd_mix_ratio']:.0%}** at the held-out mix.")
    return lines


def write_card(folder: Path, section: str) -> None:
    card = folder / "README.md"
    text = card.read_text() if card.exists() else ""
    pattern = re.compile(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    card.write_text(text.rstrip() + "\n")


def same_classifier(a: dict, b: dict) -> bool:
    """Whether two runs' reference classifiers scored alike (all but the training time)."""
    return {k: v for k, v in a.items() if k != "train_seconds"} == {k: v for k, v in b.items() if k != "train_seconds"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "emoji"), help="dataset built by python -m edifice.data")
    ap.add_argument("--models", default="emoji-var,emoji-mar", help="presets or checkpoint folders")
    ap.add_argument("--n-per-class", type=int, default=32)
    ap.add_argument("--json", type=Path, default=RESULTS / "quality.json", help="where to write the results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seed-sets", type=int, default=3,
                    help="seed sets the defaults row (and the --baseline checkpoint) is sampled with: FD's spread")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; fixed because the float sums (and so the numbers) depend on it")
    ap.add_argument("--write-cards", action="store_true", help="write the Quality section into the model cards")
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="git revision whose bundled checkpoints are timed in turn with today's (the issue's bar: "
                         "round 1, %(const)s)", const=ROUND1, nargs="?")
    ap.add_argument("--tokenizers", nargs="+", type=Path, default=None,
                    help="only print the held-out PSNR of these tokenizer folders or runs (on a GPU if there is one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.tokenizers:
        x_ho, _ = stack(ImageFolder(Path(args.data) / "heldout", 64))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        psnr = {str(t): round(reconstruct(load_tokenizer(t).to(device).eval(), x_ho)[2], 2) for t in args.tokenizers}
        for t, db in psnr.items():
            print(f"{t}: held-out PSNR {db} dB")
        return psnr

    names, x_tr, y_tr, x_ho, y_ho = splits(args.data)
    t0 = time.perf_counter()
    clf = train_classifier(x_tr, y_tr, len(names), seed=args.seed)
    pred_ho, feat_ho = predict(clf, x_ho)
    _, feat_tr = predict(clf, x_tr)
    mix = class_shares(y_ho, len(names))
    sample = per_class_sample(y_tr, args.n_per_class, args.seed)
    classifier = {"heldout_accuracy": float((pred_ho == y_ho).float().mean()), "heldout_images": len(x_ho),
                  "heldout_mix": [round(float(m), 4) for m in mix],
                  "train_seconds": round(time.perf_counter() - t0, 1),
                  "fd_heldout_vs_train": frechet(feat_ho, feat_tr),
                  "fd_sample_floor": frechet(feat_tr[sample], feat_ho),
                  "fd_mix_sample_floor": frechet(feat_tr[sample], feat_ho, mix_weights(y_tr[sample], mix))}
    print(f"classifier: held-out accuracy {classifier['heldout_accuracy']:.1%} ({len(names)} classes), "
          f"FD floors {classifier['fd_heldout_vs_train']:.2f} (all training images), "
          f"{classifier['fd_sample_floor']:.2f} / {classifier['fd_mix_sample_floor']:.2f} at the held-out mix "
          f"({args.n_per_class} per class)")

    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} "
              f"threads, torch {torch.__version__}", "n_per_class": args.n_per_class, "classifier": classifier,
              "models": {}}
    for spec in args.models.split(","):
        pipe = edifice.load(spec, device="cpu")
        if list(pipe.class_names or []) != names:
            raise SystemExit(f"{spec}: its classes {pipe.class_names} are not the dataset's {names}")
        folder = edifice.presets.get(spec).folder if spec in edifice.presets.presets() else Path(spec)
        baseline = load_at(args.baseline, folder) if args.baseline else None
        showcase = pipe.defaults.get("labels", 0)
        rep = {"tokenizer": tokenizer_quality(pipe, x_ho, y_ho, clf, feat_ho), "classifier": classifier,
               "settings": [], "date": report["date"], "machine": report["machine"],
               "n_per_class": args.n_per_class,
               **latency(pipe, showcase if isinstance(showcase, int) else 0, baseline)}
        if baseline is not None:
            rep["baseline"]["rev"] = args.baseline
        tok = rep["tokenizer"]
        print(f"\n{spec}: tokenizer PSNR {tok['psnr_db']} dB, codebook usage {tok['codebook_usage']:.0%}, "
              f"reconstructions: fidelity {tok['recon_fidelity']:.1%}, FD {tok['recon_fd']:.2f}; first frame "
              f"{rep['first_frame_seconds']:.3f} s, one image {rep['image_seconds']:.3f} s" + (
                  f" (x{rep['baseline']['first_frame_ratio']:.2f} and x{rep['baseline']['image_ratio']:.2f} of "
                  f"{args.baseline}'s, timed in turn)" if baseline is not None else ""))
        print(f"{'setting':<60} {'fidelity':>9} {'FD':>8} {'FD mix':>8} {'s/img':>7}")
        for label, kw in settings_for(pipe):
            row = {"setting": label, **kw,
                   **score(pipe, clf, feat_ho, args.n_per_class, len(names), args.seed, mix=mix, **kw)}
            if "scales" in kw:
                row["keeps_fidelity"] = row["class_fidelity"] / max(rep["settings"][0]["class_fidelity"], 1e-9)
            rep["settings"].append(row)
            print(f"{label:<60} {row['class_fidelity']:>9.1%} {row['fd']:>8.2f} {row['fd_mix']:>8.2f} "
                  f"{row['seconds_per_image']:>7.3f}")
        rep["seed_sets"] = seed_sets(pipe, clf, feat_ho, args.n_per_class, len(names), args.seed,
                                     args.seed_sets, mix, first=rep["settings"][0])
        print(f"{'defaults over seed sets ' + str(rep['seed_sets']['seeds']):<60} "
              f"{rep['seed_sets']['class_fidelity_mean']:>9.1%} {rep['seed_sets']['fd_mean']:>8.2f} "
              f"{rep['seed_sets']['fd_mix_mean']:>8.2f}  (means; FD {fmt(rep['seed_sets']['fd'])})")
        if baseline is not None:
            b = rep["baseline"]
            b["seed_sets"] = seed_sets(baseline, clf, feat_ho, args.n_per_class, len(names), args.seed,
                                       args.seed_sets, mix)
            b["fd_ratio"] = rep["seed_sets"]["fd_mean"] / b["seed_sets"]["fd_mean"]
            b["fd_mix_ratio"] = rep["seed_sets"]["fd_mix_mean"] / b["seed_sets"]["fd_mix_mean"]
            print(f"{args.baseline + ' at its defaults, same seed sets':<60} "
                  f"{b['seed_sets']['class_fidelity_mean']:>9.1%} {b['seed_sets']['fd_mean']:>8.2f} "
                  f"{b['seed_sets']['fd_mix_mean']:>8.2f}  (means; FD {fmt(b['seed_sets']['fd'])}): today's mean FD "
                  f"is {b['fd_ratio']:.0%} of it, {b['fd_mix_ratio']:.0%} at the held-out mix")
        report["models"][spec] = rep
        if args.write_cards:
            imgs, labels, _ = generate(pipe, 8, len(names), args.seed)
            contact_sheet(imgs, labels, len(names), 8, folder / "samples.png")
            write_card(folder, card_section(spec, rep, names))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if same_classifier(old.get("classifier") or {}, classifier) and old.get("n_per_class") == args.n_per_class:
        report["models"] = {**old["models"], **report["models"]}  # the models not rerun keep their entries
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
