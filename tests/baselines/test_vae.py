"""GaussianVAE: the ELBO against the closed-form linear-Gaussian VAE (probabilistic PCA) (monograph §2.1)."""
import math

import pytest
import torch

from diffedu.gaussian import gaussian_kl
from diffedu.baselines.vae import GaussianVAE


def _linear_vae(perturb=0.0):
    """A depth-0 VAE x = W z + b + s n with W^T W diagonal, and its encoder set to the exact posterior (+ perturbation)."""
    torch.manual_seed(0)
    vae = GaussianVAE(data_dim=3, latent_dim=2, depth=0, decoder_std=0.5).double()
    Q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    W = Q[:, :2] * torch.tensor([2.0, 0.8], dtype=torch.float64)  # orthogonal columns -> diagonal posterior
    b = torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64)
    s2 = 0.25
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T @ W / s2)
    with torch.no_grad():
        vae.decoder.weight.copy_(W)
        vae.decoder.bias.copy_(b)
        A = cov @ W.T / s2
        vae.encoder.weight.zero_()
        vae.encoder.weight[:2] = A * (1 + perturb)
        vae.encoder.bias[:2] = -A @ b * (1 + perturb)
        vae.encoder.bias[2:] = torch.log(torch.diagonal(cov)) + perturb
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + s2 * torch.eye(3, dtype=torch.float64))
    return vae, marginal, cov, A, b


def test_elbo_is_exact_and_zero_variance_at_the_true_posterior():
    vae, marginal, *_ = _linear_vae()
    g = torch.Generator().manual_seed(1)
    x = marginal.sample((64,))
    elbo = vae.elbo(x, analytic_kl=False, generator=g)
    assert torch.allclose(elbo, marginal.log_prob(x), atol=1e-9)
    # with the analytic KL the estimate is unbiased but no longer zero-variance
    est = vae.elbo(x, n_samples=2000, generator=g)
    assert (est - marginal.log_prob(x)).abs().max() < 0.1


def test_gap_is_kl_to_the_true_posterior():
    vae, marginal, cov, A, b = _linear_vae(perturb=0.3)
    g = torch.Generator().manual_seed(2)
    x = marginal.sample((32,))
    est = vae.elbo(x, n_samples=4000, generator=g).detach()
    mu_q, logvar_q = vae.encode(x)
    post_mean = (x - b) @ A.T
    gap = gaussian_kl(mu_q, torch.exp(logvar_q), post_mean, torch.diagonal(cov).expand(32, 2)).detach()
    assert (gap > 0.05).all()
    assert torch.allclose(est, marginal.log_prob(x) - gap, atol=0.1)
    iw = vae.log_likelihood_is(x, n_samples=2000, generator=g).detach()
    assert (iw >= est - 0.02).all()  # the importance-weighted bound is tighter than the ELBO ...
    err = (iw - marginal.log_prob(x)).abs().mean()
    assert err < 0.1 and err < gap.mean() / 3  # ... and much closer to log p (measured 0.05 vs gap ~1)


def test_terms_shapes_sampling_and_errors():
    vae = GaussianVAE(data_dim=2, latent_dim=1, hidden=16, depth=2)
    x = torch.randn(8, 2)
    terms = vae.terms(x, generator=torch.Generator().manual_seed(0))
    assert terms.reconstruction.shape == (8,) and terms.kl.shape == (8,) and (terms.kl >= 0).all()
    assert vae.sample(5, generator=torch.Generator().manual_seed(0)).shape == (5, 2)
    with pytest.raises(ValueError, match="x"):
        vae.elbo(torch.randn(8, 3))
    with pytest.raises(ValueError, match="latent_dim"):
        GaussianVAE(latent_dim=0)
    with pytest.raises(ValueError, match="decoder_std"):
        GaussianVAE(decoder_std=-1.0)
    assert math.isclose(float(GaussianVAE(decoder_std=0.5).decoder_var), 0.25, rel_tol=1e-6)
