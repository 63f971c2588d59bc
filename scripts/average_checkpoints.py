"""Average the generator weights of several edifice checkpoints of one model (a uniform "model soup").

    python scripts/average_checkpoints.py A B C ... --out FOLDER

Fine-tunes that start from the same weights stay in one basin of the loss, so the mean of their weights is a
model too, often better than each (Wortsman et al. 2022, arXiv 2203.05482). The checkpoints must share the
architecture and the tokenizer (every ``tokenizer.*`` tensor equal, so their tokens mean the same); only the
``model.*`` tensors are averaged, in float32, and stored in the first checkpoint's dtypes. The first checkpoint
gives ``config.json`` (so its recommended sampling) and the model card; the card gets a line naming the sources.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def average(folders: list[Path], out: Path) -> Path:
    if len(folders) < 2:
        raise SystemExit("give at least two checkpoint folders")
    configs = [json.loads((f / "config.json").read_text()) for f in folders]
    for f, cfg in zip(folders[1:], configs[1:], strict=True):
        for key in ("kind", "tokenizer", "model", "classes"):
            if cfg.get(key) != configs[0].get(key):
                raise SystemExit(f"{f}: its {key} differs from {folders[0]}'s: only fine-tunes of one model average")
    sds = [load_file(f / "model.safetensors") for f in folders]
    first = sds[0]
    for f, sd in zip(folders[1:], sds[1:], strict=True):
        if sd.keys() != first.keys():
            raise SystemExit(f"{f}: its tensors are not {folders[0]}'s")
        for k in first:
            if k.startswith("tokenizer.") and not torch.equal(sd[k], first[k]):
                raise SystemExit(f"{f}: its tokenizer differs ({k}): the generators' tokens would not mean the same")
    avg = {k: torch.stack([sd[k].float() for sd in sds]).mean(0).to(v.dtype) if k.startswith("model.") else v
           for k, v in first.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(avg, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(folders[0] / "config.json", out / "config.json")
    card = folders[0] / "README.md"
    text = card.read_text() if card.is_file() else ""
    sources = ", ".join(f"`{f}`" for f in folders)
    (out / "README.md").write_text(text.rstrip() + f"\n\nGenerator weights: the mean of {sources}.\n")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="edifice checkpoint folders of one model")
    ap.add_argument("--out", type=Path, required=True, help="folder to write (not one of the sources)")
    args = ap.parse_args(argv)
    if any(args.out.resolve() == f.resolve() for f in args.folders):
        raise SystemExit("--out must be a new folder, not one of the sources")
    print("wrote", average(args.folders, args.out))


if __name__ == "__main__":
    main()
