"""Noise schedule values against their published formulas; samplers against exact answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from audit.diffusion.schedule import Schedule, ScheduleConfig, run_sampler
from audit.errors import AuditError


def test_linear_betas_endpoints_and_cumprod():
    s = Schedule(ScheduleConfig(timesteps=1000, beta_schedule="linear"))
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert np.allclose(np.diff(s.betas.numpy()), (0.02 - 1e-4) / 999)
    assert np.allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - s.betas.numpy()))
    # Ho et al.: abar_T is ~4e-5 for the linear schedule at T=1000: x_T is almost pure noise.
    assert 1e-5 < s.alphas_cumprod[-1].item() < 1e-4
    # Another T keeps the same total noise roughly (betas scaled by 1000/T).
    s250 = Schedule(ScheduleConfig(timesteps=250, beta_schedule="linear"))
    assert s250.betas[0].item() == pytest.approx(4e-4) and s250.betas[-1].item() == pytest.approx(
        0.08
    )


def test_cosine_schedule_matches_nichol_dhariwal():
    T, eps = 1000, 0.008
    s = Schedule(ScheduleConfig(timesteps=T, beta_schedule="cosine"))

    def f(t: float) -> float:
        return math.cos((t / T + eps) / (1 + eps) * math.pi / 2) ** 2

    for t in (0, 1, 10, 250, 500, 750, 900):
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max().item() <= 0.999
    assert s.betas[-1].item() == pytest.approx(0.999)  # the clip bites at the very end
    assert np.all(np.diff(s.alphas_cumprod.numpy()) < 0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_variance_formula(kind):
    s = Schedule(ScheduleConfig(timesteps=100, beta_schedule=kind))
    b = s.betas.numpy()
    abar = np.cumprod(1 - b)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    assert np.allclose(s.posterior_variance.numpy(), b * (1 - abar_prev) / (1 - abar))
    assert s.posterior_variance[0].item() == 0.0
    # Posterior variance lies between 0 and beta (Ho et al. sec. 3.2, the two sigma^2 choices).
    assert np.all(s.posterior_variance.numpy() <= b + 1e-12)
    # The posterior mean coefficients reproduce x_0 when x_t is its noise-free version.
    x0 = 0.3
    xt = np.sqrt(abar) * x0
    mean = s.posterior_coef_x0.numpy() * x0 + s.posterior_coef_xt.numpy() * xt
    assert np.allclose(mean, np.sqrt(abar_prev) * x0)


def test_q_sample_closed_form():
    s = Schedule(ScheduleConfig(timesteps=50))
    x0, noise = torch.full((2, 3, 4, 4), 0.5), torch.full((2, 3, 4, 4), -1.0)
    t = torch.tensor([0, 49])
    out = s.q_sample(x0, t, noise)
    for i in range(2):
        a = s.alphas_cumprod[t[i]].item()
        assert out[i].flatten()[0].item() == pytest.approx(
            math.sqrt(a) * 0.5 - math.sqrt(1 - a), abs=1e-6
        )


def test_timestep_sequence_and_bad_arguments():
    s = Schedule(ScheduleConfig(timesteps=1000))
    seq = s.timestep_sequence(50)
    assert (
        len(seq) == 50
        and seq[0] == 999
        and seq[-1] == 0
        and all(a > b for a, b in itertools.pairwise(seq))
    )
    assert s.timestep_sequence(1000) == list(range(999, -1, -1))
    with pytest.raises(AuditError, match="steps must be"):
        s.timestep_sequence(0)
    with pytest.raises(AuditError, match="beta_schedule"):
        Schedule(ScheduleConfig(beta_schedule="quadratic"))


def _gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_recover_a_point_mass(sampler):
    """With the exact noise predictor for a one-image dataset, both samplers return that image."""
    s = Schedule(ScheduleConfig(timesteps=200))
    target = torch.linspace(-0.9, 0.9, 3 * 4 * 4).reshape(1, 3, 4, 4)

    def eps_fn(x, t):
        a = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    gens = _gens(3)
    x = torch.stack([torch.randn(3, 4, 4, generator=g) for g in gens])
    out = run_sampler(eps_fn, s, x, gens, sampler=sampler, steps=20, eta=0.5)
    assert torch.allclose(out, target.expand_as(out), atol=1e-4)


def _gaussian_eps(s: Schedule, sd: float):
    """The exact noise predictor when the data are N(0, sd^2): E[eps | x_t]."""

    def eps_fn(x, t):
        a = s.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * sd**2 + 1 - a)

    return eps_fn


def _analytic_chain(s: Schedule, sd: float, steps: int, stochastic: bool) -> tuple[float, float]:
    """For Gaussian data every step is x_prev = m * x_t + std * z: return (product of m, output variance
    from x_T ~ N(0, 1)). Written from the papers' formulas, independently of run_sampler."""
    seq = s.timestep_sequence(steps)
    abar = s.alphas_cumprod.numpy()
    gain, var = 1.0, 1.0
    for i, t in enumerate(seq):
        a = abar[t]
        v = a * sd**2 + 1 - a
        x0_coef = math.sqrt(a) * sd**2 / v  # E[x0 | x_t] = x0_coef * x_t
        if i + 1 == len(seq):
            gain, var = gain * x0_coef, var * x0_coef**2
            break
        a_prev = abar[seq[i + 1]]
        if stochastic:  # DDPM on the respaced chain (Nichol & Dhariwal sec. 4, Ho eq. 7)
            beta = 1 - a / a_prev
            m = beta * math.sqrt(a_prev) / (1 - a) * x0_coef + (1 - a_prev) * math.sqrt(
                1 - beta
            ) / (1 - a)
            noise_var = beta * (1 - a_prev) / (1 - a)
        else:  # DDIM eta=0 (Song et al. eq. 12)
            eps_coef = math.sqrt(1 - a) / v
            m = math.sqrt(a_prev) * x0_coef + math.sqrt(1 - a_prev) * eps_coef
            noise_var = 0.0
        gain, var = gain * m, var * m**2 + noise_var
    return gain, var


