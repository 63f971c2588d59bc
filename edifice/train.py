"""Train the tokenizers, VAR, MAR and FractalGen: ``python -m edifice.train {tokenizer,var,mar,fractalgen} --data
DIR --out RUN``.

Built on accelerate, so one command runs on the CPU, one GPU or several (``accelerate launch -m
edifice.train ...``), with ``--mixed-precision`` and ``--grad-accum``. Input is any ImageFolder tree
(``DIR/<class>/<image>``), resized and centre-cropped to the tokenizer's resolution. Stages:

- ``tokenizer``: the VQ-VAE of :mod:`edifice.tokenizers.vqvae`, multi-scale residual for VAR (``--scales
  1,2,3,4,5,6,8``) or single-scale for MAR (``--scales 8``). Loss = L1 reconstruction (``--recon-loss mse``
  for MSE) + the quantizer's codebook + beta * commitment loss, gradients through the quantizer
  straight-through. Dead codes: a code no image chose for ``--dead-after`` steps (since it was last set) is
  re-initialised from a random quantizer input of the current batch (its Adam moments zeroed, its EMA copy
  moved with it). ``codes_used`` in the metrics is the share of codes chosen within the last
  ``--dead-after`` steps. ``--flip`` and ``--shift N`` augment the images (mirror, move by up to N px): the
  tokenizer memorises a few thousand emoji (27 dB on training images, 23 on held-out ones), and a decoder
  fine-tuned with ``--decoder-only`` on moved and mirrored images generalises better.
- ``var``: teacher-forced cross-entropy over the whole token pyramid in one pass (block-causal mask), class
  dropout for classifier-free guidance. ``--scale-aug P``: a share P of the batches trains on a random
  valid sub-list of the scales (first and last kept, each one between with probability ``--scale-keep``,
  default 1/2), its tokens re-quantized for that sub-list, so the sampler's scale-list control gives real
  images. A lower ``--scale-keep`` trains more on short lists: of the sub-lists of 1,2,3,4,6,8,12,16, 30%
  keep just one size between at 0.3 (1,2,16 alone: 5%), against 9% (1.6%) at 1/2.
- ``var`` and ``mar`` take ``--flip``: every training image also mirrored left-right (with cached latents, the
  mirrors are encoded once up front and the data doubles; without, each image of a batch is mirrored with
  probability 1/2), and ``--shift N`` with ``--no-cache-latents``: each image moved by up to N pixels, as for
  the tokenizer, and encoded at every step (a 2-pixel move is half a 16x16 token, so every position gives
  new token maps of the same emoji).
- ``mar``: cross-entropy on the masked tokens, mask ratios from MAR's training default (``maskgit``:
  cos(pi u / 2), see :func:`edifice.generative.mar.sample_mask_ratio`), class dropout.
- ``fractalgen``: pixel space, no tokenizer: the authors' loss (``FractalGen.forward`` in
  :mod:`edifice.generative.fractalgen`: class dropout, truncated-normal MAR masking, r-weighted pixel loss) for
  any ``--generator-types`` (their ``generator_type_list``, e.g. ``ar,ar,ar`` or ``mar,mar,ar``) and sizes
  (``--img-size-list``, ``--embed-dim-list``, ``--num-blocks-list``, ``--num-heads-list``).

Learning rate: linear warm-up, then cosine decay to a tenth at ``--steps``. AdamW; weight decay only on the
weights of linear and conv layers. The exported weights are an EMA of the trained ones (``--ema``).

A run folder holds ``run.json`` (stage, architecture, classes, options), ``metrics.csv`` (one row per
``--log-every`` steps), ``state/`` (accelerate's state plus step counters and EMA; rerunning the command on
the same ``--out`` resumes from it, with the architecture of ``run.json``) and ``export/`` (written at every
save and at the end: a tokenizer folder for ``tokenizer``, an edifice checkpoint for the generators).
The same code is importable: :func:`run` takes the command-line options as keyword arguments.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import broadcast, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .data import ImageFolder
from .generative import fractalgen as fractal_mod
from .generative import mar as mar_mod
from .generative import var as var_mod
from .tokenizers.vqvae import VQVAE, VQVAEConfig

STAGES = ("tokenizer", "var", "mar", "fractalgen")
TOKENIZER_FORMAT = "edifice-tokenizer"


# -- tokenizer folders ----------------------------------------------------------------------------------------
def save_tokenizer(vae: VQVAE, folder: Path, card: str = "") -> Path:
    """A trained tokenizer on its own: ``config.json`` + ``model.safetensors`` (+ ``README.md``), the input of
    the var and mar stages."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, tmp / "model.safetensors",
              metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps({"format": TOKENIZER_FORMAT, "tokenizer": vae.cfg.to_dict()},
                                                indent=2) + "\n")
    (tmp / "README.md").write_text(card)
    replace_dir(tmp, folder)
    return folder


def load_tokenizer(path: Path) -> VQVAE:
    """A tokenizer folder written by :func:`save_tokenizer`, the run folder of a tokenizer stage, or an edifice
    checkpoint with a VQ-VAE (its tokenizer, in float32)."""
    path = Path(path)
    folder = path / "export" if (path / "export" / "config.json").is_file() else path
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if config.get("format") == "edifice":
        from .loading import load

        vae = load(folder, device="cpu", dtype=torch.float32).tokenizer
        if not isinstance(vae, VQVAE):
            raise SystemExit(f"{path}: its tokenizer is not a VQ-VAE (a {type(vae).__name__})")
        return vae.eval().requires_grad_(False)
    if config.get("format") != TOKENIZER_FORMAT:
        raise SystemExit(f"{path} is not a tokenizer folder; pass the --out folder of a `tokenizer` run "
                         "(or its export/ folder, or an edifice checkpoint)")
    vae = VQVAE(VQVAEConfig(**config["tokenizer"]))
    vae.load_state_dict(load_file(folder / "model.safetensors"))
    return vae.eval().requires_grad_(False)


def init_weights(path: Path, part: str) -> nn.Module:
    """The ``--init`` weights of a new run, in float32 and trainable: ``part`` "tokenizer" (see
    :func:`load_tokenizer`) or "model", the generator of an edifice checkpoint. Fine-tuning a bundled model
    starts here instead of from random weights."""
    module = load_tokenizer(path) if part == "tokenizer" else getattr(init_pipeline(path), part)
    return module.float().train().requires_grad_(True)


