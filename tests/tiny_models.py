"""Small checkpoints for app tests, saved in the edifice format and registered as presets through an
``EDIFICE_PRESETS`` file, so the app loads them like any preset: random-weight tiny-var (4 scales) and tiny-mar
(8x8 = 64 tokens), both 32 px with 3 classes, tiny-mar-diffusion, the official-format golden MAR (4x4 = 16
tokens, 64 px, 10 classes) converted, and (``all_families=True``) the golden tiny Halton-MaskGIT, LlamaGen and
FractalMAR converted."""

import json
from pathlib import Path

import torch

from edifice import MAR, VAR, VQVAE, MARConfig, MARPipeline, VARConfig, VARPipeline, VQVAEConfig, load_official_mar
from edifice.generative.mar_diffusion import DiffusionMARPipeline

MAR_FIX = Path(__file__).parent / "fixtures" / "mar"
ML_FIX = Path(__file__).parent / "fixtures" / "maskgit_llamagen"
FG_FIX = Path(__file__).parent / "fixtures" / "fractalgen"

CLASSES = ["circle", "square", "triangle"]


def tiny_var() -> VARPipeline:
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 1, 2, 2), patch_nums=(1, 2, 3, 4)))
    var = VAR(VARConfig(vocab_size=32, z_channels=8, num_classes=3, depth=2, embed_dim=64, num_heads=2,
                        patch_nums=(1, 2, 3, 4)))
    return VARPipeline(vae, var.init_weights(init_adaln_gamma=0.5, init_head=1.0), CLASSES,
                       defaults=dict(cfg=1.5, top_k=0, top_p=0.0))


def tiny_mar() -> MARPipeline:
    torch.manual_seed(1)
    tok = VQVAE(VQVAEConfig(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 1, 2), patch_nums=(8,)))
    mar = MAR(MARConfig(vocab_size=33, embed_dim=64, num_layers=2, num_heads=2, seq_len=64, num_classes=3))
    return MARPipeline(tok, mar, CLASSES, defaults=dict(num_steps=8, cfg=1.0, temperature=1.0))


def tiny_mar_diffusion() -> DiffusionMARPipeline:
    pipe = load_official_mar(MAR_FIX / "tiny_kl16.safetensors", MAR_FIX / "tiny_mar_checkpoint-last.pth",
                             device="cpu", encoder_num_heads=4, decoder_num_heads=3)
    pipe.defaults = dict(num_steps=8, num_sampling_steps=10, cfg=2.0, cfg_schedule="linear", temperature=1.0)
    return pipe


def golden_maskgit_llamagen(kind: str):
    """The golden tiny Halton-MaskGIT (kind "maskgit") or LlamaGen GPT ("gpt") with the tiny VQ."""
    from edifice.official_llamagen import load_official_llamagen
    from edifice.official_maskgit import load_official_maskgit

    config = json.loads((ML_FIX / "config.json").read_text())
    vq = {**config["vq"]["model_args"], "ch": config["vq"]["encoder_decoder_ch"],
          "num_res_blocks": config["vq"]["num_res_blocks"]}
    if kind == "maskgit":
        return load_official_maskgit(ML_FIX / "tiny_vq_ds16_c2i.pt", ML_FIX / "tiny_halton_maskgit.pth",
                                     {"vq": vq, "maskgit": config["maskgit"]["constructor"]}, device="cpu")
    return load_official_llamagen(ML_FIX / "tiny_vq_ds16_c2i.pt", ML_FIX / "tiny_c2i_gpt.pt",
                                  {"vq": vq, "gpt": config["gpt"]["model_args"]}, device="cpu")


def golden_fractalgen(name: str = "fmar3"):
    from edifice.official_fractalgen import load_official_fractalgen

    config = json.loads((FG_FIX / "config.json").read_text())["configs"][name]
    return load_official_fractalgen(FG_FIX / config["checkpoint"], config["constructor"], device="cpu")


def write_presets(folder: Path, all_families: bool = False) -> Path:
    """Save the checkpoints under ``folder`` and return a presets file naming them tiny-var / tiny-mar /
    tiny-mar-diffusion (and with ``all_families`` tiny-maskgit / tiny-llamagen / tiny-fractalgen (mar, mar) /
    tiny-fractalar (ar, ar))."""
    entries = {}
    pipes = {"tiny-var": tiny_var(), "tiny-mar": tiny_mar(), "tiny-mar-diffusion": tiny_mar_diffusion()}
    if all_families:
        pipes.update({"tiny-maskgit": golden_maskgit_llamagen("maskgit"), "tiny-llamagen": golden_maskgit_llamagen(
            "gpt"), "tiny-fractalgen": golden_fractalgen(), "tiny-fractalar": golden_fractalgen("far3")})
    for name, pipe in pipes.items():
        pipe.save_pretrained(folder / name)
        entries[name] = {"kind": pipe.kind, "source": "folder", "path": str(folder / name),
                         "description": "random weights, for tests"}
    path = folder / "presets.json"
    path.write_text(json.dumps(entries))
    return path
