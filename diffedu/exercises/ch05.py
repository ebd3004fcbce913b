"""Checkers for the exercises of Chapter 5, normalising flows to flow matching (monograph §5.1-5.4).

=========  ==================================  ==================================================
exercise   reader writes                       reference
=========  ==================================  ==================================================
5.1        ``trig_conditional_velocity``       :func:`trig_conditional_velocity`   (monograph §5.3)
5.2        ``rf_marginal_velocity``            :func:`rf_marginal_velocity`        (monograph §5.3, §6.3)
5.3        ``linear_cnf_log_density``          :func:`linear_cnf_log_density`      (monograph §5.2)
5.4        ``straightness``                    :func:`straightness`                (monograph §5.4)
=========  ==================================  ==================================================
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.objectives.flow_matching import straightness as _straightness
from diffedu.gaussian import gaussian_prior_log_prob
from .core import Case, CheckResult, check, seeded

__all__ = ["trig_conditional_velocity", "rf_marginal_velocity", "linear_cnf_log_density", "straightness",
           "check_trig_conditional_velocity", "check_rf_marginal_velocity", "check_linear_cnf_log_density",
           "check_straightness", "EXERCISES"]


def trig_conditional_velocity(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d/dt [cos(pi t/2) x0 + sin(pi t/2) x1] = (pi/2)(-sin(pi t/2) x0 + cos(pi t/2) x1) (monograph §5.3)."""
    th = append_dims(math.pi / 2 * t, x0)
    return math.pi / 2 * (-torch.sin(th) * x0 + torch.cos(th) * x1)


def rf_marginal_velocity(x_t: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """Rectified-flow marginal velocity from the posterior mean: u = (x_t - E[x0|x_t]) / t (monograph §5.3, §6.3)."""
    return (x_t - x0_hat) / append_dims(t, x_t)


def linear_cnf_log_density(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """log p(x) of the CNF dx/dt = A x run from t = 0 to 1 onto N(0, I): log N(e^A x) + tr A (monograph §5.2)."""
    z = x @ torch.linalg.matrix_exp(A).T
    return gaussian_prior_log_prob(z) + torch.trace(A)


def straightness(path: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Straightness of sampled paths (N+1, B, ...) on grid ts: mean over time of ||dx/dt - chord||^2 / D (monograph §5.4)."""
    return _straightness(path, ts)


def _vel_cases(seed, marginal=False):
    g = seeded(seed)
    cases = []
    for shape in [(1, 2), (16, 2), (4, 1, 8, 8)]:
        for tv in (0.1, 0.5, 0.9):
            a = torch.randn(shape, generator=g, dtype=torch.float64)
            b = torch.randn(shape, generator=g, dtype=torch.float64)
            t = torch.full((shape[0],), tv, dtype=torch.float64)
            args = (a, t, b) if marginal else (a, b, t)
            cases.append(Case(args, label=f"shape {shape}, t={tv}", t=tv))
    return cases


def _cnf_cases(seed=503):
    g = seeded(seed)
    return [Case((torch.randn(b, d, generator=g, dtype=torch.float64), 0.5 * torch.randn(d, d, generator=g, dtype=torch.float64)),
                 label=f"x ({b}, {d})") for b, d in [(1, 2), (9, 2), (5, 4)]]


def _path_cases(seed=504):
    g = seeded(seed)
    cases = []
    for n, shape in [(10, (3, 2)), (40, (5, 2)), (8, (2, 1, 4, 4))]:
        ts = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
        path = torch.cumsum(torch.randn((n + 1,) + shape, generator=g, dtype=torch.float64), 0)
        cases.append(Case((path, ts), label=f"{n} steps, particles of shape {shape}"))
    ts = torch.linspace(1.0, 0.0, 11, dtype=torch.float64) ** 2  # a non-uniform grid
    cases.append(Case((torch.cumsum(torch.randn(11, 4, 2, generator=g, dtype=torch.float64), 0), ts), label="a non-uniform grid"))
    return cases


def check_trig_conditional_velocity(fn: Callable) -> CheckResult:
    """Exercise 5.1: the conditional velocity of the trigonometric path."""
    return check("5.1", fn, trig_conditional_velocity, _vel_cases(501))


def check_rf_marginal_velocity(fn: Callable) -> CheckResult:
    """Exercise 5.2: the rectified-flow velocity from a denoiser."""
    return check("5.2", fn, rf_marginal_velocity, _vel_cases(502, marginal=True))


def check_linear_cnf_log_density(fn: Callable) -> CheckResult:
    """Exercise 5.3: instantaneous change of variables for a linear field, in closed form."""
    return check("5.3", fn, linear_cnf_log_density, _cnf_cases())


def check_straightness(fn: Callable) -> CheckResult:
    """Exercise 5.4: the straightness of sampled trajectories."""
    return check("5.4", fn, straightness, _path_cases())


EXERCISES = {
    "5.1": (check_trig_conditional_velocity, trig_conditional_velocity),
    "5.2": (check_rf_marginal_velocity, rf_marginal_velocity),
    "5.3": (check_linear_cnf_log_density, linear_cnf_log_density),
    "5.4": (check_straightness, straightness),
}
