"""diffedu.processes: Brownian paths, Euler-Maruyama / Milstein, and the GBM and OU closed forms.

Every closed form is checked against something it does not use: a density against quadrature
(mass, mean, variance) and against its Fokker-Planck equation by autograd, an exact solution
against the law it must have, a scheme against its own product formula, and the measured orders
(the same Brownian path for every step size) against the theorems with a stated tolerance.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffedu import processes as P
from diffedu import schedules
from diffedu.likelihood.fokker_planck import fokker_planck_residual

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- Brownian increments
def test_brownian_increments_have_variance_dt_and_are_seeded():
    dw = P.brownian_increments((4000, 3), 8, 0.25, generator=_gen(1))
    assert dw.shape == (8, 4000, 3) and dw.dtype == D
    assert abs(dw.mean().item()) < 4 * math.sqrt(0.25 / dw.numel())
    assert abs(dw.var().item() / 0.25 - 1) < 0.03
    torch.testing.assert_close(dw, P.brownian_increments((4000, 3), 8, 0.25, generator=_gen(1)))
    # independent steps: the path's variance grows linearly, Var W_{t_k} = k dt
    w = dw.cumsum(0)
    ratio = w.var(dim=(1, 2)) / (0.25 * torch.arange(1, 9, dtype=D))
    assert (ratio - 1).abs().max() < 0.06, ratio


def test_coarsen_sums_blocks_of_the_same_path():
    dw = P.brownian_increments((5, 2), 12, 0.1, generator=_gen(2))
    c = P.coarsen(dw, 4)
    assert c.shape == (3, 5, 2)
    torch.testing.assert_close(c[1], dw[4:8].sum(0))
    torch.testing.assert_close(c.sum(0), dw.sum(0))      # the endpoint W_T is unchanged
    torch.testing.assert_close(P.coarsen(dw, 1), dw)
    with pytest.raises(ValueError, match="factor"):
        P.coarsen(dw, 5)


# ----------------------------------------------------------------------------- integrators
def test_euler_maruyama_and_milstein_are_their_product_formulas_on_gbm():
    mu, sig, h = 0.7, 0.4, 0.05
    x0 = torch.tensor([[1.0], [2.0], [0.5]], dtype=D)
    dw = P.brownian_increments(x0.shape, 20, h, generator=_gen(3))
    em = P.euler_maruyama(lambda x, t: mu * x, lambda x, t: sig * x, x0, h, dw)
    torch.testing.assert_close(em, x0 * torch.prod(1 + mu * h + sig * dw, 0))
    mil = P.milstein(lambda x, t: mu * x, lambda x, t: sig * x, lambda x, t: torch.full_like(x, sig), x0, h, dw)
    torch.testing.assert_close(mil, x0 * torch.prod(1 + mu * h + sig * dw + 0.5 * sig**2 * (dw**2 - h), 0))
    path = P.euler_maruyama(lambda x, t: mu * x, lambda x, t: sig * x, x0, h, dw, return_path=True)
    assert path.shape == (21, 3, 1)
    torch.testing.assert_close(path[0], x0)
    torch.testing.assert_close(path[-1], em)


def test_integrators_pass_the_grid_time():
    # dX = t dt: X_N = sum_k t_k h = h^2 N (N - 1) / 2 + t0 N h (left Riemann sum), with b = 0
    x0 = torch.zeros(2, 1, dtype=D)
    dw = torch.zeros(10, 2, 1, dtype=D)
    out = P.euler_maruyama(lambda x, t: torch.full_like(x, t), lambda x, t: 0 * x, x0, 0.1, dw, t0=1.0)
    torch.testing.assert_close(out, torch.full_like(x0, 0.01 * 45 + 1.0))


def _strong_slopes(n_paths=2000, n_fine=256, factors=(1, 2, 4, 8, 16)):
    mu, sig, theta, s_ou = 2.0, 1.0, 1.0, 1.0
    h0 = 1.0 / n_fine
    x0 = torch.ones(n_paths, 1, dtype=D)
    dw = P.brownian_increments(x0.shape, n_fine, h0, generator=_gen(4))
    exact = P.gbm_solution(x0, dw.sum(0), 1.0, mu, sig)
    dwo, integrals = P.ou_noise(x0.shape, n_fine, h0, theta, generator=_gen(5))
    exact_ou = P.ou_solution(x0, integrals, h0, theta, s_ou)
    errs = {"em": [], "milstein": [], "em_ou": []}
    for f in factors:
        c, co = P.coarsen(dw, f), P.coarsen(dwo, f)
        em = P.euler_maruyama(lambda x, t: mu * x, lambda x, t: sig * x, x0, h0 * f, c)
        mil = P.milstein(lambda x, t: mu * x, lambda x, t: sig * x, lambda x, t: torch.full_like(x, sig), x0, h0 * f, c)
        em_ou = P.euler_maruyama(lambda x, t: -theta * x, lambda x, t: torch.full_like(x, s_ou), x0, h0 * f, co)
        errs["em"].append((em - exact).abs().mean().item())
        errs["milstein"].append((mil - exact).abs().mean().item())
        errs["em_ou"].append((em_ou - exact_ou).abs().mean().item())
    logh = np.log(h0 * np.array(factors))
    return {k: np.polyfit(logh, np.log(v), 1)[0] for k, v in errs.items()}


def test_measured_strong_orders():
    """EM: 1/2 on GBM (multiplicative noise), 1 on OU (additive noise); Milstein: 1 on GBM. Tolerance 0.1."""
    slopes = _strong_slopes()
    assert abs(slopes["em"] - 0.5) < 0.1, slopes
    assert abs(slopes["milstein"] - 1.0) < 0.1, slopes
    assert abs(slopes["em_ou"] - 1.0) < 0.1, slopes


# ----------------------------------------------------------------------------- geometric Brownian motion
def _quadrature(log_p, lo, hi, n=200_001):
    x = torch.linspace(lo, hi, n, dtype=D)[:, None]
    p = log_p(x).exp()
    w = torch.trapezoid
    mass = w(p, x[:, 0]).item()
    mean = w(p * x[:, 0], x[:, 0]).item()
    var = w(p * (x[:, 0] - mean) ** 2, x[:, 0]).item()
    return mass, mean, var


@pytest.mark.parametrize("mu, sigma, t", [(0.5, 0.3, 1.0), (-0.2, 0.6, 0.5)])
def test_gbm_density_has_the_moments(mu, sigma, t):
    x0 = torch.tensor([[1.3]], dtype=D)
    mass, mean, var = _quadrature(lambda x: P.gbm_log_prob(x, x0.expand_as(x), t, mu, sigma), 1e-6, 12.0)
    m, v = P.gbm_moments(x0, t, mu, sigma)
    assert abs(mass - 1) < 1e-6
    assert abs(mean - m.item()) < 1e-6 and abs(var - v.item()) < 1e-6 * max(1, v.item())


def test_gbm_density_solves_its_fokker_planck_equation():
    # d_t p = -d_x(mu x p) + 1/2 d_xx(sigma^2 x^2 p), by autograd on the exact log-normal
    mu, sigma, x0 = 0.4, 0.7, 1.5
    x = torch.linspace(0.3, 4.0, 17, dtype=D)[:, None].requires_grad_(True)
    t = torch.full((17,), 0.8, dtype=D, requires_grad=True)
    p = P.gbm_log_prob(x, torch.full_like(x, x0), t, mu, sigma).exp()
    dt_p, dx_p = torch.autograd.grad(p.sum(), (t, x), create_graph=True)
    flux = mu * x[:, 0] * p - 0.5 * sigma**2 * (2 * x[:, 0] * p + x[:, 0] ** 2 * dx_p[:, 0])
    (d_flux,) = torch.autograd.grad(flux.sum(), x)
    residual = dt_p + d_flux[:, 0]
    assert residual.abs().max() < 1e-12 * 10, residual
    assert dt_p.abs().max() > 0.05   # the equation is not trivially satisfied


def test_gbm_solution_has_the_gbm_law_and_is_the_limit_of_euler_maruyama():
    mu, sigma, t = 0.3, 0.5, 1.0
    x0 = torch.full((200_000, 1), 2.0, dtype=D)
    w = math.sqrt(t) * torch.randn(x0.shape, generator=_gen(6), dtype=D)
    x = P.gbm_solution(x0, w, t, mu, sigma)
    m, v = P.gbm_moments(x0[:1], t, mu, sigma)
    assert abs(x.mean() / m - 1) < 4 * math.sqrt(v.item() / len(x)) / m.item()
    assert abs(x.var() / v - 1) < 0.03
    # the exact solution driven by a path is where Euler-Maruyama on that path converges
    dw = P.brownian_increments((50, 1), 4096, 1 / 4096, generator=_gen(7))
    em = P.euler_maruyama(lambda y, s: mu * y, lambda y, s: sigma * y, torch.ones(50, 1, dtype=D), 1 / 4096, dw)
    assert (em - P.gbm_solution(torch.ones(50, 1, dtype=D), dw.sum(0), 1.0, mu, sigma)).abs().max() < 0.05


# ----------------------------------------------------------------------------- Ornstein-Uhlenbeck
@pytest.mark.parametrize("var0", [0.0, 0.8])
def test_ou_density_has_its_moments_and_solves_fokker_planck(var0):
    theta, sigma, t = 1.5, 0.7, 0.6
    x0 = torch.tensor([[0.9]], dtype=D)
    mass, mean, var = _quadrature(lambda x: P.ou_log_prob(x, x0.expand_as(x), t, theta, sigma, var0), -8.0, 8.0)
    m, v = P.ou_moments(x0, t, theta, sigma, var0)
    assert abs(mass - 1) < 1e-9 and abs(mean - m.item()) < 1e-9 and abs(var - v.item()) < 1e-9
    # d_t p = theta d_x(x p) + sigma^2/2 d_xx p, in 2-D (the density is a product)
    x = torch.randn(9, 2, generator=_gen(8), dtype=D).requires_grad_(True)
    tt = torch.full((9,), t, dtype=D, requires_grad=True)
    start = torch.tensor([[0.9, -0.4]], dtype=D).expand(9, 2)
    p = P.ou_log_prob(x, start, tt, theta, sigma, var0).exp()
    dt_p, dx_p = torch.autograd.grad(p.sum(), (tt, x), create_graph=True)
    rhs = torch.zeros(9, dtype=D)
    for i in range(2):
        flux_i = theta * x[:, i] * p + 0.5 * sigma**2 * dx_p[:, i]
        rhs = rhs + torch.autograd.grad(flux_i.sum(), x, retain_graph=True)[0][:, i]
    assert (dt_p - rhs).abs().max() < 1e-12, dt_p - rhs
    assert dt_p.abs().max() > 1e-3


def test_ou_is_the_vp_sde_with_constant_beta():
    """sigma^2 = 2 theta = beta: the OU moments are the schedule's alpha_t x0 and sigma_t^2 (monograph §4.3)."""
    beta = 3.0
    vp = schedules.VPLinear(beta, beta)
    x0 = torch.randn(6, 2, generator=_gen(9), dtype=D)
    t = torch.linspace(0.05, 1.0, 6, dtype=D)
    m, v = P.ou_moments(x0, t, beta / 2, math.sqrt(beta))
    torch.testing.assert_close(m, vp.alpha(t)[:, None] * x0)
    torch.testing.assert_close(v, (vp.sigma(t) ** 2)[:, None].expand_as(x0))
    # and the package's Fokker-Planck residual (written for schedules) vanishes on the OU density
    log_p = lambda x, s: P.ou_log_prob(x, torch.full_like(x, 0.5), s, beta / 2, math.sqrt(beta), var0=0.3)  # noqa: E731
    res = fokker_planck_residual(log_p, vp, torch.randn(8, 2, generator=_gen(10), dtype=D), 0.4)
    assert res.abs().max() < 1e-10
    wrong = lambda x, s: P.ou_log_prob(x, torch.full_like(x, 0.5), s, beta / 2, 2 * math.sqrt(beta), 0.3)  # noqa: E731
    assert fokker_planck_residual(wrong, vp, torch.randn(8, 2, generator=_gen(10), dtype=D), 0.4).abs().max() > 0.1


