"""§7.5: is the PF-ODE map from N(0, I) an OT map? Yes for Gaussian data, no for a mixture (monograph §7.5)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffedu import schedules, toy
from diffedu import transport as T
from diffedu.samplers.grids import grid_uniform
from diffedu.samplers.ode import sample_heun_t, solve_pf_ode_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _rot(th, d):
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
    return R @ torch.diag(torch.tensor(d, dtype=torch.float64)) @ R.T


def needles():
    """Three thin, tilted Gaussians of unequal weight: a 2D mixture whose PF-ODE map is visibly not OT."""
    means = torch.tensor([[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
    covs = torch.stack([_rot(0.8, [1.0, 0.01]), _rot(-0.8, [1.0, 0.01]), _rot(0.0, [1.0, 0.01])])
    return toy.GaussianMixture(means, covs=covs, weights=torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("schedule", [schedules.RectifiedFlow(), schedules.VPLinear()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("d", [2, 3])
def test_gaussian_pf_ode_map_is_the_ot_map(schedule, d):
    g = torch.Generator().manual_seed(d)
    Q = torch.randn(d, d, generator=g, dtype=torch.float64)
    A = Q @ Q.T / d + 0.2 * torch.eye(d, dtype=torch.float64)
    m = torch.randn(d, generator=g, dtype=torch.float64)
    x1 = torch.randn(100, d, generator=g, dtype=torch.float64)
    x0 = solve_pf_ode_reference(toy.gaussian(m, A).denoiser(schedule), x1, 1.0, 0.0)
    one = torch.tensor(1.0, dtype=torch.float64)
    a1, s1 = float(schedule.alpha(one)), float(schedule.sigma(one))
    Tmap = T.gaussian_ot_map(a1 * m, a1**2 * A + s1**2 * torch.eye(d, dtype=torch.float64), m, A)  # OT from p_1 to p_0
    assert (x0 - Tmap(x1)).abs().max() < 1e-6
    # and the pairing it induces on a sample is optimal (cyclical monotonicity)
    assert abs(float(T.exact_ot(x1, x0).cost) - (x0 - x1).pow(2).sum(1).mean().item()) < 1e-8


def test_mixture_pf_ode_map_is_not_an_ot_map():
    den = needles().denoiser(schedules.RectifiedFlow())
    gaps, costs = [], []
    for rep in range(4):
        g = torch.Generator().manual_seed(10 + rep)
        x1 = torch.randn(600, 2, generator=g, dtype=torch.float64)
        x0 = sample_heun_t(den, x1, grid_uniform(48))
        cost = (x0 - x1).pow(2).sum(1).mean().item()
        costs.append(cost)
        gaps.append(cost - float(T.exact_ot(x1, x0).cost))  # >= 0; = 0 for every sample iff the pairing is OT
    gaps = np.array(gaps)
    err = gaps.std(ddof=1) / math.sqrt(len(gaps))
    assert gaps.mean() > 5 * err and gaps.mean() > 2e-3, (gaps, err)
    # the ODE solve is accurate far below this gap
    g = torch.Generator().manual_seed(10)
    x1 = torch.randn(600, 2, generator=g, dtype=torch.float64)
    fine = sample_heun_t(den, x1, grid_uniform(96))
    assert (fine - sample_heun_t(den, x1, grid_uniform(48))).pow(2).sum(1).mean().sqrt() < 0.1 * gaps.mean() ** 0.5


def test_minibatch_ot_coupling_costs_more_than_the_pf_ode_map_at_practical_batch_sizes():
    """Does the minibatch-OT coupling pi_n of OT-CFM cost less than the PF-ODE map? Not at n <= 256 (monograph §7.5).

    E_{pi_n}||x0 - x1||^2 = E[W2^2(mu_n, nu_n)] is non-increasing in n (the block-diagonal plan of two
    half batches is feasible for the whole batch, checked on every batch) and tends to W2^2 < C_pf, so
    for large n the coupling -- and by the rectification inequality (Liu et al. 2023) the flow map OT-CFM
    learns from it -- costs less than the PF-ODE map. On the needles its excess over C_pf is measured at
    +0.26 (n = 64), +0.066 (256) and +0.015 +- 0.010 (1024): the crossing lies near n ~ 2000.
    """
    mix = needles()
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(40000, 2, generator=g, dtype=torch.float64)
    per = (sample_heun_t(mix.denoiser(schedules.RectifiedFlow()), x1, grid_uniform(32)) - x1).pow(2).sum(1)
    c_pf, se_pf = per.mean().item(), per.std().item() / math.sqrt(len(per))
    est = {}
    for n, reps in ((64, 200), (256, 300)):
        costs = []
        for _ in range(reps):
            b, a = torch.randn(n, 2, generator=g, dtype=torch.float64), mix.sample(n, g, dtype=torch.float64)
            whole = float(T.exact_ot(b, a).cost)
            halves = 0.5 * sum(float(T.exact_ot(b[s], a[s]).cost) for s in (slice(0, n // 2), slice(n // 2, n)))
            assert whole <= halves + 1e-9, (n, whole, halves)
            costs.append(whole)
        est[n] = (np.mean(costs), np.std(costs, ddof=1) / math.sqrt(reps))
    (m64, s64), (m256, s256) = est[64], est[256]
    assert m64 - m256 > 5 * math.hypot(s64, s256), est
    assert m256 - c_pf > 3 * math.hypot(s256, se_pf), (est, c_pf, se_pf)
