"""Command line: ``python -m edifice convert|download|resave|average ...``.

    python -m edifice convert --var-vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16
    python -m edifice convert --mar-vae kl16.safetensors --mar mar-large.safetensors --out mar-large
    python -m edifice convert --fractalgen pretrained_models/fractalmar_in64/checkpoint-last.pth --out fractalmar-in64
    python -m edifice convert --vq vq_ds16_c2i.pt --maskgit ImageNet_256_small.pth --out maskgit-256-small
    python -m edifice convert --vq vq_ds16_c2i.pt --llamagen c2i_L_384.pt --out llamagen-l-384
    python -m edifice download var-d16             # a preset or an org/name Hub repo; --revision, --force
    python -m edifice resave runs/emoji-var/export --out checkpoints/emoji-var --dtype fp16 --set cfg=2.0
    python -m edifice average runs/ckpt-a runs/ckpt-b runs/ckpt-c --out runs/soup --dtype fp16

``convert`` turns the authors' pickles into an edifice checkpoint folder (``edifice.load(folder)``); files
named as in an official preset get that preset's class names and recommended sampling. ``download``
pre-fetches into the Hub cache, for offline use and Spaces' ``preload_from_hub``. ``resave`` writes a
checkpoint again with its weights stored in another dtype (fp16 halves the size; loading on a CPU still
computes in float32) and/or new recommended sampling settings (``--set key=value``, values read as JSON);
the model card's text after its header is kept. ``average`` writes the mean of the generator weights of several
fine-tunes of one model, a uniform "model soup" (Wortsman et al. 2022): fine-tunes that start from the same
weights stay in one basin of the loss, so their mean is a model too, often better than each. They must share
architecture, classes and tokenizer (every tokenizer tensor equal, so their tokens mean the same); the first
gives the recommended sampling, the model card and the settings that act only in training (dropout, class
dropout, FractalGen's loss weight), which may differ. Errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from . import loading, presets
from .checkpoint import config_of
from .errors import EdificeError
from .official import load_official_mar, load_official_var
from .official_fractalgen import load_official_fractalgen, parse_config
from .official_llamagen import load_official_llamagen
from .official_maskgit import load_official_maskgit, parse_cli_config

# family -> (the convert flags it needs, as argparse dests; files -> float32 pipeline on the CPU)
CONVERTERS = {
    "var": (("var_vae", "var"), lambda args: load_official_var(args.var_vae, args.var, device="cpu")),
    "mar": (("mar_vae", "mar"), lambda args: load_official_mar(args.mar_vae, args.mar, device="cpu", **_heads(args))),
    "fractalgen": (("fractalgen",), lambda args: load_official_fractalgen(args.fractalgen,
                                                                        parse_config(args.fractalgen_config),
                                                                        device="cpu")),
    "maskgit": (("maskgit", "vq"), lambda args: load_official_maskgit(args.vq, args.maskgit,
                                                                      parse_cli_config(args.model_config),
                                                                      device="cpu")),
    "llamagen": (("llamagen", "vq"), lambda args: load_official_llamagen(args.vq, args.llamagen,
                                                                         parse_cli_config(args.model_config),
                                                                         device="cpu")),
}


def _heads(args: argparse.Namespace) -> dict:
    if not args.mar_heads:
        return {}
    return {"encoder_num_heads": args.mar_heads[0], "decoder_num_heads": args.mar_heads[1]}


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
    mar = convert.add_argument_group("MAR with diffusion head (LTH14/mar, jadechoghari/mar)")
    mar.add_argument("--mar-vae", type=Path, metavar="VAE", help="the KL-16 VAE: kl16.safetensors or kl16.ckpt")
    mar.add_argument("--mar", type=Path, metavar="MAR", help="mar-base/large/huge.safetensors or checkpoint-last.pth "
                                                             "(its EMA weights are used)")
    mar.add_argument("--mar-heads", type=int, nargs=2, metavar=("ENC", "DEC"),
                     help="attention heads of encoder and decoder, for widths other than the official 768/1024/1280")
    fractal = convert.add_argument_group("FractalGen (LTH14/fractalgen)")
    fractal.add_argument("--fractalgen", type=Path, metavar="CKPT", help="the authors' checkpoint-last.pth (weights "
                         "under 'model'); a released model gets ImageNet classes and the authors' sampling")
    fractal.add_argument("--fractalgen-config", metavar="NAME|JSON", help="official model name (fractalar_in64, "
                         "fractalmar_in64, fractalmar_{base,large,huge}_in256) or the authors' constructor "
                         "arguments as JSON (text or file); default: read from the weights")
    vq = convert.add_argument_group("Halton-MaskGIT (llvictorll/Halton-MaskGIT), LlamaGen (FoundationVision/LlamaGen)")
    vq.add_argument("--vq", type=Path, metavar="VQ.pt", help="the LlamaGen VQ-16 tokenizer vq_ds16_c2i.pt (both)")
    vq.add_argument("--maskgit", type=Path, metavar="MODEL.pth", help="ImageNet_256_tiny.pth ... _384_large.pth")
    vq.add_argument("--llamagen", type=Path, metavar="GPT.pt", help="c2i_B_256.pt ... c2i_3B_384.pt")
    vq.add_argument("--model-config", metavar="NAME|JSON", help="released name (ImageNet_256_small, GPT-L, c2i_L_384) "
                    "or the authors' arguments {\"vq\": ..., \"maskgit\"|\"gpt\": ...} as JSON (text or file); "
                    "default: the released widths' heads")
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
    resave = sub.add_parser("resave", help="write a checkpoint again: storage dtype, recommended sampling")
    resave.add_argument("spec", help="a checkpoint folder, preset or Hub repo")
    resave.add_argument("--out", type=Path, required=True, help="folder to write")
    resave.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="storage dtype")
    resave.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recommended sampling settings")
    resave.add_argument("--tokenizer", type=Path, default=None,
                        help="swap in this tokenizer folder (a `tokenizer --decoder-only` run): its encoder and "
                             "codebook must be the checkpoint's, so the generator's tokens keep their meaning")
    resave.set_defaults(run=run_resave)
    average = sub.add_parser("average", help="the mean of the generator weights of fine-tunes of one model")
    average.add_argument("specs", nargs="+", metavar="spec",
                         help="checkpoint folders, presets or Hub repos: fine-tunes of one model, at least two")
    average.add_argument("--out", type=Path, required=True, help="folder to write (not one of the sources)")
    average.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="storage dtype")
    average.set_defaults(run=run_average)
    return parser


def run_resave(args: argparse.Namespace) -> None:
    pipe = loading.load(args.spec, device="cpu", dtype="fp32")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise EdificeError(f"resave: --set takes key=value, got {item!r}")
        try:
            pipe.defaults[key] = json.loads(value)
        except json.JSONDecodeError:
            pipe.defaults[key] = value
    if args.tokenizer is not None:
        swap_decoder(pipe, args.tokenizer)
    write(pipe, args.out, args.dtype, Path(args.spec) / "README.md")


def write(pipe, out: Path, dtype_name: str, source_card: Path, note: str = "") -> None:
    """Save ``pipe`` with its weights stored in ``dtype_name``, the source card's text after its header kept and
    ``note`` added."""
    dtype = loading.DTYPES[dtype_name]
    loading.place(pipe, "cpu", dtype)
    pipe.tokenizer.to(dtype)
    text = source_card.read_text() if source_card.is_file() else ""
    kept = "\n## " + text.split("\n## ", 1)[1] if "\n## " in text else ""
    pipe.save_pretrained(out)
    if kept or note:
        with open(out / "README.md", "a") as f:
            f.write(kept + (f"\n{note}\n" if note else ""))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB, {dtype_name}); defaults {pipe.defaults}")


TRAINING_ONLY = ("dropout", "drop_rate", "attn_drop_rate", "drop_path_rate", "cond_drop_rate",  # VAR, MAR
                 "label_drop_prob", "r_weight")  # FractalGen


def layout(key: str, value):
    """A config.json entry without what acts only in training (dropout, class dropout, a loss weight):
    fine-tunes that changed it still average."""
    if key != "model":
        return value
    return {k: v for k, v in value.items() if k not in TRAINING_ONLY}


def run_average(args: argparse.Namespace) -> None:
    if len(args.specs) < 2:
        raise EdificeError("average: give at least two checkpoints, fine-tunes of one model")
    if any(Path(spec).resolve() == args.out.resolve() for spec in args.specs):
        raise EdificeError("average: --out must be a new folder, not one of the sources")
    pipes = [loading.load(spec, device="cpu", dtype="fp32") for spec in tqdm(args.specs, desc="loading", unit="ckpt")]
    first, ours = pipes[0], config_of(pipes[0])
    for spec, pipe in zip(args.specs[1:], pipes[1:], strict=True):
        theirs = config_of(pipe)
        differ = [k for k in ours if k != "defaults" and layout(k, theirs[k]) != layout(k, ours[k])]
        if differ:
            raise EdificeError(f"average: {spec} differs from {args.specs[0]} in {', '.join(differ)}; only "
                               "fine-tunes of one model average")
        name = first_difference(first.tokenizer, pipe.tokenizer)
        if name is not None:
            raise EdificeError(f"average: {spec} has another tokenizer ({name} differs), so its generator's "
                               "tokens do not mean the same")
    states = [pipe.model.state_dict() for pipe in pipes]
    mean = {}
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            mean[name] = torch.stack([state[name] for state in states]).mean(0)
        elif all(torch.equal(state[name], tensor) for state in states[1:]):
            mean[name] = tensor  # integer buffers (e.g. VAR's scale of each position) are part of the layout
        else:
            raise EdificeError(f"average: the checkpoints' {name} differ; only fine-tunes of one model average")
    first.model.load_state_dict(mean)
    sources = ", ".join(f"`{spec}`" for spec in args.specs)
    write(first, args.out, args.dtype, Path(args.specs[0]) / "README.md", f"Generator weights: the mean of {sources}.")


def swap_decoder(pipe, folder: Path) -> None:
    """Put the decoder of tokenizer ``folder`` into ``pipe``, after checking that everything that makes tokens
    (encoder, quant_conv, quantizer) is identical."""
    from .train import load_tokenizer

    try:
        new = load_tokenizer(folder)
    except (SystemExit, OSError) as e:
        raise EdificeError(f"resave --tokenizer: {e}") from None
    old = pipe.tokenizer
    if new.cfg.to_dict() != old.cfg.to_dict():
        raise EdificeError(f"resave --tokenizer: {folder} is not the same architecture as the checkpoint's tokenizer")
    name = first_difference(old, new, skip=("post_quant_conv.", "decoder."))
    if name is not None:
        raise EdificeError(f"resave --tokenizer: {folder} encodes differently ({name} differs); only a "
                           "decoder fine-tune (`tokenizer --decoder-only --init ...`) can be swapped in")
    old.load_state_dict(new.state_dict())


def first_difference(ours: torch.nn.Module, theirs: torch.nn.Module, skip: tuple[str, ...] = ()) -> str | None:
    """The name of the first tensor of ``ours`` whose value ``theirs`` does not share (names starting with one of
    ``skip`` aside), or None. Both must have the same tensor names."""
    other = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        if not name.startswith(skip) and not torch.equal(other[name].to(tensor.dtype), tensor):
            return name
    return None


def run_convert(args: argparse.Namespace) -> None:
    chosen = [kind for kind, (flags, _) in CONVERTERS.items() if any(getattr(args, f) for f in flags if f != "vq")]
    if len(chosen) != 1:
        raise EdificeError("convert: give the files of one model family, e.g. --var-vae VAE.pth --var VAR.pth "
                           "or --mar-vae kl16.safetensors --mar mar-base.safetensors")
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
