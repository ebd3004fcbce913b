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
