"""Checkers for the exercises of Chapter 8, guidance (monograph §8.1-8.3).

Each ``check_*`` compares the reader's function with the reference below on seeded random inputs
of several shapes ((B, 2) points, (B, 1, 8, 8) images), schedules, guidance scales and times, and
raises :class:`~diffedu.exercises.core.ExerciseFailed` with a diagnosis if it is wrong.

=========  ============================  ===========================================================
exercise   reader writes                 reference
=========  ============================  ===========================================================
8.1        ``cfg_eps``                   (1 + w) eps(x, t, c) - w eps(x, t, null)              (§8.2)
8.2        ``classifier_guided_eps``     eps(x, t) - w sigma_t grad_x log p_t(c | x)           (§8.1)
8.3        ``tilted_score``              (1 + w) grad log p_t(x | c) - w grad log p_t(x)       (§8.2)
8.4        ``gaussian_posterior_mean``   E[x0 | y] for x0 ~ N(mu, v I), y = M x0 + s n (masking)  (§8.3)
=========  ============================  ===========================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.schedules import VEGeometric, VPCosine, VPLinear
from diffedu.toy import labelled_mixture
from .core import Case, CheckResult, check, seeded

__all__ = ["cfg_eps", "classifier_guided_eps", "tilted_score", "gaussian_posterior_mean",
           "check_cfg_eps", "check_classifier_guided_eps", "check_tilted_score", "check_gaussian_posterior_mean",
           "EXERCISES"]


# ----------------------------------------------------------------------------- references
def cfg_eps(eps_cond, eps_uncond, w):
    """Classifier-free guidance in eps units: (1 + w) eps_c - w eps_null (monograph §8.2); w a float."""
    return (1 + w) * eps_cond - w * eps_uncond


def classifier_guided_eps(eps_uncond, grad_log_pc, t, schedule, w):
    """Classifier guidance in eps units: eps - w sigma_t grad_x log p_t(c | x), since score = -eps / sigma_t (monograph §8.1)."""
    return eps_uncond - w * append_dims(schedule.sigma(t), eps_uncond) * grad_log_pc


def tilted_score(mix, x, t, schedule, c, w):
    """Score of the tilted density p_t(x|c)^(1+w) / p_t(x)^w: (1 + w) score_t(x | c) - w score_t(x) (monograph §8.2).

    ``mix`` is a labelled :class:`diffedu.toy.GaussianMixture` (use ``mix.score_t(x, t, schedule, cond=c)``).
    """
    return (1 + w) * mix.score_t(x, t, schedule, cond=c) - w * mix.score_t(x, t, schedule)


def gaussian_posterior_mean(y, mask, mu, v, s):
    """E[x0 | y] for the prior x0 ~ N(mu, v I) and the masked measurement y = mask * x0 + s * n (monograph §8.3).

    Per pixel: observed (mask = 1) -> mu + v / (v + s^2) (y - mu); unobserved (mask = 0) -> mu.
    ``y``, ``mask``, ``mu`` shaped like the data; ``v``, ``s`` floats.
    """
    return mu + mask * v / (v + s**2) * (y - mu)


# ----------------------------------------------------------------------------- test inputs
_SHAPES = [(16, 2), (1, 3), (4, 1, 8, 8)]
_SCHEDULES = [("VP linear", VPLinear()), ("VP cosine", VPCosine()), ("VE", VEGeometric(0.02, 20.0))]


def _randn(g, shape):
    return torch.randn(shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- checkers
def check_cfg_eps(fn: Callable) -> CheckResult:
    """Exercise 8.1: cfg_eps(eps_cond, eps_uncond, w) -> shaped like eps_cond."""
    g = seeded(801)
    cases = [Case((_randn(g, sh), _randn(g, sh), w), label=f"eps of shape {sh}, w = {w}")
             for sh in _SHAPES for w in (0.5, 2.0, 7.5)]
    return check("8.1", fn, cfg_eps, cases)


def check_classifier_guided_eps(fn: Callable) -> CheckResult:
    """Exercise 8.2: classifier_guided_eps(eps_uncond, grad_log_pc, t, schedule, w) -> shaped like eps_uncond."""
    g = seeded(802)
    cases = []
    for name, sch in _SCHEDULES:
        for sh in _SHAPES:
            for tv in (0.1, 0.5, 0.9):
                t = torch.full((sh[0],), tv, dtype=torch.float64)
                cases.append(Case((_randn(g, sh), _randn(g, sh), t, sch, 1.5),
                                  label=f"{name} schedule, data of shape {sh}, t = {tv}, w = 1.5", t=tv))
    return check("8.2", fn, classifier_guided_eps, cases)


def check_tilted_score(fn: Callable) -> CheckResult:
    """Exercise 8.3: tilted_score(mix, x, t, schedule, c, w) -> (B, 2)."""
    g = seeded(803)
    mix = labelled_mixture()
    cases = []
    for name, sch in _SCHEDULES[:2]:
        for tv in (0.05, 0.4, 0.8):
            for w in (1.0, 4.0):
                x = 3 * _randn(g, (32, 2))
                t = torch.full((32,), tv, dtype=torch.float64)
                c = torch.randint(0, mix.num_classes, (32,), generator=g)
                cases.append(Case((mix, x, t, sch, c, w), label=f"{name} schedule, t = {tv}, w = {w}", t=tv))
    return check("8.3", fn, tilted_score, cases, rtol=1e-6, atol=1e-8)


def check_gaussian_posterior_mean(fn: Callable) -> CheckResult:
    """Exercise 8.4: gaussian_posterior_mean(y, mask, mu, v, s) -> shaped like y."""
    g = seeded(804)
    cases = []
    for sh in _SHAPES:
        for v, s in ((1.0, 0.1), (0.3, 0.5)):
            mask = (torch.rand(sh, generator=g) < 0.5).double()
            cases.append(Case((_randn(g, sh), mask, _randn(g, sh), v, s), label=f"data of shape {sh}, v = {v}, s = {s}"))
    return check("8.4", fn, gaussian_posterior_mean, cases)


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "8.1": (check_cfg_eps, cfg_eps),
    "8.2": (check_classifier_guided_eps, classifier_guided_eps),
    "8.3": (check_tilted_score, tilted_score),
    "8.4": (check_gaussian_posterior_mean, gaussian_posterior_mean),
}
