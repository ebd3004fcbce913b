"""Deterministic samplers of the probability-flow ODE, from Euler to DPM-Solver++ (monograph §9.1-9.6, Table 9.1).

The PF-ODE of x_t = alpha_t x0 + sigma_t eps (monograph §4.4) is *semi-linear*:

    dx/dt = (alpha'_t / alpha_t) x  +  (sigma'_t - sigma_t alpha'_t / alpha_t) E[eps | x_t].          (9.1)

Two changes of variable make its structure plain (monograph §9.2). With the half log-SNR
lambda_t = log(alpha_t / sigma_t) and sigma_bar = sigma_t / alpha_t = exp(-lambda_t),

    d(x / alpha) / d sigma_bar = eps(x, t)                                   (the "DDIM ODE")   (9.2)
    x_s = (alpha_s/alpha_t) x_t - alpha_s  int_{lambda_t}^{lambda_s} e^{-lambda} eps  d lambda   (9.3)
    x_s = (sigma_s/sigma_t) x_t + sigma_s  int_{lambda_t}^{lambda_s} e^{ lambda} x0   d lambda   (9.4)

(9.3)/(9.4) are exact (variation of constants); a solver only approximates the integral.
Table 9.1 of the monograph, as implemented here:

=========================  ==========================================  ================================
function                   what it approximates                        classical analogue
=========================  ==========================================  ================================
``sample_euler``           dx/dt = velocity, one slope per step        explicit Euler (order 1)
``sample_heun``            (9.2) in sigma_bar, trapezoid (EDM)         Heun / explicit trapezoid (2)
``sample_ddim``            (9.3) with eps constant = Euler of (9.2)    exponential Euler (1)
``sample_dpm_solver``      (9.3), eps Taylor-expanded in lambda        exponential Runge-Kutta (1-3)
``sample_dpm_solver_pp_2s``  (9.4), x0 from one midpoint stage          exponential midpoint RK (2)
``sample_dpm_solver_pp_2m``  (9.4), x0 extrapolated from the last step  exponential Adams-Bashforth (2)
``sample_dpm_solver_pp_3m``  (9.4), x0 quadratic through three steps    exponential Adams-Bashforth (3)
``sample_deis``            (9.3), eps a polynomial in lambda            exp. Adams-Bashforth (1-3)
=========================  ==========================================  ================================

**The last step.** Every grid here may end at the data, sigma = 0, where lambda = +inf: a step
"in lambda" to it is infinitely long. Peer libraries then jump straight to the model's x0
prediction, which is an Euler step of (9.2) -- first order, so it caps every higher-order
solver at order 2 (or, from a fixed sigma_min, at no convergence at all). Here a step that
lands on sigma = 0 is taken in sigma_bar, where it is an ordinary finite step of (9.2): the
multistep solvers use an Adams-Bashforth step of their own order on the stored eps values, the
single-step solvers an explicit midpoint step (order 2, which keeps a third-order method third
order because it is one step). Neither evaluates the model at sigma = 0. See monograph §9.5 and
the chapter "Fast solvers".

Conventions: ``model(x_t, t, cond) -> Prediction`` with ``model.schedule``; ``ts`` is a
decreasing float64 grid (:mod:`diffedu.samplers.grids`) or a :class:`~diffedu.samplers.grids.Grid`
built from it once (the schedule's coefficients at the grid times, reused across batches); times
are cast to x's dtype only at the model call. ``callback(step)`` sees one
:class:`~diffedu.samplers.record.Step` after step i: ``step.t = ts[i + 1]``, ``step.x`` the state
there, ``step.prediction`` the model's prediction at (x_i, ts[i]); ``progress=True`` shows a tqdm
bar. Every function returns x at ts[-1].
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import numpy as np
import torch

from diffedu._checks import check_data, check_model
from diffedu.param import Prediction
from .grids import Grid, as_grid
from .grids import grid_ddpm, grid_karras, grid_log_snr, grid_power, grid_uniform  # noqa: F401  (read as ode.grid_*)
from .record import StepLoop
from .record import trajectory  # noqa: F401  (kept importable as ode.trajectory)

#: what every solver takes as its time grid: a decreasing float64 tensor, or a Grid built from one
Times = Union[torch.Tensor, Grid]

__all__ = [
    "sample_euler",
    "sample_heun",
    "sample_heun_t",
    "sample_ddim",
    "sample_dpm_solver",
    "sample_dpm_solver_pp_2s",
    "sample_dpm_solver_pp_2m",
    "sample_dpm_solver_pp_3m",
    "sample_deis",
    "solve_pf_ode_reference",
    "SOLVERS",
]


# ------------------------------------------------------------------------------------------ shared
def _setup(model, x, ts, callback, progress, desc, stages=False):
    """Validate, then the solver's Grid (``ts`` itself if it is one; with the stages of a single-step
    solver if ``stages``) and its StepLoop over the grid's steps."""
    check_model(model)
    check_data(x, "x")
    g = as_grid(model.schedule, ts, stages=stages)
    return g, StepLoop(g.n_steps, callback, progress, desc)


