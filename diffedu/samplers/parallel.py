"""Parallel sampling: ParaDiGMS, Picard iterations over a sliding window of the time grid (monograph §9.8).

A sequential sampler on the grid t_0 > t_1 > ... > t_n is a chain x_{j+1} = Phi_j(x_j) of one-step
maps (a DDIM step, an Euler step). Written with the increments d_j(x) = Phi_j(x) - x it is the
fixed point of

    x_{j+1} = x_a + sum_{m=a}^{j} d_m(x_m)          (j = a, ..., a + W - 1; x_a known),

the discrete Picard integral equation of the PF-ODE on the window [a, a + W). ParaDiGMS (Shih et
al. 2023) iterates it: every Picard sweep evaluates the model at *all* W points of the window in
one batched call (the W evaluations are independent given the previous sweep) and replaces every
x_{j+1} by x_a plus the prefix sum of the increments. The first point of the window is exact
after one sweep, the k-th after at most k sweeps, so the fixed point is the sequential sampler's
own output; on a smooth problem far fewer sweeps than steps suffice, because the Picard error
falls like (window's Lipschitz constant)^k / k!. After each sweep the window slides past the
points whose update was below the tolerance ``tol`` times the noise scale of their step (the
standard deviation of the DDPM posterior step q(x_{j+1} | x_j, x0), as in the paper), and the new
points are initialised with the last state of the old window.

The model sees W times as many points per call and the sampler makes fewer *sequential* calls
("rounds"); whether that is faster in wall-clock depends on how much of the model's cost a batch
of W B points amortises (on a GPU, much; on a CPU, little: see ``benchmarks/paradigms.py``).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from diffedu._checks import check_int, check_positive
from diffedu.param import Prediction

from .ode import Times, _lin, _setup

__all__ = ["sample_paradigms"]

_STEPS = ("ddim", "euler")


def _step_coefficients(g, step: str, lo: int, hi: int):
    """Per-point Python-float coefficients (c_x, c_x0, c_eps) of the one-step maps Phi_j for j in [lo, hi):
    Phi_j(x) = c_x x + c_x0 x0_hat(x, t_j) + c_eps eps_hat(x, t_j).

    ``"ddim"``: x_{j+1} = alpha_{j+1} x0_hat + sigma_{j+1} eps_hat (deterministic DDIM, = exponential Euler of
    the data form (9.4) and of the noise form (9.3), monograph §9.3). ``"euler"``: explicit Euler of the
    PF-ODE in t, x_{j+1} = x_j + (t_{j+1} - t_j) (alpha'_j x0_hat + sigma'_j eps_hat) (monograph §9.1).
    """
    if step == "ddim":
        return [(0.0, g.alpha[j + 1], g.sigma[j + 1]) for j in range(lo, hi)]
    return [(1.0, (g.t[j + 1] - g.t[j]) * g.d_alpha[j], (g.t[j + 1] - g.t[j]) * g.d_sigma[j]) for j in range(lo, hi)]


def _noise_scale(g, j: int) -> float:
    """Standard deviation of the DDPM posterior step from t_j to t_{j+1}: sigma_{j+1} sqrt(1 - e^{2 (lambda_j - lambda_{j+1})}).

    ParaDiGMS's tolerance unit for the point x_{j+1}; 0 on the step onto the data (sigma = 0), where a point
    only counts as converged once it stops changing (it is then the window's exact first point anyway).
    """
    if g.sigma[j + 1] == 0:
        return 0.0
    d = g.lam[j] - g.lam[j + 1]  # <= 0; -inf where alpha_j = 0
    return g.sigma[j + 1] * math.sqrt(max(0.0, -math.expm1(2 * d)))


def _window_sweep(model, buf, g, step, a: int, b: int, cond):
    """One Picard sweep over the window [a, b): the model at all b - a points in ONE batched call; returns
    (new states of points a+1..b, shape (b - a, B, ...), the batched Prediction)."""
    L, B = b - a, buf.shape[1]
    xs = buf[a:b]
    t = torch.tensor(g.t[a:b], dtype=buf.dtype, device=buf.device).repeat_interleave(B)
    c = cond if cond is None else torch.cat([cond] * L)
    p = model(xs.reshape(L * B, *buf.shape[2:]), t, c)
    coef = _step_coefficients(g, step, a, b)
    shape = (L,) + (1,) * (buf.ndim - 1)
    cx, c0, ce = (torch.tensor(v, dtype=buf.dtype, device=buf.device).reshape(shape) for v in zip(*coef))
    new = c0 * p.x0.reshape(xs.shape) + ce * p.eps.reshape(xs.shape)
    if any(coef_j[0] for coef_j in coef):
        new = new + cx * xs
    out = torch.cumsum(new - xs, 0).add_(buf[a])  # x_a + sum_{m <= j} d_m(x_m)
    out[0] = _first_point(g, step, a, buf[a], p.x0[:B], p.eps[:B])
    return out, p


def _first_point(g, step, a, x, x0, eps):
    """Phi_a(x_a) with the sequential sampler's own arithmetic, so that window = 1 *is* sample_ddim / sample_euler, bit for bit."""
    if step == "ddim":
        return _lin(g.alpha[a + 1], x0, math.sqrt(max(g.sigma[a + 1] ** 2, 0.0)), eps)
    return _lin(1.0, x, g.t[a + 1] - g.t[a], _lin(g.d_alpha[a], x0, g.d_sigma[a], eps))


def sample_paradigms(model, x: torch.Tensor, ts: Times, *, step: str = "ddim", window: int = 8, tol: float = 1e-3,
                     max_iters: Optional[int] = None, cond=None, callback: Optional[Callable] = None,
                     progress: bool = False) -> torch.Tensor:
    """ParaDiGMS (Shih et al. 2023; monograph §9.8): the sequential ``step`` sampler on ``ts``, solved by Picard sweeps over a sliding window.

    Each round evaluates the model on the ``window`` points [a, a + W) of the grid in one batched
    call, sets x_{j+1} = x_a + sum_{m=a}^{j} (Phi_m(x_m) - x_m) for every point of the window, and
    slides the window to the first point whose update exceeded ``tol`` times its step's noise scale
    (per example, RMS over the coordinates; the window always advances by at least one point).
    ``step``: ``"ddim"`` (deterministic DDIM, the exponential Euler step of the data form (9.4)) or
    ``"euler"`` (Euler in t). ``window = 1`` is the sequential sampler (:func:`~diffedu.samplers.ode.sample_ddim`
    / :func:`~diffedu.samplers.ode.sample_euler`); with ``tol`` -> 0 the result tends to it for any
    window. ``max_iters`` (None: no cap) accepts a point as converged after that many sweeps.
    ``callback(step)`` is called once per round (the number of calls is the number of sequential
    model calls): ``step.i`` the round, ``step.t``/``step.x`` the window's new first point (after the
    last round: ts[-1] and the output), ``step.prediction`` the model's at the old first point.
    """
    if step not in _STEPS:
        raise ValueError(f"step: expected one of {list(_STEPS)} (the one-step map iterated), got {step!r}")
    check_int(window, "window", 1)
    check_positive(tol, "tol", strict=False)
    check_int(max_iters, "max_iters", 1, allow_none=True)
    g, loop = _setup(model, x, ts, callback, progress, f"ParaDiGMS ({step}, window {window})")
    n, B = g.n_steps, x.shape[0]
    buf = x.unsqueeze(0).repeat(n + 1, *([1] * x.ndim))  # every point starts at x_T (Picard's initial guess)
    sweeps = [0] * (n + 1)
    a = 0
    for r in loop:  # at most n rounds: the window advances by >= 1 point per round
        b = min(a + window, n)
        out, p = _window_sweep(model, buf, g, step, a, b, cond)
        err = (out - buf[a + 1:b + 1]).reshape(b - a, B, -1).pow(2).mean(-1).sqrt().amax(-1).tolist()
        buf[a + 1:b + 1] = out
        stride = b - a
        for k in range(b - a):
            sweeps[a + 1 + k] += 1
            if err[k] > tol * _noise_scale(g, a + k) and (max_iters is None or sweeps[a + 1 + k] < max_iters):
                stride = k + 1  # points a+1..a+k converged; a+k+1 was computed from them, so it starts the next window
                break
        first = Prediction(x0=p.x0[:B], eps=p.eps[:B], x_t=buf[a], t=torch.full((B,), g.t[a], dtype=x.dtype, device=x.device), schedule=g.schedule)
        a_new = a + stride
        buf[b + 1:min(a_new + window, n) + 1] = buf[b]  # new points of the window start from the old window's last state
        loop.report(r, g.t[a_new], buf[a_new], first)
        a = a_new
        if a >= n:
            break
    return buf[n].clone()
