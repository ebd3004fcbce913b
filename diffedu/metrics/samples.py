"""How good are the samples? Distances between sample sets and densities (used in every chapter's checks).

The 2D chapters measure quality against exact ground truth: the sliced Wasserstein-2 distance
to fresh samples of the true density, and Monte-Carlo KL with the exact log-density of
:mod:`diffedu.toy` (monograph §1.2).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from diffedu._checks import check_data

__all__ = ["sliced_wasserstein", "kl_monte_carlo", "moment_errors"]


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sliced Wasserstein-2 distance SW_2(x, y) between two equal-size sample sets of shape (N, ...).

    SW_2^2 = E_theta W_2^2(theta^T x, theta^T y) over random unit directions theta; each 1D W_2 is
    computed exactly by sorting. Returns SW_2 (not squared), a scalar tensor.
    """
    check_data(x, "x")
    check_data(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"y: expected the same shape as x {tuple(x.shape)} (equal sample counts), got {tuple(y.shape)}")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections: expected a positive int, got {n_projections!r}")
    xf, yf = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    dev = generator.device if generator is not None else xf.device
    theta = torch.randn(xf.shape[1], n_projections, generator=generator, device=dev, dtype=torch.float64).to(xf.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(xf @ theta, 0)
    py, _ = torch.sort(yf @ theta, 0)
    return ((px - py) ** 2).mean().sqrt()


def kl_monte_carlo(log_p: Callable[[torch.Tensor], torch.Tensor], log_q: Callable[[torch.Tensor], torch.Tensor],
                   samples_p: torch.Tensor) -> torch.Tensor:
    """KL(p || q) ~= mean_i [log p(x_i) - log q(x_i)] with x_i ~ p (monograph §1.2). Unbiased; returns a scalar."""
    check_data(samples_p, "samples_p")
    for name, fn in (("log_p", log_p), ("log_q", log_q)):
        if not callable(fn):
            raise TypeError(f"{name}: expected a callable x -> log density of shape (N,), got {type(fn).__name__}")
    lp, lq = log_p(samples_p), log_q(samples_p)
    for name, v in (("log_p", lp), ("log_q", lq)):
        if not torch.is_tensor(v) or v.shape != (samples_p.shape[0],):
            raise ValueError(f"{name}: must return a tensor of shape ({samples_p.shape[0]},), got "
                             f"{tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}")
    return (lp - lq).mean()


def moment_errors(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
    """(||mean(x) - mean||, ||cov(x) - cov||_F) for samples x of shape (N, D) against exact moments (monograph §1.2)."""
    check_data(x, "x")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x: expected samples of shape (N, D) with N >= 2, got {tuple(x.shape)}")
    D = x.shape[1]
    if not torch.is_tensor(mean) or mean.shape != (D,):
        raise ValueError(f"mean: expected shape ({D},), got {tuple(mean.shape) if torch.is_tensor(mean) else type(mean).__name__}")
    if not torch.is_tensor(cov) or cov.shape != (D, D):
        raise ValueError(f"cov: expected shape ({D}, {D}), got {tuple(cov.shape) if torch.is_tensor(cov) else type(cov).__name__}")
    xd = x.double()
    m = xd.mean(0)
    c = torch.cov(xd.T).reshape(x.shape[1], x.shape[1])
    return (m - mean.to(m)).norm(), (c - cov.to(c)).norm()
