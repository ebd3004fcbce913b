"""The exact Gaussian-mixture oracle against autograd, Monte Carlo and its own definitions."""
import math

import pytest
import torch

from diffedu import schedules as S, toy
from diffedu.forward import add_noise

SCHEDULES = [S.VPLinear(), S.VEGeometric(sigma_max=10.0), S.RectifiedFlow(), S.DiscreteSchedule.cosine()]


def _mixtures():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) * 0.2 + 0.05 * torch.eye(3, dtype=torch.float64)
    full3d = toy.GaussianMixture(torch.randn(3, 3, generator=g, dtype=torch.float64) * 2, covs=covs, weights=[0.2, 0.5, 0.3])
    return [toy.eight_gaussians(), toy.labelled_mixture(), full3d]


@pytest.mark.parametrize("gm", _mixtures(), ids=["ring", "labelled", "full3d"])
@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_score_equals_autograd_of_log_prob(gm, sch):
    g = torch.Generator().manual_seed(1)
    x = gm.sample(64, g, dtype=torch.float64) + torch.randn(64, gm.dim, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9 + 0.05
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob_t(xr, t, sch).sum(), xr)
    torch.testing.assert_close(gm.score_t(x, t, sch), grad, rtol=1e-9, atol=1e-10)
    pred = gm.predict(x, t, sch)
    torch.testing.assert_close(pred.score, grad, rtol=1e-9, atol=1e-10)


def test_log_prob_is_normalised_2d():
    gm, sch = toy.labelled_mixture(), S.VPLinear()
    xs = torch.linspace(-9, 9, 401, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, xs, indexing="ij")
    pts = torch.stack([X.ravel(), Y.ravel()], -1)
    h = (xs[1] - xs[0]) ** 2
    for t in [0.0, 0.3, 0.9]:
        mass = gm.log_prob_t(pts, t, sch).exp().sum() * h
        assert mass.item() == pytest.approx(1.0, abs=1e-6)
        for c in range(gm.num_classes):
            cond = torch.full((len(pts),), c)
            assert (gm.log_prob_t(pts, t, sch, cond=cond).exp().sum() * h).item() == pytest.approx(1.0, abs=1e-6)


