"""Gaussian densities and KL divergences with isotropic or diagonal covariance (monograph §1.2, §2.1).

Every variational bound of the book is a sum of Gaussian log-densities and Gaussian KLs: the
VAE's ELBO (monograph §2.1), the DDPM ELBO's prior, per-step and reconstruction terms (§2.2),
and the prior term of the likelihood ODE (§4.5). They live here once, below every room that
uses them. Variances are a scalar, a per-example (B,) tensor or a tensor shaped like x; all
results are per example, summed over the data dimensions, shape (B,).
"""
from __future__ import annotations

import math
from typing import Union

import torch

from diffedu._checks import append_dims, check_data, check_like, check_positive

__all__ = ["gaussian_log_prob", "gaussian_kl", "gaussian_prior_log_prob", "LOG_2PI"]

LOG_2PI = math.log(2 * math.pi)


def _per_example_sum(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).sum(1)


def _as_var(var, x, name):
    """A variance given as a scalar, (B,) or shaped like x, broadcast against x."""
    if not torch.is_tensor(var):
        if isinstance(var, bool) or not isinstance(var, (int, float)):
            raise TypeError(f"{name}: expected a number or a tensor of variances, got {type(var).__name__}")
        var = torch.as_tensor(float(var), dtype=x.dtype, device=x.device)
    if not torch.isfinite(var).all():
        raise ValueError(f"{name}: contains NaN or inf")
    if var.ndim == 1 and x.ndim > 1 and var.shape[0] == x.shape[0]:
        var = append_dims(var, x)
    try:
        return var.to(x).expand_as(x)
    except RuntimeError:
        raise ValueError(f"{name}: expected a scalar, shape ({x.shape[0]},) or {tuple(x.shape)}, "
                         f"got shape {tuple(var.shape)}") from None


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, var) -> torch.Tensor:
    """log N(x; mean, var I) summed over the data dimensions, shape (B,) (monograph §2.1)."""
    check_data(x, "x")
    check_like(mean, x, "mean")
    v = _as_var(var, x, "var")
    if (v <= 0).any():
        raise ValueError("var: expected strictly positive variances")
    return -0.5 * _per_example_sum((x - mean) ** 2 / v + torch.log(v) + LOG_2PI)


def gaussian_kl(mean_q: torch.Tensor, var_q, mean_p: torch.Tensor, var_p) -> torch.Tensor:
    """KL(N(mean_q, var_q I) || N(mean_p, var_p I)) in nats, summed over dimensions, shape (B,) (monograph §2.1).

    Closed form, per dimension: 0.5 [var_q / var_p - 1 - log(var_q / var_p) + (mean_q - mean_p)^2 / var_p].
    ``var_q = 0`` (a point mass) is allowed and gives +inf.
    """
    check_data(mean_q, "mean_q")
    check_like(mean_p, mean_q, "mean_p", "mean_q")
    vq = _as_var(var_q, mean_q, "var_q")
    vp = _as_var(var_p, mean_q, "var_p")
    if (vp <= 0).any():
        raise ValueError("var_p: expected strictly positive variances")
    if (vq < 0).any():
        raise ValueError("var_q: expected non-negative variances")
    ratio = vq / vp
    per_dim = 0.5 * (ratio - 1 - torch.log(ratio) + (mean_q - mean_p) ** 2 / vp)
    return _per_example_sum(per_dim)


def gaussian_prior_log_prob(x: torch.Tensor, std: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
    """log N(x; 0, std^2 I) per example, shape (B,): the prior p_1 = N(0, sigma_1^2 I) (monograph §4.3, §4.5)."""
    check_data(x, "x")
    if not torch.is_tensor(std):
        std = check_positive(std, "std")
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if std.ndim != 0 or not bool(std > 0) or not bool(torch.isfinite(std)):
        raise ValueError(f"std: expected a positive finite scalar, got {std}")
    return gaussian_log_prob(x, torch.zeros_like(x), std**2)
