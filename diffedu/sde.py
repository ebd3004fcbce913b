"""SDE view of a schedule: drift f(t), diffusion g(t)^2, forward SDE, reverse SDE, PF-ODE (monograph §4.1-4.4).

For x_t = alpha_t x0 + sigma_t eps the forward SDE with the same marginals is
    dx = f(t) x dt + g(t) dw,   f(t) = d log alpha_t / dt,   g(t)^2 = d(sigma_t^2)/dt - 2 f(t) sigma_t^2
(monograph §4.3). The reverse-time SDE (§4.2) and the probability-flow ODE (§4.4) are
    dx = [f x - g^2 grad log p_t(x)] dt + g dw_bar,      dx/dt = f x - g^2/2 grad log p_t(x).
VP, VE and sub-VP are just different schedules fed through these formulas.
"""
from __future__ import annotations

from typing import Optional

import torch

from diffedu._checks import append_dims, check_data, check_like, check_schedule, check_time
from diffedu.schedules import Schedule

__all__ = ["drift_coef", "diffusion_sq", "forward_drift", "reverse_sde_drift", "pf_ode_velocity",
           "simulate_forward_sde"]


def drift_coef(schedule: Schedule, t) -> torch.Tensor:
    """f(t) = d log alpha_t / dt = alpha'_t / alpha_t, the linear drift of the forward SDE (monograph §4.3)."""
    check_schedule(schedule)
    return schedule.d_alpha(t) / schedule.alpha(t)


def diffusion_sq(schedule: Schedule, t) -> torch.Tensor:
    """g(t)^2 = d(sigma_t^2)/dt - 2 f(t) sigma_t^2 (monograph §4.3); e.g. beta(t) for VP, d sigma^2/dt for VE."""
    check_schedule(schedule)
    return schedule.d_sigma2(t) - 2 * drift_coef(schedule, t) * schedule.sigma(t) ** 2


def forward_drift(schedule: Schedule, x: torch.Tensor, t) -> torch.Tensor:
    """The forward SDE drift f(t) x (monograph §4.3)."""
    check_data(x, "x")
    t = check_time(t, x)
    return append_dims(drift_coef(schedule, t), x) * x


def reverse_sde_drift(schedule: Schedule, x: torch.Tensor, t, score: torch.Tensor) -> torch.Tensor:
    """Reverse-time SDE drift f(t) x - g(t)^2 score (Anderson 1982; monograph §4.2), integrated from t=1 to 0."""
    check_data(x, "x")
    check_like(score, x, "score")
    t = check_time(t, x)
    return append_dims(drift_coef(schedule, t), x) * x - append_dims(diffusion_sq(schedule, t), x) * score


def pf_ode_velocity(schedule: Schedule, x: torch.Tensor, t, score: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE velocity f(t) x - g(t)^2 / 2 * score (monograph §4.4).

    Equal to alpha'_t E[x0|x] + sigma'_t E[eps|x] (the flow-matching velocity, §5.3/§6.3).
    """
    check_data(x, "x")
    check_like(score, x, "score")
    t = check_time(t, x)
    return append_dims(drift_coef(schedule, t), x) * x - 0.5 * append_dims(diffusion_sq(schedule, t), x) * score


def simulate_forward_sde(schedule: Schedule, x0: torch.Tensor, ts: torch.Tensor, *,
                         generator: Optional[torch.Generator] = None, return_path: bool = False):
    """Euler-Maruyama for dx = f x dt + g dw along the increasing grid ``ts`` (monograph §4.3, appendix A).

    Returns x at ts[-1] (or the whole path, shape (len(ts), B, ...), when ``return_path``).
    Its law approaches q(x_t | x0) from :func:`diffedu.forward.add_noise` as the grid refines.
    """
    check_data(x0, "x0")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2 or (ts[1:] <= ts[:-1]).any():
        raise ValueError("ts: expected an increasing 1-D time grid with at least two points")
    check_time(ts)
    x = x0
    path = [x] if return_path else None
    for i in range(len(ts) - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]
        f, g2 = drift_coef(schedule, t), diffusion_sq(schedule, t)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + (f * dt).to(x.dtype) * x + torch.sqrt(g2 * dt).to(x.dtype) * noise
        if return_path:
            path.append(x)
    return torch.stack(path) if return_path else x