#: largest sigma_bar = sigma/alpha a solver that divides by alpha (or steps in lambda) may start from:
#: x / alpha loses about log10(sigma_bar) of float64's 16 digits to cancellation (VPCosine: alpha_1 ~ 6e-17).
_MAX_START_SIGMA_BAR = 1e8


def _check_alpha_start(g):
    sb = g.sigma_bar[0]
    if not math.isfinite(sb) or sb > _MAX_START_SIGMA_BAR:
        raise ValueError(f"ts: alpha_t = {g.alpha[0]:.3g} at t = {g.t[0]} (sigma/alpha = {sb:.3g}); this solver divides "
                         f"by alpha_t or steps in lambda = -log(sigma/alpha), so it needs a start where sigma/alpha <= "
                         f"{_MAX_START_SIGMA_BAR:.0e} (e.g. t = 0.999), or use sample_euler / sample_ddim")
    return g


def _predict(model, x: torch.Tensor, t: float, cond) -> Prediction:
    """One model evaluation at the float64 time ``t``, cast to x's dtype here (and only here)."""
    tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    return model(x, tt, cond)


def _check_order(order, allowed):
    if isinstance(order, bool) or order not in allowed:
        raise ValueError(f"order: expected one of {list(allowed)}, got {order!r}")
    return order


def _lin(c0: float, t0: torch.Tensor, *rest) -> torch.Tensor:
    """c0 t0 + c1 t1 + ... with Python-float coefficients: one kernel per term (``rest`` = c1, t1, c2, t2, ...).

    Every update below is such a linear combination of x and stored predictions; writing it
    this way, with the scalars folded in float64 first, keeps the solver's own cost per step at
    a few elementwise kernels (the "overhead" of the benchmark).
    """
    if rest and c0 == 1.0:  # x + c1 t1 + ...: skip the multiplication by one
        out, start = torch.add(t0, rest[1], alpha=rest[0]), 2
    else:
        out, start = t0 * c0, 0
    for k in range(start, len(rest), 2):
        out = torch.add(out, rest[k + 1], alpha=rest[k])
    return out


# Gauss-Legendre rules on [-1, 1]: 3 points are exact for the polynomials of the sigma_bar steps,
# 16 points integrate e^{-lambda} x (polynomial of degree <= 2) to float precision for steps h <~ 3.
_GL = {k: tuple(map(tuple, np.polynomial.legendre.leggauss(k))) for k in (3, 16)}


def _lagrange_integrals(nodes, a: float, b: float, exp_weight: bool = False):
    """w_j = int_a^b L_j(u) du (or int_a^b e^{-u} L_j(u) du) for the Lagrange basis L_j through ``nodes``.

    These are the Adams-Bashforth weights (plain, or exponential for the log-SNR form (9.3)), by
    Gauss-Legendre quadrature in float64 (plain Python floats: a few tens of microseconds per step).
    """
    gx, gw = _GL[16 if exp_weight else 3]
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    us = [mid + half * x for x in gx]
    ws = [half * w * math.exp(-u) for w, u in zip(gw, us)] if exp_weight else [half * w for w in gw]
    out = []
    for j, nj in enumerate(nodes):
        others = [nm for m, nm in enumerate(nodes) if m != j]
        den = 1.0
        for nm in others:
            den *= nj - nm
        acc = 0.0
        for u, w in zip(us, ws):
            num = w
            for nm in others:
                num *= u - nm
            acc += num
        out.append(acc / den)
    return out


