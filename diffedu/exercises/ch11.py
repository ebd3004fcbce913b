"""Checkers for the exercises of Chapter 11, fast generators from scratch (monograph §11.2, §11.5).

Each ``check_*`` compares the reader's function with the reference below on seeded random inputs
of several shapes ((B, 2) points, (B, 1, 8, 8) images), schedules (VP linear, VP cosine, rectified
flow) and times, and raises :class:`~diffedu.exercises.core.ExerciseFailed` with a diagnosis if it
is wrong.

=========  ===============================  ==================================================
exercise   reader writes                    reference
=========  ===============================  ==================================================
11.1       ``boundary_coefficients``        (c_skip(t), c_out(t)) stacked, f(x, 0) = x (§11.2)
11.2       ``meanflow_target``              the MeanFlow target v - (t - r) du/dt (§11.5)
11.3       ``multistep_consistency``        multistep consistency sampling on a grid (§11.2)
=========  ===============================  ==================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.schedules import RectifiedFlow, VPCosine, VPLinear
from .core import Case, CheckResult, check, seeded

__all__ = ["boundary_coefficients", "meanflow_target", "multistep_consistency", "check_boundary_coefficients",
           "check_meanflow_target", "check_multistep_consistency", "EXERCISES"]


# ----------------------------------------------------------------------------- references
def boundary_coefficients(t, schedule, sigma_data):
    """(c_skip(t), c_out(t)) stacked to shape (2, B), of f(x_t, t) = c_skip x_t + c_out F (monograph §11.2).

    Song et al. (2023)'s coefficients for x_t = alpha_t x0 + sigma_t eps, with n_t = sigma_t - alpha_t sigma_0 the
    noise added since t = 0 (alpha_0 = 1): c_skip = alpha_t sigma_d^2 / (alpha_t^2 sigma_d^2 + n_t^2),
    c_out = sigma_d n_t / sqrt(alpha_t^2 sigma_d^2 + sigma_t^2); so c_skip(0) = 1, c_out(0) = 0 and f(x, 0) = x.
    t: (B,).
    """
    a, s = schedule.alpha(t), schedule.sigma(t)
    n = s - a * schedule.sigma(torch.zeros_like(t))
    d = a**2 * sigma_data**2
    return torch.stack([a * sigma_data**2 / (d + n**2), sigma_data * n / torch.sqrt(d + s**2)])


def meanflow_target(v, u, dudt, t, r):
    """The MeanFlow regression target v - (t - r) du/dt (monograph §11.5, the MeanFlow identity).

    ``u`` is the network's current u(x_t, r, t): the identity says u = target, but the target itself is built from
    v and the total derivative only (and is detached in training). t, r: (B,).
    """
    return v - append_dims(t - r, v) * dudt


def multistep_consistency(f, x, ts, noises, schedule):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1; monograph §11.2).

    x is the noise at ts[0]; x0 = f(x, ts[0]); then for i = 1, ..., N - 1: x = alpha_{ts[i]} x0 + sigma_{ts[i]} noises[i - 1]
    and x0 = f(x, ts[i]). Returns the last x0. f(x, t) takes a float t; ts: (N,) decreasing; noises: (N - 1, B, ...).
    """
    x0 = f(x, float(ts[0]))
    for i in range(1, len(ts)):
        tau = float(ts[i])
        x0 = f(float(schedule.alpha(tau)) * x0 + float(schedule.sigma(tau)) * noises[i - 1], tau)
    return x0


# ----------------------------------------------------------------------------- test inputs
_SHAPES = [(16, 2), (1, 3), (4, 1, 8, 8)]
_SCHEDULES = [("VP linear", VPLinear()), ("VP cosine", VPCosine()), ("rectified flow", RectifiedFlow())]


def _randn(g, shape):
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _toy_consistency(x, t):
    """A smooth stand-in for a trained consistency function with f(x, 0) = x (t a float or (B,) tensor)."""
    t = append_dims(torch.as_tensor(t, dtype=x.dtype), x)
    return (1 - t) * x + t * torch.tanh(x + 0.5 * t)


# ----------------------------------------------------------------------------- checkers
def check_boundary_coefficients(fn: Callable) -> CheckResult:
    """Exercise 11.1: boundary_coefficients(t, schedule, sigma_data) -> torch.stack([c_skip, c_out]), shape (2, B)."""
    g = seeded(1101)
    cases = []
    for name, sched in _SCHEDULES:
        for sd in (0.5, 1.0):
            for tv in (0.0, 0.3, 0.9):
                t = (tv + 0.05 * torch.rand(8, generator=g, dtype=torch.float64)) if tv else torch.zeros(8, dtype=torch.float64)
                label = f"{name} schedule, sigma_data = {sd}, t ~ {tv}" + (" (the boundary: need c_skip = 1, c_out = 0)" if tv == 0 else "")
                cases.append(Case((t, sched, sd), label=label, t=tv))
    return check("11.1", fn, boundary_coefficients, cases, rtol=1e-6, atol=1e-9)


def check_meanflow_target(fn: Callable) -> CheckResult:
    """Exercise 11.2: meanflow_target(v, u, dudt, t, r) -> shaped like v."""
    g = seeded(1102)
    cases = []
    for shape in _SHAPES:
        for tv in (0.3, 0.6, 0.9):
            B = shape[0]
            t = torch.full((B,), tv, dtype=torch.float64)
            r = t * torch.rand(B, generator=g, dtype=torch.float64)
            cases.append(Case((_randn(g, shape), _randn(g, shape), _randn(g, shape), t, r),
                              label=f"data of shape {shape}, t = {tv}, r in [0, t)", t=tv))
    return check("11.2", fn, meanflow_target, cases, rtol=1e-6, atol=1e-9)


def check_multistep_consistency(fn: Callable) -> CheckResult:
    """Exercise 11.3: multistep_consistency(f, x, ts, noises, schedule) -> the sample, shaped like x."""
    g = seeded(1103)
    cases = []
    for name, sched in _SCHEDULES:
        for shape in _SHAPES:
            for grid in ([1.0], [1.0, 0.5], [1.0, 0.7, 0.4, 0.2]):
                ts = torch.tensor(grid, dtype=torch.float64)
                noises = _randn(g, (len(grid) - 1, *shape)) if len(grid) > 1 else torch.zeros((0, *shape), dtype=torch.float64)
                cases.append(Case((_toy_consistency, _randn(g, shape), ts, noises, sched),
                                  label=f"{name} schedule, x of shape {shape}, {len(grid)} step(s) on {grid}"))
    return check("11.3", fn, multistep_consistency, cases, rtol=1e-6, atol=1e-9)


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "11.1": (check_boundary_coefficients, boundary_coefficients),
    "11.2": (check_meanflow_target, meanflow_target),
    "11.3": (check_multistep_consistency, multistep_consistency),
}
