"""DDIM's eta family as a non-Markovian forward process (Song, Meng, Ermon 2021; monograph §9.3), against closed forms.

q_eta(x_s | x_t, x0) = N(alpha_s x0 + sqrt(sigma_s^2 - c^2) (x_t - alpha_t x0) / sigma_t, c^2 I), c = eta sqrt(tilde-beta)
(:func:`diffedu.forward.ddim_posterior_coefficients`). Checked here: (a) it keeps every marginal q(x_s | x0), for any
eta and schedule; (b) eta = 1 is the DDPM posterior, and only eta = 1 makes the implied forward process Markov;
(c) ``sample_ddim(eta=0)`` is the first-order data-form exponential integrator and converges, with order 1, to the
exact PF-ODE solution of a Gaussian mixture; (d) ``sample_ddim(eta=1)`` is the ancestral sampler step by step on
the same noise draws; and the law of every eta-chain on Gaussian data, propagated in closed form, is what
``sample_ddim`` samples.
"""
import math

import numpy as np
import pytest
import torch

from diffedu import forward, schedules, toy
from diffedu.samplers import ode, sample_ancestral, trajectory
from diffedu.samplers.grids import grid_ddpm, grid_log_snr, grid_power, grid_uniform
from diffedu.samplers.unipc import sample_unipc

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny oracles: one thread is fastest

SCHEDULES = {
    "vp_linear": schedules.VPLinear(),
    "vp_cosine": schedules.VPCosine(),
    "ddpm_table": schedules.DiscreteSchedule.linear(),
    "sub_vp": schedules.SubVP(),
    "ve": schedules.VEGeometric(),
    "edm": schedules.EDM(),
    "rectified_flow": schedules.RectifiedFlow(),
}
# pairs s < t: short and long steps, a step to the data (s = 0), a step from the pure-noise end of rectified flow
T = torch.tensor([0.9, 0.5, 0.3, 0.2, 0.999, 0.05], dtype=torch.float64)
S = torch.tensor([0.5, 0.2, 0.0, 0.19, 0.01, 0.049], dtype=torch.float64)
ETAS = [0.0, 0.3, 0.5, 1.0]


def _asymmetric_mixture():
    """Six components, weights 0.05-0.25, widths 0.2-0.8: the kind of data the solvers were never tuned on."""
    means = [[-3.0, 2.0], [2.5, 2.5], [0.0, -0.5], [-2.0, -3.0], [3.0, -2.0], [0.5, 3.5]]
    w = torch.tensor([0.25, 0.05, 0.20, 0.15, 0.25, 0.10], dtype=torch.float64)
    return toy.GaussianMixture(means, stds=[0.5, 0.2, 0.8, 0.3, 0.6, 0.25], weights=w)


# ------------------------------------------------------------------------------ (a) the marginals are kept
@pytest.mark.parametrize("eta", ETAS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_every_eta_keeps_the_marginal_q_xs_given_x0(name, eta):
    # x_t = alpha_t x0 + sigma_t eps, x_s = c_x0 x0 + c_xt x_t + sqrt(var) z  =>  x_s | x0 ~ N((c_x0 + c_xt alpha_t) x0,
    # (c_xt^2 sigma_t^2 + var) I), which must be N(alpha_s x0, sigma_s^2 I): the Gaussian identity, in float64
    sch = SCHEDULES[name]
    c_x0, c_xt, var = forward.ddim_posterior_coefficients(sch, T, S, eta)
    a_t, s_t, a_s, s_s = sch.alpha(T), sch.sigma(T), sch.alpha(S), sch.sigma(S)
    scale = 1 + s_s**2  # EDM's sigma reaches 80: compare relative to the size of the variance
    assert ((c_x0 + c_xt * a_t) - a_s).abs().max() < 1e-12
    assert ((c_xt**2 * s_t**2 + var - s_s**2).abs() / scale).max() < 1e-12
    assert torch.allclose(var, eta**2 * forward.posterior_coefficients(sch, T, S)[2], rtol=1e-12, atol=0)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_the_marginal_identity_holds_for_samples_too(eta):
    # the same identity through ddim_posterior on tensors: a Monte Carlo composition, checked to its standard error
    sch = schedules.VPCosine()
    g = torch.Generator().manual_seed(0)
    n, x0 = 200_000, torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    t, s = 0.7, 0.3
    x_t = forward.add_noise(sch, x0.expand(n, 2), t, generator=g).x_t
    mean, var = forward.ddim_posterior(sch, x_t, x0.expand(n, 2), t, s, eta)
    x_s = mean + var.sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    a_s, s_s = float(sch.alpha(torch.tensor(s))), float(sch.sigma(torch.tensor(s)))
    se = s_s / math.sqrt(n)
    assert (x_s.mean(0) - a_s * x0[0]).abs().max() < 5 * se
    assert (x_s.var(0) / s_s**2 - 1).abs().max() < 5 * math.sqrt(2 / n)


# ------------------------------------------------------------------------------ (b) eta = 1 is DDPM's posterior
@pytest.mark.parametrize("name", SCHEDULES)
def test_eta_one_is_the_ddpm_posterior(name):
    sch = SCHEDULES[name]
    ours = forward.ddim_posterior_coefficients(sch, T, S, 1.0)
    ddpm = forward.posterior_coefficients(sch, T, S)
    for a, b in zip(ours, ddpm):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), (name, a, b)
    half = forward.ddim_posterior_coefficients(sch, T, S, 0.5)
    assert not torch.allclose(half[1][S > 0], ddpm[1][S > 0], rtol=1e-6)  # another member of the family


