"""Command line: ``python -m edifice convert ...`` and ``python -m edifice download ...``.

    python -m edifice convert --var-vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16
    python -m edifice download var-d16             # a preset or an org/name Hub repo; --revision, --force

``convert`` turns the authors' pickles into an edifice checkpoint folder (``edifice.load(folder)``); files
named as in an official preset get that preset's class names and recommended sampling. ``download``
pre-fetches into the Hub cache, for offline use and Spaces' ``preload_from_hub``. Errors print one line
and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from . import loading, presets
from .errors import EdificeError
from .official import load_official_var

# family -> (the convert flags it needs, as argparse dests; files -> float32 pipeline on the CPU)
CONVERTERS = {
    "var": (("var_vae", "var"), lambda args: load_official_var(args.var_vae, args.var, device="cpu")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edifice", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert official checkpoints to edifice folders; pre-fetch presets into the Hub cache.",
        epilog="examples:\n" + __doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="official checkpoint files -> an edifice checkpoint folder")
    var = convert.add_argument_group("VAR (FoundationVision/var)")
    var.add_argument("--var-vae", type=Path, metavar="VAE.pth", help="the VQ-VAE, e.g. vae_ch160v4096z32.pth")
    var.add_argument("--var", type=Path, metavar="VAR.pth", help="the transformer, e.g. var_d16.pth")
    # MAR (LTH14/mar): the official-MAR issue adds its group here (--mar-vae, --mar) and a CONVERTERS entry.
    convert.add_argument("--out", type=Path, required=True, help="folder to write (created; files replaced)")
    convert.add_argument("--classes", help="class names: a list shipped in assets/ (e.g. imagenet) or a text "
                                           "file with one name per line (default: the matching preset's)")
    convert.add_argument("--license", default="mit", help="license in the model card (default: mit)")
    convert.set_defaults(run=run_convert)

    download = sub.add_parser("download", help="fetch a preset or Hub repo into the Hub cache")
    download.add_argument("spec", help="a preset name or an org/name Hub repository")
    download.add_argument("--revision", help="branch, tag or commit (default: the preset's, or main)")
    download.add_argument("--force", action="store_true", help="download again even if cached")
    download.set_defaults(run=run_download)
    return parser


def run_convert(args: argparse.Namespace) -> None:
    chosen = [kind for kind, (flags, _) in CONVERTERS.items() if any(getattr(args, f) for f in flags)]
    if len(chosen) != 1:
        raise EdificeError("convert: give the files of one model family, e.g. --var-vae VAE.pth --var VAR.pth")
    flags, read = CONVERTERS[chosen[0]]
    missing = ["--" + f.replace("_", "-") for f in flags if getattr(args, f) is None]
    if missing:
        raise EdificeError(f"convert: also give {' '.join(missing)}")
    with tqdm(total=2, desc="convert", unit="step") as bar:
        bar.set_postfix_str("reading the official files")
        pipe = read(args)
        bar.update()
        preset = presets.find_official(getattr(args, f).name for f in flags)
        if preset is not None:
            pipe.defaults = dict(preset.defaults)
            if preset.classes:
                pipe.class_names = list(presets.class_list(preset.classes))
        if args.classes:
            pipe.class_names = _class_names(args.classes)
        bar.set_postfix_str(f"writing {args.out}")
        pipe.save_pretrained(args.out, license=args.license)
        bar.update()
    print(f"wrote {args.out}" + (f" (classes and sampling of preset {preset.name})" if preset else "")
          + f"; load it with edifice.load({str(args.out)!r})")


def _class_names(spec: str) -> list[str]:
    path = Path(spec)
    return path.read_text().splitlines() if path.is_file() else list(presets.class_list(spec))


def run_download(args: argparse.Namespace) -> None:
    folder = loading.download(args.spec, args.revision, force=args.force)
    print(f"{args.spec}: {folder}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except EdificeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
