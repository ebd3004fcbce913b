"""Exact likelihood by the instantaneous change of variables, against the Gaussian-mixture oracle (monograph §4.5)."""
import math

import pytest
import torch

from diffedu import schedules as S, toy
from diffedu.likelihood.ode import bits_per_dim, dequantize, log_likelihood


def _oracle(sch):
    mix = toy.eight_gaussians(radius=2.0, std=0.4)
    x = mix.sample(6, torch.Generator().manual_seed(0), dtype=torch.float64)
    return mix, mix.denoiser(sch), x


def test_pf_ode_log_likelihood_equals_true_log_density_at_tight_tolerance():
    sch = S.VPLinear()
    mix, model, x = _oracle(sch)
    t_min = 1e-3
    res = log_likelihood(model, x, t_min=t_min, prior=lambda z: mix.log_prob_t(z, 1.0, sch), rtol=1e-8, atol=1e-8,
                         method="DOP853")
    err = (res.log_prob - mix.log_prob_t(x, t_min, sch)).abs().max().item()
    assert err < 1e-4, err
    # the pieces add up and the end point is a proper latent
    torch.testing.assert_close(res.log_prob, res.prior_log_prob + res.delta_log_p)
    assert res.x_T.shape == x.shape and res.nfe > 10


def test_error_falls_with_tolerance_rectified_flow():
    sch = S.RectifiedFlow()
    mix, model, x = _oracle(sch)
    errs = []
    for tol in (1e-3, 1e-7):
        res = log_likelihood(model, x, t_min=1e-3, t_max=0.999, prior=lambda z: mix.log_prob_t(z, 0.999, sch),
                             rtol=tol, atol=tol)
        errs.append((res.log_prob - mix.log_prob_t(x, 1e-3, sch)).abs().max().item())
    assert errs[1] < 1e-4 and errs[1] < errs[0] / 10, errs


def test_gaussian_prior_is_the_exact_prior_for_gaussian_data_ve():
    # data N(0, c^2 I) under VE: p_1 = N(0, (c^2 + sigma_1^2) I); the default prior N(0, sigma_1^2) is off by a known amount
    c = 0.5
    mix = toy.gaussian(torch.zeros(2), c**2 * torch.eye(2))
    sch = S.VEGeometric(sigma_min=0.01, sigma_max=20.0)
    x = mix.sample(4, torch.Generator().manual_seed(1), dtype=torch.float64)
    res = log_likelihood(mix.denoiser(sch), x, t_min=1e-4, rtol=1e-7, atol=1e-7)
    err = (res.log_prob - mix.log_prob_t(x, 1e-4, sch)).abs().max().item()
    assert err < 2e-3, err  # only the prior mismatch c^2 / sigma_1^2 remains


def test_hutchinson_likelihood_close_to_exact():
    sch = S.VPLinear()
    mix, model, x = _oracle(sch)
    prior = lambda z: mix.log_prob_t(z, 1.0, sch)  # noqa: E731
    exact = log_likelihood(model, x, t_min=1e-3, prior=prior, rtol=1e-5, atol=1e-5).log_prob
    hutch = log_likelihood(model, x, t_min=1e-3, prior=prior, divergence="hutchinson", n_probes=2, rtol=1e-5, atol=1e-5,
                           generator=torch.Generator().manual_seed(0)).log_prob
    assert (hutch - exact).abs().max() > 1e-6  # it is an estimate
    # With its probes fixed for the whole solve the error is (1/n) sum_k (z_k^T A z_k - tr A), A the Jacobian of the
    # velocity integrated along the (probe-free) trajectory: zero mean, variance proportional to 1 / n_probes.
    def errors(n_probes, seeds):
        return torch.stack([log_likelihood(model, x, t_min=1e-3, prior=prior, divergence="hutchinson", n_probes=n_probes,
                                           rtol=1e-5, atol=1e-5, generator=torch.Generator().manual_seed(s)).log_prob - exact
                            for s in seeds])  # (seeds, points)
    e2, e8 = errors(2, range(1, 9)), errors(8, range(11, 19))
    for e in (e2, e8):  # unbiased: the mean error over all runs is within 4 standard errors of zero
        assert e.mean().abs() < 4 * e.std() / math.sqrt(e.numel()), (float(e.mean()), float(e.std()))
    ratio = float(e2.var(0).sum() / e8.var(0).sum())  # 4 expected; 6 x 8 draws each give about +-35 %
    print(f"Hutchinson error variance, 2 probes / 8 probes: {ratio:.2f} (4 expected)")
    assert 2.0 < ratio < 8.0, ratio


def test_bits_per_dim_of_uniform_density_is_log2_of_levels():
    # density 1/2^D on [-1, 1]^D, data on 17 levels (spacing 1/8): bpd = log2(2 / (1/8)) = 4
    D = 64
    lp = torch.full((3,), -D * math.log(2.0))
    torch.testing.assert_close(bits_per_dim(lp, D, bin_width=1 / 8), torch.full((3,), 4.0))
    torch.testing.assert_close(bits_per_dim(lp, D), torch.full((3,), 1.0))


def test_dequantize_stays_in_bin():
    x = (torch.randint(0, 17, (50, 1, 8, 8)).float() / 8 - 1)
    y = dequantize(x, 1 / 8, generator=torch.Generator().manual_seed(0))
    assert (y - x).abs().max() <= 1 / 16 + 1e-7 and (y != x).all()


def test_bad_inputs_raise():
    sch = S.VPLinear()
    mix, model, x = _oracle(sch)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(model, x, divergence="trace")
    with pytest.raises(ValueError, match="t_min"):
        log_likelihood(model, x, t_min=0.5, t_max=0.2)
    with pytest.raises(TypeError, match="model"):
        log_likelihood(lambda a, b: a, x)
    with pytest.raises(ValueError, match="bin_width"):
        dequantize(x, -1.0)


def test_tolerance_holds_for_each_example_of_a_large_batch():
    # scipy's error norm is the RMS over the whole batch; without the sqrt(B) scaling one example
    # among 256 was solved ~25x too loosely (max error 0.21 nats at tol 1e-3, vs 8.5e-3 alone)
    sch = S.VPLinear()
    mix = toy.eight_gaussians(radius=2.0, std=0.4)
    model = mix.denoiser(sch)
    x = torch.cat([torch.zeros(1, 2, dtype=torch.float64),  # between the modes, where the flow turns
                   mix.sample(255, torch.Generator().manual_seed(0), dtype=torch.float64)])
    prior = lambda z: mix.log_prob_t(z, 1.0, sch)  # noqa: E731
    alone = log_likelihood(model, x[1:2], t_min=1e-3, prior=prior, rtol=1e-3, atol=1e-3)
    err_alone = (alone.log_prob - mix.log_prob_t(x[1:2], 1e-3, sch)).abs().item()
    batch = log_likelihood(model, x, t_min=1e-3, prior=prior, rtol=1e-3, atol=1e-3)
    err_batch = (batch.log_prob - mix.log_prob_t(x, 1e-3, sch)).abs().max().item()
    assert err_batch < 2 * err_alone < 0.05, (err_batch, err_alone)