def test_ddim_posterior_on_tensors_matches_the_ddpm_posterior_at_eta_one():
    sch = schedules.DiscreteSchedule.linear()
    g = torch.Generator().manual_seed(1)
    x_t, x0 = (torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0.9, 0.5, 0.4, 0.3, 0.2], dtype=torch.float64)
    s = t - 0.1
    m1, v1 = forward.ddim_posterior(sch, x_t, x0, t, s, 1.0)
    m2, v2 = forward.posterior(sch, x_t, x0, t, s)
    assert torch.allclose(m1, m2, atol=1e-12) and torch.allclose(v1, v2, rtol=1e-12)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm"])
def test_only_eta_one_makes_the_forward_process_markov(name):
    # Bayes on the joint Gaussian (x_s, x_t) | x0: E[x_t | x_s, x0] = A x_s + B x0 with A = c_xt sigma_t^2 / sigma_s^2 and
    # B = alpha_t - A alpha_s. The process is Markov iff B = 0, and then A = alpha_{t|s}, the forward transition.
    sch = SCHEDULES[name]
    t, s = T[S > 0], S[S > 0]
    a_ts, var_ts = forward.transition(sch, t, s)
    for eta in ETAS:
        _, c_xt, _ = forward.ddim_posterior_coefficients(sch, t, s, eta)
        A = c_xt * sch.sigma(t) ** 2 / sch.sigma(s) ** 2
        B = sch.alpha(t) - A * sch.alpha(s)
        cond_var = sch.sigma(t) ** 2 - A**2 * sch.sigma(s) ** 2
        if eta == 1.0:
            assert torch.allclose(A, a_ts, rtol=1e-10) and B.abs().max() < 1e-10
            assert torch.allclose(cond_var, var_ts, rtol=1e-10)
        else:  # x_t depends on x0 given x_s: a non-Markovian forward process with the same marginals
            assert (B.abs() > 1e-4 * sch.alpha(t).abs().clamp_min(1e-3)).all(), (eta, B)