def _ab_sigma_bar_step(x, g, i, hist, order):
    """Adams-Bashforth step of (9.2) from grid point i to i+1 using up to ``order`` stored (sigma_bar_j, eps_j), newest first."""
    use = hist[:order]
    w = _lagrange_integrals([sb for sb, _ in use], g.sigma_bar[i], g.sigma_bar[i + 1])
    terms = [c for wj, (_, e) in zip(w, use) for c in (g.alpha[i + 1] * wj, e)]
    return _lin(g.alpha[i + 1] / g.alpha[i], x, *terms)  # alpha_{i+1} (x_i / alpha_i + sum_j w_j eps_j)


def _midpoint_to_data(model, x, g, i, eps_i, cond):
    """Explicit midpoint step of (9.2) from grid point i to sigma_bar = 0 (the data): order 2, no evaluation at sigma = 0."""
    sb = g.sigma_bar[i]
    tm, am, _ = g.stage(i, 0.5)  # on a final step: sigma_bar_i / 2
    x_m = _lin(am / g.alpha[i], x, -0.5 * am * sb, eps_i)  # alpha_m (x_i / alpha_i - sigma_bar_i / 2 eps_i)
    eps_m = _predict(model, x_m, tm, cond).eps
    return _lin(g.alpha[i + 1] / g.alpha[i], x, -g.alpha[i + 1] * sb, eps_m)


# ------------------------------------------------------------------------------------------ classical
def _field(model, x, t, da, ds, cond):
    """(PF-ODE velocity alpha' E[x0|x] + sigma' E[eps|x], the prediction it came from) (monograph §4.4, §6.3)."""
    p = _predict(model, x, t, cond)
    return _lin(da, p.x0, ds, p.eps), p


def sample_euler(model, x: torch.Tensor, ts: Times, *, cond=None, callback: Optional[Callable] = None,
                 progress: bool = False) -> torch.Tensor:
    """Explicit Euler on the PF-ODE dx/dt = alpha'_t E[x0|x] + sigma'_t E[eps|x] in the grid's own time t (monograph §4.4, §9.1).

    Works for every schedule (for rectified flow it is the usual flow-matching sampler). First
    order: its error falls like 1/NFE. One model evaluation per step.
    """
    g, loop = _setup(model, x, ts, callback, progress, "Euler")
    for i in loop:
        v, p = _field(model, x, g.t[i], g.d_alpha[i], g.d_sigma[i], cond)
        x = loop.report(i, g.t[i + 1], _lin(1.0, x, g.t[i + 1] - g.t[i], v), p)
    return x


def sample_heun(model, x: torch.Tensor, ts: Times, *, cond=None, callback: Optional[Callable] = None,
                progress: bool = False) -> torch.Tensor:
    """Heun's method (explicit trapezoid) on the DDIM ODE (9.2), d(x/alpha)/d sigma_bar = eps -- EDM's deterministic sampler (Karras et al. 2022, Alg. 1; monograph §9.1-9.2).

    EDM integrates in sigma on the scaled state x/s(t); for a general schedule that is Heun in
    sigma_bar = sigma_t/alpha_t on x_bar = x/alpha_t: the Euler predictor
    x_bar' = x_bar_i + (sigma_bar_{i+1} - sigma_bar_i) eps_i, then the average of eps at both ends.
    In this variable the right-hand side eps is smooth up to the data, so the method is second
    order (in t, sigma'_t ~ 1/sqrt(t) near the data makes the same trapezoid stiff there: see
    :func:`sample_heun_t`). As in EDM the correction is skipped on a step that ends at
    sigma = 0 (eps is not evaluated at the data); that single Euler step has local error
    O(h^2) and keeps the method second order. With the :class:`~diffedu.schedules.EDM` schedule
    and :func:`grid_karras` this is exactly EDM's sampler. 2 evaluations per step (1 on a final
    step to sigma = 0). Needs alpha_t > 0 on the grid.
    """
    g, loop = _setup(model, x, ts, callback, progress, "Heun")
    _check_alpha_start(g)
    p = _predict(model, x, g.t[0], cond)  # the Euler slope eps_i of the next step comes from p
    for i in loop:
        p_i, h, r = p, g.sigma_bar[i + 1] - g.sigma_bar[i], g.alpha[i + 1] / g.alpha[i]
        x_pred = _lin(r, x, g.alpha[i + 1] * h, p_i.eps)  # alpha_{i+1} (x_bar_i + h eps_i)
        if g.sigma[i + 1] > 0:
            eps_next = _predict(model, x_pred, g.t[i + 1], cond).eps
            x = _lin(r, x, 0.5 * g.alpha[i + 1] * h, p_i.eps, 0.5 * g.alpha[i + 1] * h, eps_next)
            if i + 1 < g.n_steps:  # EDM re-evaluates at the corrected point: the next step's Euler slope
                p = _predict(model, x, g.t[i + 1], cond)
        else:
            x = x_pred
        loop.report(i, g.t[i + 1], x, p_i)
    return x


