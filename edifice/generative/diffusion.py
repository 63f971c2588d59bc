"""The Gaussian diffusion MAR's per-token head samples with: cosine schedule, learned variance, respaced steps.

Training uses T = 1000 steps of the cosine schedule (Nichol & Dhariwal 2021: ``alpha_bar(u) =
cos((u + 0.008) / 1.008 * pi / 2)^2``, betas clipped at 0.999), predicting the noise eps and a variance
interpolation v. Sampling keeps ``num_sampling_steps`` of those steps, spread evenly (ADM's
``space_timesteps``), and recomputes the betas between kept steps so the marginals are unchanged. The
network always sees the ORIGINAL timestep (0..999) of a kept step.

Everything follows the official code (LTH14/mar ``diffusion/``, itself ADM's): schedules in float64 numpy,
each coefficient cast to float32 where it is used; :func:`p_sample_loop` is ancestral DDPM sampling with MAR's
temperature, which scales only the per-step noise ``sigma_t * delta`` (not the initial noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

TRAIN_STEPS = 1000


def cosine_betas(num_steps: int = TRAIN_STEPS, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                     for i in range(num_steps)], dtype=np.float64)


def space_timesteps(num_steps: int, spec: str | int) -> list[int]:
    """The kept timesteps, ascending. ``spec``: N (N steps spread evenly; a comma list "a,b,c" splits the
    range into equal sections with that many steps each) or "ddimN" (a fixed stride giving exactly N)."""
    spec = str(spec)
    if spec.startswith("ddim"):
        desired = int(spec[4:])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == desired:
                return list(range(0, num_steps, stride))
        raise ValueError(f"cannot take exactly {desired} steps with a fixed stride out of {num_steps}")
    counts = [int(x) for x in spec.split(",")]
    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps out of a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


@dataclass(frozen=True)
class Schedule:
    """Float64 arrays of one respaced diffusion, index i = the i-th kept step (0 = least noisy)."""

    timestep_map: np.ndarray  # original timestep of each kept step
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.betas)


@cache
def respaced_schedule(num_sampling_steps: str | int, train_steps: int = TRAIN_STEPS) -> Schedule:
    """The cosine schedule restricted to ``space_timesteps(train_steps, num_sampling_steps)``.

    Needs at least 2 steps: the clipped posterior variance borrows its first entry from the second (the
    official code crashes with 1)."""
    keep = space_timesteps(train_steps, num_sampling_steps)
    if len(keep) < 2:
        raise ValueError(f"num_sampling_steps must be at least 2 (got {num_sampling_steps}): ancestral sampling "
                         "with learned variance needs two steps")
    alphas_cumprod_train = np.cumprod(1.0 - cosine_betas(train_steps))
    last, betas = 1.0, []
    for t in keep:
        betas.append(1 - alphas_cumprod_train[t] / last)
        last = alphas_cumprod_train[t]
    betas = np.array(betas, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    return Schedule(
        timestep_map=np.array(keep, dtype=np.int64), betas=betas, alphas_cumprod=ac,
        posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1))


def p_sample_loop(net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise_NC: torch.Tensor,
                  schedule: Schedule, temperature: float = 1.0, generator: torch.Generator | None = None,
                  noise_rows: int | None = None) -> torch.Tensor:
    """Denoise ``noise_NC`` (float32) from the noisiest kept step to step 0.

    ``net(x_NC, t_N)`` gets the original timesteps and returns ``[N, 2C]``: eps, then the variance
    interpolation v in [-1, 1] between log beta_t and the clipped posterior log-variance. ``x0`` is not clipped.
    One ``randn`` of ``[noise_rows, C]`` per step (the last step's too), of which the first N rows are used:
    with classifier-free guidance the official sampler carries a conditional and an unconditional copy of x and
    draws noise for both, so ``noise_rows = 2N`` keeps its random stream.
    """
    N, C = noise_NC.shape
    device = noise_NC.device

    def coef(name: str) -> torch.Tensor:
        return torch.from_numpy(getattr(schedule, name)).to(device).float()

    log_beta, log_post = torch.from_numpy(np.log(schedule.betas)).to(device).float(), coef(
        "posterior_log_variance_clipped")
    recip, recipm1 = coef("sqrt_recip_alphas_cumprod"), coef("sqrt_recipm1_alphas_cumprod")
    coef1, coef2 = coef("posterior_mean_coef1"), coef("posterior_mean_coef2")
    timesteps = torch.from_numpy(schedule.timestep_map).to(device)
    x = noise_NC
    for i in reversed(range(schedule.num_steps)):
        out = net(x, timesteps[i].expand(N)).float()
        eps, v = out[:, :C], out[:, C:]
        frac = (v + 1) / 2
        log_var = frac * log_beta[i] + (1 - frac) * log_post[i]
        x0 = recip[i] * x - recipm1[i] * eps
        mean = coef1[i] * x0 + coef2[i] * x
        noise = torch.randn((noise_rows or N, C), generator=generator, device=device)[:N]
        x = mean + (torch.exp(0.5 * log_var) * noise * temperature if i > 0 else 0.0)
    return x
