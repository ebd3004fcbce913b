"""Checkers for the exercises of Chapter 4, the score SDE (monograph §4.1-4.5).

=========  ===============================  ==============================================
exercise   reader writes                    reference
=========  ===============================  ==============================================
4.1        ``vp_reverse_drift``             :func:`vp_reverse_drift`     (monograph §4.2-4.3)
4.2        ``euler_maruyama_step``          :func:`euler_maruyama_step`  (monograph §4.2)
4.3        ``hutchinson_divergence``        :func:`hutchinson_divergence` (monograph §4.5)
4.4        ``bits_per_dim``                 :func:`bits_per_dim`          (monograph §4.5)
=========  ===============================  ==============================================
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from diffedu._checks import append_dims
from diffedu.autodiff import hutchinson_trace
from .core import Case, CheckResult, check, seeded

__all__ = ["vp_reverse_drift", "euler_maruyama_step", "hutchinson_divergence", "bits_per_dim",
           "check_vp_reverse_drift", "check_euler_maruyama_step", "check_hutchinson_divergence",
           "check_bits_per_dim", "EXERCISES"]

BETA_MIN, BETA_MAX = 0.1, 20.0


def vp_reverse_drift(x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Reverse-SDE drift f(t) x - g(t)^2 score of the VP SDE with beta(t) = 0.1 + 19.9 t (monograph §4.2-4.3).

    f = -beta/2, g^2 = beta; x, score (B, ...), t (B,). Returns (B, ...).
    """
    beta = append_dims(BETA_MIN + t * (BETA_MAX - BETA_MIN), x)
    return -0.5 * beta * x - beta * score


def euler_maruyama_step(x: torch.Tensor, t: torch.Tensor, h: float, score: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One reverse-time Euler-Maruyama step of the same VP SDE from t to t - h (monograph §4.2).

    x_{t-h} = x - h (f x - g^2 score) + g sqrt(h) z.
    """
    beta = append_dims(BETA_MIN + t * (BETA_MAX - BETA_MIN), x)
    return x - h * (-0.5 * beta * x - beta * score) + torch.sqrt(beta * h) * z


def hutchinson_divergence(v_fn: Callable, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Hutchinson's estimate z^T (dv/dx) z of div v at x with probe z, shape (B,) (monograph §4.5)."""
    return hutchinson_trace(v_fn, x, probe=z)[1]


def bits_per_dim(log_p: torch.Tensor, num_dims: int, bin_width: float) -> torch.Tensor:
    """-(log p + D log bin_width) / (D log 2): the dequantised discrete NLL in bits per dimension (monograph §4.5)."""
    return -(log_p + num_dims * math.log(bin_width)) / (num_dims * math.log(2))


_SHAPES = [(1, 2), (16, 2), (6, 1, 8, 8)]


def _drift_cases(seed, step=False):
    g = seeded(seed)
    cases = []
    for shape in _SHAPES:
        for tv in (0.05, 0.5, 0.95):
            x = torch.randn(shape, generator=g, dtype=torch.float64)
            s = torch.randn(shape, generator=g, dtype=torch.float64)
            t = torch.full((shape[0],), tv, dtype=torch.float64)
            if step:
                z = torch.randn(shape, generator=g, dtype=torch.float64)
                cases.append(Case((x, t, 0.01, s, z), label=f"x of shape {shape}, t={tv}", t=tv))
            else:
                cases.append(Case((x, t, s), label=f"x of shape {shape}, t={tv}", t=tv))
    # per-example times
    x = torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64)
    s = torch.randn(8, 2, generator=g, dtype=torch.float64)
    z = torch.randn(8, 2, generator=g, dtype=torch.float64)
    cases.append(Case((x, t, 0.01, s, z) if step else (x, t, s), label="x (8, 2) with a different t per example"))
    return cases


def _div_cases(seed=403):
    g = seeded(seed)
    A = torch.randn(2, 2, generator=g, dtype=torch.float64)
    W = torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.3
    fields = [("a linear field", lambda x: x @ A.T, (5, 2)),
              ("tanh(x) * x", lambda x: torch.tanh(x) * x, (7, 3)),
              ("a nonlinear field on (B, 1, 2, 4)", lambda x: torch.sin(x.reshape(len(x), -1) @ W).reshape(x.shape), (4, 1, 2, 4))]
    cases = []
    for label, fn, shape in fields:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        z = torch.randint(0, 2, shape, generator=g).double() * 2 - 1
        cases.append(Case((fn, x, z), label=label))
    return cases


def _bpd_cases(seed=404):
    g = seeded(seed)
    return [Case((torch.randn(5, generator=g, dtype=torch.float64) * 30 - 100, d, w), label=f"D={d}, bin width {w}")
            for d, w in [(64, 1 / 8), (2, 0.5), (3072, 2 / 255)]]


def check_vp_reverse_drift(fn: Callable) -> CheckResult:
    """Exercise 4.1: f(t) x - g(t)^2 score for the VP SDE, any data shape."""
    return check("4.1", fn, vp_reverse_drift, _drift_cases(401))


def check_euler_maruyama_step(fn: Callable) -> CheckResult:
    """Exercise 4.2: one reverse Euler-Maruyama step."""
    return check("4.2", fn, euler_maruyama_step, _drift_cases(402, step=True))


def check_hutchinson_divergence(fn: Callable) -> CheckResult:
    """Exercise 4.3: z^T J z with one vector-Jacobian product."""
    return check("4.3", fn, hutchinson_divergence, _div_cases())


def check_bits_per_dim(fn: Callable) -> CheckResult:
    """Exercise 4.4: bits per dimension of a dequantised density."""
    return check("4.4", fn, bits_per_dim, _bpd_cases())


EXERCISES = {
    "4.1": (check_vp_reverse_drift, vp_reverse_drift),
    "4.2": (check_euler_maruyama_step, euler_maruyama_step),
    "4.3": (check_hutchinson_divergence, hutchinson_divergence),
    "4.4": (check_bits_per_dim, bits_per_dim),
}
