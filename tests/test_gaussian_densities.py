"""diffedu.gaussian: Gaussian log-densities and KLs against torch.distributions (monograph §2.1)."""
import pytest
import torch

from diffedu.gaussian import gaussian_kl, gaussian_log_prob, gaussian_prior_log_prob


def test_gaussian_kl_and_log_prob_closed_forms():
    g = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    vq, vp = torch.rand(5, generator=g, dtype=torch.float64) + 0.1, torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq, vq.sqrt()[:, None].expand(5, 3)),
        torch.distributions.Normal(mp, vp.sqrt()[:, None].expand(5, 3))).sum(1)
    assert torch.allclose(gaussian_kl(mq, vq, mp, vp), ref)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ref = torch.distributions.Normal(mq, vq.sqrt()[:, None].expand(5, 3)).log_prob(x).sum(1)
    assert torch.allclose(gaussian_log_prob(x, mq, vq), ref)
    assert torch.allclose(gaussian_kl(mq, vq, mq, vq), torch.zeros(5, dtype=torch.float64))


def test_gaussian_prior_log_prob_matches_torch():
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 2.0).log_prob(x).reshape(5, -1).sum(1)
    torch.testing.assert_close(gaussian_prior_log_prob(x, 2.0), ref)


def test_bad_variances_name_the_argument():
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="var_p"):
        gaussian_kl(x, 1.0, x, 0.0)
    with pytest.raises(ValueError, match="var"):
        gaussian_log_prob(x, x, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="var_q"):
        gaussian_kl(x, torch.ones(3), x, 1.0)
    with pytest.raises(TypeError, match="var"):
        gaussian_log_prob(x, x, "one")
    with pytest.raises(ValueError, match="std"):
        gaussian_prior_log_prob(x, -1.0)