def test_tweedie_posterior_mean_matches_monte_carlo():
    # E[x0 | x_t] by importance sampling: x0 ~ p_data weighted by q(x_t | x0)
    gm, sch = toy.eight_gaussians(), S.VPLinear()
    g = torch.Generator().manual_seed(2)
    x0s = gm.sample(400_000, g, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    a, s = sch.alpha(t), sch.sigma(t)
    x_t = torch.tensor([[2.0, 1.0], [-1.0, 0.5], [0.0, -3.0]], dtype=torch.float64)
    logw = -((x_t[:, None] - a * x0s[None]) ** 2).sum(-1) / (2 * s**2)
    w = torch.softmax(logw, -1)
    mc = w @ x0s
    ess = 1 / (w**2).sum(-1)
    assert (ess > 1000).all()
    exact = gm.posterior_mean(x_t, t, sch)
    assert (mc - exact).abs().max() < 5 * (gm.covariance().diag().sum().sqrt() / ess.min().sqrt())
    assert (mc - exact).abs().max() < 0.05
    # Tweedie: E[x0|x_t] = (x_t + sigma^2 grad log p_t) / alpha
    torch.testing.assert_close(exact, (x_t + s**2 * gm.score_t(x_t, t, sch)) / a)


def test_posterior_sample_has_posterior_mean():
    gm, sch = toy.labelled_mixture(), S.VPCosine()
    x_t = torch.tensor([[1.0, 0.5]], dtype=torch.float64).expand(200_000, 2)
    g = torch.Generator().manual_seed(3)
    draws = gm.posterior_sample(x_t, 0.5, sch, generator=g)
    torch.testing.assert_close(draws.mean(0), gm.posterior_mean(x_t[:1], 0.5, sch)[0], atol=0.01, rtol=0)


def test_class_conditional_consistency():
    gm, sch = toy.labelled_mixture(), S.VPLinear()
    x = gm.sample(32, torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.full((32,), 0.5, dtype=torch.float64)
    logpc = gm.class_log_probs_t(x, t, sch)
    torch.testing.assert_close(logpc.exp().sum(-1), torch.ones(32, dtype=torch.float64))
    # Bayes: log p(x|c) + log p(c) - log p(x) = log p(c|x)
    prior = torch.stack([gm.weights[gm.labels == c].sum() for c in range(gm.num_classes)]).log()
    for c in range(gm.num_classes):
        cond = torch.full((32,), c)
        lhs = gm.log_prob_t(x, t, sch, cond=cond) + prior[c] - gm.log_prob_t(x, t, sch)
        torch.testing.assert_close(lhs, logpc[:, c])
        # p(x | c) equals the conditional mixture's own density
        torch.testing.assert_close(gm.log_prob_t(x, t, sch, cond=cond), gm.conditional(c).log_prob_t(x, t, sch))
    # the "unconditional" label num_classes gives p(x)
    torch.testing.assert_close(gm.log_prob_t(x, t, sch, cond=torch.full((32,), gm.num_classes)), gm.log_prob_t(x, t, sch))


def test_sample_moments_and_diffused_marginal():
    gm, sch = toy.eight_gaussians(radius=4.0, std=0.5), S.VPLinear()
    g = torch.Generator().manual_seed(5)
    x0 = gm.sample(200_000, g, dtype=torch.float64)
    torch.testing.assert_close(x0.mean(0), gm.mean(), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x0.T), gm.covariance(), atol=0.08, rtol=0)
    # the diffused mixture has mean alpha mu and covariance alpha^2 Cov + sigma^2 I
    t = 0.6
    x_t = add_noise(sch, x0, t, generator=g).x_t
    a, s = sch.alpha(torch.tensor(t)).item(), sch.sigma(torch.tensor(t)).item()
    torch.testing.assert_close(torch.cov(x_t.T), a**2 * gm.covariance() + s**2 * torch.eye(2, dtype=torch.float64), atol=0.05, rtol=0)
    # and its exact log-density is the right one: E_{x_t}[log p_t(x_t)] = -entropy, compared with a histogram-free check:
    # mean log p_t under its own samples exceeds that of a mis-specified density (Gibbs' inequality)
    lp = gm.log_prob_t(x_t.float().double(), t, sch).mean()
    lp_wrong = toy.eight_gaussians(radius=3.5).log_prob_t(x_t, t, sch).mean()
    assert lp > lp_wrong


def test_exact_denoiser_is_a_model():
    gm, sch = toy.eight_gaussians(), S.RectifiedFlow()
    model = gm.denoiser(sch)
    x = torch.randn(8, 2)
    pred = model(x, torch.full((8,), 0.5))
    assert pred.x0.shape == x.shape and pred.eps.dtype == torch.float32
    assert model.schedule is sch
    # x_t = alpha x0_hat + sigma eps_hat holds for the posterior means
    torch.testing.assert_close(0.5 * pred.x0 + 0.5 * pred.eps, x, atol=1e-5, rtol=0)


def test_empirical_mixture_memorises():
    data = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    gm = toy.empirical_mixture(data)
    d = gm.posterior_mean(torch.tensor([[2.9, 0.1]]), 0.01, S.VPLinear())
    torch.testing.assert_close(d, torch.tensor([[3.0, 0.0]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(toy.DATASETS))
def test_datasets_shapes_and_seeding(name):
    a = toy.sample_dataset(name, 500, torch.Generator().manual_seed(0))
    b = toy.sample_dataset(name, 500, torch.Generator().manual_seed(0))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert a.abs().max() < 12 and a.std(0).min() > 0.5
