"""Checkers for the exercises of the chapter "Images and evaluation" (beyond the monograph).

Each ``check_*`` compares the reader's function with the reference below on seeded random inputs
(several dimensions, mean shifts and covariance scales) and raises
:class:`~diffedu.exercises.core.ExerciseFailed` with a diagnosis if it is wrong.

=========  ==============================  ===================================================
exercise   reader writes                   reference
=========  ==============================  ===================================================
I.1        ``frechet_gaussians``           W_2^2 between two Gaussians: the statistic of FD
I.2        ``mmd2_unbiased``               the unbiased cubic-kernel MMD^2: the statistic of KID
I.3        ``latent_scale_factor``         c = 1 / std(z) of a batch of latents
=========  ==============================  ===================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu.exercises.core import Case, CheckResult, check, seeded

__all__ = ["frechet_gaussians", "mmd2_unbiased", "latent_scale_factor",
           "check_frechet_gaussians", "check_mmd2_unbiased", "check_latent_scale_factor", "EXERCISES"]


# ----------------------------------------------------------------------------- references
def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_gaussians(mu1, cov1, mu2, cov2):
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1^{1/2} cov2 cov1^{1/2})^{1/2}), a scalar tensor.

    mu: (D,), cov: (D, D) symmetric positive definite (float64)."""
    r1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(r1 @ cov2 @ r1)
    return (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * torch.trace(cross)


def mmd2_unbiased(fx, fy):
    """Unbiased MMD^2 of features fx (m, D), fy (n, D) with k(a, b) = (a.b / D + 1)^3, a scalar tensor:
    mean of k(x_i, x_j) over i != j + mean of k(y_i, y_j) over i != j - 2 mean of k(x_i, y_j)."""
    d = fx.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy = k(fx, fx), k(fy, fy)
    m, n = len(fx), len(fy)
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2 * k(fx, fy).mean())


def latent_scale_factor(z):
    """c = 1 / std(z) over all entries of the latents z (B, ...), a scalar tensor (unbiased std)."""
    return 1.0 / z.std()


# ----------------------------------------------------------------------------- test inputs
def _spd(g, d, scale):
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return scale * (a @ a.T + 0.2 * torch.eye(d, dtype=torch.float64))


def _gaussian_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    cases = []
    for d in (1, 3, 8):
        for shift, scale in ((0.0, 1.0), (1.0, 2.0), (0.3, 0.5)):
            args = (torch.zeros(d, dtype=torch.float64), _spd(g, d, 1.0),
                    shift + torch.randn(d, generator=g, dtype=torch.float64) * 0.1, _spd(g, d, scale))
            cases.append(Case(args, label=f"D = {d}, mean shift ~{shift}, covariance scale {scale}"))
    return cases


def _feature_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    cases = []
    for (m, n, d, shift) in ((20, 20, 2, 0.0), (30, 17, 5, 0.5), (12, 40, 8, 1.0)):
        fx = torch.randn(m, d, generator=g, dtype=torch.float64)
        fy = shift + 1.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
        cases.append(Case((fx, fy), label=f"fx ({m}, {d}), fy ({n}, {d}), shift {shift}"))
    return cases


def _latent_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    return [Case((s * torch.randn(shape, generator=g, dtype=torch.float64) + mu,), label=f"z of shape {shape}, std ~{s}")
            for shape, s, mu in (((64, 4, 7, 7), 5.0, 0.0), ((16, 2, 2, 2), 0.2, 0.1), ((100, 3), 1.0, 2.0))]


# ----------------------------------------------------------------------------- checkers
def check_frechet_gaussians(fn: Callable) -> CheckResult:
    """Exercise I.1: frechet_gaussians(mu1, cov1, mu2, cov2) -> scalar tensor."""
    return check("I.1", fn, frechet_gaussians, _gaussian_cases(1501), rtol=1e-6, atol=1e-8)


def check_mmd2_unbiased(fn: Callable) -> CheckResult:
    """Exercise I.2: mmd2_unbiased(fx, fy) -> scalar tensor."""
    return check("I.2", fn, mmd2_unbiased, _feature_cases(1502), rtol=1e-6, atol=1e-8)


def check_latent_scale_factor(fn: Callable) -> CheckResult:
    """Exercise I.3: latent_scale_factor(z) -> scalar tensor."""
    return check("I.3", fn, latent_scale_factor, _latent_cases(1503), rtol=1e-6, atol=1e-8)


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "I.1": (check_frechet_gaussians, frechet_gaussians),
    "I.2": (check_mmd2_unbiased, mmd2_unbiased),
    "I.3": (check_latent_scale_factor, latent_scale_factor),
}
