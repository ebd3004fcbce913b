"""Checkers for the exercises of Appendix A, ODEs and SDEs: a crash course (monograph Appendix A).

=========  ===========================  =========================================================
exercise   reader writes                reference
=========  ===========================  =========================================================
A.1        ``em_gbm``                   :func:`em_gbm`: Euler-Maruyama for geometric Brownian motion
A.2        ``milstein_gbm``             :func:`milstein_gbm`: Milstein for geometric Brownian motion
A.3        ``gaussian_pf_ode_map``      :func:`gaussian_pf_ode_map`: the PF-ODE of Gaussian data,
                                        solved with an integrating factor (monograph §4.4, §9.2)
=========  ===========================  =========================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu import processes, schedules
from .core import Case, CheckResult, check, seeded

__all__ = ["em_gbm", "milstein_gbm", "gaussian_pf_ode_map", "check_em_gbm", "check_milstein_gbm",
           "check_gaussian_pf_ode_map", "EXERCISES"]


# ----------------------------------------------------------------------------- references
def em_gbm(x0: torch.Tensor, mu: float, sigma: float, dt: float, dw: torch.Tensor) -> torch.Tensor:
    """X_N of Euler-Maruyama X_{k+1} = X_k + mu X_k dt + sigma X_k dW_k for dX = mu X dt + sigma X dW (monograph Appendix A).

    x0 (B, ...), dw (N, B, ...) the Brownian increments; returns (B, ...).
    """
    return processes.euler_maruyama(lambda x, t: mu * x, lambda x, t: sigma * x, x0, dt, dw)


def milstein_gbm(x0: torch.Tensor, mu: float, sigma: float, dt: float, dw: torch.Tensor) -> torch.Tensor:
    """X_N of Milstein's scheme for GBM: X_{k+1} = X_k (1 + mu dt + sigma dW_k + sigma^2/2 (dW_k^2 - dt)) (monograph Appendix A)."""
    return processes.milstein(lambda x, t: mu * x, lambda x, t: sigma * x, lambda x, t: torch.full_like(x, sigma),
                              x0, dt, dw)


def gaussian_pf_ode_map(x, mean, std, alpha_s, sigma_s, alpha_t, sigma_t):
    """Where the PF-ODE of data N(mean, diag(std^2)) carries x from time s to time t (monograph §4.4, Appendix A).

    alpha_t mean + sqrt((alpha_t^2 std^2 + sigma_t^2) / (alpha_s^2 std^2 + sigma_s^2)) (x - alpha_s mean);
    x (B, D), mean and std (D,), the four coefficients (B,).
    """
    a_s, s_s, a_t, s_t = (c[:, None] for c in (alpha_s, sigma_s, alpha_t, sigma_t))
    ratio = torch.sqrt((a_t**2 * std**2 + s_t**2) / (a_s**2 * std**2 + s_s**2))
    return a_t * mean + ratio * (x - a_s * mean)


# ----------------------------------------------------------------------------- test inputs
def _sde_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    cases = []
    for shape, n, mu, sigma in (((1, 1), 1, 0.5, 0.3), ((16, 1), 10, 2.0, 1.0), ((8, 3), 50, -1.0, 0.5),
                                ((4, 1, 2, 2), 20, 0.3, 0.8)):
        x0 = 0.5 + torch.rand(shape, generator=g, dtype=torch.float64)
        dw = torch.randn((n, *shape), generator=g, dtype=torch.float64) * (1.0 / n) ** 0.5
        cases.append(Case((x0, mu, sigma, 1.0 / n, dw), label=f"x0 of shape {shape}, {n} steps, mu={mu}, sigma={sigma}"))
    return cases


def _flow_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    cases = []
    for schedule, name in ((schedules.VPLinear(), "VP"), (schedules.RectifiedFlow(), "rectified flow")):
        for s, t in ((1.0, 0.0), (0.6, 0.2), (0.1, 0.9)):
            d = 2 if name == "VP" else 3
            x = torch.randn(12, d, generator=g, dtype=torch.float64) * 2
            mean = torch.randn(d, generator=g, dtype=torch.float64)
            std = 0.2 + torch.rand(d, generator=g, dtype=torch.float64)
            ss, tt = torch.full((12,), s, dtype=torch.float64), torch.full((12,), t, dtype=torch.float64)
            coef = (schedule.alpha(ss), schedule.sigma(ss), schedule.alpha(tt), schedule.sigma(tt))
            cases.append(Case((x, mean, std, *coef), label=f"{name}, s={s} -> t={t}, x ({12}, {d})", t=t))
    return cases


# ----------------------------------------------------------------------------- checkers
def check_em_gbm(fn: Callable) -> CheckResult:
    """Exercise A.1: em_gbm(x0, mu, sigma, dt, dw) -> X_N, shaped like x0."""
    return check("A.1", fn, em_gbm, _sde_cases(2101), rtol=1e-8, atol=1e-10)


def check_milstein_gbm(fn: Callable) -> CheckResult:
    """Exercise A.2: milstein_gbm(x0, mu, sigma, dt, dw) -> X_N, shaped like x0."""
    return check("A.2", fn, milstein_gbm, _sde_cases(2102), rtol=1e-8, atol=1e-10)


def check_gaussian_pf_ode_map(fn: Callable) -> CheckResult:
    """Exercise A.3: gaussian_pf_ode_map(x, mean, std, alpha_s, sigma_s, alpha_t, sigma_t) -> (B, D)."""
    return check("A.3", fn, gaussian_pf_ode_map, _flow_cases(2103), rtol=1e-8, atol=1e-10)


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "A.1": (check_em_gbm, em_gbm),
    "A.2": (check_milstein_gbm, milstein_gbm),
    "A.3": (check_gaussian_pf_ode_map, gaussian_pf_ode_map),
}