def sample_heun_t(model, x: torch.Tensor, ts: Times, *, cond=None, callback: Optional[Callable] = None,
                  progress: bool = False) -> torch.Tensor:
    """Heun's method on the PF-ODE dx/dt = alpha'_t E[x0|x] + sigma'_t E[eps|x] in the grid's own time t (monograph §4.4, §9.1).

    The same trapezoid as :func:`sample_heun` but in the variable t; kept to show that *the
    variable matters*: for VP schedules sigma'_t ~ 1/sqrt(t) blows up at the data, the field is
    not smooth in t there, and the measured order drops below 2 on grids that end at sigma = 0.
    Works for every schedule, including alpha_t = 0 at t = 1 (rectified flow). 2 evaluations per
    step (1 on a final step to sigma = 0).
    """
    g, loop = _setup(model, x, ts, callback, progress, "Heun in t")
    for i in loop:
        h = g.t[i + 1] - g.t[i]
        v, p = _field(model, x, g.t[i], g.d_alpha[i], g.d_sigma[i], cond)
        x_pred = _lin(1.0, x, h, v)
        if g.sigma[i + 1] > 0:
            v2, _ = _field(model, x_pred, g.t[i + 1], g.d_alpha[i + 1], g.d_sigma[i + 1], cond)
            x_pred = _lin(1.0, x, 0.5 * h, v, 0.5 * h, v2)
        x = loop.report(i, g.t[i + 1], x_pred, p)
    return x


# ------------------------------------------------------------------------------------------ DDIM
def sample_ddim(model, x: torch.Tensor, ts: Times, *, eta: float = 0.0, cond=None,
                generator: Optional[torch.Generator] = None, callback: Optional[Callable] = None,
                progress: bool = False) -> torch.Tensor:
    """DDIM (Song, Meng, Ermon 2021; monograph §9.3): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z.

    c = eta sigma_s sqrt(1 - (sigma_bar_s / sigma_bar_t)^2) (= sqrt(1 - SNR_s^-1 SNR_t)) is the
    standard deviation of the DDPM posterior q(x_s | x_t, x0) times eta: eta = 1 is ancestral
    sampling, eta = 0 the deterministic sampler, which equals exponential Euler of (9.3),
    DPM-Solver-1 and Euler of the DDIM ODE (9.2) to float precision. ``generator`` drives z.
    """
    g, loop = _setup(model, x, ts, callback, progress, "DDIM")
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not (eta >= 0):
        raise ValueError(f"eta: expected a float >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta!r}")
    for i in loop:
        p = _predict(model, x, g.t[i], cond)
        a_s, s_s = g.alpha[i + 1], g.sigma[i + 1]
        c = 0.0
        if eta and s_s > 0:  # 1 - r^2 = (1 - r)(1 + r) with r = sigma_bar_s / sigma_bar_t = e^{lambda_t - lambda_s}
            d = g.lam[i] - g.lam[i + 1]
            c = eta * s_s * math.sqrt(max(0.0, -math.expm1(d) * (1 + math.exp(d))))
        x = _lin(a_s, p.x0, math.sqrt(max(s_s**2 - c**2, 0.0)), p.eps)
        if c > 0:
            x = x + c * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        loop.report(i, g.t[i + 1], x, p)
    return x


