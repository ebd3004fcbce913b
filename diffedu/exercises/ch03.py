"""Checkers for the exercises of Chapter 3, the score view: EBMs to NCSN (monograph §3.1-3.4).

Each ``check_*`` compares the reader's function with the reference below on seeded random inputs
of several shapes, schedules and times, and raises
:class:`~diffedu.exercises.core.ExerciseFailed` with a diagnosis if it is wrong.

=========  ==========================  ==========================================================
exercise   reader writes               reference
=========  ==========================  ==========================================================
3.1        ``dsm_target``              grad_{x_t} log q(x_t | x0) = -(x_t - alpha_t x0)/sigma_t^2 (§3.2)
3.2        ``langevin_step``           x + h score + sqrt(2h) z                            (§3.1)
3.3        ``tweedie``                 E[x0|x_t] = (x_t + sigma_t^2 score) / alpha_t        (§3.3)
3.4        ``hutchinson_probe``        v^T (d score / dx) v for one probe v, by autograd    (§3.2)
=========  ==========================  ==========================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.schedules import VEGeometric, VPCosine, VPLinear
from .core import Case, CheckResult, check, seeded

__all__ = ["dsm_target", "langevin_step", "tweedie", "hutchinson_probe",
           "check_dsm_target", "check_langevin_step", "check_tweedie", "check_hutchinson_probe", "EXERCISES"]


# ----------------------------------------------------------------------------- references
def dsm_target(x_t, x0, t, schedule):
    """The conditional score grad_{x_t} log q(x_t | x0) = -(x_t - alpha_t x0) / sigma_t^2 (monograph §3.2)."""
    a, s = append_dims(schedule.alpha(t), x_t), append_dims(schedule.sigma(t), x_t)
    return -(x_t - a * x0) / s**2


def langevin_step(x, score, step_size, z):
    """One unadjusted Langevin step x + h * score + sqrt(2 h) * z (monograph §3.1); h a float."""
    return x + step_size * score + (2 * step_size) ** 0.5 * z


def tweedie(x_t, score, t, schedule):
    """Tweedie's formula E[x0 | x_t] = (x_t + sigma_t^2 score) / alpha_t (monograph §3.3)."""
    a, s = append_dims(schedule.alpha(t), x_t), append_dims(schedule.sigma(t), x_t)
    return (x_t + s**2 * score) / a


def hutchinson_probe(score_fn, x, v):
    """v^T (d score_fn / dx)(x) v per example, one vector-Jacobian product (monograph §3.2), shape (B,)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = score_fn(x)
        (g,) = torch.autograd.grad((out * v).sum(), x)
    return (g * v).reshape(x.shape[0], -1).sum(1)


# ----------------------------------------------------------------------------- test inputs
_SHAPES = [(16, 2), (1, 3), (4, 1, 8, 8)]
_SCHEDULES = [("VP linear", VPLinear()), ("VP cosine", VPCosine()), ("VE", VEGeometric(0.02, 20.0))]


def _randn(g, shape):
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _schedule_cases(seed, make_args):
    g = seeded(seed)
    cases = []
    for name, sched in _SCHEDULES:
        for shape in _SHAPES:
            for tv in (0.1, 0.5, 0.9):
                t = torch.full((shape[0],), tv, dtype=torch.float64)
                cases.append(Case(make_args(g, shape, t, sched), label=f"{name} schedule, data of shape {shape}, t = {tv}", t=tv))
    return cases


def _langevin_cases(seed=302):
    g = seeded(seed)
    return [Case((_randn(g, sh), _randn(g, sh), h, _randn(g, sh)), label=f"x of shape {sh}, step size {h}")
            for sh in _SHAPES for h in (0.01, 0.3)]


def _probe_cases(seed=304):
    g = seeded(seed)
    cases = []
    for sh in _SHAPES:
        d = int(torch.tensor(sh[1:]).prod())
        A = torch.randn(d, d, generator=g, dtype=torch.float64)
        fn = (lambda A, sh: lambda x: torch.tanh(x.reshape(x.shape[0], -1) @ A.T).reshape(x.shape) - x)(A, sh)
        v = torch.randint(0, 2, sh, generator=g).to(torch.float64) * 2 - 1
        cases.append(Case((fn, _randn(g, sh), v), label=f"a nonlinear score on x of shape {sh}, Rademacher v"))
    return cases


# ----------------------------------------------------------------------------- checkers
def check_dsm_target(fn: Callable) -> CheckResult:
    """Exercise 3.1: dsm_target(x_t, x0, t, schedule) -> shaped like x_t."""
    return check("3.1", fn, dsm_target, _schedule_cases(301, lambda g, sh, t, sc: (_randn(g, sh), _randn(g, sh), t, sc)))


def check_langevin_step(fn: Callable) -> CheckResult:
    """Exercise 3.2: langevin_step(x, score, step_size, z) -> shaped like x."""
    return check("3.2", fn, langevin_step, _langevin_cases())


def check_tweedie(fn: Callable) -> CheckResult:
    """Exercise 3.3: tweedie(x_t, score, t, schedule) -> shaped like x_t."""
    return check("3.3", fn, tweedie, _schedule_cases(303, lambda g, sh, t, sc: (_randn(g, sh), _randn(g, sh), t, sc)))


def check_hutchinson_probe(fn: Callable) -> CheckResult:
    """Exercise 3.4: hutchinson_probe(score_fn, x, v) -> (B,)."""
    return check("3.4", fn, hutchinson_probe, _probe_cases())


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "3.1": (check_dsm_target, dsm_target),
    "3.2": (check_langevin_step, langevin_step),
    "3.3": (check_tweedie, tweedie),
    "3.4": (check_hutchinson_probe, hutchinson_probe),
}
