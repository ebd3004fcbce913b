"""diffedu.objectives.elbo: DDPM forward kernels, posteriors and the ELBO against closed forms (monograph §2.2)."""
import math

import pytest
import torch

from diffedu import forward, gaussian, toy
from diffedu.objectives import elbo
from diffedu.nets import MLP
from diffedu.param import Denoiser
from diffedu.schedules import DiscreteSchedule, VEGeometric, VPCosine, VPLinear

SCHEDULES = [VPLinear(), VPCosine(), VEGeometric(0.05, 10.0), DiscreteSchedule.linear(1000)]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_transition_composes_to_marginal(sched):
    # q(x_t|x_s) o q(x_s|x0) = q(x_t|x0):  alpha_t = alpha_{t|s} alpha_s,  sigma_t^2 = alpha_{t|s}^2 sigma_s^2 + sigma_{t|s}^2
    t = torch.tensor([0.3, 0.7, 0.95], dtype=torch.float64)
    s = torch.tensor([0.1, 0.69, 0.2], dtype=torch.float64)
    a_ts, v_ts = forward.transition(sched, t, s)
    assert torch.allclose(a_ts * sched.alpha(s), sched.alpha(t))
    assert torch.allclose(a_ts**2 * sched.sigma(s) ** 2 + v_ts, sched.sigma(t) ** 2)


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_posterior_is_bayes_rule_of_gaussians(sched):
    # Product of q(x_t|x_s) and q(x_s|x0) as a Gaussian in x_s: precision and mean by completing the square.
    t = torch.tensor([0.5, 0.9], dtype=torch.float64)
    s = torch.tensor([0.25, 0.0], dtype=torch.float64)
    c0, ct, var = forward.posterior_coefficients(sched, t, s)
    a_ts, v_ts = forward.transition(sched, t, s)
    a_s, s_s = sched.alpha(s), sched.sigma(s)
    for i in range(2):
        if s_s[i] == 0:  # s = 0 with sigma_0 = 0: the posterior is the point mass at x0
            assert torch.allclose(torch.stack([c0[i], ct[i], var[i]]), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
            continue
        prec = a_ts[i] ** 2 / v_ts[i] + 1 / s_s[i] ** 2
        assert torch.allclose(var[i], 1 / prec)
        assert torch.allclose(ct[i], var[i] * a_ts[i] / v_ts[i])
        assert torch.allclose(c0[i], var[i] * a_s[i] / s_s[i] ** 2)


def test_posterior_matches_monte_carlo_conditional():
    # Draw (x0 fixed, x_s, x_t) from the forward chain; regress x_s on x_t: slope c_xt, residual var tilde-beta.
    sched = VPLinear()
    g = torch.Generator().manual_seed(1)
    n, t, s = 400_000, 0.6, 0.4
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    a_s, s_s = sched.alpha(torch.tensor(s, dtype=torch.float64)), sched.sigma(torch.tensor(s, dtype=torch.float64))
    x_s = a_s * x0 + s_s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    a_ts, v_ts = forward.transition(sched, torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    x_t = a_ts * x_s + v_ts.sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
    cov = torch.cov(torch.cat([x_s, x_t], 1).T)
    slope = cov[0, 1] / cov[1, 1]
    resid = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    c0, ct, var = forward.posterior_coefficients(sched, torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    assert abs(slope - ct) < 5e-3
    assert abs(resid / var - 1) < 1e-2
    mean, v = forward.posterior(sched, x_t[:5], x0[:5], t, s)
    assert torch.allclose(mean, c0 * x0[:5] + ct * x_t[:5])


def test_ddpm_posterior_table_equals_continuous_posterior():
    ds = DiscreteSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    x0, x_n = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    n = torch.tensor([0, 1, 10, 500, 998, 999])
    mean_tab, var_tab = elbo.ddpm_posterior(ds, x_n, x0, n)
    mean_c, var_c = forward.posterior(ds, x_n, x0, ds.timestep_to_t(n), ds.timestep_to_t(n - 1))
    assert torch.allclose(mean_tab, mean_c, atol=1e-10)
    assert torch.allclose(var_tab, var_c, atol=1e-12, rtol=1e-8)
    # one-step kernel = (sqrt(1 - beta_n), beta_n) = transition between consecutive knots
    scale, beta = elbo.ddpm_forward_kernel(ds, n[1:])
    a_ts, v_ts = forward.transition(ds, ds.timestep_to_t(n[1:]), ds.timestep_to_t(n[1:] - 1))
    assert torch.allclose(scale, a_ts) and torch.allclose(beta, v_ts, rtol=1e-8)


def test_iterating_the_one_step_kernel_gives_the_closed_form_marginal():
    ds = DiscreteSchedule.linear(200, beta_end=0.04)
    g = torch.Generator().manual_seed(3)
    n_ex = 20_000
    x0 = torch.full((n_ex, 1), 1.5, dtype=torch.float64)
    x = x0
    for n in range(150):
        x = elbo.ddpm_forward_step(ds, x, n, generator=g)
    abar = ds.alphas_cumprod[149]
    se_mean = (1 - abar).sqrt() / math.sqrt(n_ex)
    assert abs(x.mean() - abar.sqrt() * 1.5) < 5 * se_mean
    assert abs(x.var() / (1 - abar) - 1) < 0.05
    t = ds.timestep_to_t(torch.tensor(149))
    assert torch.allclose(ds.alpha(t), abar.sqrt())


def test_ddpm_time_grid():
    ds = DiscreteSchedule.linear(10)
    ts = elbo.ddpm_time_grid(ds)
    assert ts.dtype == torch.float64 and ts[0] == 1 and ts[-1] == 0 and len(ts) == 11


def test_elbo_weights_are_half_snr_difference():
    # c_x0^2 / (2 tilde-beta) = (SNR_s - SNR_t) / 2 (Kingma et al. 2021), checked from the coefficients
    sched = VPCosine()
    ts = torch.linspace(0, 0.99, 30, dtype=torch.float64)
    w = elbo.elbo_eps_weights(sched, ts)
    t, s = ts[2:], ts[1:-1]
    c0, _, var = forward.posterior_coefficients(sched, t, s)
    snr_t = (sched.alpha(t) / sched.sigma(t)) ** 2
    assert torch.allclose(w, c0**2 / (2 * var) / snr_t, rtol=1e-6)


@pytest.fixture(scope="module")
def mixture():
    return toy.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]), stds=torch.tensor([0.5, 0.3, 0.6]))


