"""Image metrics against closed forms: FD between Gaussians, its 1/N bias, unbiased KID, PRDC, SSIM/PSNR."""
import math

import numpy as np
import pytest
import torch

from diffedu import metrics


def _gaussian(n, d, seed, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3 + torch.eye(d, dtype=torch.float64)
    return shift + scale * torch.randn(n, d, generator=g, dtype=torch.float64) @ a.T, a @ a.T * scale**2


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x, _ = _gaussian(500, 8, 0)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_torchmetrics_fd_equals_the_scipy_closed_form_on_the_same_features():
    x, _ = _gaussian(400, 6, 1)
    y, _ = _gaussian(300, 6, 2, shift=0.5, scale=1.3)
    closed = metrics.gaussian_frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T))
    assert metrics.frechet_distance(x, y) == pytest.approx(closed, rel=1e-6)


def test_fd_bias_falls_like_one_over_n():
    """Two samples of one Gaussian: the true FD is 0, the estimate is positive and shrinks like c / N."""
    d = 4
    _, cov = _gaussian(2, d, 3)
    chol = torch.linalg.cholesky(cov)
    bias = {}
    for n in (100, 400):
        vals = []
        for rep in range(30):
            g = torch.Generator().manual_seed(1000 * n + rep)
            a, b = (torch.randn(n, d, generator=g, dtype=torch.float64) @ chol.T for _ in range(2))
            vals.append(metrics.frechet_distance(a, b))
        assert min(vals) > 0
        bias[n] = float(np.mean(vals))
    assert bias[100] / bias[400] == pytest.approx(4.0, rel=0.3)


def test_gaussian_frechet_distance_closed_forms():
    eye = torch.eye(3, dtype=torch.float64)
    assert metrics.gaussian_frechet_distance(torch.zeros(3), eye, torch.ones(3), eye) == pytest.approx(3.0)
    # equal means, covariances s1^2 I and s2^2 I: D (s1 - s2)^2
    assert metrics.gaussian_frechet_distance(torch.zeros(3), 4 * eye, torch.zeros(3), 9 * eye) == pytest.approx(3.0)


def test_kid_matches_our_unbiased_estimator_and_is_unbiased():
    x, _ = _gaussian(200, 5, 5)
    y, _ = _gaussian(200, 5, 6, shift=0.4)
    mean, std = metrics.kid(x, y, subsets=1, subset_size=200)
    assert mean == pytest.approx(metrics.mmd2_polynomial(x, y), rel=1e-6) and std == 0.0
    # same law: the estimator averages to 0 (and can be negative), unlike FD
    chol = torch.linalg.cholesky(_gaussian(2, 5, 5)[1])
    draw = lambda seed: torch.randn(100, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ chol.T  # noqa: E731
    vals = [metrics.mmd2_polynomial(draw(10 + i), draw(50 + i)) for i in range(30)]
    assert min(vals) < 0 < max(vals)
    assert abs(np.mean(vals)) < 3 * np.std(vals) / math.sqrt(len(vals))
    assert mean > 5 * np.std(vals)


def test_kid_is_seeded():
    x, _ = _gaussian(300, 4, 7)
    y, _ = _gaussian(300, 4, 8, shift=0.2)
    assert metrics.kid(x, y, subset_size=100, seed=1) == metrics.kid(x, y, subset_size=100, seed=1)


def test_precision_recall_density_coverage():
    x, _ = _gaussian(300, 3, 9)
    same = metrics.precision_recall(x, x, k=5)
    assert same.precision == 1.0 and same.recall == 1.0 and same.coverage == 1.0
    far = metrics.precision_recall(x, x + 100.0, k=5)
    assert far.precision == 0.0 and far.recall == 0.0 and far.coverage == 0.0 and far.density == 0.0
    # a collapsed generator: every sample realistic (high precision), little of the data covered (low recall)
    collapsed = x[:1] + 0.01 * _gaussian(300, 3, 11)[0]
    pr = metrics.precision_recall(x, collapsed, k=5)
    assert pr.precision > 0.9 and pr.recall < 0.1


def test_classifier_score_and_class_check():
    k = 10
    confident = torch.eye(k, dtype=torch.float64).repeat(20, 1)
    assert metrics.classifier_score(confident) == pytest.approx(k)
    assert metrics.classifier_score(torch.full((50, k), 1.0 / k)) == pytest.approx(1.0)
    check = metrics.class_check(confident * 0.95 + 0.005)
    assert check.confident == 1.0 and check.balanced() and torch.allclose(check.class_fractions, torch.full((k,), 0.1, dtype=torch.float64))
    assert not metrics.class_check(torch.eye(k)[[0] * 30]).balanced()
    with pytest.raises(ValueError, match="probs"):
        metrics.classifier_score(torch.randn(4, k))


def test_ssim_and_psnr():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=g) * 1.6 - 0.8
    assert torch.allclose(metrics.ssim(x, x), torch.ones(6))
    assert torch.isinf(metrics.psnr(x, x)).all()
    s = 0.05
    noisy = x + s * torch.randn(x.shape, generator=g)
    mse = (noisy - x).pow(2).reshape(6, -1).mean(1)
    assert torch.allclose(metrics.psnr(noisy, x), 10 * torch.log10(4 / mse), atol=1e-4)
    assert float(metrics.psnr(noisy, x).mean()) == pytest.approx(10 * math.log10(4 / s**2), abs=0.3)
    assert (metrics.ssim(noisy, x) < 1).all() and (metrics.ssim(noisy, x) > metrics.ssim((x + 4 * s * torch.randn(x.shape, generator=g)).clamp(-1, 1), x)).all()


@pytest.mark.parametrize("fn", [metrics.ssim, metrics.psnr])
def test_image_metric_inputs_are_checked(fn):
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="255"):
        fn(x + 255.0, x)
    with pytest.raises(ValueError, match="y: expected the shape"):
        fn(x, torch.zeros(2, 1, 8, 9))
    with pytest.raises(ValueError, match="x: expected floating images"):
        fn(x.long(), x)


def test_feature_inputs_are_checked():
    with pytest.raises(ValueError, match="not images"):
        metrics.frechet_distance(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8))
    with pytest.raises(ValueError, match="same feature network"):
        metrics.frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(torch.randn(5, 3), torch.randn(5, 3), subset_size=10)


def test_nearest_neighbour_distances():
    ref = torch.randn(20, 1, 4, 4)
    assert torch.allclose(metrics.nearest_neighbour_distances(ref[:5], ref), torch.zeros(5))
    assert (metrics.nearest_neighbour_distances(ref[:5] + 1.0, ref) > 0).all()
