"""Grids and solvers calibrated on the model's own fine solve: the few steps that best reproduce many (monograph §9.4-9.5).

A solver with few steps makes its error where its steps are badly placed, and *where* that is
depends on the model (on the data it learned) and on the solver. At sampling time there is no
exact answer -- but there is the model itself: solved with many steps it gives the trajectory the
few-step solver is trying to reproduce. Following LD3 (Tong et al. 2024) and Align Your Steps
(Sabour et al. 2024), :func:`grid_calibrated` chooses the interior points of an ``n_steps`` grid to
minimise

    J(t_1, ..., t_{n-1}) = mean_b || solver(model, x_b, grid) - fine_b ||,   x_b ~ N(0, I) (calibration noise),

where ``fine_b`` is the **same model** solved with many steps from the same x_b (by default
DPM-Solver++(3M) on 400 steps, :func:`fine_solve`). The target is the model's fine solve, *not*
the exact solution of the PF-ODE of the data: nothing about the data beyond the model is used,
so the construction applies to any trained model, and the calibration batch must be disjoint from
the noise the grid is later evaluated on. The grid is parameterised in z = log sigma_bar
(sigma_bar = sigma_t / alpha_t) by multiplicative changes exp(theta_i) of the starting grid's
steps, with theta piecewise linear in the step index through ``knots`` values (all steps free when
n_steps - 1 <= knots), and J is minimised without derivatives (Nelder-Mead), keeping the best grid
evaluated -- never worse on the calibration batch than the grid it started from. Cost: a one-off
per (model, solver, n_steps) of about ``max_evals`` solver runs on the calibration batch, plus the
fine solve.

:func:`calibrate_multistep` goes one step further, as S4S does (Frankel et al. 2025): it also
fits the *coefficients* of a linear multistep solver of the data form (9.4),

    x_{i+1} = c_i x_i + sum_{j < h} w_{ij} x0_hat(x_{i-j}, t_{i-j}),

step by step by least squares, so that the solver's own states on the calibration batch follow
the model's fine trajectory at every grid time (DPM-Solver++ and UniPC are such solvers with
coefficients from a Taylor expansion; here they come from the model). The grid is optimised around
that inner fit as above, and :func:`sample_calibrated` runs the result. Again the target is the
model's fine trajectory, never the exact one.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from diffedu._checks import check_callable, check_data, check_int, check_like, check_model
from .grids import Grid, _check_ends, check_grid, grid_power
from .ode import Times, _lin, _predict, _setup, sample_dpm_solver_pp_3m

__all__ = ["fine_solve", "grid_loss", "grid_calibrated", "FineTrajectory", "calibrate_multistep", "sample_calibrated"]


def fine_solve(model, x: torch.Tensor, *, steps: int = 400, t_start: float = 1.0, t_end: float = 0.0, cond=None) -> torch.Tensor:
    """The model's own PF-ODE solution from ``x`` at ``t_start`` to ``t_end``: DPM-Solver++(3M) on ``steps`` steps of t^2 (monograph §9.4).

    The calibration target of :func:`grid_calibrated`. It is the *model's* trajectory solved finely,
    not the exact PF-ODE of the data (on the exact Gaussian-mixture oracle of :mod:`diffedu.toy`,
    400 steps are within about 1e-5 of the solution to tolerance).
    """
    check_model(model)
    check_data(x, "x")
    check_int(steps, "steps", 2)
    with torch.no_grad():
        return sample_dpm_solver_pp_3m(model, x, grid_power(steps, 2.0, t_start, t_end), cond=cond)


def grid_loss(model, solver: Callable, ts, x: torch.Tensor, target: torch.Tensor, *, solver_kwargs: Optional[dict] = None,
              cond=None) -> float:
    """mean_b || solver(model, x, ts)_b - target_b ||: the L2 distance per example, averaged over the batch (monograph §9.4).

    With ``target`` = :func:`fine_solve` of the same model and ``x``, this is the calibration
    objective J of :func:`grid_calibrated`.
    """
    check_callable(solver, "solver", "a sampler solver(model, x, ts, ...)")
    check_data(x, "x")
    check_like(target, x, "target")
    with torch.no_grad():
        out = solver(model, x, ts, cond=cond, **(solver_kwargs or {}))
    return float((out - target).reshape(len(x), -1).norm(dim=1).mean())


def _grid_maker(schedule, init: torch.Tensor, knots: int):
    """theta (numpy, <= knots values) -> grid: the interior steps of ``init`` in z = log sigma_bar scaled by exp(theta_i)."""
    t0, t_end = float(init[0]), float(init[-1])
    z = schedule.sigma_bar(init[:-1]).log()  # z_0 > z_1 > ... > z_{n-1}; init[-1] (the end, maybe the data) stays
    base = (z[:-1] - z[1:]).numpy()  # step lengths in z of the n - 1 free points
    z_floor = math.log(float(schedule.sigma_bar(torch.tensor(t_end, dtype=torch.float64)))) if t_end > 0 else math.log(1e-6)
    m = len(base)
    k = min(knots, m)
    where = np.linspace(0, m - 1, k) if k > 1 else np.zeros(1)

    def make(theta):
        th = np.interp(np.arange(m), where, theta) if k > 1 else np.full(m, float(theta[0]))
        zs = float(z[0]) - np.cumsum(base * np.exp(th))
        if not np.all(np.isfinite(zs)) or zs[-1] <= z_floor:
            return None
        ts = schedule.t_from_sigma_bar(torch.from_numpy(np.exp(zs)))
        ts = torch.cat([torch.tensor([t0], dtype=torch.float64), ts, torch.tensor([t_end], dtype=torch.float64)])
        return ts if bool((ts[1:] < ts[:-1]).all()) else None

    return make, k


def _check_inits(init, n_steps: int, t_start: float):
    """``init`` as a non-empty list of grids of ``n_steps + 1`` times with common ends (None: [t^1.5 from t_start to 0])."""
    if init is None:
        return [grid_power(n_steps, 1.5, t_start, 0.0)]
    grids = [check_grid(g) for g in (init if isinstance(init, (list, tuple)) else [init])]
    if not grids:
        raise ValueError("init: expected a grid or a non-empty list of candidate grids")
    for g in grids:
        if len(g) != n_steps + 1:
            raise ValueError(f"init: expected grids of n_steps + 1 = {n_steps + 1} times, got {len(g)}")
        if g[0] != grids[0][0] or g[-1] != grids[0][-1]:
            raise ValueError("init: every candidate grid must share the first and the last time")
    return grids


def grid_calibrated(model, solver: Callable, n_steps: int, x_cal: torch.Tensor, *, init=None,
                    solver_kwargs: Optional[dict] = None, target: Optional[torch.Tensor] = None, fine_steps: int = 400,
                    knots: int = 6, max_evals: int = 200, t_start: float = 1.0, cond=None) -> torch.Tensor:
    """``n_steps + 1`` times whose ``solver`` output from the calibration noise ``x_cal`` is closest to the model's fine solve (LD3 / AYS-style; monograph §9.4-9.5).

    Minimises :func:`grid_loss` (mean L2 to ``target``, by default :func:`fine_solve` of ``model``
    from ``x_cal`` with ``fine_steps`` steps) over the interior points of the grid, starting from
    ``init`` (a decreasing float64 grid with ``n_steps + 1`` points, or a list of candidates of which
    the one with the least loss on ``x_cal`` is taken; default :func:`grid_power` t^1.5 from
    ``t_start`` to 0), whose first and last points are kept. ``knots`` bounds the number of free
    parameters (see the module docstring); Nelder-Mead runs for at most ``max_evals`` solver calls on
    ``x_cal``. The target is the model's own fine solve, never the exact solution: use calibration
    noise disjoint from the noise you evaluate on. Returns the best grid found (float64), ``init``
    itself if nothing better was.
    """
    from scipy.optimize import minimize

    check_model(model)
    check_callable(solver, "solver", "a sampler solver(model, x, ts, ...)")
    check_int(n_steps, "n_steps", 1)
    check_data(x_cal, "x_cal")
    check_int(knots, "knots", 1)
    check_int(max_evals, "max_evals", 1)
    check_int(fine_steps, "fine_steps", 2)
    sch = model.schedule
    inits = _check_inits(init, n_steps, t_start)
    if target is None:
        target = fine_solve(model, x_cal, steps=fine_steps, t_start=float(inits[0][0]), t_end=float(inits[0][-1]), cond=cond)
    check_like(target, x_cal, "target", "x_cal")
    losses = [grid_loss(model, solver, g, x_cal, target, solver_kwargs=solver_kwargs, cond=cond) for g in inits]
    j = min(range(len(inits)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)
    init = inits[j]
    if n_steps < 2:
        return init.clone()
    make, k = _grid_maker(sch, init, knots)
    best = {"loss": losses[j], "ts": init}

    def objective(theta):
        ts = make(theta)
        if ts is None:
            return math.inf
        try:
            loss = grid_loss(model, solver, ts, x_cal, target, solver_kwargs=solver_kwargs, cond=cond)
        except (ValueError, RuntimeError):  # a grid the solver refuses counts as infinitely bad
            return math.inf
        if not math.isfinite(loss):
            return math.inf
        if loss < best["loss"]:
            best.update(loss=loss, ts=ts)
        return math.log(loss) if loss > 0 else -math.inf

    simplex = np.vstack([np.zeros(k), 0.5 * np.eye(k)])
    minimize(objective, np.zeros(k), method="Nelder-Mead",
             options={"maxfev": max_evals, "initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-6})
    return best["ts"].clone()


class FineTrajectory:
    """The model's PF-ODE trajectory from ``x`` solved finely, readable at any time between its ends (monograph §9.2, §9.4).

    DPM-Solver++(3M) on ``steps`` steps of t^2 from ``t_start`` to ``t_end`` stores x_k and
    eps_hat(x_k, t_k) at every fine time; :meth:`at` interpolates x_bar = x / alpha as a cubic
    Hermite polynomial in sigma_bar, whose slope d x_bar / d sigma_bar = eps_hat is the DDIM ODE (9.2)
    itself (a quadratic on the last fine step, where eps is not evaluated at sigma = 0).
    """

    def __init__(self, model, x: torch.Tensor, *, steps: int = 400, t_start: float = 1.0, t_end: float = 0.0, cond=None):
        check_model(model)
        check_data(x, "x")
        check_int(steps, "steps", 2)
        _check_ends(t_start, t_end)
        ts, xs, eps = grid_power(steps, 2.0, t_start, t_end), [x], []
        with torch.no_grad():
            sample_dpm_solver_pp_3m(model, x, ts, cond=cond,
                                    callback=lambda s: (xs.append(s.x), eps.append(s.prediction.eps)))
        sch = model.schedule
        self.schedule, self.t = sch, ts
        self.alpha, self.u = sch.alpha(ts).tolist(), sch.sigma_bar(ts).tolist()
        self._neg_u = -sch.sigma_bar(ts)
        self.xbar = [v / a for v, a in zip(xs, self.alpha)]
        self.eps = eps

    def at(self, t: float) -> torch.Tensor:
        """x at time ``t`` (t_end <= t <= t_start) on the fine trajectory."""
        if t == float(self.t[-1]):
            return self.xbar[-1] * self.alpha[-1]
        tt = torch.tensor(float(t), dtype=torch.float64)
        u, a = float(self.schedule.sigma_bar(tt)), float(self.schedule.alpha(tt))
        k = max(0, min(int(torch.searchsorted(self._neg_u, torch.tensor([-u], dtype=torch.float64), right=True)) - 1,
                       len(self.u) - 2))
        h = self.u[k + 1] - self.u[k]
        s = (u - self.u[k]) / h
        y0, y1, m0 = self.xbar[k], self.xbar[k + 1], self.eps[k]
        if k + 1 < len(self.eps):  # cubic Hermite
            m1 = self.eps[k + 1]
            xb = _lin(2 * s**3 - 3 * s**2 + 1, y0, h * (s**3 - 2 * s**2 + s), m0, -2 * s**3 + 3 * s**2, y1, h * (s**3 - s**2), m1)
        else:  # quadratic through both ends with the left slope
            xb = _lin(1 - s * s, y0, s * s, y1, h * s * (1 - s), m0)
        return a * xb


def _fit_multistep(model, g, x_cal, fine_states, history: int, cond):
    """Least-squares coefficients, step by step, of x_{i+1} = c_i x_i + sum_j w_ij x0_{i-j} to the fine states;
    returns (weights, the calibrated solver's final state on x_cal)."""
    x, hist, weights = x_cal, [], []
    for i in range(g.n_steps):
        p = _predict(model, x, g.t[i], cond)
        hist = [p.x0] + hist[: history - 1]
        feats = torch.stack([f.reshape(-1) for f in [x] + hist], 1)
        w = torch.linalg.lstsq(feats, fine_states[i + 1].reshape(-1, 1)).solution[:, 0]
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError("least squares failed")
        weights.append(tuple(w.tolist()))
        x = (feats @ w).reshape(x.shape)
    return weights, x


def calibrate_multistep(model, n_steps: int, x_cal: torch.Tensor, *, init=None, history: int = 4, knots: int = 6,
                        max_evals: int = 150, fine_steps: int = 400, t_start: float = 1.0, cond=None):
    """(grid, weights) of a linear multistep solver fitted to the model's own fine trajectory from ``x_cal`` (S4S-style; monograph §9.4-9.5).

    For a grid, the weights of x_{i+1} = c_i x_i + sum_{j<history} w_ij x0_hat_{i-j} are fitted step by
    step by least squares on the calibration batch so that x_{i+1} matches the
    :class:`FineTrajectory` (DPM-Solver++(3M), ``fine_steps`` steps) at t_{i+1}; the interior grid
    points are optimised around that fit (Nelder-Mead, ``max_evals`` fits, parameterised as in
    :func:`grid_calibrated` from ``init``: a grid or a list of candidates, the best fit taken; default
    :func:`grid_power` t^1.5 from ``t_start`` to 0) to
    minimise the mean L2 distance of the final state to the fine one. Returns the best grid (float64)
    and its weights, a tuple per step (c_i, w_i0, w_i1, ...), newest prediction first: run them with
    :func:`sample_calibrated`. The target is the model's fine solve, never the exact solution; use
    calibration noise disjoint from the noise you evaluate on. ``n_steps`` model evaluations per sample.
    """
    from scipy.optimize import minimize

    check_model(model)
    check_int(n_steps, "n_steps", 1)
    check_data(x_cal, "x_cal")
    check_int(history, "history", 1)
    check_int(knots, "knots", 1)
    check_int(max_evals, "max_evals", 1)
    check_int(fine_steps, "fine_steps", 2)
    inits = _check_inits(init, n_steps, t_start)
    fine = FineTrajectory(model, x_cal, steps=fine_steps, t_start=float(inits[0][0]), t_end=float(inits[0][-1]), cond=cond)
    sch, best = model.schedule, {"loss": math.inf}

    def objective(ts):
        g = Grid(sch, ts, stages=False)
        try:
            with torch.no_grad():
                weights, out = _fit_multistep(model, g, x_cal, [fine.at(t) for t in g.t], history, cond)
        except (FloatingPointError, RuntimeError):
            return math.inf
        loss = float((out - fine.at(g.t[-1])).reshape(len(out), -1).norm(dim=1).mean())
        if not math.isfinite(loss):
            return math.inf
        if loss < best["loss"]:
            best.update(loss=loss, ts=ts.clone(), weights=weights)
        return math.log(loss) if loss > 0 else -math.inf

    losses = [objective(g) for g in inits]
    init = inits[min(range(len(inits)), key=lambda i: losses[i])]
    if n_steps >= 2:
        make, k = _grid_maker(sch, init, knots)
        minimize(lambda th: math.inf if make(th) is None else objective(make(th)), np.zeros(k), method="Nelder-Mead",
                 options={"maxfev": max_evals, "initial_simplex": np.vstack([np.zeros(k), 0.5 * np.eye(k)]),
                          "xatol": 1e-3, "fatol": 1e-6})
    if not math.isfinite(best["loss"]):
        raise ValueError("x_cal: the least-squares fit failed on every grid tried (a degenerate calibration batch?)")
    return best["ts"], best["weights"]


def sample_calibrated(model, x: torch.Tensor, ts: Times, weights, *, cond=None, callback: Optional[Callable] = None,
                      progress: bool = False) -> torch.Tensor:
    """The calibrated linear multistep solver: x_{i+1} = c_i x_i + sum_j w_ij x0_hat(x_{i-j}, t_{i-j}) (S4S-style; monograph §9.4).

    ``ts`` and ``weights`` come from :func:`calibrate_multistep` (weights[i] = (c_i, w_i0, w_i1, ...),
    newest prediction first). DPM-Solver++(2M) is the case c_i = sigma_{i+1}/sigma_i with its
    Taylor weights; here the weights were fitted to the model's own fine trajectory. One evaluation per step.
    """
    g, loop = _setup(model, x, ts, callback, progress, "calibrated multistep")
    if not isinstance(weights, (list, tuple)) or len(weights) != g.n_steps:
        raise ValueError(f"weights: expected one tuple of coefficients per step ({g.n_steps}), got "
                         f"{len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__}")
    for i, w in enumerate(weights):
        if not isinstance(w, (list, tuple)) or not 2 <= len(w) <= i + 2 or not all(math.isfinite(float(v)) for v in w):
            raise ValueError(f"weights: step {i} needs (c_i, w_i0, ..., up to w_i{i}) as finite floats, got {w!r}")
    keep, hist = max(len(w) for w in weights) - 1, []
    for i in loop:
        p = _predict(model, x, g.t[i], cond)
        hist = [p.x0] + hist[: keep - 1]
        w = [float(v) for v in weights[i]]
        x = loop.report(i, g.t[i + 1], _lin(w[0], x, *[c for pair in zip(w[1:], hist) for c in pair]), p)
    return x