# ------------------------------------------------------------------------------------------ DPM-Solver
def sample_dpm_solver(model, x: torch.Tensor, ts: Times, *, order: int = 2, cond=None,
                      callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """Single-step DPM-Solver-1/2/3 (Lu et al. 2022, Algs. 1-2 with r1 = 1/2; r1, r2 = 1/3, 2/3; monograph §9.4).

    Exponential Runge-Kutta for (9.3): with h = lambda_s - lambda_t (half log-SNR),
    order 1:  x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps_t                     (= DDIM)
    order 2:  adds  - sigma_s (e^h - 1) (eps(u, s1) - eps_t) / (2 r1)  at the stage u at lambda_t + r1 h
    order 3:  two stages, the second using the first's difference, then phi_2-weighted correction.
    ``order`` evaluations per step; a step that lands on sigma = 0 is a midpoint step of (9.2).
    """
    _check_order(order, (1, 2, 3))
    g, loop = _setup(model, x, ts, callback, progress, f"DPM-Solver-{order}", stages=order > 1)
    _check_alpha_start(g)
    for i in loop:
        a_t, lt = g.alpha[i], g.lam[i]
        p = _predict(model, x, g.t[i], cond)
        eps_t = p.eps
        if g.sigma[i + 1] == 0:
            x = (_lin(g.alpha[i + 1] / a_t, x, -g.alpha[i + 1] * g.sigma[i] / a_t, eps_t) if order == 1
                 else _midpoint_to_data(model, x, g, i, eps_t, cond))
            loop.report(i, g.t[i + 1], x, p)
            continue
        a_s, s_s, h = g.alpha[i + 1], g.sigma[i + 1], g.lam[i + 1] - lt
        e1 = s_s * math.expm1(h)
        if order == 1:
            x = _lin(a_s / a_t, x, -e1, eps_t)
        elif order == 2:
            r1 = 0.5
            t1, a1, s1 = g.stage(i, r1)
            u = _lin(a1 / a_t, x, -s1 * math.expm1(r1 * h), eps_t)
            eps_1 = _predict(model, u, t1, cond).eps
            c = e1 / (2 * r1)  # x_s = (a_s/a_t) x - e1 eps_t - c (eps_1 - eps_t)
            x = _lin(a_s / a_t, x, c - e1, eps_t, -c, eps_1)
        else:
            r1, r2 = 1 / 3, 2 / 3
            t1, a1, s1 = g.stage(i, r1)
            t2, a2, s2 = g.stage(i, r2)
            u1 = _lin(a1 / a_t, x, -s1 * math.expm1(r1 * h), eps_t)
            eps_1 = _predict(model, u1, t1, cond).eps
            c1 = s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)  # u2 = ... - c1 (eps_1 - eps_t)
            u2 = _lin(a2 / a_t, x, c1 - s2 * math.expm1(r2 * h), eps_t, -c1, eps_1)
            eps_2 = _predict(model, u2, t2, cond).eps
            c2 = s_s / r2 * (math.expm1(h) / h - 1)  # x_s = ... - c2 (eps_2 - eps_t)
            x = _lin(a_s / a_t, x, c2 - e1, eps_t, -c2, eps_2)
        loop.report(i, g.t[i + 1], x, p)
    return x


