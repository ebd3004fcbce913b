"""Checkers for the exercises of Appendix B, from change of variables to Fokker-Planck (monograph Appendix B).

=========  ==============================  ======================================================
exercise   reader writes                   reference
=========  ==============================  ======================================================
B.1        ``divergence``                  :func:`divergence`: the exact div v = tr(dv/dx) by autograd
                                           (the rate of the instantaneous change of variables)
B.2        ``ou_log_density``              :func:`ou_log_density`: log p_t(x | x0) of the
                                           Ornstein-Uhlenbeck process
B.3        ``ou_fokker_planck_residual``   :func:`ou_fokker_planck_residual`: the Fokker-Planck
                                           residual of a log-density, in log form
=========  ==============================  ======================================================

The log-densities fed to B.3 are written here in plain torch (they travel to the grader's
sandbox by value and must not call the package functions that B.2 asks the reader to write).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from diffedu import autodiff, processes
from .core import Case, CheckResult, check, seeded

__all__ = ["divergence", "ou_log_density", "ou_fokker_planck_residual", "check_divergence",
           "check_ou_log_density", "check_ou_fokker_planck_residual", "EXERCISES"]


# ----------------------------------------------------------------------------- references
def divergence(v_fn: Callable, x: torch.Tensor) -> torch.Tensor:
    """div v(x) = sum_i d v_i / d x_i per example, shape (B,), exactly (monograph Appendix B, §4.5)."""
    return autodiff.jacobian_trace(v_fn, x)[1]


def ou_log_density(x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, theta: float, sigma: float) -> torch.Tensor:
    """log N(x; x0 e^{-theta t}, sigma^2 (1 - e^{-2 theta t}) / (2 theta) I), summed per example: (B,) (monograph Appendix B)."""
    return processes.ou_log_prob(x, x0, t, theta, sigma)


def _derivatives(log_p, x, t):
    """(d_t log p, grad_x log p, Laplacian log p) by autograd; x (B, D), t (B,)."""
    with torch.enable_grad():
        x, t = x.detach().requires_grad_(True), t.detach().requires_grad_(True)
        lp = log_p(x, t)
        gx, gt = torch.autograd.grad(lp.sum(), (x, t), create_graph=True, materialize_grads=True)
        lap = sum(torch.autograd.grad(gx[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1]))
    return gt.detach(), gx.detach(), lap.detach()


def ou_fokker_planck_residual(log_p: Callable, x: torch.Tensor, t: torch.Tensor, theta: float, sigma: float):
    """d_t log p - [theta D + theta x . grad log p + sigma^2/2 (Lap log p + |grad log p|^2)], shape (B,) (monograph Appendix B).

    The Fokker-Planck equation d_t p = theta div(x p) + sigma^2/2 Lap p of dX = -theta X dt + sigma dW,
    divided by p; zero for every density of the process. ``log_p(x, t)`` -> (B,), x (B, D), t (B,).
    """
    dt_lp, g, lap = _derivatives(log_p, x, t)
    rhs = theta * x.shape[1] + theta * (x * g).sum(1) + 0.5 * sigma**2 * (lap + g.pow(2).sum(1))
    return dt_lp - rhs


# ----------------------------------------------------------------------------- test inputs
def _fields(g):
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.5
    return [("a linear field x A^T", lambda x: x @ a.T, (6, 3)),
            ("a rotation plus contraction (2-D)", lambda x: torch.stack([-x[:, 1] - 0.3 * x[:, 0], x[:, 0]], 1), (5, 2)),
            ("tanh(x) * x^2", lambda x: torch.tanh(x) * x**2, (7, 2)),
            ("a nonlinear field on (B, 1, 2, 2)", lambda x: torch.sin(x.reshape(len(x), -1) @ w).reshape(x.shape), (4, 1, 2, 2))]


def _divergence_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    return [Case((fn, torch.randn(shape, generator=g, dtype=torch.float64)), label=label) for label, fn, shape in _fields(g)]


def _density_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    cases = []
    for shape, theta, sigma in (((8, 1), 1.0, 1.0), ((16, 2), 2.5, 0.5), ((4, 1, 3, 3), 0.5, 2.0)):
        for tv in (0.05, 0.5, 2.0):
            x = torch.randn(shape, generator=g, dtype=torch.float64)
            x0 = torch.randn(shape, generator=g, dtype=torch.float64)
            t = torch.full((shape[0],), tv, dtype=torch.float64)
            cases.append(Case((x, x0, t, theta, sigma), label=f"x of shape {shape}, t={tv}, theta={theta}, sigma={sigma}", t=tv))
    return cases


def _gaussian_log_p(mean0, var0, theta, sigma):
    """The OU marginal from N(mean0, var0 I): an exact solution of the Fokker-Planck equation (plain torch)."""
    def log_p(x, t):
        decay = torch.exp(-theta * t)[:, None]
        var = var0 * decay**2 + sigma**2 / (2 * theta) * (1 - decay**2)
        return (-0.5 * (x - mean0 * decay) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)
    return log_p


def _residual_cases(seed: int) -> list[Case]:
    g = seeded(seed)
    candidates = [
        ("the exact OU density (residual 0)", _gaussian_log_p(0.7, 0.4, 1.5, 0.8), 1.5, 0.8, 2),
        ("an OU density with the wrong sigma", _gaussian_log_p(-0.3, 0.2, 1.0, 1.0), 1.0, 0.5, 3),
        ("a drifting two-component mixture", lambda x, t: torch.logaddexp(-0.5 * ((x - 1 - t[:, None]) ** 2).sum(1),
                                                                          -0.5 * ((x + 1) ** 2).sum(1)), 2.0, 1.0, 2),
        ("a time-dependent quartic", lambda x, t: -(1 + t) * (x**4).sum(1) / 4 + t * x[:, 0], 0.5, 1.5, 1),
    ]
    cases = []
    for label, log_p, theta, sigma, d in candidates:
        for tv in (0.1, 0.8):
            x = torch.randn(9, d, generator=g, dtype=torch.float64)
            t = torch.full((9,), tv, dtype=torch.float64)
            cases.append(Case((log_p, x, t, theta, sigma), label=f"{label}, x (9, {d}), t={tv}", t=tv))
    return cases


# ----------------------------------------------------------------------------- checkers
def check_divergence(fn: Callable) -> CheckResult:
    """Exercise B.1: divergence(v_fn, x) -> (B,)."""
    return check("B.1", fn, divergence, _divergence_cases(2201), rtol=1e-8, atol=1e-10)


def check_ou_log_density(fn: Callable) -> CheckResult:
    """Exercise B.2: ou_log_density(x, x0, t, theta, sigma) -> (B,)."""
    return check("B.2", fn, ou_log_density, _density_cases(2202), rtol=1e-8, atol=1e-10)


def check_ou_fokker_planck_residual(fn: Callable) -> CheckResult:
    """Exercise B.3: ou_fokker_planck_residual(log_p, x, t, theta, sigma) -> (B,)."""
    return check("B.3", fn, ou_fokker_planck_residual, _residual_cases(2203), rtol=1e-6, atol=1e-8)


#: exercise id -> (checker, reference); the tests run every checker against its reference.
EXERCISES = {
    "B.1": (check_divergence, divergence),
    "B.2": (check_ou_log_density, ou_log_density),
    "B.3": (check_ou_fokker_planck_residual, ou_fokker_planck_residual),
}
