"""Score matching identities, Tweedie and SURE against the exact Gaussian-mixture oracle (monograph §3.1-3.3)."""
import math

import pytest
import torch
from torch import nn

from diffedu.autodiff import jacobian_trace
from diffedu.objectives import score_matching as sm
from diffedu import toy
from diffedu.forward import add_noise
from diffedu.nets import MLP
from diffedu.schedules import VEGeometric, VPLinear

MIX = toy.GaussianMixture(torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]]), stds=torch.tensor([0.6, 0.5, 0.7]))


def _fixed_score_net(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2)).double()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _se(v):
    return v.std() / math.sqrt(len(v))


@pytest.mark.parametrize("seed", [0, 1])
def test_implicit_equals_explicit_up_to_a_data_only_constant(seed):
    # ISM(s) - ESM(s) = -1/2 ||grad log p||^2 + [tr grad s + s . grad log p], and E[bracket] = 0 (integration by parts).
    g = torch.Generator().manual_seed(10 + seed)
    x = MIX.sample(20_000, g, dtype=torch.float64)
    u = MIX.score_t(x, 0.0, None)
    net = _fixed_score_net(seed)
    ism = sm.implicit_score_matching(net, x).detach()
    esm = sm.explicit_score_matching(net, x, u)
    const = -0.5 * (u**2).sum(1)  # depends on the data only
    resid = ism - esm - const
    assert resid.mean().abs() < 4 * _se(resid)
    # a wrong-sign trace would be caught: the residual then has mean -2 E[tr grad s] != 0
    _, tr = jacobian_trace(net, x)
    assert (resid - 2 * tr.detach()).mean().abs() > 8 * _se(resid - 2 * tr.detach())


def test_sliced_and_hutchinson_ism_are_unbiased_for_ism():
    g = torch.Generator().manual_seed(3)
    x = MIX.sample(256, g, dtype=torch.float64)
    net = _fixed_score_net(0)
    exact = sm.implicit_score_matching(net, x).detach().mean()
    for f in (lambda: sm.sliced_score_matching(net, x, n_projections=200, generator=g),
              lambda: sm.sliced_score_matching(net, x, n_projections=200, variance_reduction=True, generator=g),
              lambda: sm.implicit_score_matching(net, x, estimator="hutchinson", n_probes=200, generator=g)):
        v = f().detach()
        assert (v.mean() - exact).abs() < 0.02 * exact.abs() + 0.01


