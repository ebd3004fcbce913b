"""Checkers for the exercises of Chapter 7, diffusion models and optimal transport (monograph §7.1-7.5).

=========  ==================================  ==================================================
exercise   reader writes                       reference
=========  ==================================  ==================================================
7.1        ``sinkhorn_f_update``               :func:`diffedu.transport.sinkhorn_f_update`  (monograph §7.3)
7.2        ``bures_distance_sq``               :func:`diffedu.transport.bures_sq`           (monograph §7.2)
7.3        ``sb_cfm_velocity``                 :func:`diffedu.transport.sb_cfm_velocity`    (monograph §7.3)
7.4        ``barycentric_map``                 :func:`diffedu.transport.barycentric_map`    (monograph §7.2)
=========  ==================================  ==================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu import transport as _T
from diffedu.exercises.core import Case, CheckResult, check, seeded

__all__ = ["sinkhorn_f_update", "bures_distance_sq", "sb_cfm_velocity", "barycentric_map",
           "check_sinkhorn_f_update", "check_bures_distance_sq", "check_sb_cfm_velocity", "check_barycentric_map",
           "EXERCISES"]


def sinkhorn_f_update(g: torch.Tensor, C: torch.Tensor, log_b: torch.Tensor, eps: float) -> torch.Tensor:
    """f_i = -eps log sum_j b_j exp((g_j - C_ij)/eps), one log-domain Sinkhorn half-step (monograph §7.3)."""
    return _T.sinkhorn_f_update(g, C, log_b, eps)


def bures_distance_sq(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2}, the squared Bures distance (monograph §7.2)."""
    return _T.bures_sq(A, B)


def sb_cfm_velocity(x: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1-2t)/(2t(1-t)) (x - (1-t) x0 - t x1) + x1 - x0, the SB-CFM conditional velocity (monograph §7.3)."""
    return _T.sb_cfm_velocity(x, x0, x1, t, sigma)


def barycentric_map(plan: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """T(x_i) = sum_j P_ij y_j / sum_j P_ij (monograph §7.2)."""
    return _T.barycentric_map(plan, y)


def _sinkhorn_cases(seed=701):
    g = seeded(seed)
    cases = []
    for n, m, eps in [(1, 3, 1.0), (5, 7, 0.5), (16, 9, 0.05), (8, 8, 0.003)]:
        C = 3 * torch.rand(n, m, generator=g, dtype=torch.float64)
        w = torch.rand(m, generator=g, dtype=torch.float64) + 0.1
        gpot = torch.randn(m, generator=g, dtype=torch.float64)
        cases.append(Case((gpot, C, (w / w.sum()).log(), eps), label=f"C of shape ({n}, {m}), eps={eps}"))
    return cases


def _spd(d, g):
    Q = torch.randn(d, d, generator=g, dtype=torch.float64)
    return Q @ Q.T / d + 0.2 * torch.eye(d, dtype=torch.float64)


def _bures_cases(seed=702):
    g = seeded(seed)
    cases = [Case((_spd(d, g), _spd(d, g)), label=f"({d}, {d}) covariances") for d in (1, 2, 3, 5)]
    A = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    cases.append(Case((A, torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)), label="a diagonal and a full covariance"))
    return cases


def _sb_cases(seed=703):
    g = seeded(seed)
    cases = []
    for shape in [(1, 2), (16, 2), (4, 1, 4, 4)]:
        for tv in (0.1, 0.5, 0.8):
            x0, x1, x = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
            t = torch.full((shape[0],), tv, dtype=torch.float64)
            cases.append(Case((x, x0, x1, t, 0.7), label=f"shape {shape}, t={tv}, sigma=0.7", t=tv))
    return cases


def _bary_cases(seed=704):
    g = seeded(seed)
    cases = []
    for n, m, shape in [(1, 4, (2,)), (6, 9, (2,)), (5, 5, (1, 3, 3))]:
        plan = torch.rand(n, m, generator=g, dtype=torch.float64)
        cases.append(Case((plan / plan.sum(), torch.randn((m,) + shape, generator=g, dtype=torch.float64)),
                          label=f"plan ({n}, {m}), y of shape {(m,) + shape}"))
    return cases


def check_sinkhorn_f_update(fn: Callable) -> CheckResult:
    """Exercise 7.1: one log-domain Sinkhorn update of the potential f."""
    return check("7.1", fn, sinkhorn_f_update, _sinkhorn_cases())


def check_bures_distance_sq(fn: Callable) -> CheckResult:
    """Exercise 7.2: the squared Bures distance between two covariances."""
    return check("7.2", fn, bures_distance_sq, _bures_cases())


def check_sb_cfm_velocity(fn: Callable) -> CheckResult:
    """Exercise 7.3: the SB-CFM (Brownian bridge) conditional velocity."""
    return check("7.3", fn, sb_cfm_velocity, _sb_cases())


def check_barycentric_map(fn: Callable) -> CheckResult:
    """Exercise 7.4: the barycentric map of a transport plan."""
    return check("7.4", fn, barycentric_map, _bary_cases())


EXERCISES = {
    "7.1": (check_sinkhorn_f_update, sinkhorn_f_update),
    "7.2": (check_bures_distance_sq, bures_distance_sq),
    "7.3": (check_sb_cfm_velocity, sb_cfm_velocity),
    "7.4": (check_barycentric_map, barycentric_map),
}