# ------------------------------------------------------------------------------ (c) eta = 0: the ODE
@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "ddpm_table", "edm"])
def test_eta_zero_is_the_first_order_data_form_exponential_integrator(name):
    # q_0(x_s | x_t, x0) is the point x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) x0, h = lambda_s - lambda_t:
    # exponential Euler of the data form of the PF-ODE (DPM-Solver++ of order 1), for any x_t and x0
    sch = SCHEDULES[name]
    g = torch.Generator().manual_seed(2)
    t, s = T[:4], S[:4]
    x_t, x0 = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    mean, var = forward.ddim_posterior(sch, x_t, x0, t, s, 0.0)
    assert (var == 0).all()
    h = sch.half_log_snr(s) - sch.half_log_snr(t)
    expo = (sch.sigma(s) / sch.sigma(t))[:, None] * x_t - (sch.alpha(s) * torch.expm1(-h))[:, None] * x0
    expo[S[:4] == 0] = x0[S[:4] == 0]  # at sigma_s = 0 (h = inf) the step lands on x0
    assert (mean - expo).abs().max() < 1e-12


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_sample_ddim_steps_are_the_family_with_x0_hat(eta):
    # every step of sample_ddim is mean + sqrt(var) z of q_eta(x_s | x_t, x0_hat(x_t)), z the generator's next draw
    sch = schedules.VPCosine()
    model = _asymmetric_mixture().denoiser(sch)
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = grid_power(12, 2.0, 0.99, 0.0)
    states = trajectory(ode.sample_ddim, model, x1, ts, eta=eta, generator=torch.Generator().manual_seed(4))
    g, x = torch.Generator().manual_seed(4), x1
    for i in range(len(ts) - 1):
        mean, var = forward.ddim_posterior(sch, x, model(x, ts[i].expand(len(x))).x0, ts[i], ts[i + 1], eta)
        x = mean + var.sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype) if var > 0 else mean
        assert (x - states[i + 1]).abs().max() < 1e-10, (eta, i)


def test_eta_zero_equals_unipc_1_without_corrector():
    # the package's other first-order data-form integrator (UniP-1) on a grid that stops short of the data
    sch = schedules.VPLinear()
    model = _asymmetric_mixture().denoiser(sch)
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ts = grid_log_snr(sch, 15, 1.0, 1e-3)
    a = ode.sample_ddim(model, x1, ts, eta=0.0)
    b = sample_unipc(model, x1, ts, order=1, corrector=False)
    assert (a - b).abs().max() < 1e-11


