"""Checkers for the exercises of Chapter 10, distillation (monograph §10.2-10.3).

Each ``check_*`` compares the reader's function with the reference below on seeded random inputs
of several shapes ((B, 2) points, (B, 1, 8, 8) images), schedules (VP linear, VP cosine, rectified
flow) and times, and raises :class:`~diffedu.exercises.core.ExerciseFailed` with a diagnosis if it
is wrong.

=========  ===============================  ==================================================
exercise   reader writes                    reference
=========  ===============================  ==================================================
10.1       ``pd_target_from_steps``         the progressive-distillation target x~ (§10.3)
10.2       ``kl_step``                      the DMD / VSD step alpha_t (s_fake - s_real) (§10.2)
10.3       ``guided_input``                 the guided student's input: x with a w channel (§10.3)
=========  ===============================  ==================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.schedules import RectifiedFlow, VPCosine, VPLinear
from .core import Case, CheckResult, check, seeded

__all__ = ["pd_target_from_steps", "kl_step", "guided_input",
           "check_pd_target_from_steps", "check_kl_step", "check_guided_input", "EXERCISES"]


# ----------------------------------------------------------------------------- references
def pd_target_from_steps(z, z2, t, s, schedule):
    """The x0 that makes one DDIM step from (z, t) land on the teacher's two-step point z2 at s (monograph §10.3):
    x~ = (z2 - (sigma_s / sigma_t) z) / (alpha_s - (sigma_s / sigma_t) alpha_t). t, s: (B,)."""
    r = append_dims(schedule.sigma(s) / schedule.sigma(t), z)
    return (z2 - r * z) / (append_dims(schedule.alpha(s), z) - r * append_dims(schedule.alpha(t), z))


def kl_step(x_t, x0_fake, x0_real, t, schedule):
    """The per-sample KL gradient of (10.2), alpha_t (s_fake - s_real), from two denoisers at x_t (monograph §10.2),
    with the Tweedie scores s = (alpha_t x0_hat - x_t) / sigma_t^2. t: (B,)."""
    a, s = append_dims(schedule.alpha(t), x_t), append_dims(schedule.sigma(t), x_t)
    score = lambda x0: (a * x0 - x_t) / s**2  # noqa: E731
    return a * (score(x0_fake) - score(x0_real))


def guided_input(x, w, w_scale):
    """x with one more channel filled with w / w_scale: (B, D) -> (B, D + 1), (B, C, H, W) -> (B, C + 1, H, W) (§10.3). w: (B,)."""
    return torch.cat([x, append_dims(w / w_scale, x) * torch.ones_like(x[:, :1])], 1)


# ----------------------------------------------------------------------------- test inputs
_SHAPES = [(16, 2), (1, 3), (4, 1, 8, 8)]
_SCHEDULES = [("VP linear", VPLinear()), ("VP cosine", VPCosine()), ("rectified flow", RectifiedFlow())]


def _randn(g, shape):
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _cases(seed: int, make_args) -> list:
    g = seeded(seed)
    cases = []
    for name, sched in _SCHEDULES:
        for shape in _SHAPES:
            for tv in (0.3, 0.6, 0.9):
                B = shape[0]
                t = torch.full((B,), tv, dtype=torch.float64)
                s = t - 0.1 - 0.15 * torch.rand(B, generator=g, dtype=torch.float64)
                cases.append(Case(make_args(g, shape, t, s, sched), label=f"{name} schedule, data of shape {shape}, t = {tv}",
                                  t=tv))
    return cases


# ----------------------------------------------------------------------------- checkers
def check_pd_target_from_steps(fn: Callable) -> CheckResult:
    """Exercise 10.1: pd_target_from_steps(z, z2, t, s, schedule) -> shaped like z."""
    return check("10.1", fn, pd_target_from_steps,
                 _cases(1001, lambda g, sh, t, s, sc: (_randn(g, sh), _randn(g, sh), t, s, sc)), rtol=1e-6, atol=1e-8)


def check_kl_step(fn: Callable) -> CheckResult:
    """Exercise 10.2: kl_step(x_t, x0_fake, x0_real, t, schedule) -> shaped like x_t."""
    return check("10.2", fn, kl_step,
                 _cases(1002, lambda g, sh, t, s, sc: (_randn(g, sh), _randn(g, sh), _randn(g, sh), t, sc)),
                 rtol=1e-6, atol=1e-8)


def check_guided_input(fn: Callable) -> CheckResult:
    """Exercise 10.3: guided_input(x, w, w_scale) -> (B, D + 1) or (B, C + 1, H, W)."""
    g = seeded(1003)
    cases = []
    for shape in _SHAPES:
        for w_scale in (1.0, 4.0):
            w = 0.5 + 3 * torch.rand(shape[0], generator=g, dtype=torch.float64)
            cases.append(Case((_randn(g, shape), w, w_scale), label=f"x of shape {shape}, w_scale = {w_scale}"))
    return check("10.3", fn, guided_input, cases, rtol=1e-6, atol=1e-8)


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "10.1": (check_pd_target_from_steps, pd_target_from_steps),
    "10.2": (check_kl_step, kl_step),
    "10.3": (check_guided_input, guided_input),
}
