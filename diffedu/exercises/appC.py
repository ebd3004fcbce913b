"""Checkers for the exercises of Appendix C, Itô's formula and Girsanov's theorem (monograph Appendix C, §4).

=========  ===========================  =========================================================
exercise   reader writes                reference
=========  ===========================  =========================================================
C.1        ``ou_second_moment``         :func:`ou_second_moment`: E X_t^2 of the OU process from
                                        the moment ODE that Itô's formula gives
C.2        ``girsanov_log_weight``      :func:`girsanov_log_weight`: log dQ/dP of a path on a grid
C.3        ``ou_path_kl``               :func:`ou_path_kl`: KL between the path measures of two OU
                                        processes, 1/2 E int |b1 - b2|^2 / sigma^2 dt
=========  ===========================  =========================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu import processes
from .core import Case, CheckResult, check, seeded

__all__ = ["ou_second_moment", "girsanov_log_weight", "ou_path_kl", "check_ou_second_moment",
           "check_girsanov_log_weight", "check_ou_path_kl", "EXERCISES"]


# ----------------------------------------------------------------------------- references
def ou_second_moment(x0: torch.Tensor, t: torch.Tensor, theta: float, sigma: float) -> torch.Tensor:
    """E[X_t^2] of dX = -theta X dt + sigma dW from X_0 = x0 (monograph Appendix C).

    Itô's formula on f(x) = x^2 gives m' = -2 theta m + sigma^2, so
    m(t) = x0^2 e^{-2 theta t} + sigma^2 (1 - e^{-2 theta t}) / (2 theta). x0 (B, D), t (B,); returns (B, D).
    """
    decay = torch.exp(-2 * theta * t)[:, None]
    return x0**2 * decay + sigma**2 * (1 - decay) / (2 * theta)


def girsanov_log_weight(u: torch.Tensor, dw: torch.Tensor, dt: float) -> torch.Tensor:
    """sum_k u_k . dW_k - 1/2 sum_k |u_k|^2 dt, summed over steps and non-batch dims (monograph Appendix C).

    u, dw (N, B, ...); returns (B,).
    """
    return processes.girsanov_log_weight(u, dw, dt)


def ou_path_kl(x0: torch.Tensor, T: float, theta1: float, theta2: float, sigma: float) -> torch.Tensor:
    """KL(Q1 || Q2) of the paths on [0, T] of dX = -theta_i X dt + sigma dW, both from x0 (monograph Appendix C, §4).

    1/2 (theta1 - theta2)^2 / sigma^2 int_0^T E_{Q1}[X_t^2] dt with
    int_0^T E X_t^2 dt = x0^2 (1 - e^{-2 theta1 T}) / (2 theta1) + sigma^2 / (2 theta1) (T - (1 - e^{-2 theta1 T}) / (2 theta1)),
    summed over dims. x0 (B, D); returns (B,).
    """
    e = -torch.expm1(torch.tensor(-2 * theta1 * T, dtype=x0.dtype)) / (2 * theta1)
    integral = x0**2 * e + sigma**2 / (2 * theta1) * (T - e)
    return (0.5 * (theta1 - theta2) ** 2 / sigma**2 * integral).sum(1)


# ----------------------------------------------------------------------------- test inputs
def _moment_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    cases = []
    for shape, theta, sigma in (((1, 1), 1.0, 1.0), ((16, 2), 0.5, 2.0), ((8, 3), 3.0, 0.3)):
        x0 = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 3
        cases.append(Case((x0, t, theta, sigma), label=f"x0 of shape {shape}, theta={theta}, sigma={sigma}"))
    return cases


def _weight_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    cases = []
    for shape, n in (((1, 1), 1), ((16, 1), 10), ((8, 3), 50), ((4, 1, 2, 2), 20)):
        dt = 1.0 / n
        u = torch.randn((n, *shape), generator=g, dtype=torch.float64)
        dw = torch.randn((n, *shape), generator=g, dtype=torch.float64) * dt**0.5
        cases.append(Case((u, dw, dt), label=f"paths of shape {shape}, {n} steps"))
    return cases


def _kl_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    cases = []
    for shape, T, th1, th2, sigma in (((1, 1), 1.0, 1.0, 0.5, 1.0), ((16, 2), 2.0, 0.5, 2.0, 0.7),
                                      ((8, 3), 0.3, 3.0, 1.0, 2.0)):
        x0 = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        cases.append(Case((x0, T, th1, th2, sigma), label=f"x0 of shape {shape}, T={T}, theta1={th1}, theta2={th2}, "
                                                         f"sigma={sigma}"))
    return cases


# ----------------------------------------------------------------------------- checkers
def check_ou_second_moment(fn: Callable) -> CheckResult:
    """Exercise C.1: ou_second_moment(x0, t, theta, sigma) -> E X_t^2, shaped like x0."""
    return check("C.1", fn, ou_second_moment, _moment_cases(2301), rtol=1e-8, atol=1e-10)


def check_girsanov_log_weight(fn: Callable) -> CheckResult:
    """Exercise C.2: girsanov_log_weight(u, dw, dt) -> (B,)."""
    return check("C.2", fn, girsanov_log_weight, _weight_cases(2302), rtol=1e-8, atol=1e-10)


def check_ou_path_kl(fn: Callable) -> CheckResult:
    """Exercise C.3: ou_path_kl(x0, T, theta1, theta2, sigma) -> (B,)."""
    return check("C.3", fn, ou_path_kl, _kl_cases(2303), rtol=1e-8, atol=1e-10)


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "C.1": (check_ou_second_moment, ou_second_moment),
    "C.2": (check_girsanov_log_weight, girsanov_log_weight),
    "C.3": (check_ou_path_kl, ou_path_kl),
}
