"""Checkers for the exercises of Chapter 2, the variational view: VAE to DDPM (monograph §2.1-2.2).

Each ``check_*`` compares the reader's function with the reference below on seeded random inputs
of several shapes ((B, 2) points, (B, 1, 8, 8) images), schedules (VP linear, VP cosine, VE) and
times, and raises :class:`~diffedu.exercises.core.ExerciseFailed` with a diagnosis if it is wrong.

=========  ===============================  ==================================================
exercise   reader writes                    reference
=========  ===============================  ==================================================
2.1        ``posterior_mean``               mean of q(x_s | x_t, x0)          (monograph §2.2)
2.2        ``elbo_step_kl``                 the ELBO's step KL with a model x0_hat (§2.2)
2.3        ``ancestral_step``               one DDPM step from an eps prediction (§2.2)
2.4        ``learned_log_variance``         improved DDPM's interpolated log-variance (§2.2)
=========  ===============================  ==================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.schedules import VEGeometric, VPCosine, VPLinear
from .core import Case, CheckResult, check, seeded

__all__ = ["posterior_mean", "elbo_step_kl", "ancestral_step", "learned_log_variance",
           "check_posterior_mean", "check_elbo_step_kl", "check_ancestral_step", "check_learned_log_variance",
           "EXERCISES"]


def _coefs(schedule, t, s, x):
    a_t, s_t = append_dims(schedule.alpha(t), x), append_dims(schedule.sigma(t), x)
    a_s, s_s = append_dims(schedule.alpha(s), x), append_dims(schedule.sigma(s), x)
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    return a_t, s_t, a_s, s_s, a_ts, var_ts


# ----------------------------------------------------------------------------- references
def posterior_mean(x_t, x0, t, s, schedule):
    """Mean of q(x_s | x_t, x0) = alpha_s sigma_{t|s}^2 / sigma_t^2 x0 + alpha_{t|s} sigma_s^2 / sigma_t^2 x_t (monograph §2.2).

    t, s: (B,) times with s < t; alpha_{t|s} = alpha_t / alpha_s, sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2.
    """
    a_t, s_t, a_s, s_s, a_ts, var_ts = _coefs(schedule, t, s, x_t)
    return a_s * var_ts / s_t**2 * x0 + a_ts * s_s**2 / s_t**2 * x_t


def elbo_step_kl(x0, x0_hat, t, s, schedule):
    """KL(q(x_s|x_t,x0) || p(x_s|x_t)) with p = q(x_s|x_t, x0_hat) and the same (tilde-beta) variance:
    (SNR_s - SNR_t) / 2 * ||x0 - x0_hat||^2 per example, SNR = alpha^2 / sigma^2 (monograph §2.2)."""
    snr_t = (schedule.alpha(t) / schedule.sigma(t)) ** 2
    snr_s = (schedule.alpha(s) / schedule.sigma(s)) ** 2
    return 0.5 * (snr_s - snr_t) * (x0 - x0_hat).pow(2).reshape(x0.shape[0], -1).sum(1)


def ancestral_step(x_t, eps_hat, t, s, schedule, z):
    """One DDPM step "denoise, then re-noise": x0_hat = (x_t - sigma_t eps_hat) / alpha_t, then
    x_s = posterior mean(x_t, x0_hat) + sqrt(tilde-beta) z, tilde-beta = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (monograph §2.2)."""
    a_t, s_t, a_s, s_s, a_ts, var_ts = _coefs(schedule, t, s, x_t)
    x0_hat = (x_t - s_t * eps_hat) / a_t
    mean = a_s * var_ts / s_t**2 * x0_hat + a_ts * s_s**2 / s_t**2 * x_t
    return mean + (var_ts * s_s**2 / s_t**2).sqrt() * z


def learned_log_variance(frac, t, s, schedule):
    """Improved DDPM: log var = frac log(beta) + (1 - frac) log(tilde-beta) with beta = sigma_{t|s}^2,
    tilde-beta = sigma_{t|s}^2 sigma_s^2 / sigma_t^2; ``frac`` is shaped like the data (monograph §2.2)."""
    a_t, s_t, a_s, s_s, a_ts, var_ts = _coefs(schedule, t, s, frac)
    return frac * torch.log(var_ts) + (1 - frac) * torch.log(var_ts * s_s**2 / s_t**2)


# ----------------------------------------------------------------------------- test inputs
_SHAPES = [(16, 2), (1, 3), (4, 1, 8, 8)]
_SCHEDULES = [("VP linear", VPLinear()), ("VP cosine", VPCosine()), ("VE", VEGeometric(0.02, 20.0))]


def _cases(seed: int, make_args) -> list[Case]:
    g = seeded(seed)
    cases = []
    for name, sched in _SCHEDULES:
        for shape in _SHAPES:
            for tv in (0.1, 0.5, 0.9):
                B = shape[0]
                t = torch.full((B,), tv, dtype=torch.float64)
                s = t - torch.rand(B, generator=g, dtype=torch.float64) * 0.05 - 0.01
                args = make_args(g, shape, t, s, sched)
                cases.append(Case(args, label=f"{name} schedule, data of shape {shape}, t = {tv}", t=tv))
    return cases


def _randn(g, shape):
    return torch.randn(shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- checkers
def check_posterior_mean(fn: Callable) -> CheckResult:
    """Exercise 2.1: posterior_mean(x_t, x0, t, s, schedule) -> shaped like x_t."""
    return check("2.1", fn, posterior_mean,
                 _cases(201, lambda g, sh, t, s, sc: (_randn(g, sh), _randn(g, sh), t, s, sc)))


def check_elbo_step_kl(fn: Callable) -> CheckResult:
    """Exercise 2.2: elbo_step_kl(x0, x0_hat, t, s, schedule) -> (B,)."""
    return check("2.2", fn, elbo_step_kl,
                 _cases(202, lambda g, sh, t, s, sc: (_randn(g, sh), _randn(g, sh), t, s, sc)))


def check_ancestral_step(fn: Callable) -> CheckResult:
    """Exercise 2.3: ancestral_step(x_t, eps_hat, t, s, schedule, z) -> shaped like x_t."""
    return check("2.3", fn, ancestral_step,
                 _cases(203, lambda g, sh, t, s, sc: (_randn(g, sh), _randn(g, sh), t, s, sc, _randn(g, sh))))


def check_learned_log_variance(fn: Callable) -> CheckResult:
    """Exercise 2.4: learned_log_variance(frac, t, s, schedule) -> shaped like frac."""
    return check("2.4", fn, learned_log_variance,
                 _cases(204, lambda g, sh, t, s, sc: (torch.rand(sh, generator=g, dtype=torch.float64), t, s, sc)))


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "2.1": (check_posterior_mean, posterior_mean),
    "2.2": (check_elbo_step_kl, elbo_step_kl),
    "2.3": (check_ancestral_step, ancestral_step),
    "2.4": (check_learned_log_variance, learned_log_variance),
}
