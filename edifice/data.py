"""Training data: the emoji dataset builder and an ImageFolder reader (PIL only, no torchvision).

``python -m edifice.data emoji --out DIR`` turns the npm packages ``emoji-datasource-twitter`` (Twemoji art,
CC-BY 4.0) and ``emoji-datasource-google`` (Noto art, Apache-2.0) into an ImageFolder tree::

    DIR/train/<category>/<style>_<code>.png      64x64 RGB, alpha composited on white
    DIR/heldout/<category>/<style>_<code>.png
    DIR/manifest.json                             classes, counts per split/category/style, attributions

Labels are the package's ``category`` ("Component", the bare skin-tone swatches, is dropped). The split is by
emoji: a stable hash of the unified code decides the side, so both art styles of an emoji (and its skin-tone
variants, when included) always land together and held-out images are emoji the models never saw.
Skin-tone variants are left out by default: they are recolourings of one shape and would make "People & Body"
60% of the data (``--skin-tones`` adds them).

``--label subgroup`` (or ``--subgroups``) files the same images by the package's ``subcategory`` instead (98
Unicode subgroups such as ``animal-bird`` or ``phone``), in folders ``<category>.<subgroup>``; the manifest gives
each its category as ``group``. ``--label emoji`` goes one level further: one folder per emoji,
``<category>.<subgroup>.<unified code>``, named by the emoji's Unicode name, holding its art styles (two images
in the default build); the manifest adds its ``subgroup``. Models trained on either still take the 9 categories
and draw a subgroup or an emoji per image (see :class:`edifice.pipeline.Subclasses`): a category as wide as
Objects (phones to shirts) was drawn as a class-average blob by the small bundled models.

``--styles twitter,google,fluent`` adds a third art style, Microsoft's Fluent Emoji (flat, MIT) from the npm
package ``@lobehub/fluent-emoji-flat``: SVGs named by unified code, labelled by emoji-datasource's ``category``
and rendered to PNG with resvg. The split rule is the same, so the held-out emoji of a build with it are the
default build's and a model trained on the larger set is measured on the same held-out images
(``benchmarks/quality.py`` reads the default build, ``data/emoji``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .pipeline import Subclasses

EMOJI_VERSION = "16.0.0"
EMOJI_STYLES = ("twitter", "google")  # the default build; the emoji-datasource packages, which also give the labels
FLUENT_PACKAGE, FLUENT_VERSION = "@lobehub/fluent-emoji-flat", "1.1.0"
ALL_STYLES = (*EMOJI_STYLES, "fluent")
DROPPED_CATEGORIES = ("Component",)
ATTRIBUTION = {
    "twitter": {
        "art": "Twemoji",
        "copyright": "Copyright 2019 Twitter, Inc and other contributors; Copyright 2024 jdecked and contributors",
        "license": "CC-BY-4.0",
        "license_url": "https://creativecommons.org/licenses/by/4.0/",
        "source": "https://github.com/jdecked/twemoji (via the npm package emoji-datasource-twitter, "
                  "iamcal/emoji-data)",
    },
    "google": {
        "art": "Noto Emoji",
        "copyright": "Copyright 2013 Google Inc.",
        "license": "Apache-2.0",
        "license_url": "https://www.apache.org/licenses/LICENSE-2.0",
        "source": "https://github.com/googlefonts/noto-emoji (via the npm package emoji-datasource-google, "
                  "iamcal/emoji-data)",
    },
    "fluent": {
        "art": "Fluent Emoji (flat)",
        "copyright": "Copyright (c) Microsoft Corporation",
        "license": "MIT",
        "license_url": "https://github.com/microsoft/fluentui-emoji/blob/main/LICENSE",
        "source": f"https://github.com/microsoft/fluentui-emoji (via the npm package {FLUENT_PACKAGE})",
    },
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def cache_dir() -> Path:
    """Where downloaded package tarballs are kept: ``$EDIFICE_CACHE`` or ``~/.cache/edifice``."""
    root = os.environ.get("EDIFICE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edifice"
    return Path(root)


def package_of(style: str, version: str = EMOJI_VERSION) -> tuple[str, str]:
    """The npm package and version holding one art style."""
    return (FLUENT_PACKAGE, FLUENT_VERSION) if style == "fluent" else (f"emoji-datasource-{style}", version)


def fetch_npm_tarball(style: str, version: str = EMOJI_VERSION) -> Path:
    """``npm pack`` the package of one art style (:func:`package_of`) into the cache (once) and return the
    tarball's path."""
    package, version = package_of(style, version)
    dest = cache_dir()
    path = dest / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"  # npm pack's own file name
    if path.is_file():
        return path
    if shutil.which("npm") is None:
        raise SystemExit(f"npm is not installed: download {package}@{version} yourself "
                         f"(npm pack {package}@{version}) and pass the .tgz with --tarball-{style}")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(dest), "--silent"],
                   check=True, stdout=subprocess.DEVNULL)
    if not path.is_file():
        raise SystemExit(f"npm pack did not produce {path}")
    return path