def test_dsm_equals_esm_on_p_t_up_to_a_constant():
    # DSM(s1) - DSM(s2) = ESM_t(s1) - ESM_t(s2) in expectation (same x0, eps draws for both).
    sched = VPLinear()
    g = torch.Generator().manual_seed(4)
    n, t = 40_000, 0.3
    x0 = MIX.sample(n, g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = add_noise(sched, x0, t, eps=eps).x_t
    u = MIX.score_t(x_t, t, sched)
    n1, n2 = _fixed_score_net(0), _fixed_score_net(1)
    d = [sm.denoising_score_matching(lambda x, tt, net=net: net(x), x0, t, sched, eps=eps, weighting="none")
         for net in (n1, n2)]
    e = [sm.explicit_score_matching(net, x_t, u) for net in (n1, n2)]
    resid = (d[0] - d[1]) - (e[0] - e[1])
    assert resid.mean().abs() < 4 * _se(resid)
    # the DSM target is the conditional score
    assert torch.allclose(sm.dsm_target(sched, x_t, x0, t), -eps / sched.sigma(torch.tensor(t, dtype=torch.float64)))


def test_dsm_minimiser_is_the_true_noisy_score():
    # Train a small net by DSM on oracle samples; compare sigma_t * s_theta with sigma_t * grad log p_t.
    sched = VPLinear()
    torch.manual_seed(0)
    net = MLP(2, 64, 3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(5)
    score_fn = lambda x, t: net(x, t) / sched.sigma(t)[:, None]  # noqa: E731  (network predicts sigma_t * score)
    for step in range(1500):
        x0 = MIX.sample(256, g)
        t = 0.2 + 0.8 * torch.rand(256, generator=g)
        loss = sm.denoising_score_matching(score_fn, x0, t, sched, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for t in (0.3, 0.6, 0.9):
            x_t = add_noise(sched, MIX.sample(4000, g), t, generator=g).x_t
            tt = torch.full((4000,), t)
            s_true = MIX.score_t(x_t, tt, sched)
            sig = sched.sigma(tt)[:, None]
            rel = ((sig * (score_fn(x_t, tt) - s_true)) ** 2).sum(1).mean() / ((sig * s_true) ** 2).sum(1).mean()
            assert rel < 0.05, (t, float(rel))  # measured: 0.003-0.01


def test_tweedie_gives_the_exact_posterior_mean():
    for sched in (VPLinear(), VEGeometric(0.05, 10.0)):
        g = torch.Generator().manual_seed(6)
        t = torch.rand(500, generator=g, dtype=torch.float64) * 0.9 + 0.05
        x_t = add_noise(sched, MIX.sample(500, g, dtype=torch.float64), t, generator=g).x_t
        x0_hat = sm.tweedie_x0(x_t, MIX.score_t(x_t, t, sched), t, sched)
        assert torch.allclose(x0_hat, MIX.posterior_mean(x_t, t, sched), atol=1e-9)


def test_sure_is_unbiased_for_the_true_risk():
    sched = VEGeometric(0.05, 10.0)
    g = torch.Generator().manual_seed(7)
    t = 0.4
    sigma = float(sched.sigma(torch.tensor(t)))
    n = 20_000
    x0 = MIX.sample(n, g, dtype=torch.float64)
    y = add_noise(sched, x0, t, generator=g).x_t
    for denoise in (lambda v: MIX.posterior_mean(v, t, sched), lambda v: 0.7 * v):
        est = sure_vals = sm.sure(denoise, y, sigma)
        true = ((denoise(y) - x0) ** 2).sum(1)
        resid = sure_vals - true
        assert resid.mean().abs() < 4 * _se(resid), (float(resid.mean()), float(_se(resid)))
        assert est.shape == (n,)
    hut = sm.sure(lambda v: 0.7 * v, y[:100], sigma, estimator="hutchinson", generator=g)
    assert torch.allclose(hut, sm.sure(lambda v: 0.7 * v, y[:100], sigma))  # linear isotropic: Rademacher is exact


def test_errors_name_the_argument():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="true_score"):
        sm.explicit_score_matching(lambda v: v, x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="estimator"):
        sm.implicit_score_matching(lambda v: v, x, estimator="magic")
    with pytest.raises(ValueError, match="n_projections"):
        sm.sliced_score_matching(lambda v: v, x, n_projections=0)
    with pytest.raises(TypeError, match="schedule"):
        sm.denoising_score_matching(lambda v, t: v, x, 0.5, "vp")
    with pytest.raises(ValueError, match="sigma"):
        sm.sure(lambda v: v, x, -1.0)
    with pytest.raises(TypeError, match="model"):
        sm.model_score(lambda v: v)


# ------------------------------------------------------------------ Chapter 3 exercise checkers
def test_ch03_references_agree_with_the_package():
    from diffedu.exercises import ch03
    from diffedu.samplers import langevin_step

    sched = VPLinear()
    g = torch.Generator().manual_seed(0)
    x_t, x0, z = (torch.randn(8, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.full((8,), 0.4, dtype=torch.float64)
    assert torch.allclose(ch03.dsm_target(x_t, x0, t, sched), sm.dsm_target(sched, x_t, x0, t))
    assert torch.allclose(ch03.tweedie(x_t, z, t, sched), sm.tweedie_x0(x_t, z, t, sched))
    assert torch.allclose(ch03.langevin_step(x_t, x0, 0.1, z), langevin_step(x_t, x0, 0.1, noise=z))
    A = torch.randn(2, 2, generator=g, dtype=torch.float64)
    v = torch.ones(8, 2, dtype=torch.float64)
    assert torch.allclose(ch03.hutchinson_probe(lambda x: x @ A.T, x_t, v), A.sum().expand(8))