@pytest.fixture(scope="module")
def exact_problem():
    sch = schedules.VPLinear()
    mix = _asymmetric_mixture()
    model = mix.denoiser(sch)
    x1 = torch.randn(48, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ref = ode.solve_pf_ode_reference(model, x1, 1.0, 0.0, rtol=1e-12, atol=1e-12)
    return mix, sch, model, x1, ref


def test_the_two_exact_solutions_agree(exact_problem):
    # the reference (DOP853 in sigma_bar, samplers.ode) and the toy oracle's flow map (DOP853 in t) are independent codes
    mix, sch, model, x1, ref = exact_problem
    other = toy.flow_map(mix, sch, x1, 1.0, 0.0, rtol=1e-11, atol=1e-11)
    assert (other - ref).norm(dim=1).max() < 1e-9  # measured 5.7e-12


def test_eta_zero_converges_with_order_one_to_the_exact_pf_ode(exact_problem):
    mix, sch, model, x1, ref = exact_problem
    nfes = [25, 50, 100, 200, 400]
    errs = [float((ode.sample_ddim(model, x1, grid_power(n, 2.0), eta=0.0) - ref).norm(dim=1).mean()) for n in nfes]
    order = -np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert 0.9 <= order <= 1.15, (order, errs)
    assert errs[-1] < 0.02 and errs[-1] > 1e4 * 1e-9, errs  # measured 0.160 ... 0.0086, order 1.04; far above 1e-9


# ------------------------------------------------------------------------------ (d) eta = 1: the ancestral sampler
@pytest.mark.parametrize("name, grid", [
    ("vp_linear", lambda sch: grid_uniform(40, 1.0, 0.0)),
    ("vp_cosine", lambda sch: grid_power(25, 2.0, 0.995, 0.0)),
    ("ddpm_table", lambda sch: grid_ddpm(sch, 20)),
    ("rectified_flow", lambda sch: grid_uniform(30, 0.999, 0.0)),
])
def test_eta_one_is_the_ancestral_sampler_step_by_step(name, grid):
    # both samplers draw z with torch.randn(x.shape, generator=...) once per step with sigma_s > 0, so the same seed
    # gives the same noise: the whole trajectories must coincide, and both must consume the generator alike
    sch = SCHEDULES[name]
    model = _asymmetric_mixture().denoiser(sch)
    x1 = torch.randn(128, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ts = grid(sch)
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    a = trajectory(ode.sample_ddim, model, x1, ts, eta=1.0, generator=g1)
    b = trajectory(sample_ancestral, model, x1, ts, generator=g2)
    assert a.shape == b.shape == (len(ts), 128, 2)
    assert (a - b).abs().max() < 1e-10, (a - b).abs().amax(dim=(1, 2))
    assert torch.equal(g1.get_state(), g2.get_state())
    # and not by accident: eta = 0.5 on the same noise is another trajectory
    c = ode.sample_ddim(model, x1, ts, eta=0.5, generator=torch.Generator().manual_seed(8))
    assert (c - a[-1]).abs().max() > 1e-3


# ------------------------------------------------------------------------------ every eta on Gaussian data
def _chain_law(sch, ts, m, v, eta):
    """Exact (mean, var) of the eta-chain x_s = c_x0 x0_hat(x_t) + c_xt x_t + c z for 1-D data N(m, v), x at ts[0] ~ N(0, 1).

    x0_hat is the exact posterior mean, affine in x_t: m + k (x_t - alpha_t m), k = alpha_t v / (alpha_t^2 v + sigma_t^2).
    """
    mean, var = 0.0, 1.0
    for t, s in zip(ts[:-1], ts[1:]):
        a, sg = sch.alpha(t), sch.sigma(t)
        k = a * v / (a**2 * v + sg**2)
        c0, ct, pv = forward.ddim_posterior_coefficients(sch, t, s, eta)
        A, b = c0 * k + ct, c0 * (m - k * a * m)
        mean, var = A * mean + b, A**2 * var + pv
    return float(mean), float(var)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_sample_ddim_samples_the_closed_form_law_of_its_chain(eta):
    sch = schedules.VPLinear()
    m, v = 0.8, 0.3
    model = toy.GaussianMixture(torch.tensor([[m]]), stds=v**0.5).denoiser(sch)
    ts = grid_uniform(30, 1.0, 0.0)
    n = 40_000
    g = torch.Generator().manual_seed(9)
    x = ode.sample_ddim(model, torch.randn(n, 1, generator=g, dtype=torch.float64), ts, eta=eta, generator=g)
    em, ev = _chain_law(sch, ts, m, v, eta)
    assert abs(float(x.mean()) - em) < 4 * math.sqrt(ev / n), (float(x.mean()), em)
    assert abs(float(x.var()) / ev - 1) < 4 * math.sqrt(2 / n), (float(x.var()), ev)


def test_every_eta_converges_to_the_data_law():
    # with the exact denoiser every member of the family samples N(m, v) as the steps grow (closed form, no sampling);
    # on coarse grids the stochastic members are further off (30 steps: var / v = 0.833 / 0.808 / 0.713 for eta 0 / 0.5 / 1;
    # 3000 steps: 0.998 / 0.997 / 0.995). The deterministic chain keeps a mean offset of 0.003 at any step count: its
    # N(0, 1) start is not exactly q(x_1) (alpha_1 = 0.006), which the ODE carries to the data, the SDE forgets.
    sch = schedules.VPLinear()
    m, v = 0.8, 0.3
    far = {}
    for eta in (0.0, 0.5, 1.0):
        errs = []
        for n in (30, 300, 3000):
            em, ev = _chain_law(sch, grid_uniform(n, 1.0, 0.0), m, v, eta)
            errs.append(abs(ev / v - 1) + abs(em - m))
        assert errs[0] > errs[1] > errs[2] and errs[2] < 0.01, (eta, errs)
        far[eta] = errs[0]
    assert far[0.0] < far[0.5] < far[1.0], far


# ------------------------------------------------------------------------------ input checks
def test_bad_eta_and_times_are_refused():
    sch = schedules.VPLinear()
    for bad in (-0.1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="eta"):
            forward.ddim_posterior_coefficients(sch, 0.5, 0.2, bad)
    with pytest.raises(ValueError, match="eta"):  # c = eta sqrt(tilde-beta) > sigma_s
        forward.ddim_posterior_coefficients(sch, 0.9, 0.1, 5.0)
    forward.ddim_posterior_coefficients(sch, 0.9, 0.89, 1.5)  # a short step allows eta > 1
    with pytest.raises(ValueError, match="s < t"):
        forward.ddim_posterior_coefficients(sch, 0.2, 0.5, 0.5)
    with pytest.raises(ValueError, match="x0"):
        forward.ddim_posterior(sch, torch.zeros(3, 2), torch.zeros(3, 3), 0.5, 0.2, 0.5)