def sample_dpm_solver_pp_2s(model, x: torch.Tensor, ts: Times, *, cond=None,
                            callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1 with r = 1/2; monograph §9.4): exponential midpoint for the data form (9.4).

    u = (sigma_m/sigma_t) x_t + alpha_m (1 - e^{-h/2}) x0_t at lambda_m = lambda_t + h/2, then
    x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) x0(u, m). 2 evaluations per step; a step
    that lands on sigma = 0 is a midpoint step of (9.2).
    """
    g, loop = _setup(model, x, ts, callback, progress, "DPM-Solver++(2S)", stages=True)
    _check_alpha_start(g)  # the midpoint in lambda of a step from lambda = -inf is undefined
    for i in loop:
        p = _predict(model, x, g.t[i], cond)
        if g.sigma[i + 1] == 0:
            x = loop.report(i, g.t[i + 1], _midpoint_to_data(model, x, g, i, p.eps, cond), p)
            continue
        s_t, h = g.sigma[i], g.lam[i + 1] - g.lam[i]
        tm, am, sm = g.stage(i, 0.5)
        u = _lin(sm / s_t, x, -am * math.expm1(-0.5 * h), p.x0)
        d = _predict(model, u, tm, cond).x0
        x = loop.report(i, g.t[i + 1], _lin(g.sigma[i + 1] / s_t, x, -g.alpha[i + 1] * math.expm1(-h), d), p)
    return x


def sample_dpm_solver_pp_2m(model, x: torch.Tensor, ts: Times, *, cond=None,
                            callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2; monograph §9.4): exponential Adams-Bashforth-2 for (9.4).

    With r = h_prev / h, D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1} and
    x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) D; the first step is DDIM. One evaluation per
    step; a step that lands on sigma = 0 is a second-order Adams-Bashforth step of (9.2).
    """
    g, loop = _setup(model, x, ts, callback, progress, "DPM-Solver++(2M)")
    prev, hist = None, []
    for i in loop:
        p = _predict(model, x, g.t[i], cond)
        hist = [(g.sigma_bar[i], p.eps)] + hist[:1]
        if g.sigma[i + 1] == 0:
            x = loop.report(i, g.t[i + 1], _ab_sigma_bar_step(x, g, i, hist, 2), p)
            continue
        h = g.lam[i + 1] - g.lam[i]
        c = -g.alpha[i + 1] * math.expm1(-h)  # x_s = (sigma_s/sigma_t) x + c D
        if prev is None:
            x_new = _lin(g.sigma[i + 1] / g.sigma[i], x, c, p.x0)
        else:
            k = 0.5 * h / (g.lam[i] - g.lam[i - 1])  # 1 / (2 r)
            x_new = _lin(g.sigma[i + 1] / g.sigma[i], x, c * (1 + k), p.x0, -c * k, prev)
        prev = p.x0
        x = loop.report(i, g.t[i + 1], x_new, p)
    return x


