"""The noise schedule of a DDPM, and the two samplers that walk it backwards.

Notation follows Ho et al. 2020 ("Denoising Diffusion Probabilistic Models"):
`betas[t]` is the variance added at step t, `alphas = 1 - betas`,
`alphas_cumprod[t] = prod(alphas[:t+1])` (written alpha-bar), so a noised image is
`x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps`. The model predicts `eps`.

- `linear` betas: evenly spaced from 1e-4 to 0.02 over T=1000 steps (Ho et al.), rescaled
  by 1000/T for other T so the total noise stays comparable (Nichol & Dhariwal 2021).
- `cosine` betas: `abar(t) = f(t)/f(0)`, `f(t) = cos(((t/T + s)/(1 + s)) * pi/2)^2`, s=0.008,
  betas clipped at 0.999 (Nichol & Dhariwal 2021, eq. 17). Kinder to small images: the
  linear schedule destroys a 32x32 image long before t=T.

Sampling runs on a subsequence of the T training steps (`steps` of them, evenly spaced).
`ddpm` is ancestral sampling with the posterior variance, re-derived for the subsequence
("respacing", Nichol & Dhariwal sec. 4); `ddim` is Song et al. 2021 with `eta` (0 =
deterministic; 1 on the full sequence = DDPM with the posterior variance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from audit.errors import AuditError

BETA_SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddpm", "ddim")


@dataclass(frozen=True)
class ScheduleConfig:
    timesteps: int = 1000
    beta_schedule: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def linear_betas(timesteps: int) -> torch.Tensor:
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


class Schedule:
    """Every per-timestep constant the loss and the samplers need, as float64 tensors."""

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        if config.beta_schedule not in BETA_SCHEDULES:
            raise AuditError(
                f"beta_schedule '{config.beta_schedule}' is unknown; use one of {BETA_SCHEDULES}."
            )
        if config.timesteps < 2:
            raise AuditError(f"timesteps must be at least 2, got {config.timesteps}.")
        self.config = config
        self.T = config.timesteps
        make = linear_betas if config.beta_schedule == "linear" else cosine_betas
        self.betas = make(self.T)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]]
        )
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 * x_0 + coef_xt * x_t, posterior_variance)  (Ho eq. 6-7)
        self.posterior_variance = (
            self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        )
        self.posterior_coef_x0 = (
            self.betas * self.alphas_cumprod_prev.sqrt() / (1 - self.alphas_cumprod)
        )
        self.posterior_coef_xt = (
            (1 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1 - self.alphas_cumprod)
        )

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t given x_0, integer timesteps `t` (one per image) and the noise."""
        abar = self.alphas_cumprod.to(x0.device)[t].float().view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def timestep_sequence(self, steps: int) -> list[int]:
        """`steps` timesteps from T-1 down to 0, evenly spaced (always ending at 0)."""
        if not 1 <= steps <= self.T:
            raise AuditError(
                f"steps must be between 1 and {self.T} (the model's timesteps), got {steps}."
            )
        seq = torch.linspace(0, self.T - 1, steps, dtype=torch.float64).round().long().unique()
        return [int(t) for t in seq.flip(0)]


EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _noise_like(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One draw per image from its own generator, so image i does not depend on the batch."""
    shape = x.shape[1:]
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(x.device)


@torch.no_grad()
def run_sampler(
    eps_fn: EpsFn,
    schedule: Schedule,
    x: torch.Tensor,
    generators: Sequence[torch.Generator],
    sampler: str = "ddpm",
    steps: int = 50,
    eta: float = 0.0,
) -> torch.Tensor:
    """Denoise `x` (pure noise at t=T-1) to an image in [-1, 1].

    `eps_fn(x_t, t)` returns the predicted noise; `generators` (one per image) draw the
    fresh noise of ancestral / eta > 0 steps.
    """
    if sampler not in SAMPLERS:
        raise AuditError(f"sampler '{sampler}' is unknown; use one of {SAMPLERS}.")
    seq = schedule.timestep_sequence(steps)
    abar_all = schedule.alphas_cumprod
    for i, t in enumerate(seq):
        t_prev = seq[i + 1] if i + 1 < len(seq) else -1
        abar = float(abar_all[t])
        abar_prev = float(abar_all[t_prev]) if t_prev >= 0 else 1.0
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = eps_fn(x, tt)
        x0 = ((x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1)
        if t_prev < 0:  # last step: return the clean estimate
            x = x0
            break
        if sampler == "ddpm":
            # Respaced posterior: this step's beta is 1 - abar/abar_prev (Nichol & Dhariwal).
            beta = 1 - abar / abar_prev
            coef_x0 = beta * math.sqrt(abar_prev) / (1 - abar)
            coef_xt = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
            var = beta * (1 - abar_prev) / (1 - abar)
            x = coef_x0 * x0 + coef_xt * x + math.sqrt(var) * _noise_like(x, generators)
        else:
            # Recompute eps from the clipped x0 so both agree (as in the DDIM reference code).
            eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
            sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * _noise_like(x, generators)
    return x