def test_ou_noise_has_the_joint_law_and_drives_the_exact_solution():
    theta, h = 2.0, 0.3
    dw, integrals = P.ou_noise((100_000, 1), 2, h, theta, generator=_gen(11))
    a, b = dw.reshape(-1), integrals.reshape(-1)
    assert abs(a.var().item() / h - 1) < 0.02
    assert abs(b.var().item() / (-math.expm1(-2 * theta * h) / (2 * theta)) - 1) < 0.02
    cov = ((a - a.mean()) * (b - b.mean())).mean().item()
    assert abs(cov / (-math.expm1(-theta * h) / theta) - 1) < 0.02
    # one exact step is e^{-theta h} x + sigma I, and the law at T = N h is the OU transition
    x0 = torch.full((100_000, 1), 1.5, dtype=D)
    torch.testing.assert_close(P.ou_solution(x0, integrals[:1], h, theta, 0.5), math.exp(-theta * h) * x0 + 0.5 * integrals[0])
    x = P.ou_solution(x0, integrals, h, theta, 0.5)
    m, v = P.ou_moments(x0[:1], 2 * h, theta, 0.5)
    assert abs(x.mean().item() - m.item()) < 4 * math.sqrt(v.item() / len(x))
    assert abs(x.var().item() / v.item() - 1) < 0.02
    path = P.ou_solution(x0[:3], integrals[:, :3], h, theta, 0.5, return_path=True)
    assert path.shape == (3, 3, 1)