def test_exact_elbo_is_below_log_likelihood(mixture):
    # Gaussian reverse kernel from the exact oracle denoiser: ELBO <= log p(x0) must hold (up to MC error),
    # and with the "beta" variance the bound is nearly tight on 100 uniform steps (measured gap ~0.15 nats).
    sched = VPLinear()
    model = mixture.denoiser(sched)
    g = torch.Generator().manual_seed(0)
    x0 = mixture.sample(200, g, dtype=torch.float64)
    ts = torch.linspace(0, 1, 101, dtype=torch.float64)
    log_p = mixture.log_prob(x0)
    gaps = {}
    for var in ("posterior", "beta"):
        terms = elbo.elbo_terms(model, x0, ts, variance=var, generator=g)
        gap = log_p - terms.elbo  # >= 0 in expectation
        assert gap.mean() > -3 * gap.std() / math.sqrt(len(gap))
        gaps[var] = gap.mean()
    assert gaps["beta"] < 0.3
    # the tilde-beta variance is too small on the first steps of a uniform grid (SNR ratios (i+1)/i there)
    assert gaps["posterior"] > gaps["beta"]
    assert terms.kl.shape == (200, 99)
    # prior term is the closed-form KL(N(alpha_1 x0, sigma_1^2) || N(0, 1))
    a, s = sched.alpha(torch.tensor(1.0, dtype=torch.float64)), sched.sigma(torch.tensor(1.0, dtype=torch.float64))
    ref = 0.5 * ((a * x0) ** 2 + s**2 - 1 - torch.log(s**2)).sum(1)
    assert torch.allclose(terms.prior, ref)


def test_finer_grid_tightens_the_exact_elbo(mixture):
    sched = VPLinear()
    model = mixture.denoiser(sched)
    g = torch.Generator().manual_seed(1)
    x0 = mixture.sample(200, g, dtype=torch.float64)
    coarse = elbo.elbo_terms(model, x0, torch.linspace(0, 1, 5, dtype=torch.float64), variance="beta", generator=g).elbo.mean()
    fine = elbo.elbo_terms(model, x0, torch.linspace(0, 1, 101, dtype=torch.float64), variance="beta", generator=g).elbo.mean()
    assert fine > coarse + 0.6  # measured: gap ~1.15 nats on 4 steps, ~0.1 on 100
    assert fine <= mixture.log_prob(x0).mean() + 0.05


