"""Checkers for the exercises of Chapter 6, the unified lens (monograph §6.1-6.4, appendix D.6).

=========  ===============================  =============================================
exercise   reader writes                    reference
=========  ===============================  =============================================
6.1        ``velocity_to_x0``               :func:`velocity_to_x0`        (monograph §6.3, Table 6.1)
6.2        ``edm_skip_out_in``              :func:`edm_skip_out_in`       (appendix D.6)
6.3        ``vp_to_rectified_flow``         :func:`vp_to_rectified_flow`  (monograph §6.4)
=========  ===============================  =============================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.objectives.edm import edm_preconditioning
from .core import Case, CheckResult, check, seeded

__all__ = ["velocity_to_x0", "edm_skip_out_in", "vp_to_rectified_flow", "check_velocity_to_x0",
           "check_edm_skip_out_in", "check_vp_to_rectified_flow", "EXERCISES"]


def velocity_to_x0(v, x_t, alpha, sigma, d_alpha, d_sigma):
    """x0 from the velocity v = alpha' x0 + sigma' eps and x_t = alpha x0 + sigma eps (monograph §6.3).

    x0 = (sigma' x_t - sigma v) / (alpha sigma' - sigma alpha'); coefficients are (B,).
    """
    a, s, da, ds = (append_dims(c, x_t) for c in (alpha, sigma, d_alpha, d_sigma))
    return (ds * x_t - s * v) / (a * ds - s * da)


def edm_skip_out_in(sigma, sigma_data):
    """torch.stack([c_skip, c_out, c_in]) of EDM at noise levels sigma (B,) (appendix D.6), shape (3, B)."""
    c = edm_preconditioning(sigma, sigma_data)
    return torch.stack([c.c_skip, c.c_out, c.c_in])


def vp_to_rectified_flow(x_t, alpha, sigma):
    """The rectified-flow point with the same (x0, eps): x_t / (alpha_t + sigma_t) (monograph §6.4)."""
    return x_t / append_dims(alpha + sigma, x_t)


def _coef_cases(seed, with_v=True):
    from diffedu.schedules import VPCosine, VPLinear, RectifiedFlow

    g = seeded(seed)
    cases = []
    for sch in (VPLinear(), VPCosine(), RectifiedFlow()):
        for shape in [(1, 2), (12, 2), (3, 1, 8, 8)]:
            t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.9 + 0.05
            x = torch.randn(shape, generator=g, dtype=torch.float64)
            a, s, da, ds = sch.coefficients(t)
            label = f"{type(sch).__name__}, shape {shape}"
            if with_v:
                cases.append(Case((torch.randn(shape, generator=g, dtype=torch.float64), x, a, s, da, ds), label=label))
            else:
                cases.append(Case((x, a, s), label=label))
    return cases


def _edm_cases(seed=602):
    g = seeded(seed)
    return [Case((torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 2), sd), label=f"{n} sigmas, sigma_data={sd}")
            for n, sd in [(1, 0.5), (20, 0.5), (7, 1.0)]]


def check_velocity_to_x0(fn: Callable) -> CheckResult:
    """Exercise 6.1: invert Table 6.1's velocity row."""
    return check("6.1", fn, velocity_to_x0, _coef_cases(601))


def check_edm_skip_out_in(fn: Callable) -> CheckResult:
    """Exercise 6.2: EDM's c_skip, c_out, c_in."""
    return check("6.2", fn, edm_skip_out_in, _edm_cases())


def check_vp_to_rectified_flow(fn: Callable) -> CheckResult:
    """Exercise 6.3: map a point of an affine path onto rectified flow."""
    return check("6.3", fn, vp_to_rectified_flow, _coef_cases(603, with_v=False))


EXERCISES = {
    "6.1": (check_velocity_to_x0, velocity_to_x0),
    "6.2": (check_edm_skip_out_in, edm_skip_out_in),
    "6.3": (check_vp_to_rectified_flow, vp_to_rectified_flow),
}