def test_ddim_matches_the_closed_form_on_gaussian_data():
    sd, s = 0.3, Schedule(ScheduleConfig(timesteps=1000, beta_schedule="linear"))
    x = torch.linspace(-2, 2, 8).reshape(2, 1, 2, 2)
    out = run_sampler(_gaussian_eps(s, sd), s, x, _gens(2), sampler="ddim", steps=50, eta=0.0)
    gain, _ = _analytic_chain(s, sd, 50, stochastic=False)
    assert torch.allclose(out, x * gain, rtol=1e-4, atol=1e-6)
    # The ODE sampler approaches the data's spread as steps grow (discretisation shrinks it).
    assert abs(_analytic_chain(s, sd, 1000, False)[0] - sd) < abs(gain - sd) < 0.05


def test_ddpm_matches_the_closed_form_on_gaussian_data():
    sd, s = 0.3, Schedule(ScheduleConfig(timesteps=1000, beta_schedule="linear"))
    n, steps = 600, 40
    gens = _gens(n, seed=7)
    x = torch.stack([torch.randn(1, 1, 4, generator=g) for g in gens])
    out = run_sampler(_gaussian_eps(s, sd), s, x, gens, sampler="ddpm", steps=steps)
    _, var = _analytic_chain(s, sd, steps, stochastic=True)
    assert out.std().item() == pytest.approx(math.sqrt(var), rel=0.06)  # 2400 values: SE ~1.5%
    assert abs(out.mean().item()) < 0.03


def test_ddim_eta_one_equals_ddpm():
    """Song et al.: eta=1 gives the DDPM posterior variance, also on a respaced chain."""
    s = Schedule(ScheduleConfig(timesteps=1000))
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(3))

    def eps_fn(x, t):
        return torch.tanh(x) * 0.5

    a = run_sampler(eps_fn, s, x, _gens(4), sampler="ddpm", steps=20)
    b = run_sampler(eps_fn, s, x, _gens(4), sampler="ddim", steps=20, eta=1.0)
    assert torch.allclose(a, b, atol=1e-5)


def test_ddim_eta_zero_is_deterministic_given_the_start():
    s = Schedule(ScheduleConfig(timesteps=100))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))

    def eps_fn(x, t):
        return torch.tanh(x) * 0.5

    a = run_sampler(eps_fn, s, x.clone(), _gens(2, 0), sampler="ddim", steps=10, eta=0.0)
    b = run_sampler(eps_fn, s, x.clone(), _gens(2, 99), sampler="ddim", steps=10, eta=0.0)
    assert torch.equal(a, b)  # no fresh noise: other generators change nothing
    c = run_sampler(eps_fn, s, x.clone(), _gens(2, 99), sampler="ddim", steps=10, eta=1.0)
    assert not torch.equal(a, c)