# ----------------------------------------------------------------------------- errors name the argument
X = torch.ones(3, 1, dtype=D)
DW = torch.zeros(4, 3, 1, dtype=D)


@pytest.mark.parametrize("call, name", [
    (lambda: P.brownian_increments((0, 2), 3, 0.1), "shape"),
    (lambda: P.brownian_increments((2,), 0, 0.1), "n_steps"),
    (lambda: P.brownian_increments((2,), 3, -0.1), "dt"),
    (lambda: P.brownian_increments((2,), 3, 0.1, generator="seed"), "generator"),
    (lambda: P.euler_maruyama("f", lambda x, t: x, X, 0.1, DW), "drift"),
    (lambda: P.euler_maruyama(lambda x, t: x, lambda x, t: x, X, 0.1, DW[:, :2]), "dw"),
    (lambda: P.euler_maruyama(lambda x, t: x, lambda x, t: x, X, 0.0, DW), "dt"),
    (lambda: P.milstein(lambda x, t: x, lambda x, t: x, None, X, 0.1, DW), "d_diffusion"),
    (lambda: P.gbm_solution(X, X[:2], 1.0, 0.1, 0.2), "w"),
    (lambda: P.gbm_solution(X, X, -1.0, 0.1, 0.2), "t"),
    (lambda: P.gbm_moments(X, 1.0, float("nan"), 0.2), "mu"),
    (lambda: P.gbm_log_prob(-X, X, 1.0, 0.1, 0.2), "x"),
    (lambda: P.gbm_log_prob(X, X, 1.0, 0.1, 0.0), "sigma"),
    (lambda: P.ou_moments(X, torch.ones(2, dtype=D), 1.0, 1.0), "t"),
    (lambda: P.ou_moments(X, 1.0, 0.0, 1.0), "theta"),
    (lambda: P.ou_log_prob(X, X, 0.0, 1.0, 1.0), "t"),
    (lambda: P.ou_log_prob(X, X, 1.0, 1.0, 1.0, var0=-1.0), "var0"),
    (lambda: P.ou_solution(X, DW, 0.1, 1.0, -1.0), "sigma"),
    (lambda: P.ou_noise((3, 1), 4, 0.1, -2.0), "theta"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((TypeError, ValueError), match=name):
        call()


# ----------------------------------------------------------------------------- Girsanov
def test_girsanov_log_weight_is_the_closed_form_for_a_constant_drift():
    # Q: dX = c dt + dW, P: dX = dW; dQ/dP = exp(c W_T - c^2 T / 2) exactly, whatever the grid
    c, h, n = 0.8, 0.05, 20
    dw = P.brownian_increments((6, 2), n, h, generator=_gen(11))
    u = torch.full_like(dw, c)
    lw = P.girsanov_log_weight(u, dw, h)
    assert lw.shape == (6,)
    torch.testing.assert_close(lw, (c * dw.sum(0) - 0.5 * c**2 * n * h).sum(1))
    torch.testing.assert_close(P.girsanov_log_weight(torch.zeros_like(dw), dw, h), torch.zeros(6, dtype=D))


def test_girsanov_reweighting_reproduces_the_ou_moments():
    # Brownian paths sigma W from x0 reweighted with u = -theta X / sigma have the OU law (within MC error + O(h))
    theta, sig, x0v, n, h = 1.0, 1.0, 1.0, 200, 1.0 / 200
    dw = P.brownian_increments((20000, 1), n, h, generator=_gen(12))
    path = x0v + sig * torch.cat([torch.zeros(1, 20000, 1, dtype=D), dw.cumsum(0)])
    w = P.girsanov_log_weight(-theta * path[:-1] / sig, dw, h).exp()
    assert abs(w.mean().item() - 1) < 4 * w.std().item() / math.sqrt(len(w))          # E_P dQ/dP = 1
    xt = path[-1, :, 0]
    mean, var = P.ou_moments(torch.full((1, 1), x0v, dtype=D), 1.0, theta, sig)
    for f, exact in ((xt, mean.item()), (xt**2, (mean**2 + var).item())):
        est, se = (w * f).mean().item(), (w * f).std().item() / math.sqrt(len(w))
        assert abs(est - exact) < 4 * se + 0.01, (est, exact, se)
    # the unweighted paths are not OU: E_P X_T = x0 = 1, far from e^{-1}
    assert abs(xt.mean().item() - mean.item()) > 0.5


def test_path_kl_is_half_the_integrated_squared_drift_difference():
    # under Q (drift c1) log dQ/dP(X) with dW^P = dW^Q + u dt has mean 1/2 u^2 T: KL(Q || P) for constant drifts
    c1, c2, g, n, h = 1.0, -0.5, 2.0, 50, 0.02
    u = (c1 - c2) / g
    dwq = P.brownian_increments((20000, 1), n, h, generator=_gen(13))
    lw = P.girsanov_log_weight(torch.full_like(dwq, u), dwq + u * h, h)
    se = lw.std().item() / math.sqrt(len(lw))
    assert abs(lw.mean().item() - 0.5 * u**2 * n * h) < 4 * se


def test_girsanov_log_weight_refuses_bad_input():
    dw = torch.zeros(3, 4, 2, dtype=D)
    with pytest.raises(ValueError, match="dw"):
        P.girsanov_log_weight(dw, torch.zeros(2, 4, 2, dtype=D), 0.1)
    with pytest.raises(TypeError, match="u"):
        P.girsanov_log_weight([0.0], dw, 0.1)
    with pytest.raises(ValueError, match="u"):
        P.girsanov_log_weight(torch.full_like(dw, float("nan")), dw, 0.1)
    with pytest.raises(ValueError, match="dt"):
        P.girsanov_log_weight(dw, dw, 0.0)
