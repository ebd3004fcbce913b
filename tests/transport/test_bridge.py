"""Static SB = entropic OT (eps = 2 sigma^2), the SB-CFM path, diffusion couplings vs SB (monograph §7.3-§7.4)."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from diffedu import schedules, toy
from diffedu import transport as T
from diffedu.likelihood.fokker_planck import continuity_residual

pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(d, d, generator=g, dtype=torch.float64)
    return scale * (Q @ Q.T / d + 0.3 * torch.eye(d, dtype=torch.float64))


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_static_sb_by_ipf_equals_entropic_ot_with_eps_2_sigma_squared(sigma):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(25, 2, generator=g, dtype=torch.float64)
    y = torch.randn(30, 2, generator=g, dtype=torch.float64) + 1.0
    P_sb = T.static_sb_plan(x, y, sigma)
    a, b = np.full(25, 1 / 25), np.full(30, 1 / 30)
    C = T.cost_matrix(x, y).numpy()
    P_eot = ot.sinkhorn(a, b, C, 2 * sigma**2, method="sinkhorn_log", stopThr=1e-14, numItermax=100_000)
    assert np.abs(P_sb.numpy() - P_eot).max() < 1e-8
    wrong = ot.sinkhorn(a, b, C, sigma**2, method="sinkhorn_log", stopThr=1e-14, numItermax=100_000)
    assert np.abs(P_sb.numpy() - wrong).max() > 1e-4  # eps = sigma^2 would be the wrong factor
    assert T.sb_eps(sigma) == 2 * sigma**2


def test_gaussian_sb_closed_form_equals_sinkhorn_on_samples_and_brownian_bridges():
    """The other way round: Bunne et al.'s Gaussian SB marginal vs Sinkhorn(eps = 2 sigma^2) pairs + Brownian bridges."""
    m0, A = torch.zeros(2, dtype=torch.float64), _spd(2, 1)
    m1, B = torch.tensor([2.0, 0.0], dtype=torch.float64), _spd(2, 2, 0.5)
    sigma, t, n = 0.8, 0.4, 1200
    g = torch.Generator().manual_seed(1)
    x = m0 + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(A).T
    y = m1 + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(B).T
    x0, x1 = T.sb_pairs(x, y, sigma, generator=torch.Generator().manual_seed(2))
    big = 20
    x0, x1 = x0.repeat(big, 1), x1.repeat(big, 1)
    xt = T.sb_cfm_sample(x0, x1, t, sigma, generator=torch.Generator().manual_seed(3))
    mean, cov = T.gaussian_sb_marginal(m0, A, m1, B, sigma, t)
    assert (xt.mean(0) - mean).abs().max() < 0.1
    assert (torch.cov(xt.T) - cov).abs().max() < 0.1