def read_package(tarball: Path, style: str) -> tuple[list[dict], dict[str, bytes]]:
    """``emoji.json`` and the raw 64x64 PNGs (by file name) of one emoji-datasource tarball, in one pass."""
    prefix = f"package/img/{style}/64/"
    emoji, pngs = None, {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.name == "package/emoji.json":
                emoji = json.load(tar.extractfile(member))
            elif member.isfile() and member.name.startswith(prefix) and member.name.endswith(".png"):
                pngs[member.name[len(prefix):]] = tar.extractfile(member).read()
    if emoji is None or not pngs:
        raise SystemExit(f"{tarball} is not an emoji-datasource-{style} package "
                         f"(needs package/emoji.json and {prefix}*.png)")
    return emoji, pngs


def read_fluent(tarball: Path) -> dict[str, bytes]:
    """The SVGs of the Fluent Emoji package by file name (``<unified code, lower case>.svg``)."""
    prefix, svgs = "package/assets/", {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(prefix) and member.name.endswith(".svg"):
                svgs[member.name[len(prefix):]] = tar.extractfile(member).read()
    if not svgs:
        raise SystemExit(f"{tarball} is not a {FLUENT_PACKAGE} package (needs {prefix}*.svg)")
    return svgs


def render_svg(svg: bytes, size: int) -> bytes:
    """An SVG rendered to a ``size`` x ``size`` PNG (with alpha) by resvg."""
    import resvg_py  # only the fluent style needs it

    return bytes(resvg_py.svg_to_bytes(svg_string=svg.decode(), width=size, height=size))


def style_problem(styles) -> str | None:
    """Why these art styles cannot be built together, or None: unknown ones, or fluent without an
    emoji-datasource style to label it."""
    unknown = sorted(set(styles) - set(ALL_STYLES))
    if unknown:
        return f"unknown emoji styles {unknown}; choose from {', '.join(ALL_STYLES)}"
    if "fluent" in styles and not set(styles) & set(EMOJI_STYLES):
        return "the fluent style takes its labels from an emoji-datasource package: add twitter or google"
    return None


def slug(category: str) -> str:
    """Folder name of a category: "Smileys & Emotion" -> "smileys-emotion"."""
    return re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")


def is_heldout(unified: str, fraction: float) -> bool:
    """Stable split by emoji: the first 8 bytes of sha256(unified code) as a number in [0, 1)."""
    h = int.from_bytes(hashlib.sha256(unified.upper().encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


def on_white(png: bytes, size: int) -> Image.Image:
    """Decode a PNG (any mode, with or without alpha) and composite it on white as RGB ``size`` x ``size``."""
    im = Image.open(io.BytesIO(png)).convert("RGBA")
    if im.size != (size, size):
        im = im.resize((size, size), Image.LANCZOS)
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im).convert("RGB")


def emoji_images(entries: list[dict], style: str, skin_tones: bool):
    """(emoji key, category, subgroup, image file, emoji name) of every image of one style; skin-tone variants
    share their base's key and name. Fluent files are named by the unified code in lower case, not by
    emoji.json's ``image``."""
    def name(e: dict) -> str:
        return e["unified"].lower() + ".png" if style == "fluent" else e["image"]

    for e in entries:
        if e["category"] in DROPPED_CATEGORIES:
            continue
        title = (e.get("name") or e["short_name"]).lower()
        if e.get(f"has_img_{style}", True):
            yield e["unified"], e["category"], e["subcategory"], name(e), title
        if skin_tones:
            for v in e.get("skin_variations", {}).values():
                if v.get(f"has_img_{style}", True):
                    yield e["unified"], e["category"], e["subcategory"], name(v), title


LABELS = ("category", "subgroup", "emoji")  # what one class folder holds; see the module docstring


def label_folder(label: str, key: str, category: str, subgroup: str) -> str:
    """The class folder of an image: its category, ``<category>.<subgroup>`` or ``<category>.<subgroup>.<code>``."""
    parts = (category, subgroup, key)[:LABELS.index(label) + 1]
    return ".".join(slug(p) for p in parts)


def build_emoji(out: Path, tarballs: dict[str, Path], heldout_fraction: float = 0.1, skin_tones: bool = False,
                size: int = 64, label: str = "category") -> dict:
    """Write the emoji ImageFolder tree and manifest under ``out`` (see the module docstring); returns the
    manifest. ``label``: one folder per category, subgroup or emoji (see the module docstring). The
    tree is built in ``out.partial`` and swapped in at the end, so ``out`` is never half-written; an existing
    ``out`` is replaced only if it is a previous build (has a manifest.json)."""
    if label not in LABELS:
        raise SystemExit(f"label {label!r}: choose from {', '.join(LABELS)}")
    out = Path(out)
    if out.exists() and not (out / "manifest.json").is_file():
        raise SystemExit(f"{out} exists and is not an emoji dataset (no manifest.json); choose another --out")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)

    problem = style_problem(tarballs)
    if problem:
        raise SystemExit(problem)
    packages = {style: read_package(Path(path), style) for style, path in tarballs.items() if style != "fluent"}
    if "fluent" in tarballs:
        svgs = read_fluent(Path(tarballs["fluent"]))
        packages["fluent"] = (next(iter(packages.values()))[0],
                              {k[:-4] + ".png": v for k, v in svgs.items()})
    jobs = [(style, key, cat, label_folder(label, key, cat, group), group, name, title)
            for style, (entries, _) in packages.items()
            for key, cat, group, name, title in emoji_images(entries, style, skin_tones)]
    counts = {split: Counter() for split in ("train", "heldout")}
    emoji_by_split = {split: set() for split in counts}
    missing = Counter()
    for style, key, _, folder_name, _, name, _ in tqdm(jobs, desc="emoji", unit="img"):
        png = packages[style][1].get(name)
        if png is None:
            missing[style] += 1
            continue
        if style == "fluent":
            png = render_svg(png, size)
        split = "heldout" if is_heldout(key, heldout_fraction) else "train"
        folder = tmp / split / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        on_white(png, size).save(folder / f"{style}_{name}", optimize=True)
        counts[split][(folder_name, style)] += 1
        emoji_by_split[split].add(key)

    folders = {f: (cat, group, title) for _, _, cat, f, group, _, title in jobs}
    classes = []
    for i, f in enumerate(sorted(folders)):
        cat, group, title = folders[f]
        named = {"category": {"name": cat}, "subgroup": {"name": group, "group": cat},
                 "emoji": {"name": title, "group": cat, "subgroup": group}}[label]
        classes.append({"index": i, "folder": f, **named})
    described = {"category": "emoji-datasource `category`",
                 "subgroup": "emoji-datasource `subcategory` (group: its `category`)",
                 "emoji": "the emoji, named by emoji-datasource `name` (group: its `category`, subgroup: its "
                          "`subcategory`)"}
    manifest = {
        "dataset": "emoji",
        "image_size": size,
        "background": "white",
        "label": described[label] + "; dropped: " + ", ".join(DROPPED_CATEGORIES),
        "split": f"by emoji: sha256(unified code) < {heldout_fraction} of the hash range -> heldout",
        "heldout_fraction": heldout_fraction,
        "skin_tones": skin_tones,
        "sources": {style: {"package": package_of(style)[0], "tarball": Path(path).name,
                            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
                    for style, path in tarballs.items()},
        "classes": classes,
        "counts": {split: {
            "images": sum(c.values()),
            "emoji": len(emoji_by_split[split]),
            "by_style": {s: sum(n for (_, st), n in c.items() if st == s) for s in tarballs},
            "by_class": {k["folder"]: {s: c[(k["folder"], s)] for s in tarballs} for k in classes},
        } for split, c in counts.items()},
        "missing_images": dict(missing),
        "attribution": {style: ATTRIBUTION[style] for style in tarballs},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


# -- reading an ImageFolder ------------------------------------------------------------------------------------
def load_image(path: Path, size: int) -> np.ndarray:
    """An image file as ``[size, size, 3]`` uint8: alpha composited on white, the shorter side resized to
    ``size`` (bicubic) and the centre cropped."""
    im = Image.open(path)
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    im = im.convert("RGB")
    if im.size != (size, size):
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return np.array(im, dtype=np.uint8)


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` -> (image ``[3, size, size]`` float in [-1, 1], class index). Classes are the
    sub-folder names in sorted order. A ``manifest.json`` in ``root`` or its parent (as written by
    :func:`build_emoji`) is read into ``manifest``: it gives the classes' display names and the attributions.

    When the manifest gives every folder a ``group`` (a ``--label subgroup`` or ``emoji`` build), the folders are
    subclasses: the index is still the folder's, ``subclasses`` (:class:`edifice.pipeline.Subclasses`, weighted by
    their images) puts them under the groups, and ``class_names`` are the groups'. Otherwise ``subclasses`` is
    None. ``subgroups`` is each folder's manifest ``subgroup`` (an emoji build's) or None: it lets a model trained
    on the subgroups start the emoji (:meth:`edifice.train.TransformerTask.init_model`)."""

    def __init__(self, root: Path, size: int):
        self.root, self.size = Path(root), size
        if not self.root.is_dir():
            raise SystemExit(f"no image folder at {self.root}")
        self.folders = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.samples = [(p, i) for i, f in enumerate(self.folders) for p in sorted((self.root / f).iterdir())
                        if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise SystemExit(f"{self.root} holds no images in class sub-folders (expected root/<class>/<image>)")
        path = next((p for p in (self.root / "manifest.json", self.root.parent / "manifest.json") if p.is_file()),
                    None)
        self.manifest = json.loads(path.read_text()) if path else {}
        entries = {c["folder"]: c for c in self.manifest.get("classes", [])}
        self.class_names = [entries[f]["name"] if f in entries else f for f in self.folders]
        self.subclasses = None
        self.subgroups = tuple(entries.get(f, {}).get("subgroup") for f in self.folders)
        if self.folders and all("group" in entries.get(f, {}) for f in self.folders):
            groups = list(dict.fromkeys(entries[f]["group"] for f in self.folders))
            images = Counter(label for _, label in self.samples)
            self.subclasses = Subclasses(tuple(self.class_names), tuple(groups.index(entries[f]["group"])
                                                                        for f in self.folders),
                                         tuple(float(images[i]) for i in range(len(self.folders))))
            self.class_names = groups

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        img = torch.from_numpy(load_image(path, self.size)).permute(2, 0, 1)
        return img.float().div(127.5).sub(1), label


def parse_styles(text: str) -> tuple[str, ...]:
    styles = tuple(s.strip() for s in text.split(",") if s.strip())
    if not styles or len(set(styles)) != len(styles):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct styles from {','.join(ALL_STYLES)}")
    problem = style_problem(styles)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return styles


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edifice.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="dataset", required=True)
    e = sub.add_parser("emoji", help="Twemoji + Noto emoji (+ Fluent), 64x64, labelled by category")
    e.add_argument("--out", type=Path, default=Path("data/emoji"), help="output folder (default: data/emoji)")
    e.add_argument("--styles", type=parse_styles, default=EMOJI_STYLES,
                   help=f"art styles, from {','.join(ALL_STYLES)} (default: {','.join(EMOJI_STYLES)}, the set "
                        "benchmarks/quality.py measures on)")
    for style in ALL_STYLES:
        e.add_argument(f"--tarball-{style}", type=Path, default=None,
                       help=f"{package_of(style)[0]} .tgz (default: npm pack into {cache_dir()})")
    e.add_argument("--version", default=EMOJI_VERSION, help="npm package version (default: %(default)s)")
    e.add_argument("--heldout", type=float, default=0.1, help="share of emoji held out (default: %(default)s)")
    e.add_argument("--skin-tones", action="store_true", help="also include the skin-tone variants")
    e.add_argument("--label", choices=LABELS, default="category",
                   help="one class folder per category (default), per Unicode subgroup (<category>.<subgroup>) or "
                        "per emoji (<category>.<subgroup>.<code>): the finer labels models draw beneath the categories")
    e.add_argument("--subgroups", dest="label", action="store_const", const="subgroup",
                   help="the same as --label subgroup")
    args = p.parse_args(argv)
    tarballs = {s: getattr(args, f"tarball_{s}") or fetch_npm_tarball(s, args.version)
                for s in args.styles}
    m = build_emoji(args.out, tarballs, heldout_fraction=args.heldout, skin_tones=args.skin_tones,
                    label=args.label)
    for split in ("train", "heldout"):
        c = m["counts"][split]
        per_category = Counter()  # finer folders start with <category>.
        for folder, by_style in c["by_class"].items():
            per_category[folder.split(".")[0]] += sum(by_style.values())
        folders = sum(1 for by_style in c["by_class"].values() if any(by_style.values()))
        print(f"{split}: {c['images']} images of {c['emoji']} emoji in {folders} folders  " + "  ".join(
            f"{k}={n}" for k, n in per_category.items()))
    print(f"wrote {args.out}/ (manifest.json has the counts and the licence attributions)")


if __name__ == "__main__":
    main()
