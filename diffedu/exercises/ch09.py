"""Checkers for the exercises of Chapter 9, fast solvers of the probability-flow ODE (monograph §9.1-9.5).

Each ``check_*`` compares the reader's function with the reference below on seeded random inputs
of several shapes ((B, 2) points, (B, 1, 8, 8) images), schedules (VP linear, VP cosine, the DDPM
table) and times, and raises :class:`~diffedu.exercises.core.ExerciseFailed` with a diagnosis if
it is wrong.

=========  ===============================  ==================================================
exercise   reader writes                    reference
=========  ===============================  ==================================================
9.1        ``ddim_step``                    one deterministic DDIM step (§9.3)
9.2        ``log_snr_grid``                 times uniform in the half log-SNR (§9.4)
9.3        ``dpm_pp_2m_step``               one DPM-Solver++(2M) step (§9.4)
9.4        ``ddim_eta_step``                one step of DDIM's eta family with given noise (§9.3)
=========  ===============================  ==================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.schedules import DiscreteSchedule, VPCosine, VPLinear
from .core import Case, CheckResult, check, seeded

__all__ = ["ddim_step", "log_snr_grid", "dpm_pp_2m_step", "ddim_eta_step",
           "check_ddim_step", "check_log_snr_grid", "check_dpm_pp_2m_step", "check_ddim_eta_step", "EXERCISES"]


# ----------------------------------------------------------------------------- references
def ddim_step(x_t, eps_hat, t, s, schedule):
    """Deterministic DDIM step t -> s < t: x_s = alpha_s x0_hat + sigma_s eps_hat with
    x0_hat = (x_t - sigma_t eps_hat) / alpha_t (monograph §9.3, eq. (9.2) Euler in sigma_bar). t, s: (B,)."""
    a_t, s_t = append_dims(schedule.alpha(t), x_t), append_dims(schedule.sigma(t), x_t)
    a_s, s_s = append_dims(schedule.alpha(s), x_t), append_dims(schedule.sigma(s), x_t)
    return a_s * (x_t - s_t * eps_hat) / a_t + s_s * eps_hat


def log_snr_grid(schedule, n_steps, t_start, t_end):
    """``n_steps + 1`` float64 times from t_start down to t_end, uniform in the half log-SNR
    lambda_t = log(alpha_t / sigma_t) (DPM-Solver's grid, monograph §9.4). Use schedule.half_log_snr and
    schedule.t_from_half_log_snr (schedule.log_snr / t_from_log_snr are the FULL log-SNR 2 lambda)."""
    ends = torch.tensor([float(t_start), float(t_end)], dtype=torch.float64)
    lam = schedule.half_log_snr(ends)
    grid = torch.linspace(float(lam[0]), float(lam[1]), n_steps + 1, dtype=torch.float64)
    return schedule.t_from_half_log_snr(grid)


def dpm_pp_2m_step(x_t, x0_now, x0_prev, t_prev, t, s, schedule):
    """One DPM-Solver++(2M) step t -> s (monograph §9.4): with h = lambda_s - lambda_t, r = (lambda_t - lambda_prev)/h,
    D = (1 + 1/(2r)) x0_now - 1/(2r) x0_prev and x_s = (sigma_s/sigma_t) x_t - alpha_s (e^{-h} - 1) D.
    x0_prev is the data prediction at the previous grid time t_prev > t. All times (B,)."""
    lp, lt, ls = (append_dims(schedule.half_log_snr(u), x_t) for u in (t_prev, t, s))
    h = ls - lt
    r = (lt - lp) / h
    D = (1 + 0.5 / r) * x0_now - (0.5 / r) * x0_prev
    s_t, s_s = append_dims(schedule.sigma(t), x_t), append_dims(schedule.sigma(s), x_t)
    a_s = append_dims(schedule.alpha(s), x_t)
    return (s_s / s_t) * x_t - a_s * torch.expm1(-h) * D


def ddim_eta_step(x_t, x0_hat, z, t, s, eta, schedule):
    """One step t -> s < t of DDIM's eta family (Song et al. 2021; monograph §9.3), with the noise z given:
    c = eta sigma_s sqrt(1 - (sigma_bar_s / sigma_bar_t)^2) (eta times the DDPM posterior std),
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) (x_t - alpha_t x0_hat) / sigma_t + c z. t, s: (B,); eta a float."""
    a_t, s_t = append_dims(schedule.alpha(t), x_t), append_dims(schedule.sigma(t), x_t)
    a_s, s_s = append_dims(schedule.alpha(s), x_t), append_dims(schedule.sigma(s), x_t)
    ratio = (s_s / a_s) / (s_t / a_t)
    c = eta * s_s * torch.sqrt(1 - ratio**2)
    eps_hat = (x_t - a_t * x0_hat) / s_t
    return a_s * x0_hat + torch.sqrt(s_s**2 - c**2) * eps_hat + c * z


# ----------------------------------------------------------------------------- test inputs
_SHAPES = [(16, 2), (1, 3), (4, 1, 8, 8)]
_SCHEDULES = [("VP linear", VPLinear()), ("VP cosine", VPCosine()), ("DDPM linear table", DiscreteSchedule.linear())]


def _randn(g, shape):
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _step_cases(seed: int, make_args) -> list[Case]:
    g = seeded(seed)
    cases = []
    for name, sched in _SCHEDULES:
        for shape in _SHAPES:
            for tv in (0.2, 0.5, 0.9):
                B = shape[0]
                t = torch.full((B,), tv, dtype=torch.float64)
                s = t - 0.05 - 0.1 * torch.rand(B, generator=g, dtype=torch.float64)
                t_prev = t + 0.02 + 0.05 * torch.rand(B, generator=g, dtype=torch.float64)
                cases.append(Case(make_args(g, shape, t_prev, t, s, sched), label=f"{name} schedule, data of shape {shape}, t = {tv}", t=tv))
    return cases


# ----------------------------------------------------------------------------- checkers
def check_ddim_step(fn: Callable) -> CheckResult:
    """Exercise 9.1: ddim_step(x_t, eps_hat, t, s, schedule) -> shaped like x_t."""
    return check("9.1", fn, ddim_step,
                 _step_cases(901, lambda g, sh, tp, t, s, sc: (_randn(g, sh), _randn(g, sh), t, s, sc)), rtol=1e-6, atol=1e-8)


def check_log_snr_grid(fn: Callable) -> CheckResult:
    """Exercise 9.2: log_snr_grid(schedule, n_steps, t_start, t_end) -> (n_steps + 1,) float64, decreasing."""
    cases = [Case((sc, n, ts, te), label=f"{name} schedule, {n} steps from t = {ts} to t = {te}")
             for name, sc in _SCHEDULES for n, ts, te in ((1, 0.9, 0.1), (10, 1.0, 1e-3), (25, 0.7, 0.05))]
    return check("9.2", fn, log_snr_grid, cases, rtol=1e-6, atol=1e-8)


def check_dpm_pp_2m_step(fn: Callable) -> CheckResult:
    """Exercise 9.3: dpm_pp_2m_step(x_t, x0_now, x0_prev, t_prev, t, s, schedule) -> shaped like x_t."""
    return check("9.3", fn, dpm_pp_2m_step,
                 _step_cases(903, lambda g, sh, tp, t, s, sc: (_randn(g, sh), _randn(g, sh), _randn(g, sh), tp, t, s, sc)),
                 rtol=1e-6, atol=1e-8)


def check_ddim_eta_step(fn: Callable) -> CheckResult:
    """Exercise 9.4: ddim_eta_step(x_t, x0_hat, z, t, s, eta, schedule) -> shaped like x_t, for eta in {0, 0.5, 1}."""
    cases = []
    for eta in (0.0, 0.5, 1.0):
        for c in _step_cases(904 + int(10 * eta), lambda g, sh, tp, t, s, sc: (_randn(g, sh), _randn(g, sh), _randn(g, sh), t, s, sc)):
            x_t, x0_hat, z, t, s, sc = c.args
            cases.append(Case((x_t, x0_hat, z, t, s, eta, sc), label=f"{c.label}, eta = {eta}", t=c.t))
    return check("9.4", fn, ddim_eta_step, cases, rtol=1e-6, atol=1e-8)


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "9.1": (check_ddim_step, ddim_step),
    "9.2": (check_log_snr_grid, log_snr_grid),
    "9.3": (check_dpm_pp_2m_step, dpm_pp_2m_step),
    "9.4": (check_ddim_eta_step, ddim_eta_step),
}
