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

sigma_bar = sigma_t / alpha_t = exp(-lambda_t) is the "noise-to-signal ratio": the PF-ODE
written in (x / alpha_t, sigma_bar) is dx_bar/d sigma_bar = eps(x, t) (monograph §9.2), the
variable in which EDM's Heun and DEIS's rho-Adams-Bashforth are classical solvers.
"""
from __future__ import annotations

import math

import torch

from diffedu._checks import check_schedule

from diffedu.schedules import DiscreteSchedule, Schedule

__all__ = ["grid_uniform", "grid_power", "grid_log_snr", "grid_karras", "grid_ddpm", "check_grid", "sigma_bar_to_t"]


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
    """Validate a sampling grid: a strictly decreasing 1-D tensor of times in [0, 1]; returned as float64 (CPU)."""
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


def sigma_bar_to_t(schedule: Schedule, sigma_bar: torch.Tensor) -> torch.Tensor:
    """Time t with sigma_t / alpha_t = ``sigma_bar`` (sigma_bar = exp(-lambda_t), lambda the half log-SNR); 0 maps to t = 0."""
    check_schedule(schedule)
    sigma_bar = torch.as_tensor(sigma_bar, dtype=torch.float64)
    if (sigma_bar < 0).any():
        raise ValueError("sigma_bar: expected non-negative noise-to-signal ratios")
    t = schedule.t_from_log_snr(-2 * torch.log(sigma_bar.clamp_min(1e-300)))
    return torch.where(sigma_bar == 0, torch.zeros_like(t), t)


def _half_lambda(schedule, t):
    t = torch.tensor(float(t), dtype=torch.float64)
    return float(torch.log(schedule.alpha(t)) - torch.log(schedule.sigma(t)))


def grid_log_snr(schedule: Schedule, n_steps: int, t_start: float = 1.0, t_end: float = 1e-3) -> torch.Tensor:
    """``n_steps + 1`` times uniform in the half log-SNR lambda_t = log(alpha_t/sigma_t) (DPM-Solver's grid, monograph §9.4).

    lambda is infinite at a clean end point (sigma = 0) and at alpha = 0, so both ends must be
    finite there: use ``t_end > 0`` (append 0 yourself for a final step to the data).
    """
    check_schedule(schedule)
    _check_steps(n_steps)
    _check_ends(t_start, t_end)
    l0, l1 = _half_lambda(schedule, t_start), _half_lambda(schedule, t_end)
    if not (math.isfinite(l0) and math.isfinite(l1)):
        raise ValueError(f"t_start, t_end: the log-SNR is infinite at t={t_start if not math.isfinite(l0) else t_end}; "
                         "pick end points with 0 < alpha_t and sigma_t > 0")
    lam = torch.linspace(l0, l1, n_steps + 1, dtype=torch.float64)
    ts = schedule.t_from_log_snr(2 * lam)
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
    sb = schedule.sigma(tt) / schedule.alpha(tt)
    if not torch.isfinite(sb[0]):
        raise ValueError(f"t_start: alpha_t = 0 at t = {t_start}, so sigma_t/alpha_t is infinite; start slightly below it")
    u = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    sbar = (sb[0] ** (1 / rho) + u * (sb[1] ** (1 / rho) - sb[0] ** (1 / rho))) ** rho
    ts = sigma_bar_to_t(schedule, sbar)
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