def sample_dpm_solver_pp_3m(model, x: torch.Tensor, ts: Times, *, cond=None,
                            callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(3M) as an exponential Adams-Bashforth-3 for (9.4) (Lu et al. 2022b; monograph §9.4).

    x0(lambda) along the trajectory is replaced by the quadratic through the last three
    (lambda_j, x0_j) (fewer on the first two steps), written as x0_i + D1 tau + D2 tau^2 / 2 with
    tau = lambda - lambda_i, and (9.4) is integrated exactly:
    x_s = (sigma_s/sigma_t) x_t + alpha_s [ (1 - e^{-h}) x0_i + (h - 1 + e^{-h}) D1 + (h^2/2 - h + 1 - e^{-h}) D2 ].
    One evaluation per step; a step that lands on sigma = 0 is a third-order Adams-Bashforth step of (9.2).
    """
    g, loop = _setup(model, x, ts, callback, progress, "DPM-Solver++(3M)")
    hist, eps_hist = [], []
    for i in loop:
        p = _predict(model, x, g.t[i], cond)
        hist = [(g.lam[i], p.x0)] + hist[:2]
        eps_hist = [(g.sigma_bar[i], p.eps)] + eps_hist[:2]
        if g.sigma[i + 1] == 0:
            x = loop.report(i, g.t[i + 1], _ab_sigma_bar_step(x, g, i, eps_hist, 3), p)
            continue
        h = g.lam[i + 1] - g.lam[i]
        em = math.expm1(-h)
        # Newton divided differences in lambda, expanded at lambda_i, written as weights on (x0_i, x0_{i-1}, x0_{i-2}):
        # d1 = (x0_1 - x0_0) / dl1, d2 = ((x0_2 - x0_0) / dl2 - d1) / (dl2 - dl1), D1 = d1 - d2 dl1, D2 = 2 d2
        w = [-g.alpha[i + 1] * em, 0.0, 0.0]
        if len(hist) >= 2:
            dl1 = hist[1][0] - hist[0][0]
            c1, c2 = g.alpha[i + 1] * (h + em), g.alpha[i + 1] * (0.5 * h * h - h - em)
            d1 = [-1 / dl1, 1 / dl1, 0.0]
            D1, D2 = d1, [0.0, 0.0, 0.0]
            if len(hist) == 3:
                dl2 = hist[2][0] - hist[0][0]
                d2 = [(-1 / dl2 - d1[0]) / (dl2 - dl1), -d1[1] / (dl2 - dl1), (1 / dl2) / (dl2 - dl1)]
                D1 = [u - v * dl1 for u, v in zip(d1, d2)]
                D2 = [2 * v for v in d2]
            w = [w0 + c1 * u + c2 * v for w0, u, v in zip(w, D1, D2)]
        terms = [c for wj, (_, x0j) in zip(w, hist) for c in (wj, x0j)]
        x = loop.report(i, g.t[i + 1], _lin(g.sigma[i + 1] / g.sigma[i], x, *terms), p)
    return x


# ------------------------------------------------------------------------------------------ DEIS
def sample_deis(model, x: torch.Tensor, ts: Times, *, order: int = 3, variable: str = "lambda", cond=None,
                callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """DEIS (Zhang & Chen 2023; monograph §9.4): Adams-Bashforth for the noise form of the PF-ODE.

    Both variants replace eps along the trajectory by the polynomial through the last ``order``
    stored evaluations (fewer while warming up) and integrate it exactly; order 1 is DDIM.

    ``variable="lambda"`` (default): the exponential Adams-Bashforth method. The polynomial is in
    the half log-SNR lambda and the noise form (9.3) is integrated with the exponential weights
    w_j = int e^{-lambda} L_j(lambda) d lambda (16-point Gauss-Legendre), so the linear part is
    exact. This is the noise-prediction twin of DPM-Solver++(2M/3M). Measured at NFE 20-100 its
    order depends on the problem: on a broad two-Gaussian oracle it fits 1.94 / 3.59 (orders 2 / 3)
    on a grid uniform in lambda, but 1.89 / 2.70 on t = (1 - u)^2 (local slopes 1.98 / 2.84 between
    NFE 200 and 400); on eight narrow Gaussians 1.76 / 2.46 even on the log-SNR grid, where
    DPM-Solver++(3M) fits 3.07. The error is made at sigma_bar > 1 (see the chapter "Fast
    solvers", section 9.3): extrapolating eps is harder there than extrapolating x0. The final
    step onto sigma = 0 (infinitely long in lambda) is the rho step below.

    ``variable="rho"`` (the paper's rhoAB-DEIS): the polynomial is in rho = sigma_bar =
    sigma_t/alpha_t and the step is a classical Adams-Bashforth step of the DDIM ODE (9.2),
    x_bar_{i+1} = x_bar_i + sum_j w_j eps_j, w_j = int_{rho_i}^{rho_{i+1}} L_j(rho) d rho. Kept to
    show that the variable matters: its local slopes reach 1.97 / 2.91 only between NFE 200 and
    400, and at NFE 20-100 it fits 1.84 / 2.58 on grids ending at the data and 1.83 / 2.61 on a
    log-SNR grid.

    One evaluation per step. Needs alpha_t > 0 on the grid.
    """
    g, loop = _setup(model, x, ts, callback, progress, f"DEIS-{order}")
    _check_order(order, (1, 2, 3))
    if variable not in ("rho", "lambda"):
        raise ValueError(f"variable: expected 'rho' (polynomial in sigma_bar) or 'lambda' (in the half log-SNR), got {variable!r}")
    _check_alpha_start(g)
    hist, eps_hist = [], []
    for i in loop:
        p = _predict(model, x, g.t[i], cond)
        hist = [(g.lam[i], p.eps)] + hist[: order - 1]
        eps_hist = [(g.sigma_bar[i], p.eps)] + eps_hist[: order - 1]
        if variable == "rho" or g.sigma[i + 1] == 0:
            x = loop.report(i, g.t[i + 1], _ab_sigma_bar_step(x, g, i, eps_hist, order), p)
            continue
        w = _lagrange_integrals([lam for lam, _ in hist], g.lam[i], g.lam[i + 1], exp_weight=True)
        terms = [c for wj, (_, e) in zip(w, hist) for c in (-g.alpha[i + 1] * wj, e)]
        x = loop.report(i, g.t[i + 1], _lin(g.alpha[i + 1] / g.alpha[i], x, *terms), p)
    return x


# ------------------------------------------------------------------------------------------ reference
def solve_pf_ode_reference(model, x: torch.Tensor, t_start: float = 1.0, t_end: float = 0.0, *,
                           rtol: float = 1e-10, atol: float = 1e-10, cond=None, variable: str = "auto",
                           method: str = "DOP853") -> torch.Tensor:
    """The PF-ODE solved to tolerance with scipy's adaptive ``solve_ivp`` (DOP853 by default) -- the "exact" solution (monograph §4.4, §9.6).

    ``variable="sigma_bar"`` integrates (9.2), d(x/alpha)/d sigma_bar = eps, which is smooth up
    to the data and free of the kinks of a discrete DDPM table; ``"t"`` integrates dx/dt =
    velocity; ``"auto"`` takes sigma_bar unless alpha_{t_start} = 0. The model is called in x's
    dtype -- pass float64 x (the exact oracle of :mod:`diffedu.toy` supports it) for a 1e-10 answer.
    The whole batch is one ODE system, so the tolerance applies to the RMS over all coordinates.
    """
    from scipy.integrate import solve_ivp

    check_model(model)
    check_data(x, "x")
    sch = model.schedule
    g = Grid(sch, torch.tensor([float(t_start), float(t_end)], dtype=torch.float64))
    if variable not in ("auto", "sigma_bar", "t"):
        raise ValueError(f"variable: expected 'auto', 'sigma_bar' or 't', got {variable!r}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name}: expected a positive tolerance, got {v!r}")
    if variable == "auto":
        variable = "sigma_bar" if math.isfinite(g.sigma_bar[0]) else "t"
    shape, dev, dt = x.shape, x.device, x.dtype

    def to_x(y):
        return torch.as_tensor(y, dtype=dt, device=dev).reshape(shape)

    if variable == "sigma_bar":
        def fun(sb, y):
            t = sch.t_from_sigma_bar(torch.tensor(max(float(sb), 0.0), dtype=torch.float64))
            return _predict(model, float(sch.alpha(t)) * to_x(y), float(t), cond).eps.reshape(-1).double().cpu().numpy()

        sol = solve_ivp(fun, (g.sigma_bar[0], g.sigma_bar[1]), (x / g.alpha[0]).reshape(-1).double().cpu().numpy(),
                        method=method, rtol=rtol, atol=atol)
        out = g.alpha[1] * to_x(sol.y[:, -1])
    else:
        def fun(t, y):
            tt = torch.tensor(float(t), dtype=torch.float64)
            a, s, da, ds = (float(c) for c in sch.coefficients(tt))
            p = _predict(model, to_x(y), float(t), cond)
            return (da * p.x0 + ds * p.eps).reshape(-1).double().cpu().numpy()

        sol = solve_ivp(fun, (float(t_start), float(t_end)), x.reshape(-1).double().cpu().numpy(),
                        method=method, rtol=rtol, atol=atol)
        out = to_x(sol.y[:, -1])
    if not sol.success:
        raise RuntimeError(f"solve_pf_ode_reference: scipy {method} failed: {sol.message}")
    return out


#: name -> (sampler, keyword arguments): the deterministic solvers of Table 9.1, for loops and benchmarks.
SOLVERS = {
    "euler": (sample_euler, {}),
    "heun": (sample_heun, {}),
    "ddim": (sample_ddim, {}),
    "dpm_solver_2": (sample_dpm_solver, {"order": 2}),
    "dpm_solver_3": (sample_dpm_solver, {"order": 3}),
    "dpm_solver_pp_2s": (sample_dpm_solver_pp_2s, {}),
    "dpm_solver_pp_2m": (sample_dpm_solver_pp_2m, {}),
    "dpm_solver_pp_3m": (sample_dpm_solver_pp_3m, {}),
    "deis_2": (sample_deis, {"order": 2}),
    "deis_3": (sample_deis, {"order": 3}),
}