def init_pipeline(path: Path):
    """The edifice checkpoint an ``--init`` names, in float32 on the CPU."""
    from .loading import load

    try:
        return load(path, device="cpu", dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 -- any unreadable folder ends the command with its reason
        raise SystemExit(f"--init {path}: {e}") from None


GENERATOR_SHAPES = {"var": (8, 256, 8, 0.0), "mar": (6, 256, 8, 0.1)}  # new models: depth, width, heads, dropout


def new_dropout(args) -> float:
    """The dropout of a new VAR or MAR: ``--dropout``, else the stage's default."""
    return GENERATOR_SHAPES[args.stage][3] if args.dropout is None else args.dropout


def redrop(model: nn.Module, dropout: float | None, field: str) -> nn.Module:
    """``model`` rebuilt with its config's dropout ``field`` set to ``dropout`` (None: unchanged), weights kept.
    Dropout has no weights, so an ``--init`` model can fine-tune with another rate than it was trained with."""
    if dropout is None or getattr(model.cfg, field) == dropout:
        return model
    new = type(model)(dataclasses.replace(model.cfg, **{field: dropout}))
    new.load_state_dict(model.state_dict())
    return new.train()


def save_pipeline(pipe, folder: Path, card: str) -> Path:
    """An exported generator: the pipeline as an edifice checkpoint, the training card appended to its README."""
    pipe.save_pretrained(folder)
    with open(Path(folder) / "README.md", "a") as f:
        f.write("\n" + card)
    return Path(folder)


def replace_dir(tmp: Path, folder: Path) -> None:
    """Swap a finished ``tmp`` folder in for ``folder`` (the old one is moved aside first, then deleted)."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


# -- pieces shared by the stages ------------------------------------------------------------------------------
def class_weights(labels: torch.Tensor, balance: float) -> torch.Tensor | None:
    """Per-image sampling weights that give each class a share of the batches proportional to its image count
    to the power ``1 - balance``: 0 draws images uniformly (the data's own class mix, None), 1 draws classes
    uniformly (a class of 150 images as often as one of 700), 0.5 in between."""
    if balance == 0:
        return None
    counts = torch.bincount(labels).double()
    return counts[labels].pow(-balance)


def index_batches(n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                  world: int = 1, weights: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Index batches forever: epoch e is ``randperm(n)`` from a generator seeded with (seed, e), split between
    the processes, cut into full batches. ``start`` skips that many batches (resuming mid-epoch). With
    ``weights`` (see :func:`class_weights`) an epoch is instead n draws with replacement in those proportions."""
    per_epoch = n // world // batch_size
    if per_epoch == 0:
        raise SystemExit(f"{n} images are fewer than one batch ({batch_size} x {world} processes); "
                         "lower --batch-size")
    epoch, skip = divmod(start, per_epoch)
    while True:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g) if weights is None else torch.multinomial(weights, n, True, generator=g)
        perm = order[rank::world]
        for b in range(skip, per_epoch):
            yield perm[b * batch_size:(b + 1) * batch_size]
        epoch, skip = epoch + 1, 0


def random_scale_ids(patch_nums, generator: torch.Generator, keep: float = 0.5) -> list[int]:
    """A random valid sub-list of a trained scale list, as indices: the first and last size always, each
    size between with probability ``keep`` (strictly increasing, checked by ``check_scales``). A lower
    ``keep`` trains more on short lists such as 1,2,16, whose last step draws most of the image at once."""
    K = len(patch_nums)
    kept = (torch.rand(max(K - 2, 0), generator=generator) < keep).tolist()
    tail = [patch_nums[-1]] if K > 1 else []
    sizes = [patch_nums[0]] + [pn for pn, k in zip(patch_nums[1:-1], kept, strict=True) if k] + tail
    return var_mod.check_scales(sizes, patch_nums)


def pick_scale_ids(patch_nums, share: float, generator: torch.Generator, keep: float = 0.5) -> list[int] | None:
    """None (the full list) or, with probability ``share``, a random sub-list (see ``random_scale_ids``)."""
    if share > 0 and torch.rand((), generator=generator).item() < share:
        return random_scale_ids(patch_nums, generator, keep)
    return None


def augment(img: torch.Tensor, flip: bool, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Tokenizer augmentation of images ``[B, C, H, W]`` in [-1, 1]: each image mirrored left-right with
    probability 1/2 (``flip``) and moved by up to ``shift`` pixels each way, uncovered pixels white (the emoji
    are composited on white; mirroring alone works on any range). The draws come from ``generator`` (CPU), so a
    resumed run repeats them."""
    B, _, H, W = img.shape
    if flip:
        mirror = (torch.rand(B, generator=generator) < 0.5).to(img.device)
        img = torch.where(mirror[:, None, None, None], img.flip(-1), img)
    if shift > 0:
        dy, dx = (torch.randint(0, 2 * shift + 1, (2, B), generator=generator)).tolist()
        padded = F.pad(img, (shift,) * 4, value=1.0)
        img = torch.stack([padded[i, :, y:y + H, x:x + W] for i, (y, x) in enumerate(zip(dy, dx, strict=True))])
    return img


def quantizer_inputs(vae: VQVAE, img: torch.Tensor) -> torch.Tensor:
    """Every vector the quantizer snaps to a code for these images, ``[N, Cvae]``: per scale the residual
    ``f - f_hat`` so far, area-downsampled to that scale (dead codes are re-initialised from these)."""
    quant = vae.quantize
    f = vae.encode(img).float()
    fhats = quant.f_to_idx(f, to_fhat=True)
    rows = [quant.downsample(f - (fhats[k - 1] if k else 0), pn) for k, pn in enumerate(quant.patch_nums)]
    return torch.cat([r.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for r in rows])


@torch.no_grad()
def encode_dataset(vae: VQVAE, dataset: ImageFolder, batch_size: int, device, workers: int = 0,
                   mirror: bool = False):
    """Encoder latents ``[N, Cvae, h, w]`` and labels ``[N]`` of a whole image folder, on ``device``; with
    ``mirror`` also those of every image mirrored left-right, after them (``[2N, ...]``)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    fs, ms, ys = [], [], []
    for img, y in tqdm(loader, desc="encoding", unit="batch", disable=not PartialState().is_main_process):
        img = img.to(device)
        fs.append(vae.encode(img).float())
        if mirror:
            ms.append(vae.encode(img.flip(-1)).float())
        ys.append(y.to(device))
    y = torch.cat(ys)
    return torch.cat(fs + ms), torch.cat([y, y] if mirror else [y])


class EMA:
    """Exponential moving average of a model's parameters in float32, with the usual warm-up
    ``decay_t = min(decay, (1 + t) / (10 + t))`` so that the random initialisation fades quickly.
    Decay 0 makes it a copy of the raw weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for n, p in model.named_parameters():
            self.shadow[n].lerp_(p.detach().float(), 1 - d)

    @torch.no_grad()
    def copy_of(self, model: nn.Module) -> nn.Module:
        ema = copy.deepcopy(model)
        for n, p in ema.named_parameters():
            p.copy_(self.shadow[n])
        return ema


class TrainState:
    """What accelerate's ``save_state`` does not cover: step counters, wall time, EMA and the stage's own state."""

    def __init__(self, ema: EMA, task: Task):
        self.ema, self.task = ema, task
        self.step = self.batches = self.images = 0
        self.seconds = 0.0

    def state_dict(self) -> dict:
        return {"step": self.step, "batches": self.batches, "images": self.images, "seconds": self.seconds,
                "ema": self.ema.shadow, "task": self.task.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.step, self.batches, self.images, self.seconds = sd["step"], sd["batches"], sd["images"], sd["seconds"]
        for n, t in sd["ema"].items():
            self.ema.shadow[n].copy_(t)
        self.task.load_state_dict(sd["task"])


# -- stages ---------------------------------------------------------------------------------------------------
class Task:
    """One training stage: builds its model and data, computes the loss of a batch, exports the result."""

    lr, weight_decay, betas = 3e-4, 0.0, (0.9, 0.95)

    def __init__(self, args, saved: dict | None, device: torch.device):
        self.args, self.device = args, device

    def config(self) -> dict:
        return self.model.cfg.to_dict()

    def batches(self, start: int, rank: int, world: int) -> Iterator:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Loss to minimise and the metrics to average over a log window (scalar tensors)."""
        raise NotImplementedError

    def after_step(self, accelerator: Accelerator, model: nn.Module, optimizer, state: TrainState,
                   g: torch.Generator) -> dict:
        """Called after every optimizer step; returns gauges to log as they are at the log step."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass

    def export(self, model: nn.Module, folder: Path, card: str) -> Path:
        raise NotImplementedError

    def image_batches(self, dataset: ImageFolder, start: int, rank: int, world: int) -> Iterator:
        labels = torch.tensor([label for _, label in dataset.samples])
        sampler = index_batches(len(dataset), self.args.batch_size, self.args.seed, start, rank, world,
                                class_weights(labels, self.args.class_balance))
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=self.args.workers)
        for img, y in loader:
            yield img.to(self.device), y.to(self.device)


class TokenizerTask(Task):
    lr, weight_decay, betas = 3e-4, 0.0, (0.9, 0.99)

    def __init__(self, args, saved, device):
        super().__init__(args, saved, device)
        if saved:
            self.model = VQVAE(VQVAEConfig(**saved["model"]))
        elif args.init:
            self.model = init_weights(args.init, "tokenizer")
        else:
            self.model = var_mod.build_tokenizer(
                image_size=args.image_size, scales=tuple(args.scales), codebook_size=args.codebook_size,
                embed_dim=args.embed_dim, ch=args.ch, num_res_blocks=args.num_res_blocks, using_sa=args.attn,
                using_mid_sa=args.attn, beta=args.beta)
        if args.decoder_only:
            if not (saved or args.init):
                raise SystemExit("--decoder-only fine-tunes a trained tokenizer: give --init (or resume a run)")
            for part in (self.model.encoder, self.model.quant_conv, self.model.quantize):
                part.requires_grad_(False)
        self.dataset = ImageFolder(args.data, self.model.cfg.image_size)
        V = self.model.vocab_size
        self.last_hit = torch.full((V,), -1)  # optimizer step at which each code was last chosen (-1: never)
        self.born = torch.zeros(V, dtype=torch.long)  # step at which each code was (re-)initialised
        self.resets = 0
        self.hits = torch.zeros(V, device=device)
        self.last_img = None

    def batches(self, start, rank, world):
        return self.image_batches(self.dataset, start, rank, world)

    def loss(self, model, batch, g):
        img = augment(batch[0], self.args.flip, self.args.shift, g)
        ids = pick_scale_ids(self.model.cfg.patch_nums, self.args.scale_aug, g, self.args.scale_keep)
        recon, vq_loss, hits = model(img, ids)
        recon = recon.float()
        rec = F.l1_loss(recon, img) if self.args.recon_loss == "l1" else F.mse_loss(recon, img)
        self.hits += hits.detach()
        self.last_img = img
        mse01 = (recon.detach().clamp(-1, 1) - img).div(2).square().mean()
        loss = rec + vq_loss
        return loss, {"loss": loss.detach(), "recon": rec.detach(), "vq": vq_loss.detach(),
                      "psnr": -10 * mse01.clamp_min(1e-10).log10()}

    def after_step(self, accelerator, model, optimizer, state, g):
        used = (accelerator.reduce(self.hits, "sum") > 0).cpu()
        self.hits.zero_()
        self.last_hit[used] = state.step
        dead = state.step - torch.maximum(self.last_hit, self.born) >= self.args.dead_after
        if self.args.dead_after > 0 and not self.args.decoder_only and bool(dead.any()):
            self.reinit_codes(dead.nonzero().flatten(), accelerator, model, optimizer, state, g)
        window = self.args.dead_after or 100
        recent = (self.last_hit >= 0) & (state.step - self.last_hit < window)
        return {"codes_used": recent.float().mean().item(), "codes_reset": self.resets}

    @torch.no_grad()
    def reinit_codes(self, dead: torch.Tensor, accelerator, model, optimizer, state, g):
        """Put dead codes on random quantizer inputs of the last batch (the same on every process); their
        Adam moments restart from zero and their EMA copy jumps with them."""
        vae = accelerator.unwrap_model(model)
        z = quantizer_inputs(vae, self.last_img)
        new = z[torch.randint(len(z), (len(dead),), generator=g).to(z.device)]
        new = broadcast(new.contiguous(), from_process=0)
        weight = vae.quantize.embedding.weight
        rows = dead.to(weight.device)
        weight[rows] = new.to(weight.dtype)
        for moment in optimizer.state.get(weight, {}).values():
            if torch.is_tensor(moment) and moment.shape == weight.shape:
                moment[rows] = 0
        state.ema.shadow["quantize.embedding.weight"][rows] = new.float()
        self.born[dead] = state.step
        self.resets += len(dead)

    def state_dict(self):
        return {"last_hit": self.last_hit, "born": self.born, "resets": self.resets}

    def load_state_dict(self, sd):
        self.last_hit.copy_(sd["last_hit"])
        self.born.copy_(sd["born"])
        self.resets = sd["resets"]

    def export(self, model, folder, card):
        cfg = model.cfg
        title = (f"# edifice tokenizer\n\nVQ-VAE, {cfg.image_size} px, codebook {cfg.vocab_size} x {cfg.z_channels}, "
                 f"token maps {list(cfg.patch_nums)}. Load with `edifice.train.load_tokenizer(folder)`.\n\n")
        return save_tokenizer(model, folder, title + card)


class TransformerTask(Task):
    """What VAR and MAR share: a frozen tokenizer, the classes of the image folder, encoded data."""

    lr, weight_decay = 4e-4, 0.05

    def __init__(self, args, saved, device):
        if args.shift and args.cache_latents:  # before the tokenizer loads and the folder is read
            raise SystemExit("--shift moves every image anew at each step, so its latents cannot be cached: "
                             "add --no-cache-latents")
        super().__init__(args, saved, device)
        self.defaults = {}  # the sampling settings an --init checkpoint recommends (init_model), kept on resume
        self.vae = load_tokenizer(args.tokenizer).to(device)
        self.dataset = ImageFolder(args.data, self.vae.cfg.image_size)
        self.num_classes = len(self.dataset.folders)
        self.cached = None
        if args.cache_latents:
            self.cached = self.prepare(*encode_dataset(self.vae, self.dataset, args.batch_size, device, args.workers,
                                                       mirror=args.flip))

    def prepare(self, f: torch.Tensor, y: torch.Tensor):
        """What a batch carries, computed from encoder latents (once for all when cached)."""
        return f, y

    def batches(self, start, rank, world):
        """Cached: batches of what ``prepare`` made. Otherwise image batches, which ``inputs`` encodes."""
        if self.cached is None:
            yield from self.image_batches(self.dataset, start, rank, world)
            return
        x, y = self.cached
        weights = class_weights(y.cpu(), self.args.class_balance)
        for idx in index_batches(len(y), self.args.batch_size, self.args.seed, start, rank, world, weights):
            idx = idx.to(y.device)
            yield x[idx], y[idx]

    @torch.no_grad()
    def inputs(self, batch, g: torch.Generator):
        """A batch as the loss reads it: a cached one as it is; images mirrored and moved (``--flip``,
        ``--shift``, drawn from the step's generator ``g``, so a resumed run repeats them) and encoded."""
        if self.cached is not None:
            return batch
        img, y = batch
        return self.prepare(self.vae.encode(augment(img, self.args.flip, self.args.shift, g)).float(), y)

    def state_dict(self):
        return {"defaults": self.defaults}

    def load_state_dict(self, sd):
        self.defaults = sd.get("defaults", {})  # states saved before exports carried them: none

    def export(self, model, folder, card):
        pipe = self.pipeline(copy.deepcopy(self.vae).cpu(), model, self.dataset.class_names, self.defaults)
        pipe.subclasses = self.dataset.subclasses
        return save_pipeline(pipe, folder, card)

    def init_model(self, field: str) -> nn.Module:
        """The ``--init`` generator with ``--dropout`` applied. On a tree of finer labels (``python -m
        edifice.data emoji --label subgroup|emoji``) it gets one class label per folder, each starting as the
        embedding of the label it refines (the null label as the null one), every other weight kept: a model
        trained on the categories widens to subgroups or emoji, one trained on the subgroups to emoji. The
        exports recommend the init's sampling settings: a fine-tune samples as its source did until ``resave
        --set`` says otherwise (a new model has none, and samples at the family's defaults)."""
        init = init_pipeline(self.args.init)
        self.defaults = dict(init.defaults)
        model = redrop(init.model.float().train().requires_grad_(True), self.args.dropout, field)
        sub = self.dataset.subclasses
        same = init.subclasses is not None and sub is not None and init.subclasses.names == sub.names
        if sub is None and init.subclasses is None or same:
            return model
        if sub is None or init.class_names != self.dataset.class_names:
            raise SystemExit(f"--init {self.args.init}: trained on other labels than the folders of {self.args.data}")
        if init.subclasses is None:  # categories -> subclasses
            rows = list(sub.classes)
        else:  # subgroups -> emoji: each folder's (category, subgroup) names one of the init's labels
            known = zip(init.subclasses.classes, init.subclasses.names, strict=True)
            own = {(c, n): i for i, (c, n) in enumerate(known)}
            rows = [own.get((c, g)) for c, g in zip(sub.classes, self.dataset.subgroups, strict=True)]
            if None in rows:
                raise SystemExit(f"--init {self.args.init}: trained on labels that the folders of {self.args.data} "
                                 "do not refine")
        state = model.state_dict()
        emb = state["class_emb.weight"]
        state["class_emb.weight"] = torch.cat((emb[rows], emb[-1:]))
        wide = type(model)(dataclasses.replace(model.cfg, num_classes=len(sub.names)))
        wide.load_state_dict(state)
        return wide.train()


def check_init(model_vocab: int, codebook: int, model_classes: int, classes: int) -> None:
    """A generator (new or from ``--init``) must match the tokenizer's codebook and the data's classes."""
    if model_vocab != codebook or model_classes != classes:
        raise SystemExit(f"the generator predicts {model_vocab} codes for {model_classes} classes; the tokenizer has "
                         f"{codebook} codes and the data {classes} classes")


class VARTask(TransformerTask):
    pipeline = var_mod.VARPipeline

    def __init__(self, args, saved, device):
        super().__init__(args, saved, device)
        cfg = self.vae.cfg
        if saved:
            self.model = var_mod.VAR(var_mod.VARConfig(**saved["model"]))
        elif args.init:
            self.model = self.init_model("drop_rate")
        else:
            self.model = var_mod.build(hidden_size=args.width, num_layers=args.depth, num_heads=args.heads,
                                       mlp_ratio=args.mlp_ratio, scales=cfg.patch_nums,
                                       codebook_size=cfg.vocab_size, dropout=new_dropout(args),
                                       num_classes=self.num_classes, embed_dim=cfg.z_channels,
                                       cond_drop_rate=args.cond_drop)
        if not isinstance(self.model, var_mod.VAR):
            raise SystemExit(f"--init {args.init}: not a VAR checkpoint")
        if tuple(self.model.patch_nums) != tuple(cfg.patch_nums):
            raise SystemExit(f"the tokenizer's scales {cfg.patch_nums} differ from the run's {self.model.patch_nums}")
        check_init(self.model.cfg.vocab_size, cfg.vocab_size, self.model.cfg.num_classes, self.num_classes)

    def loss(self, model, batch, g):
        f, y = self.inputs(batch, g)
        quant = self.vae.quantize
        ids = pick_scale_ids(self.vae.cfg.patch_nums, self.args.scale_aug, g, self.args.scale_keep)
        ids = ids or quant.scale_ids()
        with torch.no_grad():
            idx = quant.f_to_idx(f, ids)
            x = quant.idx_to_var_input(idx, ids) if len(ids) > 1 else None
        logits = model(y, x, ids)
        target = torch.cat(idx, dim=1)
        token_ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
        loss = token_ce.mul(token_weights(self.vae.cfg.patch_nums, ids, self.args.scale_weight, token_ce.device)).mean()
        acc = (logits.detach().argmax(-1) == target).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}


def token_weights(patch_nums, scale_ids, power: float, device) -> torch.Tensor:
    """Loss weight of every token of the scale list ``[L]``, mean 1: a pn x pn scale's tokens weigh
    ``pn ** (-2 * power)``. 0 weighs tokens alike (the official loss: the 16x16 scale is half the loss of
    1..16, the scales up to 6x6 an eighth); 0.5 gives each scale a share growing as its side pn; 1 gives every
    scale the same share: both weigh up the coarse scales, where the layout is drawn (on the bundled emoji VAR
    that did not lower their held-out loss; see its card, round 13)."""
    w = torch.cat([torch.full((patch_nums[si] ** 2,), float(patch_nums[si]) ** (-2 * power)) for si in scale_ids])
    return (w / w.mean()).to(device)


class MARTask(TransformerTask):
    pipeline = mar_mod.MARPipeline

    def __init__(self, args, saved, device):
        super().__init__(args, saved, device)
        cfg = self.vae.cfg
        if len(cfg.patch_nums) != 1:
            raise SystemExit(f"MAR needs a single-scale tokenizer, this one has scales {cfg.patch_nums}; train "
                             "one with `tokenizer --scales 8` (one size)")
        if saved:
            self.model = mar_mod.MAR(mar_mod.MARConfig(**saved["model"]))
        elif args.init:
            self.model = self.init_model("dropout")
        else:
            self.model = mar_mod.MAR(mar_mod.MARConfig(
                vocab_size=cfg.vocab_size + 1, embed_dim=args.width, num_layers=args.depth, num_heads=args.heads,
                seq_len=cfg.patch_nums[0] ** 2, dropout=new_dropout(args), num_classes=self.num_classes,
                mlp_ratio=args.mlp_ratio, cond_drop_rate=args.cond_drop))
        if not isinstance(self.model, mar_mod.MAR) or self.model.cfg.seq_len != cfg.patch_nums[0] ** 2:
            n = cfg.patch_nums[0]
            raise SystemExit(f"--init {args.init}: not a discrete MAR on {n}x{n} tokens")
        check_init(self.model.cfg.vocab_size - 1, cfg.vocab_size, self.model.cfg.num_classes, self.num_classes)

    def prepare(self, f, y):
        """MAR ids of the latents: code + 1 (0 is [MASK])."""
        return self.vae.quantize.f_to_idx(f)[0] + 1, y

    def loss(self, model, batch, g):
        tokens, y = self.inputs(batch, g)
        dev_g = torch.Generator(tokens.device).manual_seed(int(torch.randint(2 ** 62, (), generator=g)))
        inp, mask = mar_mod.random_mask(tokens, self.args.mask_schedule, dev_g)
        logits = model(inp, y)
        loss = mar_mod.mar_loss(logits, tokens, mask)
        hit = (logits.detach().argmax(-1) == tokens) & mask
        return loss, {"loss": loss.detach(), "acc": hit.sum() / mask.sum().clamp_min(1)}


class FractalGenTask(Task):
    """FractalGen over raw pixels (no tokenizer): the authors' training loss (:meth:`FractalGen.forward`:
    label dropout, truncated-normal MAR masking, r-weighted pixel loss) on images normalised as theirs.
    Weight decay and betas are the authors' (0.05, (0.9, 0.95))."""

    lr, weight_decay = 4e-4, 0.05

    def __init__(self, args, saved, device):
        super().__init__(args, saved, device)
        sizes = saved["model"]["img_size_list"] if saved else args.img_size_list
        self.dataset = ImageFolder(args.data, sizes[0])
        try:
            cfg = fractal_mod.FractalGenConfig(**saved["model"]) if saved else fractal_mod.FractalGenConfig(
                img_size_list=args.img_size_list, embed_dim_list=args.embed_dim_list,
                num_blocks_list=args.num_blocks_list, num_heads_list=args.num_heads_list,
                generator_type_list=args.generator_types, class_num=len(self.dataset.folders),
                guiding_pixel=args.guiding_pixel, num_conds=args.num_conds, r_weight=args.r_weight,
                label_drop_prob=args.cond_drop)
        except fractal_mod.FractalGenConfigError as e:
            raise SystemExit(str(e)) from None
        self.model = fractal_mod.FractalGen(cfg)
        self.mean, self.std = (torch.tensor(v, device=device)[:, None, None]
                               for v in (fractal_mod.PIX_MEAN, fractal_mod.PIX_STD))

    def batches(self, start, rank, world):
        for img, y in self.image_batches(self.dataset, start, rank, world):
            yield ((img + 1) / 2 - self.mean) / self.std, y  # [-1, 1] -> the authors' ImageNet normalisation

    def loss(self, model, batch, g):
        img, y = batch
        seeds = torch.randint(2 ** 62, (2,), generator=g).tolist()
        rng = torch.Generator(img.device).manual_seed(seeds[0])
        loss = model(img, y, rng=rng, np_rng=np.random.RandomState(seeds[1] % 2 ** 32))
        return loss, {"loss": loss.detach()}

    def export(self, model, folder, card):
        tokenizer = fractal_mod.PixelTokenizer(image_size=model.cfg.img_size)
        return save_pipeline(fractal_mod.FractalGenPipeline(tokenizer, model, self.dataset.class_names), folder, card)


TASKS = {"tokenizer": TokenizerTask, "var": VARTask, "mar": MARTask, "fractalgen": FractalGenTask}


# -- the loop -------------------------------------------------------------------------------------------------
class StepFitter:
    """``--minutes``: times the warm-up steps after the first few (compilation, allocator and cuDNN warm-up are
    not typical) and then sets ``args.steps`` so that the run ends after the given minutes. It decides inside the
    warm-up, where the learning rate does not depend on ``--steps``, so the schedule the run follows is exactly
    the one a rerun with the final ``--steps`` follows. The fit is only as good as the warm-up's speed: runs that
    speed up later (new tensor shapes, such as VAR's random scale lists, are slow the first time) end early, and
    runs that slow down (another job on the same GPU) end at ``--max-minutes`` when given."""

    skip = 5

    def __init__(self, args, t_start: float):
        if args.warmup < 2 * self.skip:
            raise SystemExit(f"--minutes times the warm-up steps: give --warmup {2 * self.skip} or more")
        self.args, self.t_start, self.t_skip = args, t_start, None
        self.decide_at = min(args.warmup, 100)

    def update(self, step: int, now: float) -> bool:
        """Called after each optimizer step; True once it has set ``args.steps``."""
        if step == self.skip:
            self.t_skip = now
        if step < self.decide_at:
            return False
        per_step = (now - self.t_skip) / (step - self.skip)
        left = self.args.minutes * 60 - (now - self.t_start)
        self.args.steps = max(step + 1, step + int(left / per_step))
        return True


def lr_at(step: int, args) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, cosine to lr/10 at ``--steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def param_groups(model: nn.Module, weight_decay: float, label_lr: float = 1.0) -> list[dict]:
    """Weight decay on the weights of linear and conv layers only (not on norms, biases, embeddings, codes).
    Each group's ``lr_scale`` multiplies the schedule's rate; with ``label_lr`` != 1 the class-label embedding
    (``class_emb``) gets a group of its own at that multiple, for labels that start as copies of coarser ones and
    must move apart (``--label-lr``: each label is in few batches)."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    emb = getattr(model, "class_emb", None)
    if label_lr != 1.0 and not isinstance(emb, nn.Embedding):
        raise SystemExit(f"--label-lr {label_lr}: this model has no class-label embedding (class_emb) to scale")
    labels = {id(p) for p in emb.parameters()} if label_lr != 1.0 else set()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": [p for p in params if id(p) not in decay | labels], "weight_decay": 0.0, "lr_scale": 1.0}]
    if labels:
        groups.append({"params": [p for p in params if id(p) in labels], "weight_decay": 0.0, "lr_scale": label_lr})
    return groups


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


def hardware(accelerator: Accelerator) -> str:
    dev = accelerator.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    return (f"{accelerator.num_processes} x {dev.type} ({name}), {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, mixed precision {accelerator.mixed_precision}")


def training_card(args, state: TrainState, last: dict, accelerator: Accelerator, data: ImageFolder) -> str:
    """Markdown: how the weights were trained (the model card's training section), with the data's
    attributions when its manifest has them."""
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "epoch", "images", "seconds"))
    credits = "".join(f"- training images: {a['art']}, {a['copyright']}, {a['license']} ({a['license_url']}), "
                      f"{a['source']}\n" for a in data.manifest.get("attribution", {}).values())
    sub = data.subclasses
    finer = (f"; the model's labels are their {len(sub.names)} subclasses (the folders), one drawn per image"
             if sub else "")
    return (f"## Training\n\n- stage: `{args.stage}`, command: `{args.command}`\n"
            f"- data: `{args.data}`, {len(data)} images, {len(data.class_names)} classes: "
            f"{', '.join(data.class_names)}{finer}\n{credits}"
            f"- hardware: {hardware(accelerator)}\n"
            f"- {state.step} optimizer steps (`--steps {args.steps}`), {state.images} images seen, wall time "
            f"{state.seconds / 60:.1f} min; weights: {f'EMA (decay {args.ema})' if args.ema else 'raw (no EMA)'}\n"
            f"- last logged metrics (training batches): {metrics or 'none'}\n")


class MetricsLog:
    """``metrics.csv`` beside the run: one row per log step, appended across resumes (main process only)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, row: dict) -> None:
        if not PartialState().is_main_process:
            return
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def find_state(out: Path) -> Path | None:
    for name in ("state", "state.old"):  # state.old: a crash between the two renames of a save
        if (out / name).is_dir() and (out / "run.json").is_file():
            return out / name
    return None


def train(args) -> dict:
    """Run one stage as described by the parsed options; returns a summary (see :func:`run`)."""
    out = Path(args.out)
    t_start = time.perf_counter()
    resume = find_state(out)
    saved = json.loads((out / "run.json").read_text()) if resume else None
    if saved and saved["stage"] != args.stage:
        raise SystemExit(f"{out} holds a {saved['stage']} run, not {args.stage}; use another --out")
    if saved and args.minutes is not None:
        args.steps = saved["options"]["steps"]  # fitted when the run began
    args.lr = TASKS[args.stage].lr if args.lr is None else args.lr
    args.weight_decay = TASKS[args.stage].weight_decay if args.weight_decay is None else args.weight_decay
    # a tokenizer step on a scale sub-list leaves some phi convs without gradient; DDP must be told
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=args.stage == "tokenizer" and args.scale_aug > 0)]
    accelerator = Accelerator(mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum,
                              cpu=args.cpu, kwargs_handlers=kwargs)
    set_seed(args.seed)
    task = TASKS[args.stage](args, saved, accelerator.device)
    sub = getattr(task.dataset, "subclasses", None)
    classes = task.dataset.class_names if sub is None else list(sub.names)  # the model's labels
    if saved and saved["classes"] != classes:
        raise SystemExit(f"{args.data} has classes {classes}, the run in {out} was trained on {saved['classes']}")

    model = task.model.to(accelerator.device)
    ema = EMA(model, args.ema)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay, args.label_lr), lr=args.lr, betas=task.betas)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState(ema, task)
    accelerator.register_for_checkpointing(state)
    if resume:
        accelerator.load_state(str(resume))
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        (out / "run.json").write_text(json.dumps({"stage": args.stage, "model": task.config(), "classes": classes,
                                                  "options": options}, indent=2) + "\n")
    seconds_before = state.seconds

    def save():
        tmp = out / "state.tmp"
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_dir(tmp, out / "state")
            task.export(ema.copy_of(accelerator.unwrap_model(model)).cpu().eval(), out / "export",
                        training_card(args, state, last, accelerator, task.dataset))
        accelerator.wait_for_everyone()

    log = MetricsLog(out / "metrics.csv")
    world, per_epoch = accelerator.num_processes, max(1, len(task.dataset) // accelerator.num_processes
                                                      // args.batch_size)
    history, last, sums, gauges = [], {}, {}, {}
    window_t, window_images, stopped = time.perf_counter(), 0, "steps"
    bar = tqdm(total=args.steps, initial=state.step, desc=args.stage, unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    batches = task.batches(state.batches, accelerator.process_index, world)
    fit = StepFitter(args, t_start) if args.minutes is not None and state.step == 0 else None
    model.train()
    while state.step < args.steps:
        batch = next(batches)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + state.batches)
        with accelerator.accumulate(model):
            loss, metrics = task.loss(model, batch, g)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state.step, args) * group.get("lr_scale", 1.0)  # states saved before it: 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.batches += 1
        n_images = batch[1].shape[0] * world
        state.images += n_images
        window_images += n_images
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v.float()
        sums["_n"] = sums.get("_n", 0) + 1
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        bar.update(1)
        ema.update(accelerator.unwrap_model(model), state.step)
        gauges = task.after_step(accelerator, model, optimizer, state, g)
        now = time.perf_counter()
        if fit is not None and fit.update(state.step, now):
            args.steps = int(broadcast(torch.tensor([args.steps], device=accelerator.device)).item())
            bar.total = args.steps
            fit = None
            if accelerator.is_main_process:  # a resumed run follows the fitted schedule
                run_json = json.loads((out / "run.json").read_text())
                run_json["options"]["steps"] = args.steps
                (out / "run.json").write_text(json.dumps(run_json, indent=2) + "\n")
        state.seconds = seconds_before + now - t_start
        if state.step % args.log_every == 0 or state.step == args.steps:
            n = sums.pop("_n")
            means = {k: (accelerator.reduce(v.detach().reshape(1), "mean") / n).item() for k, v in sums.items()}
            last = {"step": state.step, "epoch": round(state.batches / per_epoch, 3), "images": state.images,
                    "seconds": round(state.seconds, 2), "lr": lr_at(state.step - 1, args), **means, **gauges,
                    "img_per_s": window_images / (now - window_t)}
            log.write(last)
            history.append(last)
            bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{last['img_per_s']:.1f}")
            sums, window_t, window_images = {}, now, 0
        over = args.max_minutes is not None and now - t_start > args.max_minutes * 60
        if broadcast(torch.tensor([float(over)], device=accelerator.device)).item() and state.step < args.steps:
            stopped = "time"
            break
        if state.step % args.save_every == 0 and state.step < args.steps:
            save()
    bar.close()
    save()
    return {"stage": args.stage, "step": state.step, "stopped": stopped, "seconds": state.seconds,
            "metrics": last, "history": history, "out": out, "export": out / "export"}


