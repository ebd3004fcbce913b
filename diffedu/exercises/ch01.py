"""Checkers for the exercises of Chapter 1, deep generative modelling (monograph §1).

Each ``check_*`` function takes the reader's function, compares it with the reference below on
seeded random inputs of several shapes and parameters, displays the verdict and raises
:class:`~diffedu.exercises.core.ExerciseFailed` if it is wrong. The references are also the
solutions, written the way the chapter derives them.

=========  ==============================  ===========================================
exercise   reader writes                   reference
=========  ==============================  ===========================================
1.1        ``gaussian_log_density``        :func:`gaussian_log_density`  (monograph §1.1)
1.2        ``mixture_log_density``         :func:`mixture_log_density`   (monograph §1.1)
1.3        ``reparameterise``              :func:`reparameterise`        (monograph §1.2, §2.1)
1.4        ``gaussian_kl``                 :func:`gaussian_kl`           (monograph §1.2, §2.1)
=========  ==============================  ===========================================
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .core import Case, CheckResult, check, seeded

__all__ = [
    "gaussian_log_density", "mixture_log_density", "reparameterise", "gaussian_kl",
    "check_gaussian_log_density", "check_mixture_log_density", "check_reparameterise", "check_gaussian_kl",
    "EXERCISES",
]

LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------- references
def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(std^2)) of each example, summed over all non-batch dimensions (monograph §1.1).

    x: (B, ...); mean, std: broadcastable to x. Returns (B,).
    log N = -1/2 sum_i [ ((x_i - m_i) / s_i)^2 + 2 log s_i + log 2 pi ].
    """
    z = (x - mean) / std
    per_dim = -0.5 * (z**2 + LOG_2PI) - torch.log(std).expand_as(z)
    return per_dim.reshape(x.shape[0], -1).sum(-1)


def mixture_log_density(x: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log sum_k w_k N(x; mu_k, s_k^2 I) for x (B, D), means (K, D), stds (K,), weights (K,) (monograph §1.1).

    Computed in log space, log p(x) = logsumexp_k [log w_k + log N(x; mu_k, s_k^2 I)], so that points
    far from every component give a large negative number instead of log(0) = -inf.
    """
    d = x.shape[-1]
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)  # (B, K)
    log_comp = -0.5 * sq / stds**2 - d * torch.log(stds) - 0.5 * d * LOG_2PI
    return torch.logsumexp(torch.log(weights) + log_comp, dim=-1)


def reparameterise(mu: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with sigma = exp(log_var / 2): a sample of N(mu, sigma^2) that is
    differentiable in (mu, log_var) — the reparameterisation trick (monograph §2.1)."""
    return mu + torch.exp(0.5 * log_var) * eps


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag exp(log_var)) || N(0, I) ) per example, summed over non-batch dims (monograph §2.1).

    KL = 1/2 sum_i ( mu_i^2 + sigma_i^2 - 1 - log sigma_i^2 ). Returns (B,).
    """
    per_dim = 0.5 * (mu**2 + torch.exp(log_var) - 1.0 - log_var)
    return per_dim.reshape(mu.shape[0], -1).sum(-1)


# ----------------------------------------------------------------------------- test inputs
_SHAPES = [(1, 2), (16, 2), (7, 5), (4, 1, 8, 8)]


def _gaussian_cases(seed: int = 101) -> list[Case]:
    g = seeded(seed)
    cases = []
    for shape in _SHAPES:
        for param_shape in (shape, shape[1:]):  # per-example parameters, and shared ones
            x = torch.randn(shape, generator=g) * 2
            mean = torch.randn(param_shape, generator=g)
            std = torch.rand(param_shape, generator=g) * 1.5 + 0.3
            cases.append(Case((x, mean, std), label=f"x of shape {shape}, mean/std of shape {param_shape}"))
    return cases


def _mixture_cases(seed: int = 102) -> list[Case]:
    g = seeded(seed)
    cases = []
    for b, k, d in [(1, 1, 2), (16, 8, 2), (9, 3, 5), (32, 4, 1)]:
        means = torch.randn(k, d, generator=g) * 3
        stds = torch.rand(k, generator=g) * 0.8 + 0.2
        weights = torch.rand(k, generator=g) + 0.1
        weights = weights / weights.sum()
        x = torch.randn(b, d, generator=g) * 3
        cases.append(Case((x, means, stds, weights), label=f"x ({b}, {d}), {k} components"))
    # far from every component: a naive log(sum(exp(...))) underflows to log(0) = -inf here
    means = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    cases.append(Case((torch.tensor([[40.0, -40.0], [0.5, 0.5]]), means, torch.tensor([0.3, 0.5]),
                       torch.tensor([0.25, 0.75])), label="a point 50 standard deviations from every component"))
    return cases


def _vae_cases(seed: int, with_eps: bool) -> list[Case]:
    g = seeded(seed)
    cases = []
    for shape in _SHAPES:
        mu = torch.randn(shape, generator=g)
        log_var = torch.randn(shape, generator=g)
        args = (mu, log_var, torch.randn(shape, generator=g)) if with_eps else (mu, log_var)
        cases.append(Case(args, label=f"mu, log_var of shape {shape}"))
    return cases


# ----------------------------------------------------------------------------- checkers
def check_gaussian_log_density(fn: Callable) -> CheckResult:
    """Exercise 1.1: the log-density of a diagonal Gaussian, summed over non-batch dims -> (B,)."""
    return check("1.1", fn, gaussian_log_density, _gaussian_cases())


def check_mixture_log_density(fn: Callable) -> CheckResult:
    """Exercise 1.2: the Gaussian-mixture log-density, stable far from the components -> (B,)."""
    return check("1.2", fn, mixture_log_density, _mixture_cases())


def check_reparameterise(fn: Callable) -> CheckResult:
    """Exercise 1.3: z = mu + exp(log_var / 2) * eps, same shape as mu."""
    return check("1.3", fn, reparameterise, _vae_cases(103, with_eps=True))


def check_gaussian_kl(fn: Callable) -> CheckResult:
    """Exercise 1.4: KL(N(mu, diag exp(log_var)) || N(0, I)) per example -> (B,)."""
    return check("1.4", fn, gaussian_kl, _vae_cases(104, with_eps=False))


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "1.1": (check_gaussian_log_density, gaussian_log_density),
    "1.2": (check_mixture_log_density, mixture_log_density),
    "1.3": (check_reparameterise, reparameterise),
    "1.4": (check_gaussian_kl, gaussian_kl),
}