def test_sb_cfm_velocity_generates_its_path():
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(1, 2, generator=g, dtype=torch.float64), torch.randn(1, 2, generator=g, dtype=torch.float64)
    sigma = 0.7

    def log_p(x, t):  # log N(x; mu_t, sigma_t^2 I) of the conditional path
        mu = (1 - t)[:, None] * x0 + t[:, None] * x1
        var = sigma**2 * t * (1 - t)
        return -0.5 * ((x - mu) ** 2).sum(1) / var - torch.log(2 * math.pi * var)

    def vel(x, t):
        return T.sb_cfm_velocity(x, x0.expand_as(x), x1.expand_as(x), t, sigma)

    xs = torch.randn(200, 2, generator=g, dtype=torch.float64)
    ts = 0.05 + 0.9 * torch.rand(200, generator=g, dtype=torch.float64)
    r = continuity_residual(log_p, vel, xs, ts)
    bad = continuity_residual(log_p, lambda x, t: 1.05 * vel(x, t), xs, ts)
    assert r.abs().max() < 1e-9 and bad.abs().max() > 1e-3
    # sigma = 0: rectified flow's conditional velocity x1 - x0
    x = torch.randn(1, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(T.sb_cfm_velocity((0.7 * x0 + 0.3 * x1), x0, x1, 0.3, 0.0), x1 - x0)


def test_forward_coupling_is_its_own_bridge_and_the_reverse_sde_from_the_prior_is_one_ipf_step():
    sch = schedules.VPLinear()
    m0, A = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.diag(torch.tensor([2.0, 0.3], dtype=torch.float64))
    I, z = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    gaps = []
    for t in (0.3, 0.6, 1.0):
        ref = T.diffusion_coupling(sch, m0, A, t)
        if t < 1:  # SB between p_0 and p_t with the forward process as reference: itself (KL = 0)
            own = T.reference_sb_plan(sch, m0, A, ref.m1, ref.cov1, t)
            assert torch.allclose(own.cross, ref.cross, atol=1e-10)
        sb = T.reference_sb_plan(sch, m0, A, z, I, t)  # SB between p_data and the prior N(0, I)
        fb = T.forward_backward_coupling(sch, m0, A, t)
        ipf = T.gaussian_ipf(ref, m0, A, z, I, n_iter=60)
        assert torch.allclose(ipf[0].cross, fb.cross) and torch.allclose(ipf[0].cov0, fb.cov0)
        assert torch.allclose(ipf[-1].cross, sb.cross, atol=1e-8)  # IPF converges to the SB
        gaps.append(float(T.full_gaussian_kl(fb.mean, fb.cov, sb.mean, sb.cov)))
        if t < 1:
            assert not torch.allclose(fb.cov0, A, atol=1e-3)  # the reverse SDE from N(0, I) misses p_data
    # the diffusion coupling is not the SB between p_data and N(0, I) -- until p_t reaches the prior
    assert gaps[0] > 1e-2 and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6, gaps


def test_forward_backward_coupling_matches_the_simulated_reverse_sde():
    from diffedu.samplers.grids import grid_uniform
    from diffedu.samplers.sde import sample_euler_maruyama

    sch = schedules.VPLinear()
    m0, A = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.diag(torch.tensor([2.0, 0.3], dtype=torch.float64))
    t = 0.5
    g = torch.Generator().manual_seed(5)
    xt = torch.randn(8000, 2, generator=g, dtype=torch.float64)
    x0 = sample_euler_maruyama(toy.gaussian(m0, A).denoiser(sch), xt, grid_uniform(100, t, 0.0), generator=g)
    fb = T.forward_backward_coupling(sch, m0, A, t)
    emp = torch.cov(torch.cat([x0, xt], 1).T)
    assert (emp - fb.cov).abs().max() < 0.08, (emp, fb.cov)


@pytest.mark.parametrize("call, words", [
    (lambda: T.sb_cfm_velocity(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), 0.0, 1.0), "t: the SB-CFM velocity needs 0 < t < 1"),
    (lambda: T.sb_cfm_velocity(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(4, 2), 0.5, 1.0), "x1: expected shape"),
    (lambda: T.sb_cfm_mean_std(torch.zeros(3, 2), torch.zeros(3, 2), 1.5, 1.0), "t: must lie in"),
    (lambda: T.sb_cfm_mean_std(torch.zeros(3, 2), torch.zeros(3, 2), 0.5, -1.0), "sigma"),
    (lambda: T.static_sb_plan(torch.zeros(3, 2), torch.zeros(3, 2), 0.0), "sigma"),
    (lambda: T.diffusion_coupling("vp", torch.zeros(2), torch.eye(2)), "schedule: expected"),
    (lambda: T.diffusion_coupling(schedules.VPLinear(), torch.zeros(2), torch.eye(2), 0.0), "t: expected a terminal time"),
    (lambda: T.reference_sb_plan(schedules.RectifiedFlow(), torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(2), 1.0), "alpha_t = 0"),
    (lambda: T.gaussian_ipf(None, torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(2), 0), "n_iter"),
])
def test_bad_inputs_name_the_argument(call, words):
    with pytest.raises((ValueError, TypeError), match=words):
        call()
