"""Small checkpoints for app tests, saved in the edifice format and registered as presets through an
``EDIFICE_PRESETS`` file, so the app loads them like any preset: random-weight tiny-var (4 scales) and tiny-mar
(8x8 = 64 tokens), both 32 px with 3 classes, and tiny-mar-diffusion, the official-format golden MAR (4x4 = 16
tokens, 64 px, 10 classes) converted."""

import json
from pathlib import Path

import torch

from edifice import MAR, VAR, VQVAE, MARConfig, MARPipeline, VARConfig, VARPipeline, VQVAEConfig, load_official_mar
from edifice.generative.mar_diffusion import DiffusionMARPipeline

MAR_FIX = Path(__file__).parent / "fixtures" / "mar"

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


def write_presets(folder: Path) -> Path:
    """Save the checkpoints under ``folder`` and return a presets file naming them tiny-var / tiny-mar /
    tiny-mar-diffusion."""
    entries = {}
    pipes = {"tiny-var": tiny_var(), "tiny-mar": tiny_mar(), "tiny-mar-diffusion": tiny_mar_diffusion()}
    for name, pipe in pipes.items():
        pipe.save_pretrained(folder / name)
        entries[name] = {"kind": pipe.kind, "source": "folder", "path": str(folder / name),
                         "description": "random weights, for tests"}
    path = folder / "presets.json"
    path.write_text(json.dumps(entries))
    return path
