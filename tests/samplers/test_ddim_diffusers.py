"""Why diffedu's DDIM and diffusers' DDIMScheduler (trailing) differ by up to ~1e-5: diffusers' float32 table (monograph §9.3).

diffedu's sample_ddim on grid_ddpm(trailing) and diffusers' DDIMScheduler compute the same update
x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps_hat. diffusers keeps alphas_cumprod in float32
(cumprod of float32 betas: relative error up to 3.6e-7 at the end of the table) and forms
sqrt(abar), sqrt(1 - abar) from float32 scalars; diffedu uses the float64 table. These tests show
that this is the *whole* gap: with the float64 table swapped into the scheduler the two agree to
rounding (~1e-14), and a hand-written DDIM with diffusers' float32 arithmetic reproduces the stock
scheduler to rounding. The gap grows on sharper mixtures because the exact denoiser's Jacobian is
larger there (narrow components amplify a perturbation of x).
"""
import pytest
import torch

from diffedu import schedules, toy
from diffedu.samplers import ode

diffusers = pytest.importorskip("diffusers")  # the test extra has it (pyproject), so CI runs this


def _asymmetric_mixture():
    # six components, weights 0.05-0.25, widths 0.2-0.8: the kind of mixture of the issue
    means = torch.randn(6, 2, generator=torch.Generator().manual_seed(5)) * 3
    w = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.25, 0.25])
    return toy.GaussianMixture(means, stds=torch.tensor([0.2, 0.3, 0.4, 0.5, 0.6, 0.8]), weights=w / w.sum())


def _scheduler():
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                   prediction_type="epsilon", timestep_spacing="trailing", clip_sample=False)


def _run(model, sch, x, sched, n):
    sched.set_timesteps(n)
    with torch.no_grad():
        for k in sched.timesteps:
            eps = model(x, torch.full((len(x),), float(sch.timestep_to_t(float(k))), dtype=x.dtype)).eps
            x = sched.step(eps, k, x).prev_sample
    return x


def _ddim_float32_arithmetic(model, sch, x, ac32, n):
    """DDIM with diffusers' arithmetic: float32 table and float32 scalar coefficients, float64 states."""
    steps = (torch.round(torch.arange(1000, 0, -1000 / n, dtype=torch.float64)) - 1).long().tolist()
    one = torch.tensor(1.0)  # diffusers' final_alpha_cumprod (float32)
    for j, k in enumerate(steps):
        a_t = ac32[k]
        a_prev = ac32[steps[j + 1]] if j + 1 < len(steps) else one
        eps = model(x, torch.full((len(x),), float(sch.timestep_to_t(float(k))), dtype=x.dtype)).eps
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x


def test_the_whole_ddim_gap_is_diffusers_float32_table():
    n = 10
    sch = schedules.DiscreteSchedule.linear()
    model = _asymmetric_mixture().denoiser(sch)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = ode.sample_ddim(model, x, ode.grid_ddpm(sch, n, "trailing"))
    stock = _scheduler()
    ac32 = stock.alphas_cumprod.clone()
    assert ac32.dtype == torch.float32
    gap = float((_run(model, sch, x, stock, n) - ours).abs().max())
    assert gap > 1e-6  # the discrepancy of the issue (measured 3.7e-6 at NFE 10 here, 7.5e-6 at 20; 6e-7 on the ring)
    # (1) the float64 table in diffusers' own step: agreement to rounding
    s64 = _scheduler()
    s64.alphas_cumprod, s64.final_alpha_cumprod = sch.alphas_cumprod.clone(), torch.tensor(1.0, dtype=torch.float64)
    assert float((_run(model, sch, x, s64, n) - ours).abs().max()) < 1e-12
    # (2) diffusers' float32 arithmetic written by hand reproduces the stock scheduler to rounding
    assert float((_ddim_float32_arithmetic(model, sch, x, ac32, n) - _run(model, sch, x, _scheduler(), n)).abs().max()) < 1e-12
    # (3) the table itself: float32 cumprod of float32 betas is off by up to ~4e-7 relative from the float64 one
    rel = ((ac32.double() - sch.alphas_cumprod) / sch.alphas_cumprod).abs().max()
    assert 1e-8 < float(rel) < 1e-6
