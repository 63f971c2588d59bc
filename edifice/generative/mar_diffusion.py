"""MAR as in the paper (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization").

Tokens are continuous: the KL-16 VAE's 16-channel latents (times 0.2325), 16x16 = 256 of them for 256 px.
A bidirectional MAE-style encoder/decoder transformer reads the known tokens and produces one condition
vector ``z`` per position; a small per-token diffusion MLP ("DiffLoss", :class:`SimpleMLPAdaLN`) samples a
token from its ``z``. Generation starts with nothing known and, over ``num_steps`` autoregressive steps, fills
tokens in a random order per sample, as many per step as a cosine schedule says (:func:`stream_tokens`
yields one :class:`DiffusionMARStep` per step).

Parameter names are the official ones (LTH14/mar ``models/mar.py``, ``models/diffloss.py``; timm ``Block``),
so the Hub's flat ``mar-{base,large,huge}.safetensors`` and the authors' ``checkpoint-last.pth`` load with
``strict=True`` (see :func:`edifice.official.load_official_mar`). Inference only: the diffusion training loss
and class-label dropout are not implemented.

Random numbers, exactly as the official ``sample_tokens`` after ``torch.manual_seed(seed);
np.random.seed(seed)``: the generation orders come from numpy's ``RandomState(seed)`` (one shuffle per
sample) and every diffusion draw from one ``torch.Generator`` seeded with ``seed`` on the model's device, so
on the CPU a seed gives the official code's images for that seed. Random class labels (``labels=None``) come
from a second generator with the same seed, which leaves the diffusion draws untouched.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .. import render as draw
from ..editing import prepare_edit
from ..pipeline import (
    Control,
    Pipeline,
    TokenStats,
    capture,
    check_preview,
    new_seed,
    preview_control,
    resolve_cuda_graphs,
    resolve_labels,
    warm_up,
    weights_key,
)
from ..tokenizers.klvae import KLVAE
from .blocks import Block, modulate, timestep_embedding
from .diffusion import p_sample_loop, respaced_schedule, schedule_tensors, step_noise

CFG_SCHEDULES = ("linear", "constant")


@dataclass
class DiffusionMARConfig:
    img_size: int = 256
    vae_stride: int = 16  # pixels per latent position
    patch_size: int = 1  # latent positions per token side (token channels = vae_embed_dim * patch_size^2)
    vae_embed_dim: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    decoder_embed_dim: int = 768
    decoder_depth: int = 12
    decoder_num_heads: int = 12
    mlp_ratio: float = 4.0
    class_num: int = 1000
    buffer_size: int = 64  # rows in front of the tokens, all holding the class embedding
    diffloss_d: int = 6  # residual blocks of the diffusion MLP
    diffloss_w: int = 1024  # its width
    norm_eps: float = 1e-6

    @property
    def seq_h(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.seq_h ** 2

    @property
    def token_embed_dim(self) -> int:
        return self.vae_embed_dim * self.patch_size ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def _official(width: int, depth: int, heads: int, diffloss_d: int, diffloss_w: int) -> DiffusionMARConfig:
    return DiffusionMARConfig(encoder_embed_dim=width, encoder_depth=depth, encoder_num_heads=heads,
                              decoder_embed_dim=width, decoder_depth=depth, decoder_num_heads=heads,
                              diffloss_d=diffloss_d, diffloss_w=diffloss_w)


# The released models (official factories, with the DiffLoss sizes of the released checkpoints).
CONFIGS = {
    "mar_base": _official(768, 12, 12, 6, 1024),
    "mar_large": _official(1024, 16, 16, 8, 1280),
    "mar_huge": _official(1280, 20, 16, 12, 1536),
}


# -- the diffusion head -----------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t_N: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t_N, self.freq_dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """``x + gate * mlp(modulate(LN(x), shift, scale))`` with shift, scale, gate from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """Noisy token ``x [N, C]``, original timestep ``t [N]``, condition ``c [N, D]`` -> ``[N, 2C]``: the noise
    eps, then the variance interpolation v. The condition is ``time_embed(t) + cond_embed(c)``."""

    def __init__(self, in_channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = FinalLayer(width, 2 * in_channels)

    def forward(self, x_NC: torch.Tensor, t_N: torch.Tensor, c_ND: torch.Tensor) -> torch.Tensor:
        dtype = self.input_proj.weight.dtype
        x, y = self.input_proj(x_NC.to(dtype)), self.time_embed(t_N) + self.cond_embed(c_ND.to(dtype))
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(self, x_NC: torch.Tensor, t_2N: torch.Tensor, c_2ND: torch.Tensor,
                         cfg: float | torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance on eps only: the net runs on ``[x; x]`` with ``t_2N`` and ``c_2ND``
        (conditional rows, then unconditional); returns ``[N, 2C]``, the guided eps ``u + cfg (c - u)`` and the
        conditional rows' v."""
        out = self(x_NC.repeat(2, 1), t_2N, c_2ND)
        C = self.in_channels
        cond, uncond = out.chunk(2)
        eps = uncond[:, :C] + cfg * (cond[:, :C] - uncond[:, :C])
        return torch.cat([eps, cond[:, C:]], dim=1)


class DiffLoss(nn.Module):
    """The per-token diffusion head (named after the official module; only its sampler is implemented)."""

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int):
        super().__init__()
        self.net = SimpleMLPAdaLN(target_channels, width, z_channels, depth)

    def sample(self, z_ND: torch.Tensor, temperature: float = 1.0, cfg: float | torch.Tensor = 1.0,
               num_sampling_steps: int | str = 100, generator: torch.Generator | None = None,
               cuda_graphs: bool = False) -> torch.Tensor:
        """One token ``[N, C]`` per condition row. With ``cfg != 1`` the first half of ``z`` is conditional and
        the second unconditional, and N is half the rows. The noise is drawn first (the official draws, in
        order), then the loop runs eagerly or, with ``cuda_graphs``, replays as one CUDA graph
        (:class:`SamplerGraphs`): the same numbers either way."""
        guided = not (cfg == 1.0)
        N, C = (z_ND.shape[0] // 2 if guided else z_ND.shape[0]), self.net.in_channels
        coefs = schedule_tensors(num_sampling_steps, z_ND.device)
        noise_NC = torch.randn((N, C), generator=generator, device=z_ND.device)
        noise_TNC = step_noise(generator, 2 * N if guided else N, N, C, len(coefs[-1]), z_ND.device)
        if not cuda_graphs:
            return self._denoise(coefs, z_ND, cfg, temperature, noise_NC, noise_TNC, guided)
        if z_ND.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the diffusion head on a CUDA device; it is on {z_ND.device}")
        if getattr(self, "_graphs", None) is None:
            self._graphs = SamplerGraphs()
        f32 = dict(dtype=torch.float32, device=z_ND.device)
        key = (tuple(z_ND.shape), str(num_sampling_steps), guided, weights_key(self))
        return self._graphs.run(key, lambda *x: self._denoise(coefs, *x, guided), z_ND,
                                torch.as_tensor(cfg, **f32), torch.as_tensor(temperature, **f32), noise_NC, noise_TNC)

    def _denoise(self, coefs, z_ND, cfg, temperature, noise_NC, noise_TNC, guided: bool) -> torch.Tensor:
        if guided:
            def net(x, t):
                return self.net.forward_with_cfg(x, t.repeat(2), z_ND, cfg)
        else:
            def net(x, t):
                return self.net(x, t, z_ND)
        return p_sample_loop(net, noise_NC, coefs, noise_TNC, temperature)


class SamplerGraphs:
    """CUDA graphs of the diffusion head's whole sampling loop, one per input shape (tokens this step, steps).

    At small batches the loop is 100 calls of a small MLP, thousands of short kernels that the GPU waits for
    the CPU to launch: MAR-B spends most of a 256-step generation there (62 s on an H100 at batch 1). A graph
    launches a loop at once. Inputs are copied into static buffers, the graph replays, the output is copied
    out, under a lock, so concurrent and interleaved generations are safe. Captured on first use of a shape
    (after one eager warm-up run on a side stream) and kept by the :class:`DiffLoss`."""

    max_graphs = 64  # one per token count seen; a 256-step generation at batch 1 needs one, 64 steps about 15

    def __init__(self):
        self.graphs: dict = {}
        self.lock = threading.Lock()

    def run(self, key, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        with self.lock:
            if key not in self.graphs:
                self.graphs = {k: v for k, v in self.graphs.items() if k[-1] == key[-1]}  # weights moved: drop
                while len(self.graphs) >= self.max_graphs:  # the oldest shape first
                    self.graphs.pop(next(iter(self.graphs)))
                static = [x.clone() for x in inputs]
                warm_up(lambda: fn(*static), static[0].device)
                self.graphs[key] = (*capture(lambda: fn(*static)), static)
            graph, out, static = self.graphs[key]
            for buffer, x in zip(static, inputs, strict=True):
                buffer.copy_(x)
            graph.replay()
            return out.clone()


# -- the transformer --------------------------------------------------------------------------------------------
class DiffusionMAR(nn.Module):
    """Known tokens ``[B, L, C]`` + mask ``[B, L]`` (1 = unknown) + class embedding -> conditions ``[B, L, D]``."""

    def __init__(self, cfg: DiffusionMARConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg = cfg or DiffusionMARConfig(**kwargs)
        De, Dd, L, n = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.seq_len, cfg.buffer_size
        self.num_classes = cfg.class_num
        self.class_emb = nn.Embedding(cfg.class_num, De)
        self.fake_latent = nn.Parameter(torch.randn(1, De) * 0.02)  # the "no class" embedding (CFG, uncond)
        self.z_proj = nn.Linear(cfg.token_embed_dim, De)
        self.z_proj_ln = nn.LayerNorm(De, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.randn(1, n + L, De) * 0.02)
        self.encoder_blocks = nn.ModuleList([Block(De, cfg.encoder_num_heads, cfg.mlp_ratio, cfg.norm_eps)
                                             for _ in range(cfg.encoder_depth)])
        self.encoder_norm = nn.LayerNorm(De, eps=cfg.norm_eps)
        self.decoder_embed = nn.Linear(De, Dd)
        self.mask_token = nn.Parameter(torch.randn(1, 1, Dd) * 0.02)
        self.decoder_pos_embed_learned = nn.Parameter(torch.randn(1, n + L, Dd) * 0.02)
        self.decoder_blocks = nn.ModuleList([Block(Dd, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.norm_eps)
                                             for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(Dd, eps=cfg.norm_eps)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.randn(1, L, Dd) * 0.02)
        self.diffloss = DiffLoss(cfg.token_embed_dim, Dd, cfg.diffloss_d, cfg.diffloss_w)

    def cast(self, dtype: torch.dtype) -> DiffusionMAR:
        """Transformer in ``dtype``; the diffusion head stays float32 (its 100 chained steps need the precision,
        and at one or a few tokens per step it costs little)."""
        self.to(dtype)
        self.diffloss.float()
        return self

    # layout ------------------------------------------------------------------------------------------------------
    def patchify(self, latent_BChw: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, C, h, w]`` -> tokens ``[B, L, C p^2]``, row-major, channel-major within a token."""
        B, C, H, W = latent_BChw.shape
        p = self.cfg.patch_size
        x = latent_BChw.reshape(B, C, H // p, p, W // p, p)
        return torch.einsum("nchpwq->nhwcpq", x).reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify(self, tokens_BLD: torch.Tensor) -> torch.Tensor:
        B, p, C, h = tokens_BLD.shape[0], self.cfg.patch_size, self.cfg.vae_embed_dim, self.cfg.seq_h
        x = tokens_BLD.reshape(B, h, h, C, p, p)
        return torch.einsum("nhwcpq->nchpwq", x).reshape(B, C, h * p, h * p)

    # forward -----------------------------------------------------------------------------------------------------
    def class_embedding(self, label_B: torch.Tensor) -> torch.Tensor:
        """``class_emb`` rows; label ``num_classes`` (unconditional, and the CFG null rows) is ``fake_latent``."""
        uncond = (label_B == self.num_classes)[:, None]
        return torch.where(uncond, self.fake_latent, self.class_emb(label_B.clamp_max(self.num_classes - 1)))

    def forward_mae_encoder(self, tokens_BLC: torch.Tensor, mask_BL: torch.Tensor,
                            class_emb_BD: torch.Tensor) -> torch.Tensor:
        """The buffer rows (all = the class embedding) and the known tokens, through the encoder
        ``[B, buffer + known, De]``; every row must have the same number of unknown tokens."""
        dtype = self.z_proj.weight.dtype
        x = self.z_proj(tokens_BLC.to(dtype))
        B, L, D = x.shape
        x = torch.cat([class_emb_BD.to(dtype)[:, None].expand(B, self.cfg.buffer_size, D), x], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = torch.cat([mask_BL.new_ones(B, self.cfg.buffer_size, dtype=torch.bool), ~mask_BL.bool()], dim=1)
        x = x[keep].reshape(B, -1, D)
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(x)

    def forward_mae_decoder(self, x_BKD: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
        """Encoder output -> one condition per token position ``[B, L, Dd]`` (mask_token at unknown positions)."""
        x = self.decoder_embed(x_BKD)
        B, D = x.shape[0], x.shape[-1]
        keep = torch.cat([mask_BL.new_ones(B, self.cfg.buffer_size, dtype=torch.bool), ~mask_BL.bool()], dim=1)
        full = self.mask_token.to(x.dtype).expand(B, keep.shape[1], D).clone()
        full[keep] = x.reshape(-1, D)
        x = full + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_norm(x)[:, self.cfg.buffer_size:] + self.diffusion_pos_embed_learned

    def forward(self, tokens_BLC: torch.Tensor, mask_BL: torch.Tensor, class_emb_BD: torch.Tensor) -> torch.Tensor:
        return self.forward_mae_decoder(self.forward_mae_encoder(tokens_BLC, mask_BL, class_emb_BD), mask_BL)


# -- sampling ---------------------------------------------------------------------------------------------------
def mask_lengths(seq_len: int, num_steps: int) -> list[int]:
    """Tokens still unknown after each step as the official sampler computes them (``max(1, min(remaining - 1,
    floor(L cos(pi/2 (s+1)/S))))``); the last step then fills everything, but its value still sets the linear
    CFG scale. Every step fills at least one token while tokens remain."""
    out, remaining = [], seq_len
    for s in range(num_steps):
        target = int(np.floor(seq_len * np.cos(math.pi / 2.0 * (s + 1) / num_steps)))
        out.append(max(1, min(remaining - 1, target)))
        remaining = out[-1]
    return out


def cfg_scale(cfg: float, schedule: str, mask_len: int, seq_len: int) -> float:
    """Guidance of one step: ``constant`` = cfg; ``linear`` = ``1 + (cfg - 1) (L - mask_len) / L`` with the
    tokens left unknown after the step (a ramp from ~1 to ~cfg, as in Muse), computed in float32 as the
    official code does."""
    if schedule == "constant":
        return float(cfg)
    ramp = (torch.tensor(float(seq_len), dtype=torch.float32) - mask_len) / seq_len
    return float(1 + (cfg - 1) * ramp)


def random_orders(batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    """One random permutation per sample ``[B, L]``: numpy ``RandomState(seed)``, one shuffle per row in turn
    (what ``np.random.seed(seed)`` then the official ``sample_orders`` draws)."""
    rs = np.random.RandomState(seed)
    orders = []
    for _ in range(batch_size):
        order = np.arange(seq_len)
        rs.shuffle(order)
        orders.append(order)
    return torch.from_numpy(np.stack(orders)).long()


@dataclass
class DiffusionMARStep:
    """One streamed autoregressive step of a MAR (diffusion head) generation."""

    step: int  # 0-based
    num_steps: int
    tokens: torch.Tensor  # [B, L, C] float32 scaled latents so far; 0 where still unknown (the official buffer)
    mask: torch.Tensor  # [B, L] bool, True = still unknown after this step
    revealed: torch.Tensor  # [B, L] bool, filled in this step
    orders: torch.Tensor  # [B, L] generation order of each sample (filled from its end backwards)
    cfg: float  # guidance scale used in this step
    image: torch.Tensor | None  # [B, 3, H, W] in [0, 1]: the partial token map decoded; None between previews
    seconds: float  # wall time of this step (transformer, diffusion head and preview)
    labels: torch.Tensor  # [B] class ids used (num_classes = unconditional)
    seed: int
    kept: torch.Tensor | None = None  # [B, L] bool when editing: True = given (init_tokens), never changed


def check_sampling(seq_len: int, num_steps: int, cfg: float, cfg_schedule: str, temperature: float,
                   num_sampling_steps) -> None:
    """Errors a user can cause, said before anything runs."""
    if not 1 <= int(num_steps) <= seq_len:
        raise ValueError(f"num_steps must be in 1..{seq_len} (this model has {seq_len} tokens), got {num_steps}")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}: use one of {CFG_SCHEDULES}")
    if cfg < 1.0:
        raise ValueError(f"cfg must be >= 1 (1 = no guidance), got {cfg}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if isinstance(num_sampling_steps, int | float) and not 2 <= int(num_sampling_steps) <= 1000:
        raise ValueError(f"num_sampling_steps must be in 2..1000 (the official code crashes with 1), "
                         f"got {num_sampling_steps}")
    respaced_schedule(num_sampling_steps)  # also checks "ddimN" / "a,b,c" forms


@torch.inference_mode()
def stream_tokens(model: DiffusionMAR, *, labels=None, batch_size: int = 1, num_steps: int = 64, cfg: float = 1.0,
                  cfg_schedule: str = "linear", temperature: float = 1.0, num_sampling_steps: int | str = 100,
                  seed: int | None = None, render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  preview_every: int = 1, cuda_graphs: bool | None = None, init_tokens: torch.Tensor | None = None,
                  init_mask: torch.Tensor | None = None) -> Iterator[DiffusionMARStep]:
    """The official ``sample_tokens``, yielding a :class:`DiffusionMARStep` after each of ``num_steps`` steps.

    Each step runs the transformer on the whole sequence (doubled with the null class when ``cfg != 1``),
    keeps unknown the first ``mask_lengths(L, num_steps)[s]`` positions of each order and fills the others
    with the diffusion head (``num_sampling_steps`` respaced steps, guidance on eps, ``temperature`` scaling
    the per-step noise). ``labels``: None = drawn at random, an int = whole batch (negative = unconditional),
    a list = one per image. ``render(tokens_BLC, mask_BL) -> image`` is called every ``preview_every`` steps and at
    the last one. ``cuda_graphs``: replay each step's diffusion loop as a CUDA graph (:class:`SamplerGraphs`;
    None = whenever the whole model is on one CUDA device; the same tokens as eager sampling).

    Editing: ``init_tokens`` ``[B or 1, L, C]`` and ``init_mask`` ``[B or 1, L]`` bool (True = to draw). The
    other tokens are known from the first step and never change; the ones to draw are filled in the random
    order restricted to them, over ``mask_lengths(n, num_steps)`` for their number n, which must be the same
    in every image (the encoder batches images with equally many known tokens). The linear CFG ramp counts
    every known token, kept or drawn.
    """
    L = model.cfg.seq_len
    check_sampling(L, num_steps, cfg, cfg_schedule, temperature, num_sampling_steps)
    if preview_every < 1:
        raise ValueError(f"preview_every must be >= 1, got {preview_every}")
    device = model.fake_latent.device
    graphs = resolve_cuda_graphs(model, cuda_graphs)
    if (init_tokens is None) != (init_mask is None):
        raise ValueError("init_tokens and init_mask go together: pass both to edit, or neither")
    if init_mask is not None and batch_size == 1:
        batch_size = max(len(init_tokens), len(init_mask))
    seed = new_seed() if seed is None else int(seed)
    label_B = resolve_labels(labels, batch_size, model.num_classes, torch.Generator(device).manual_seed(seed),
                             device)
    B = label_B.shape[0]
    orders_BL = random_orders(B, L, seed).to(device)
    rng = torch.Generator(device).manual_seed(seed)
    tokens_BLC = torch.zeros(B, L, model.cfg.token_embed_dim, device=device)
    mask_BL = torch.ones(B, L, dtype=torch.bool, device=device)
    n, kept_BL = L, None
    if init_mask is not None:
        mask_BL, tokens_BLC = _edit_start(init_tokens, init_mask, tokens_BLC)
        kept_BL, n = ~mask_BL, int(mask_BL[0].sum())
        # the positions to draw first, in each sample's random order; the kept ones after them, never drawn
        orders_BL = orders_BL.gather(1, kept_BL.gather(1, orders_BL).int().argsort(dim=1, stable=True))
    class_emb = model.class_embedding(label_B)
    guided = cfg != 1.0
    if guided:
        class_emb = torch.cat([class_emb, model.class_embedding(torch.full_like(label_B, model.num_classes))])
    for s, mask_len in enumerate(mask_lengths(n, num_steps)):
        t0 = time.perf_counter()
        last = s == num_steps - 1
        next_mask_BL = torch.zeros_like(mask_BL)
        if not last:
            next_mask_BL.scatter_(1, orders_BL[:, :mask_len], True)
        revealed_BL = mask_BL & ~next_mask_BL
        scale = cfg_scale(cfg, cfg_schedule, mask_len, L)
        if revealed_BL.any():
            rep = 2 if guided else 1
            z_BLD = model(tokens_BLC.repeat(rep, 1, 1), mask_BL.repeat(rep, 1), class_emb)
            z_ND = z_BLD[revealed_BL.repeat(rep, 1)]
            tokens_BLC = tokens_BLC.clone()
            tokens_BLC[revealed_BL] = model.diffloss.sample(z_ND, temperature, scale, num_sampling_steps, rng, graphs)
        mask_BL = next_mask_BL
        show = render is not None and (last or (s + 1) % preview_every == 0)
        image = render(tokens_BLC, mask_BL) if show else None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield DiffusionMARStep(step=s, num_steps=num_steps, tokens=tokens_BLC, mask=mask_BL, revealed=revealed_BL,
                               orders=orders_BL, cfg=scale, image=image, seconds=time.perf_counter() - t0,
                               labels=label_B, seed=seed, kept=kept_BL)


def _edit_start(init_tokens: torch.Tensor, init_mask: torch.Tensor,
                zeros_BLC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting mask ``[B, L]`` (True = to draw) and token buffer of an edit (zeros where unknown, as the
    official buffer), checked."""
    B, L, C = zeros_BLC.shape
    mask_BL = torch.as_tensor(init_mask, device=zeros_BLC.device).bool()
    tokens = torch.as_tensor(init_tokens, device=zeros_BLC.device).float()
    if mask_BL.ndim != 2 or mask_BL.shape[0] not in (1, B) or mask_BL.shape[1] != L:
        raise ValueError(f"init_mask must be [1 or {B}, {L}], got {list(mask_BL.shape)}")
    if tokens.ndim != 3 or tokens.shape[0] not in (1, B) or tuple(tokens.shape[1:]) != (L, C):
        raise ValueError(f"init_tokens must be [1 or {B}, {L}, {C}], got {list(tokens.shape)}")
    mask_BL = mask_BL.expand(B, L)
    counts = mask_BL.sum(1)
    if counts[0] == 0 or (counts != counts[0]).any():
        raise ValueError(f"MAR with a diffusion head draws the same number of tokens in every image (got "
                         f"{counts.tolist()}), at least one: pass one mask for the batch, or edit one image at a time")
    return mask_BL.clone(), torch.where(mask_BL[..., None], zeros_BLC, tokens)


# -- image pipeline -------------------------------------------------------------------------------------------
class DiffusionMARPipeline(Pipeline):
    """The KL-16 VAE and a MAR with diffusion head: ``stream`` yields one :class:`DiffusionMARStep` per
    autoregressive step (arguments of :func:`stream_tokens` plus ``preview``), ``generate`` returns images
    ``[B, 3, H, W]`` in [0, 1]. Previews decode the partial token map with zeros at unknown positions (the
    official token buffer), so unknown regions show as the decoder's reading of an all-zero latent."""

    kind = "mar-diffusion"
    family = "MAR (diffusion head)"
    legend = ("Dark = still unknown; colour = the token's latent channels (a fixed projection); white outline = "
              "drawn in this step.")
    uncertainty_legend = ("When each token was drawn (purple first step → yellow last): the random order. Its "
                          "tokens are continuous vectors, so there are no candidates to rank.")
    can_edit = True
    # On a CPU the authors' 256 x 100 steps take about 12 minutes for MAR-B (2 cores); the controls start at
    # (steps, diffusion steps) = (32, 25) there and at the authors' demo's 64 steps on a GPU (3.5 s on an H100
    # with CUDA graphs). The recommended values stay in ``defaults``; the help text names them.
    START_STEPS = {"cpu": (32, 25), "gpu": (64, 100)}

    def __init__(self, tokenizer: KLVAE, model: DiffusionMAR, class_names: list[str] | None = None,
                 defaults: dict | None = None):
        if tokenizer.cfg.embed_dim != model.cfg.vae_embed_dim:
            raise ValueError(f"the VAE makes {tokenizer.cfg.embed_dim}-channel latents but the model expects "
                             f"{model.cfg.vae_embed_dim}")
        if tokenizer.cfg.stride != model.cfg.vae_stride:
            raise ValueError(f"the VAE has stride {tokenizer.cfg.stride} but the model expects "
                             f"{model.cfg.vae_stride}")
        super().__init__(tokenizer, model, class_names, defaults)
        self._timings: dict = {}  # estimate_seconds' measurements, taken one at a time
        self._timing_lock = threading.Lock()

    @property
    def image_size(self) -> int:
        return self.model.cfg.img_size

    @property
    def seq_len(self) -> int:
        return self.model.cfg.seq_len

    def render(self, tokens_BLC: torch.Tensor, mode: str = "full") -> torch.Tensor:
        """Tokens ``[B, L, C]`` -> image ``[B, 3, H, W]`` in [0, 1]. ``mode="fast"`` decodes the latent at half
        its size (a quarter of the decoder's work) and upsamples the picture: blurrier, for frequent previews;
        ``"latent"`` maps the latent to colours linearly (:meth:`KLVAE.latent_preview`), nearly free."""
        latent = self.model.unpatchify(tokens_BLC.float())
        if mode == "latent":
            return self.tokenizer.latent_preview(latent / self.tokenizer.cfg.scale)
        h = latent.shape[-1]
        return self.tokenizer.tokens_to_image(latent, h // 2 if mode == "fast" and h >= 4 else None)

    def controls(self) -> list[Control]:
        d, L = self.defaults, self.seq_len
        steps, diffusion_steps = min(d.get("num_steps", 64), L), d.get("num_sampling_steps", 100)
        start = self.START_STEPS["cpu" if self.device.type == "cpu" else "gpu"]
        return [
            Control("num_steps", "int", min(steps, start[0]), "Steps", f"autoregressive steps, 1 to {L} (the "
                    f"authors use {steps}; fewer start here on this {self.device.type.upper()})", 1, L, 1),
            Control("num_sampling_steps", "int", min(int(diffusion_steps), start[1]), "Diffusion steps",
                    f"per token, by the diffusion head (the authors use {diffusion_steps})", 2, 1000, 1),
            Control("cfg", "float", d.get("cfg", 1.0), "CFG", "guidance on the diffusion head's noise "
                    "prediction; 1 = off", 1.0, 20.0, 0.1),
            Control("cfg_schedule", "choice", d.get("cfg_schedule", "linear"), "CFG schedule",
                    "linear: guidance ramps from 1 to CFG as tokens fill in", choices=CFG_SCHEDULES),
            Control("temperature", "float", d.get("temperature", 1.0), "Temperature",
                    "scales the diffusion head's noise at each step", 0.0, 5.0, 0.05),
            Control("preview_every", "int", max(1, min(steps, start[0]) // 16), "Preview every k steps",
                    "decoding a preview is the costly part on a CPU", 1, L, 1),
            preview_control(d),
        ]

    @classmethod
    def gpu_seconds(cls, settings: dict, batch_size: int = 1) -> int:
        """1.5x the eager H100 time of steps x diffusion steps (2.4 ms per call for MAR-B, 2.85 for MAR-H; +10%
        per extra image) plus 15 s, at least 60 s: 131 s for the authors' 256 x 100 at batch 1."""
        steps = int(settings.get("num_steps") or cls.START_STEPS["gpu"][0])
        calls = steps * int(settings.get("num_sampling_steps") or 100) * (1 + 0.1 * (batch_size - 1))
        return max(60, math.ceil(1.5 * calls * 0.003 + 15))

    def status(self, step: DiffusionMARStep) -> str:
        shown = int((~step.mask[0]).sum())
        return (f"step {step.step + 1}/{step.num_steps} · {shown}/{step.mask.shape[1]} revealed · cfg {step.cfg:.2f}"
                f" · {step.seconds * 1e3:.0f} ms")

    def token_view(self, step: DiffusionMARStep, target: int = 256):
        return draw.latent_token_view(step.tokens, step.mask, step.revealed, target)

    def token_stats(self, step: DiffusionMARStep) -> TokenStats:
        """Continuous tokens have no distribution over a vocabulary to show (the diffusion head draws a vector),
        so there are no candidates; the heat is when each known token was drawn (0 = first step, 1 = last),
        which shows the random order."""
        B, L = step.mask.shape
        drawn = L if step.kept is None else L - int(step.kept[0].sum())  # an edit's kept tokens come last
        lengths = mask_lengths(drawn, step.num_steps)[:-1] + [0]
        filled_at = torch.tensor([next(s for s, n in enumerate(lengths) if i >= n) if i < drawn else torch.nan
                                  for i in range(L)], dtype=torch.float32)
        when_BL = torch.empty(B, L).scatter_(1, step.orders.cpu(), filled_at.expand(B, L).contiguous())
        heat = torch.where(step.mask.cpu(), torch.nan, when_BL / max(step.num_steps - 1, 1))
        empty, side = torch.zeros(B, L, 0), math.isqrt(L)
        return TokenStats((side, side), empty.long(), empty, torch.full((B, L), -1), torch.full((B, L), torch.nan),
                          torch.full((B, L), torch.nan), heat, "step at which the token was drawn (0 first → 1 last)",
                          "continuous latent drawn by the diffusion head: no distribution over a vocabulary")

    def _sample(self, preview: bool | str = True, image=None, mask=None, **kwargs) -> Iterator[DiffusionMARStep]:
        """``preview``: True / "full", "fast", "latent" (see :meth:`render`) or False; ``preview_every``: decode
        every k-th step only (the last is always decoded, exactly). ``image``, ``mask``: edit an image
        (:mod:`edifice.editing`; mask 1 = regenerate, at the token grid or in pixels): the kept tokens are the
        image's VAE posterior means (times the latent scale), known from the first step (``init_tokens``)."""
        check_preview(preview)
        edit = prepare_edit(image, mask, image_size=self.image_size, grid=self.model.cfg.seq_h, device=self.device)
        if edit:
            edit.fit_batch(kwargs)
            kwargs.update(init_tokens=self.encode(edit.image), init_mask=edit.regenerate.flatten(1))

        def render(tokens_BLC, mask_BL):  # the last step (nothing unknown) is always decoded exactly
            return self.render(tokens_BLC, preview if mask_BL.any() else "full")

        return stream_tokens(self.model, render=render if preview else None, **kwargs)

    @torch.inference_mode()
    def decode(self, step: DiffusionMARStep) -> torch.Tensor:
        return self.render(step.tokens)

    @torch.inference_mode()
    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> tokens ``[B, L, C]``: the VAE's posterior mean times its latent scale, patchified
        (the inverse of :meth:`render` up to the VAE's reconstruction)."""
        mean, _ = self.tokenizer.encode(img_B3HW.mul(2).sub(1).to(self.tokenizer.quant_conv.weight.dtype))
        return self.model.patchify(mean.float() * self.tokenizer.cfg.scale)

    @torch.inference_mode()
    def estimate_seconds(self, *, num_steps: int = 64, num_sampling_steps: int = 100, cfg: float = 1.0,
                         cfg_schedule: str = "linear", temperature: float = 1.0, batch_size: int = 1,
                         preview: bool | str = True, preview_every: int = 1, cuda_graphs: bool | None = None,
                         **_) -> float:
        """Expected wall time of ``stream(...)`` with these settings on this pipeline's device, from timing the
        parts once (a transformer pass with half the tokens known, one diffusion-head call on a step's share
        of tokens, or with CUDA graphs a step's whole replayed diffusion loop, one preview decode), each run
        twice and the second timed, then cached by its size: about ten seconds on a CPU the first time for
        MAR-B. Settings ``stream`` would refuse raise its ValueError."""
        check_sampling(self.seq_len, num_steps, cfg, cfg_schedule, temperature, num_sampling_steps)
        check_preview(preview)
        rows = batch_size * (2 if cfg != 1.0 else 1)
        L, device = self.seq_len, self.device
        per_step = math.ceil(L / num_steps) * batch_size

        def transformer():
            mask = torch.zeros(rows, L, dtype=torch.bool, device=device)
            mask[:, : L // 2] = True
            self.model(torch.zeros(rows, L, self.model.cfg.token_embed_dim, device=device), mask,
                       self.model.fake_latent.expand(rows, -1))

        def head():
            net, rep = self.model.diffloss.net, rows // batch_size
            x = torch.zeros(per_step, self.model.cfg.token_embed_dim, device=device)
            t = torch.zeros(per_step * rep, dtype=torch.long, device=device)
            z = torch.zeros(per_step * rep, self.model.cfg.decoder_embed_dim, device=device)
            net.forward_with_cfg(x, t, z, cfg) if rep == 2 else net(x, t, z)

        def loop():  # with CUDA graphs a step's whole diffusion loop, as stream replays it
            z = torch.zeros(per_step * rows // batch_size, self.model.cfg.decoder_embed_dim, device=device)
            self.model.diffloss.sample(z, temperature, cfg, num_sampling_steps, torch.Generator(device), True)

        def decoder(mode: str):
            self.render(torch.zeros(batch_size, L, self.model.cfg.token_embed_dim, device=device), mode)

        if resolve_cuda_graphs(self.model, cuda_graphs):
            diffusion = self._timed(("loop", per_step, rows, str(num_sampling_steps)), loop)
        else:
            diffusion = respaced_schedule(num_sampling_steps).num_steps * self._timed(("head", per_step, rows), head)
        seconds = num_steps * (self._timed(("transformer", rows), transformer) + diffusion)
        if preview:
            mode = preview if isinstance(preview, str) else "full"
            previews = math.ceil(num_steps / preview_every)
            seconds += (previews - 1) * self._timed(("decode", batch_size, mode), lambda: decoder(mode))
            seconds += self._timed(("decode", batch_size, "full"), lambda: decoder("full"))
        return seconds

    def _timed(self, key, fn: Callable[[], None]) -> float:
        with self._timing_lock:  # concurrent callers (the app's change events) wait for one measurement
            if key not in self._timings:
                fn()  # warm-up: the first call pays for allocations and kernel selection
                t0 = time.perf_counter()
                fn()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self._timings[key] = time.perf_counter() - t0
            return self._timings[key]
