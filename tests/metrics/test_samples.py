"""diffedu.metrics.samples against closed forms: 1-D Gaussian W2, shifts, Gaussian KL (monograph §1.2)."""
import math

import pytest
import torch

from diffedu import toy
from diffedu.metrics import kl_monte_carlo, moment_errors, sliced_wasserstein, sliced_wasserstein_to_target


def _quantiles(n, m, s):
    """n points at the Gaussian quantiles (i + 1/2)/n: a deterministic sample of N(m, s^2)."""
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (m + s * math.sqrt(2) * torch.erfinv(2 * u - 1))[:, None]


@pytest.mark.parametrize("m1, s1, m2, s2", [(0.0, 1.0, 0.0, 1.0), (0.0, 1.0, 2.0, 1.0), (0.5, 0.3, -1.0, 2.0)])
def test_one_dimensional_gaussians_give_the_closed_form_w2(m1, s1, m2, s2):
    # in 1-D every projection is +-1, so SW2 = W2 = sqrt((m1 - m2)^2 + (s1 - s2)^2)
    n = 20000
    x, y = _quantiles(n, m1, s1), _quantiles(n, m2, s2)
    sw = sliced_wasserstein(x, y, n_projections=8, generator=torch.Generator().manual_seed(0))
    exact = math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2)
    z2 = float((_quantiles(n, 0.0, 1.0) ** 2).mean())  # 1 - O(log n / n): the quantile grid's own second moment
    assert abs(float(sw) - math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2 * z2)) < 1e-10
    assert abs(float(sw) - exact) < 2e-3


def test_a_shift_moves_sw2_by_the_projected_shift_exactly():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sw = sliced_wasserstein(x + c, x, n_projections=64, generator=torch.Generator().manual_seed(7))
    theta = torch.randn(3, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    torch.testing.assert_close(sw**2, ((c @ theta) ** 2).mean(), rtol=1e-12, atol=1e-12)
    # and in expectation over directions: E (theta . c)^2 = |c|^2 / D
    many = sliced_wasserstein(x + c, x, n_projections=20000, generator=torch.Generator().manual_seed(8))
    assert abs(float(many**2) - float(c @ c) / 3) < 0.05 * float(c @ c) / 3


def test_zero_on_identical_sets_symmetric_and_permutation_invariant():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 1
    assert float(sliced_wasserstein(x, x)) == 0.0
    a = sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(3))
    b = sliced_wasserstein(y[torch.randperm(300, generator=g)], x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert float(a) > 0.3


def test_images_are_flattened():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 1, 4, 4, generator=g)
    sw = sliced_wasserstein(x, x + 1.0, n_projections=16, generator=torch.Generator().manual_seed(0))
    theta = torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    torch.testing.assert_close(sw**2, (theta.sum(0) ** 2).mean(), rtol=1e-6, atol=1e-6)


def test_kl_of_two_gaussians_matches_the_closed_form():
    p, q = torch.distributions.Normal(0.0, 1.0), torch.distributions.Normal(1.0, 2.0)
    x = p.sample((200000,)).double()[:, None]
    est = kl_monte_carlo(lambda z: p.log_prob(z[:, 0]), lambda z: q.log_prob(z[:, 0]), x)
    exact = math.log(2.0) + (1 + 1) / (2 * 4) - 0.5
    assert abs(float(est) - exact) < 0.01


def test_moment_errors_of_exact_moments_and_a_known_shift():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(100, 2, generator=g, dtype=torch.float64)
    dm, dc = moment_errors(x, x.mean(0), torch.cov(x.T))
    assert float(dm) < 1e-12 and float(dc) < 1e-12
    dm, _ = moment_errors(x + torch.tensor([3.0, 4.0], dtype=torch.float64), x.mean(0), torch.cov(x.T))
    assert abs(float(dm) - 5.0) < 1e-12


def test_bad_inputs_name_the_argument():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="y:"):
        sliced_wasserstein(x, torch.zeros(9, 2))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="mean"):
        moment_errors(x, torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match="cov"):
        moment_errors(x, torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="log_q"):
        kl_monte_carlo(lambda z: z[:, 0], lambda z: z, x)


def test_sliced_wasserstein_to_target_puts_an_exact_sampler_at_the_floor_and_a_shift_above_it():
    mix = toy.eight_gaussians()
    draw = lambda n, gen: mix.sample(n, gen)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # an exact sampler: at the floor, within 3 standard errors of the paired difference
        s = sliced_wasserstein_to_target(draw, draw, 2048, n_ref=10, generator=g)
        assert abs(s.excess) < 3 * s.excess_se and 0.85 < s.ratio < 1.15, s
    shift = torch.tensor([0.6, 0.0])  # SW2 of the shift alone: 0.6 / sqrt(2)
    shifted = sliced_wasserstein_to_target(lambda n, gen: mix.sample(n, gen) + shift, draw, 2048, n_ref=10, generator=g)
    assert shifted.excess > 5 * shifted.excess_se and shifted.ratio > 1.5, shifted


def test_sliced_wasserstein_to_target_errors_name_the_argument():
    ok = lambda n, gen: torch.randn(n, 2, generator=gen)  # noqa: E731
    with pytest.raises(TypeError, match="generate"):
        sliced_wasserstein_to_target("eight gaussians", ok, 16)
    with pytest.raises(ValueError, match="generate"):
        sliced_wasserstein_to_target(lambda n, gen: torch.randn(n, 3, generator=gen), ok, 16)
    with pytest.raises(ValueError, match="sample"):
        sliced_wasserstein_to_target(ok, lambda n, gen: torch.randn(n + 1, 2, generator=gen), 16)
    with pytest.raises(ValueError, match="n_ref"):
        sliced_wasserstein_to_target(ok, ok, 16, n_ref=1)
    with pytest.raises(ValueError, match="generate"):
        sliced_wasserstein_to_target(lambda n, gen: torch.full((n, 2), float("nan")), ok, 16)