def test_kl_mean_part_is_weighted_eps_error(mixture):
    # For one step, KL(q||p) with tilde-beta variance = w * ||eps - eps_hat||^2 exactly (variance parts cancel).
    sched = VPLinear()
    model = mixture.denoiser(sched)
    g = torch.Generator().manual_seed(2)
    x0 = mixture.sample(64, g, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.3, 0.32], dtype=torch.float64)
    t, s = ts[2].expand(64), ts[1].expand(64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = sched.alpha(t)[:, None] * x0 + sched.sigma(t)[:, None] * eps
    mean_p, var_p, pred = forward.reverse_kernel(model, x_t, t, s)
    mean_q, var_q = forward.posterior(sched, x_t, x0, t, s)
    kl = gaussian.gaussian_kl(mean_q, var_q, mean_p, var_p)
    w = elbo.elbo_eps_weights(sched, ts)
    assert torch.allclose(kl, w * (eps - pred.eps).pow(2).sum(1), rtol=1e-6)


def test_learned_variance_interpolates_and_hybrid_loss_runs():
    ds = DiscreteSchedule.linear(100, beta_end=0.2)
    t, s = torch.tensor([0.5]), torch.tensor([0.49])
    frac = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    logv = forward.reverse_log_variance(ds, t, s, frac, "learned")
    assert torch.allclose(logv[0, 0], forward.reverse_log_variance(ds, t, s, kind="posterior")[0])
    assert torch.allclose(logv[0, 1], forward.reverse_log_variance(ds, t, s, kind="beta")[0])
    torch.manual_seed(0)
    model = elbo.LearnedVarianceDenoiser(elbo.TwoHeadNet(MLP(2, 32, 2), MLP(2, 32, 2)), ds)
    x0 = torch.randn(32, 2)
    loss = elbo.hybrid_loss(model, x0, ds, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (32,) and torch.isfinite(loss).all()
    # stop-gradient: the L_vlb part sends no gradient into the mean head
    lvlb_only = elbo.hybrid_loss(model, x0, ds, lam=1.0, generator=torch.Generator().manual_seed(0)) - \
        elbo.hybrid_loss(model, x0, ds, lam=0.0, generator=torch.Generator().manual_seed(0))
    lvlb_only.sum().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.net.mean_net.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.net.var_net.parameters())


def test_elbo_of_a_network_adds_up_and_the_exact_denoiser_bounds_it_below():
    # every KL term is >= 0 and the bound is their sum; the exact posterior mean E[x0 | x_t] minimises each expected
    # KL term (a Gaussian KL with fixed variances is a squared error of the means), so an untrained network's bound
    # over data from the mixture lies above the exact denoiser's, and the exact one above -log p(x0) on average
    torch.manual_seed(0)
    sched, mix = VPLinear(), toy.eight_gaussians(radius=2.0, std=0.4)
    model = Denoiser(MLP(2, 32, 2), sched, "eps")
    x0 = mix.sample(512, torch.Generator().manual_seed(1))
    ts = torch.linspace(0, 1, 21, dtype=torch.float64)
    terms = elbo.elbo_terms(model, x0, ts, generator=torch.Generator().manual_seed(0))
    assert terms.kl.shape == (512, 19) and (terms.kl >= 0).all() and (terms.prior >= 0).all()
    torch.testing.assert_close(terms.nll_bound, terms.prior + terms.kl.sum(1) + terms.reconstruction)
    exact = elbo.elbo_terms(mix.denoiser(sched), x0.double(), ts, generator=torch.Generator().manual_seed(0))
    assert (exact.kl.mean(0) <= terms.kl.double().mean(0) + 1e-6).all()
    assert exact.nll_bound.mean() < terms.nll_bound.double().mean() - 1.0
    assert exact.nll_bound.mean() > -mix.log_prob(x0.double()).mean()


def test_errors_name_the_argument():
    sched = VPLinear()
    with pytest.raises(ValueError, match="s, t"):
        forward.transition(sched, 0.2, 0.5)
    with pytest.raises(TypeError, match="dsched"):
        elbo.ddpm_posterior(sched, torch.zeros(2, 2), torch.zeros(2, 2), 3)
    with pytest.raises(TypeError, match="n:"):
        elbo.ddpm_forward_kernel(DiscreteSchedule.linear(10), torch.tensor([1.5]))
    with pytest.raises(ValueError, match="ts"):
        elbo.elbo_eps_weights(sched, torch.tensor([0.1, 0.5, 0.9]))
    with pytest.raises(ValueError, match="var_p"):
        gaussian.gaussian_kl(torch.zeros(2, 2), 1.0, torch.zeros(2, 2), 0.0)


# ------------------------------------------------------------------ Chapter 2 exercise checkers
def test_ch02_references_agree_with_the_package():
    from diffedu.exercises import ch02

    sched = VPCosine()
    g = torch.Generator().manual_seed(0)
    x_t, x0, z = (torch.randn(8, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.full((8,), 0.6, dtype=torch.float64)
    s = torch.full((8,), 0.55, dtype=torch.float64)
    mean, var = forward.posterior(sched, x_t, x0, t, s)
    assert torch.allclose(ch02.posterior_mean(x_t, x0, t, s, sched), mean)
    w = elbo.elbo_eps_weights(sched, torch.tensor([0.0, 0.55, 0.6], dtype=torch.float64))
    eps, eps_hat = (x_t - sched.alpha(t)[:, None] * x0) / sched.sigma(t)[:, None], z
    x0_hat = (x_t - sched.sigma(t)[:, None] * eps_hat) / sched.alpha(t)[:, None]
    assert torch.allclose(ch02.elbo_step_kl(x0, x0_hat, t, s, sched), w * (eps - eps_hat).pow(2).sum(1))
    frac = torch.rand(8, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(ch02.learned_log_variance(frac, t, s, sched), forward.reverse_log_variance(sched, t, s, frac, "learned"))
