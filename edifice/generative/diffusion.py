"""The Gaussian diffusion MAR's per-token head samples with: cosine schedule, learned variance, respaced steps.

Training uses T = 1000 steps of the cosine schedule (Nichol & Dhariwal 2021: ``alpha_bar(u) =
cos((u + 0.008) / 1.008 * pi / 2)^2``, betas clipped at 0.999), predicting the noise eps and a variance
interpolation v. Sampling keeps ``num_sampling_steps`` of those steps, spread evenly (ADM's
``space_timesteps``), and recomputes the betas between kept steps so the marginals are unchanged. The
network always sees the ORIGINAL timestep (0..999) of a kept step.

Everything follows the official code (LTH14/mar ``diffusion/``, itself ADM's): schedules in float64 numpy,
each coefficient cast to float32 (once per device, :func:`schedule_tensors`); :func:`p_sample_loop` is
ancestral DDPM sampling with MAR's temperature, which scales only the per-step noise ``sigma_t * delta`` (not
the initial noise).
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


@cache
def schedule_tensors(num_sampling_steps: str | int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """What :func:`p_sample_loop` reads of ``respaced_schedule(num_sampling_steps)``, as float32 tensors on
    ``device``, made once (so the loop copies nothing to the device and can be captured as a CUDA graph):
    log beta, clipped posterior log-variance, sqrt(1/alpha_bar), sqrt(1/alpha_bar - 1), the two posterior-mean
    coefficients, and the original timesteps (int64)."""
    sched = respaced_schedule(num_sampling_steps)
    names = ("posterior_log_variance_clipped", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
             "posterior_mean_coef1", "posterior_mean_coef2")
    return (torch.from_numpy(np.log(sched.betas)).float().to(device),
            *(torch.from_numpy(getattr(sched, n)).float().to(device) for n in names),
            torch.from_numpy(sched.timestep_map).to(device))


def step_noise(generator: torch.Generator | None, rows: int, N: int, C: int, num_steps: int,
               device: torch.device) -> torch.Tensor:
    """The per-step noise of :func:`p_sample_loop`, ``[num_steps, N, C]``, drawn as the official sampler draws
    it: one ``randn`` of ``[rows, C]`` per step (the last step's too), in order, keeping the first N rows. With
    classifier-free guidance it carries a conditional and an unconditional copy of x and draws noise for both,
    so ``rows = 2N`` keeps its random stream."""
    return torch.stack([torch.randn((rows, C), generator=generator, device=device)[:N] for _ in range(num_steps)])


def p_sample_loop(net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise_NC: torch.Tensor,
                  coefs: tuple[torch.Tensor, ...], noise_TNC: torch.Tensor,
                  temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Denoise ``noise_NC`` (float32) from the noisiest kept step to step 0.

    ``net(x_NC, t_N)`` gets the original timesteps and returns ``[N, 2C]``: eps, then the variance
    interpolation v in [-1, 1] between log beta_t and the clipped posterior log-variance. ``x0`` is not clipped.
    ``coefs`` come from :func:`schedule_tensors`; ``noise_TNC[k]`` is the noise of the k-th step taken (the
    noisiest first; :func:`step_noise`). Deterministic given its inputs, so it replays as one CUDA graph.
    """
    log_beta, log_post, recip, recipm1, coef1, coef2, timesteps = coefs
    N = noise_NC.shape[0]
    x = noise_NC
    for k, i in enumerate(reversed(range(len(timesteps)))):
        out = net(x, timesteps[i].expand(N)).float()
        eps, v = out.chunk(2, dim=1)
        frac = (v + 1) / 2
        log_var = frac * log_beta[i] + (1 - frac) * log_post[i]
        x0 = recip[i] * x - recipm1[i] * eps
        mean = coef1[i] * x0 + coef2[i] * x
        x = mean + torch.exp(0.5 * log_var) * noise_TNC[k] * temperature if i > 0 else mean
    return x