# -- command line ---------------------------------------------------------------------------------------------
def parse_scales(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def parse_share(text: str) -> float:
    """A probability, 0 to 1."""
    p = float(text)
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return p


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_scale_aug(parser: argparse.ArgumentParser, share: float) -> None:
    """``--scale-aug`` and ``--scale-keep`` (see ``pick_scale_ids``), for the tokenizer and VAR stages."""
    parser.add_argument("--scale-aug", type=parse_share, default=share,
                        help="share of batches on a random scale sub-list")
    parser.add_argument("--scale-keep", type=parse_share, default=0.5,
                        help="chance that a sub-list keeps each scale between the first and the last (lower: "
                             "more training on short lists such as 1,2,16)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("data, run and optimisation")
    g.add_argument("--data", type=Path, required=True, help="image folder: one sub-folder of images per class")
    g.add_argument("--out", type=Path, required=True, help="run folder; rerunning with the same one resumes")
    g.add_argument("--steps", type=int, default=10_000, help="optimizer steps in all, resumed runs included")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly (save and export) after this many minutes of this invocation")
    g.add_argument("--minutes", type=float, default=None,
                   help="fit --steps to this many minutes of a new run: the speed of its first warm-up steps sets "
                        "the steps, so the learning-rate schedule ends on time (the card records them; rerun with "
                        "that --steps to repeat the schedule)")
    g.add_argument("--batch-size", type=int, default=32, help="images per process per micro-batch")
    g.add_argument("--class-balance", type=parse_share, default=0.0,
                   help="0: draw images uniformly (each class as often as it has images); 1: draw classes "
                        "uniformly; between: each class's share grows as its image count to the power 1 - this")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per stage)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: per stage)")
    g.add_argument("--label-lr", type=float, default=1.0,
                   help="learning-rate multiple for the class-label embedding (var, mar): above 1 for new finer "
                        "labels started from coarser ones, each in few batches (default: 1)")
    g.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    g.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights (0: the raw weights)")
    g.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    g.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=False,
                   help="train on the CPU even where a GPU is present")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--init", type=Path, default=None,
                   help="start a new run from these weights (fine-tuning): a tokenizer folder or an edifice "
                        "checkpoint (its tokenizer, or its generator for var/mar, whose exports then recommend "
                        "its sampling settings); the architecture is theirs")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--log-every", type=int, default=20, help="steps per metrics.csv row")
    g.add_argument("--save-every", type=int, default=500, help="steps between saves of state/ and export/")

    p = argparse.ArgumentParser(prog="python -m edifice.train", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    t = sub.add_parser("tokenizer", parents=[common], help="VQ-VAE: multi-scale (VAR) or single-scale (MAR)")
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--scales", type=parse_scales, default=(1, 2, 3, 4, 5, 6, 8),
                   help="token map sizes, e.g. 1,2,3,4,5,6,8 (VAR) or 8 (MAR); image-size / last = power of 2")
    t.add_argument("--codebook-size", type=int, default=512)
    t.add_argument("--embed-dim", type=int, default=32, help="latent (code) channels")
    t.add_argument("--ch", type=int, default=32, help="base conv width (multiple of 32)")
    t.add_argument("--num-res-blocks", type=int, default=1)
    t.add_argument("--attn", action=argparse.BooleanOptionalAction, default=True,
                   help="self-attention in the encoder/decoder")
    t.add_argument("--recon-loss", choices=("l1", "mse"), default="l1")
    t.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    t.add_argument("--dead-after", type=int, default=200, help="re-initialise codes unused this many steps (0: off)")
    add_scale_aug(t, 0.0)
    t.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                   help="mirror half the images left-right (augmentation)")
    t.add_argument("--shift", type=int, default=0,
                   help="move each image by up to this many pixels each way, white fill (augmentation)")
    t.add_argument("--decoder-only", action=argparse.BooleanOptionalAction, default=False,
                   help="train only post_quant_conv and the decoder of the --init tokenizer: every image keeps its "
                        "tokens, so generators trained on them stay valid (swap it in with `resave --tokenizer`)")

    for stage, (depth, width, heads, dropout) in GENERATOR_SHAPES.items():
        s = sub.add_parser(stage, parents=[common], help=f"{stage.upper()} transformer on a trained tokenizer")
        s.add_argument("--tokenizer", type=Path, required=True, help="run folder (or export/) of a tokenizer stage")
        s.add_argument("--depth", type=int, default=depth)
        s.add_argument("--width", type=int, default=width)
        s.add_argument("--heads", type=int, default=heads)
        s.add_argument("--mlp-ratio", type=float, default=4.0)
        s.add_argument("--dropout", type=float, default=None,
                       help=f"dropout rate (default: {dropout}, or the --init model's own)")
        s.add_argument("--cond-drop", type=float, default=0.1, help="class dropout rate (for CFG)")
        s.add_argument("--cache-latents", action=argparse.BooleanOptionalAction, default=True,
                       help="encode the dataset once up front (off for folders too big for memory)")
        s.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                       help="train on every image and its left-right mirror (the cached latents double)")
        s.add_argument("--shift", type=int, default=0,
                       help="move each image by up to this many pixels each way, white fill (needs "
                            "--no-cache-latents: each batch is encoded anew)")
        if stage == "var":
            add_scale_aug(s, 0.5)
            s.add_argument("--scale-weight", type=float, default=0.0,
                           help="weigh a pn x pn scale's tokens by pn^(-2 x this): 0 alike (official), 0.5 each "
                                "scale's share of the loss grows as pn, 1 every scale the same share")
        else:
            s.add_argument("--mask-schedule", choices=mar_mod.RATIO_SCHEDULES, default="maskgit",
                           help="mask-ratio distribution (see edifice.generative.mar.sample_mask_ratio)")
    f = sub.add_parser("fractalgen", parents=[common], help="FractalGen over pixels (no tokenizer)")
    f.add_argument("--img-size-list", type=parse_scales, default=(64, 4, 1),
                   help="image size of each level down to 1 (the pixel head), e.g. 64,4,1 or 64,16,4,1")
    f.add_argument("--generator-types", type=parse_names, default=("mar", "mar", "ar"),
                   help="ar or mar per level, e.g. ar,ar,ar or mar,ar,mar,ar (the last entry is unused, as upstream)")
    f.add_argument("--embed-dim-list", type=parse_scales, default=(256, 128, 64), help="width of each level")
    f.add_argument("--num-blocks-list", type=parse_scales, default=(6, 3, 2), help="depth of each level")
    f.add_argument("--num-heads-list", type=parse_scales, default=(8, 4, 4), help="attention heads of each level")
    f.add_argument("--num-conds", type=int, default=5,
                   help="conditions a MAR level passes down (5 = with the four neighbours'; 1 for a MAR under an AR)")
    f.add_argument("--guiding-pixel", action=argparse.BooleanOptionalAction, default=False,
                   help="MAR levels below the top first draw the patch's mean colour")
    f.add_argument("--r-weight", type=float, default=5.0, help="weight of the red channel in the pixel loss")
    f.add_argument("--cond-drop", type=float, default=0.1, help="class dropout rate (for CFG)")
    return p


def run(stage: str, **options) -> dict:
    """Train a stage from Python: ``run("tokenizer", data="data/emoji/train", out="runs/tok", steps=1000)``.

    Options are the command-line ones with underscores. Returns ``{"stage", "step", "stopped" ("steps" or
    "time"), "seconds", "metrics" (last logged row), "history" (all rows of this call), "out", "export"}``.
    """
    return main(cli_args(stage, **options))


def cli_args(stage: str, **options) -> list[str]:
    """The command line :func:`run` trains with: ``--flag`` / ``--no-flag`` for booleans, commas for lists,
    None left out."""
    argv = [stage]
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, (list, tuple)):
            argv += [flag, ",".join(map(str, v))]
        elif v is not None:
            argv += [flag, str(v)]
    return argv


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command = "python -m edifice.train " + shlex.join(argv)
    return train(args)


if __name__ == "__main__":
    main()
