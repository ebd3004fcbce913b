"""The checkers of the images-and-evaluation chapter, and the references against the package's metrics."""
import pytest
import torch

from diffedu import metrics
from diffedu.exercises import ExerciseFailed, images


def test_typical_mistakes_are_caught():
    biased = lambda fx, fy: ((fx @ fx.T / fx.shape[1] + 1) ** 3).mean() + ((fy @ fy.T / fy.shape[1] + 1) ** 3).mean() \
        - 2 * ((fx @ fy.T / fx.shape[1] + 1) ** 3).mean()  # noqa: E731  (kept the diagonal: the biased V-statistic)
    with pytest.raises(ExerciseFailed):
        images.check_mmd2_unbiased(biased)
    with pytest.raises(ExerciseFailed):  # forgot the square root of the cross term
        images.check_frechet_gaussians(lambda m1, c1, m2, c2: (m1 - m2).pow(2).sum() + torch.trace(c1 + c2 - 2 * c1 @ c2))
    with pytest.raises(ExerciseFailed):
        images.check_latent_scale_factor(lambda z: z.std())


def test_references_agree_with_the_package():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = 0.5 + torch.randn(40, 4, generator=g, dtype=torch.float64)
    assert float(images.mmd2_unbiased(x, y)) == pytest.approx(metrics.mmd2_polynomial(x, y), rel=1e-9)
    mx, cx, my, cy = x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)
    assert float(images.frechet_gaussians(mx, cx, my, cy)) == pytest.approx(metrics.gaussian_frechet_distance(mx, cx, my, cy), rel=1e-6)
    assert float(images.frechet_gaussians(mx, cx, my, cy)) == pytest.approx(metrics.frechet_distance(x, y), rel=1e-6)
