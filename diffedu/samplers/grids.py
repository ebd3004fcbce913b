"""Time grids for the samplers: where to evaluate the model (monograph §9.1-9.2, §9.4; EDM appendix D.6).

Every grid is a float64 1-D tensor that *decreases* from ``t_start`` (noise, near 1) to
``t_end`` (data, near 0), with ``n_steps + 1`` points. Samplers cast each time to the data's
dtype only at the model call. A grid is uniform in some variable of the schedule:

==================  =========================================================  ================
function            uniform in                                                 typical use
==================  =========================================================  ================
``grid_uniform``    t itself                                                   Euler, DDIM
``grid_power``      u, with t = t_end + (t_start - t_end) (1 - u)^p            DDIM "quadratic"
``grid_log_snr``    half log-SNR lambda_t = log(alpha_t / sigma_t)             DPM-Solver(++)
``grid_karras``     sigma_bar^(1/rho), sigma_bar = sigma_t / alpha_t           EDM / Heun, DEIS
``grid_ddpm``       DDPM integer steps (``"trailing"``, ``"leading"``,          comparing with
                    ``"linspace"`` spacing of diffusers) of a DiscreteSchedule  diffusers
==================  =========================================================  ================

sigma_bar = sigma_t / alpha_t = exp(-lambda_t) (:meth:`~diffedu.schedules.Schedule.sigma_bar`) is
the "noise-to-signal ratio": the PF-ODE written in (x / alpha_t, sigma_bar) is
dx_bar/d sigma_bar = eps(x, t) (monograph §9.2), the variable in which EDM's Heun and DEIS's
rho-Adams-Bashforth are classical solvers.

A :class:`Grid` is a grid together with its schedule's coefficients at every grid time (alpha,
sigma, their derivatives, the half log-SNR, sigma_bar and the stages of the single-step
solvers), computed once in float64. Every ODE solver takes one in place of ``ts``; build it once
to sample many batches on one grid (a plain ``ts`` tensor builds one per call).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from diffedu._checks import check_schedule
from diffedu.schedules import DiscreteSchedule, Schedule

__all__ = ["Grid", "as_grid", "check_grid", "grid_uniform", "grid_power", "grid_log_snr", "grid_karras", "grid_ddpm"]


def _check_steps(n_steps):
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive int number of solver steps, got {n_steps!r}")


def _check_ends(t_start, t_end):
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0.0 <= float(v) <= 1.0):
            raise ValueError(f"{name}: expected a float in [0, 1] (t = 0 data, t = 1 noise), got {v!r}")
    if not float(t_start) > float(t_end):
        raise ValueError(f"t_start, t_end: a sampling grid runs from noise to data, need t_start > t_end, got {t_start} <= {t_end}")


def check_grid(ts) -> torch.Tensor:
    """Validate a sampling grid: a strictly decreasing 1-D tensor of times in [0, 1] (or a :class:`Grid`); returned as float64 (CPU)."""
    if isinstance(ts, Grid):
        return ts.ts
    if not torch.is_tensor(ts):
        raise TypeError(f"ts: expected a 1-D float tensor of decreasing times, got {type(ts).__name__}")
    if not ts.is_floating_point():
        raise TypeError(f"ts: expected continuous float times in [0, 1], got dtype {ts.dtype} (integer DDPM steps: use grid_ddpm)")
    ts = ts.detach().to(device="cpu", dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"ts: expected a 1-D grid with at least 2 times, got shape {tuple(ts.shape)}")
    if torch.isnan(ts).any() or ts.min() < 0 or ts.max() > 1:
        raise ValueError("ts: times must lie in [0, 1] (t = 0 data, t = 1 noise)")
    if (ts[1:] >= ts[:-1]).any():
        raise ValueError("ts: expected strictly decreasing times (from noise at t near 1 to data at t near 0)")
    return ts


#: the stage fractions r of the single-step solvers: DPM-Solver-2 and ++(2S) use 1/2, DPM-Solver-3 1/3 and 2/3
STAGES = (1 / 3, 0.5, 2 / 3)


class Grid:
    """A sampling grid and its schedule's float64 coefficients at every grid time, computed once (monograph §9.1-9.5).

    ``Grid(schedule, ts)`` validates ``ts`` (:func:`check_grid`) and tabulates, as tuples of Python
    floats indexed like ``ts``: ``t``, ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma`` (sigma'_t may be
    infinite where sigma_t = 0; no solver uses it there), ``lam`` (the half log-SNR
    log(alpha_t / sigma_t), +inf at the data) and ``sigma_bar`` (sigma_t / alpha_t), plus the stages
    of the single-step solvers (:meth:`stage`; ``stages=False`` skips them, for the solvers that
    never use them). Every ODE solver of :mod:`diffedu.samplers.ode` takes a Grid in place of
    ``ts``: build it once and reuse it for many batches (a plain ``ts`` builds one per call).
    Immutable: nothing is computed or cached after construction.
    """

    __slots__ = ("schedule", "ts", "t", "alpha", "sigma", "d_alpha", "d_sigma", "lam", "sigma_bar", "_stages")

    def __init__(self, schedule: Schedule, ts: torch.Tensor, *, stages: bool = True):
        check_schedule(schedule)
        ts = check_grid(ts).clone()
        a, s, da, ds = schedule.coefficients(ts)
        lam = schedule.half_log_snr(ts)
        fields = {"schedule": schedule, "ts": ts, "t": tuple(ts.tolist()), "alpha": tuple(a.tolist()),
                  "sigma": tuple(s.tolist()), "d_alpha": tuple(da.tolist()), "d_sigma": tuple(ds.tolist()),
                  "lam": tuple(lam.tolist()), "sigma_bar": tuple(schedule.sigma_bar(ts).tolist()),
                  "_stages": _stage_table(schedule, lam) if stages else None}
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"Grid is immutable: build a new Grid(schedule, ts) instead of setting {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"Grid is immutable: cannot delete {name!r}")

    @property
    def n_steps(self) -> int:
        """Number of solver steps, len(ts) - 1."""
        return len(self.t) - 1

    def stage(self, i: int, r: float) -> Tuple[float, float, float]:
        """(t, alpha, sigma) at lambda_i + r (lambda_{i+1} - lambda_i), the stage of a single-step solver (monograph §9.4).

        ``r`` is one of :data:`STAGES`. On a step that lands on sigma = 0 (infinitely long in lambda)
        it is instead the midpoint in sigma_bar, sigma_bar_i / 2 (lambda_i + log 2), whatever ``r``:
        the stage of the final midpoint step (monograph §9.5).
        """
        try:
            return self._stages[r][i]
        except (KeyError, TypeError):
            if self._stages is None:
                raise ValueError("ts: this Grid was built with stages=False; the single-step solvers (DPM-Solver-2/3, "
                                 "DPM-Solver++(2S)) need them: build Grid(schedule, ts)") from None
            if not self._stages:
                raise ValueError(f"ts: the grid starts where alpha_t = 0 (half log-SNR -inf at t = {self.t[0]}): "
                                 "it has no stages in lambda") from None
            raise ValueError(f"r: expected one of the stage fractions {STAGES}, got {r!r}") from None

    def __repr__(self):
        return f"Grid({self.schedule!r}, n_steps={self.n_steps}, t={self.t[0]:g} -> {self.t[-1]:g})"


def _stage_table(schedule: Schedule, lam: torch.Tensor) -> dict:
    """{r: ((t, alpha, sigma) of every step i)} for r in STAGES, all steps in one vectorised float64 pass.

    Empty when the grid starts at alpha = 0 (lambda_0 = -inf, no stage exists; the solvers that
    need stages refuse such a start). Otherwise only the last lambda can be infinite (+inf, the
    data), where the stage is the sigma_bar midpoint lambda_i + log 2.
    """
    if not math.isfinite(float(lam[0])):
        return {}
    r = torch.tensor(STAGES, dtype=torch.float64)[:, None]
    mid = lam[:-1] + r * (lam[1:] - lam[:-1])
    mid = torch.where(torch.isfinite(lam[1:]), mid, lam[:-1] + math.log(2.0))  # to sigma = 0: sigma_bar_i / 2
    t = schedule.t_from_half_log_snr(mid)
    if schedule.variance_preserving:  # alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda): exact, no t needed
        a, s = torch.sigmoid(2 * mid).sqrt(), torch.sigmoid(-2 * mid).sqrt()
    else:
        a, s, _, _ = schedule.coefficients(t)
    return {rk: tuple(zip(t[k].tolist(), a[k].tolist(), s[k].tolist())) for k, rk in enumerate(STAGES)}


def _same_schedule(a: Schedule, b: Schedule) -> bool:
    """The same object, or the same class with equal parameters (e.g. a deep copy inside an EMA model)."""
    if a is b:
        return True
    if type(a) is not type(b) or vars(a).keys() != vars(b).keys():
        return False
    for k, va in vars(a).items():
        vb = vars(b)[k]
        same = torch.equal(va, vb) if torch.is_tensor(va) and torch.is_tensor(vb) else va == vb
        if not same:
            return False
    return True


def as_grid(schedule: Schedule, ts, *, stages: bool = False) -> Grid:
    """``ts`` itself if it is a :class:`Grid` of ``schedule`` (or of an equal schedule), else ``Grid(schedule, ts, stages=stages)``.

    ``stages=True`` (a single-step solver) also requires a given Grid to have its stages.
    """
    if isinstance(ts, Grid):
        if not _same_schedule(ts.schedule, schedule):
            raise ValueError(f"ts: this Grid was built for {ts.schedule!r} but the model's schedule is {schedule!r}; "
                             "build Grid(model.schedule, ts)")
        if stages and ts._stages is None:
            raise ValueError("ts: this Grid was built with stages=False; the single-step solvers (DPM-Solver-2/3, "
                             "DPM-Solver++(2S)) need them: build Grid(schedule, ts)")
        return ts
    return Grid(schedule, ts, stages=stages)


def grid_uniform(n_steps: int, t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """``n_steps + 1`` times uniform in t from ``t_start`` down to ``t_end`` (float64) (monograph §9.1)."""
    _check_steps(n_steps)
    _check_ends(t_start, t_end)
    return torch.linspace(float(t_start), float(t_end), n_steps + 1, dtype=torch.float64)


def grid_power(n_steps: int, power: float = 2.0, t_start: float = 1.0, t_end: float = 0.0) -> torch.Tensor:
    """``n_steps + 1`` times t = t_end + (t_start - t_end) (1 - u)^power, u uniform (float64) (monograph §9.1).

    ``power = 1`` is :func:`grid_uniform`; ``power = 2`` is DDIM's "quadratic" spacing, which puts
    more steps near the data, where the denoiser's output changes fastest.
    """
    _check_steps(n_steps)
    _check_ends(t_start, t_end)
    if not isinstance(power, (int, float)) or isinstance(power, bool) or not power > 0:
        raise ValueError(f"power: expected a positive exponent, got {power!r}")
    u = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    ts = float(t_end) + (float(t_start) - float(t_end)) * (1 - u) ** power
    ts[0], ts[-1] = float(t_start), float(t_end)
    return ts


def grid_log_snr(schedule: Schedule, n_steps: int, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    """``n_steps + 1`` times uniform in the half log-SNR lambda_t = log(alpha_t/sigma_t) (DPM-Solver's grid, monograph §9.4).

    lambda is infinite at a clean end point (sigma = 0) and at alpha = 0, so both ends must be
    finite there: use ``t_end > 0`` (append 0 yourself for a final step to the data).
    """
    check_schedule(schedule)
    _check_steps(n_steps)
    _check_ends(t_start, t_end)
    l0, l1 = schedule.half_log_snr(torch.tensor([float(t_start), float(t_end)], dtype=torch.float64)).tolist()
    if not (math.isfinite(l0) and math.isfinite(l1)):
        raise ValueError(f"t_start, t_end: the log-SNR is infinite at t={t_start if not math.isfinite(l0) else t_end}; "
                         "pick end points with 0 < alpha_t and sigma_t > 0")
    lam = torch.linspace(l0, l1, n_steps + 1, dtype=torch.float64)
    ts = schedule.t_from_half_log_snr(lam)
    ts[0], ts[-1] = float(t_start), float(t_end)
    return ts


def grid_karras(schedule: Schedule, n_steps: int, t_start: float = 1.0, t_end: float = 0.0, rho: float = 7.0) -> torch.Tensor:
    """``n_steps + 1`` times uniform in sigma_bar^(1/rho), sigma_bar = sigma_t/alpha_t (EDM's grid, Karras et al. 2022; monograph appendix D.6).

    With ``t_end = 0`` the grid ends exactly at the data (sigma_bar = 0), so the last step is an
    ordinary, shrinking step of the solver rather than a fixed jump (monograph §9.5).
    """
    check_schedule(schedule)
    _check_steps(n_steps)
    _check_ends(t_start, t_end)
    if not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"rho: expected a positive exponent, got {rho!r}")
    tt = torch.tensor([float(t_start), float(t_end)], dtype=torch.float64)
    sb = schedule.sigma_bar(tt)
    if not torch.isfinite(sb[0]):
        raise ValueError(f"t_start: alpha_t = 0 at t = {t_start}, so sigma_t/alpha_t is infinite; start slightly below it")
    u = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    sbar = (sb[0] ** (1 / rho) + u * (sb[1] ** (1 / rho) - sb[0] ** (1 / rho))) ** rho
    ts = schedule.t_from_sigma_bar(sbar)
    ts[0], ts[-1] = float(t_start), float(t_end)
    return ts


def grid_ddpm(schedule: DiscreteSchedule, n_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Continuous times of the DDPM steps that diffusers' schedulers visit, then t = 0 (monograph §2.2, §9.3).

    Step n sits at t = (n + 1) / N (:meth:`DiscreteSchedule.timestep_to_t`). ``spacing``:
    ``"trailing"`` (n = N - 1, N - 1 - N/k, ...; starts at the last training step),
    ``"leading"`` (n = (k-1) N/k, ..., 0: DDIM's original choice, which never visits t = 1), or
    ``"linspace"`` (n = round(linspace(N - 1, 0, k + 1))[:-1]). The grid ends at t = 0, the
    "alpha = 1" final point of diffusers' DDIM (``set_alpha_to_one``).
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule: expected a diffedu.schedules.DiscreteSchedule, got {type(schedule).__name__}")
    _check_steps(n_steps)
    N = schedule.num_steps
    if n_steps > N:
        raise ValueError(f"n_steps: at most {N} steps on a {N}-step DDPM table, got {n_steps}")
    if spacing == "trailing":
        n = torch.round(torch.arange(N, 0, -N / n_steps, dtype=torch.float64)) - 1
    elif spacing == "leading":
        n = torch.arange(n_steps - 1, -1, -1, dtype=torch.float64) * (N // n_steps)
    elif spacing == "linspace":
        n = torch.round(torch.linspace(0, N - 1, n_steps + 1, dtype=torch.float64)).flip(0)[:-1]
    else:
        raise ValueError(f"spacing: unknown value {spacing!r}; expected 'trailing', 'leading' or 'linspace'")
    return torch.cat([schedule.timestep_to_t(n), torch.zeros(1, dtype=torch.float64)])
