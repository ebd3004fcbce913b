"""Time grids chosen from the model, not from the answer: equidistributing a local-error estimate (monograph §9.1, §9.4-9.5).

At sampling time a reader has a trained model and its schedule, not a reference solution. The
local error of an order-p solver of the data form (9.4) on a step of length h in the half
log-SNR lambda is about C h^(p+1) |d^p x0_hat / d lambda^p| along the trajectory, where x0_hat is
the model's denoised prediction. :func:`grid_adaptive` estimates that derivative from model
evaluations on a *pilot* run (DPM-Solver++(2M) on a fine grid uniform in lambda, from pilot noise,
no reference needed), turns it into a step density rho(lambda) = (f(lambda) + floor)^gamma with
f = RMS over the pilot batch of |d^p x0_hat / d lambda^p|, and places the grid points at equal
quantiles of rho: gamma = 1/(p+1) equidistributes the local error, gamma = 1/p minimises the sum
of local errors for a given number of steps. Beyond the pilot's last point the density is
continued by its exponential tail (x0_hat converges like e^{-2 lambda} as sigma -> 0), so the
last step, onto the data, gets its share of the mass like every other.

The free constants (gamma, floor) are *hyperparameters of the construction*, chosen once on
training problems (see benchmarks/solvers.py) and then applied to any model: the grid itself is
recomputed from each new model's own evaluations (about ``pilot_steps`` evaluations on a small
pilot batch, done once per model and NFE, like Align Your Steps' offline optimisation).
"""
from __future__ import annotations

import math

import torch

from diffedu._checks import check_data, check_int, check_model, check_positive, check_schedule
from .grids import _check_ends, grid_log_snr
from .ode import sample_dpm_solver_pp_2m

__all__ = ["error_density", "grid_adaptive", "grid_from_density"]


def error_density(model, x: torch.Tensor, order: int = 2, *, t_start: float = 1.0, sigma_bar_min: float = 2e-3,
                  pilot_steps: int = 48, cond=None):
    """(lambda nodes, f at them): f = RMS over ``x`` of |d^order x0_hat / d lambda^order| along a pilot PF-ODE run (monograph §9.4).

    The pilot is DPM-Solver++(2M) on ``pilot_steps`` steps uniform in the half log-SNR from
    ``t_start`` to sigma_bar = ``sigma_bar_min``; the derivative is the ``order``-th divided
    difference of the stored x0_hat in lambda, placed at the centre of its stencil. Costs
    ``pilot_steps`` model evaluations on the batch ``x`` (noise, e.g. 256 points).
    """
    check_model(model)
    check_data(x, "x")
    check_int(order, "order", 1)
    check_int(pilot_steps, "pilot_steps", order + 2)
    check_positive(sigma_bar_min, "sigma_bar_min")
    sch = model.schedule
    t_min = float(sch.t_from_sigma_bar(torch.tensor(float(sigma_bar_min), dtype=torch.float64)))
    _check_ends(t_start, t_min)
    ts = grid_log_snr(sch, pilot_steps, t_start, t_min)
    x0s = []
    with torch.no_grad():
        sample_dpm_solver_pp_2m(model, x, ts, cond=cond, callback=lambda s: x0s.append(s.prediction.x0.double()))
    lam = sch.half_log_snr(ts[:-1]).tolist()
    vals = [v.reshape(len(v), -1) for v in x0s]
    for k in range(1, order + 1):  # divided differences of order k, times k! -> the k-th derivative
        vals = [k * (vals[j + 1] - vals[j]) / (lam[j + k] - lam[j]) for j in range(len(vals) - 1)]
    f = [float(v.pow(2).sum(1).mean().sqrt()) for v in vals]
    centre = [0.5 * (lam[j] + lam[j + order]) for j in range(len(f))]
    return centre, f


def grid_adaptive(model, n_steps: int, x: torch.Tensor, order: int = 2, *, gamma: float = 0.5, floor: float = 1e-3,
                  t_start: float = 1.0, sigma_bar_min: float = 2e-3, pilot_steps: int = 48, cond=None) -> torch.Tensor:
    """``n_steps + 1`` times from ``t_start`` to 0 at equal quantiles of the step density (f + floor max f)^gamma in lambda (monograph §9.4-9.5).

    f is :func:`error_density` of ``model`` on the pilot noise ``x`` for a solver of ``order``
    (``pilot_steps`` model evaluations); the grid is :func:`grid_from_density` of it. Only model
    evaluations are used: no reference solution. Float64, decreasing, ends at t = 0.
    """
    lam, f = error_density(model, x, order, t_start=t_start, sigma_bar_min=sigma_bar_min, pilot_steps=pilot_steps, cond=cond)
    return grid_from_density(model.schedule, lam, f, n_steps, gamma=gamma, floor=floor, t_start=t_start)


def grid_from_density(schedule, lam, f, n_steps: int, *, gamma: float = 0.5, floor: float = 1e-3,
                      t_start: float = 1.0) -> torch.Tensor:
    """The grid of :func:`grid_adaptive` from a measured density ``(lam, f)`` of :func:`error_density` (monograph §9.4-9.5).

    rho = (f + floor max f)^gamma is linear in lambda between the nodes, constant from
    lambda(t_start) to the first node, and decays like e^{-2 gamma (lambda - lambda_last)} past the
    last one (x0_hat converges like e^{-2 lambda} as sigma -> 0), so the final step onto the data
    takes the last of ``n_steps`` equal shares of the mass. ``gamma`` = 1/(order + 1)
    equidistributes the local error, 1/order minimises the sum of local errors.
    """
    check_schedule(schedule)
    check_int(n_steps, "n_steps", 1)
    check_positive(gamma, "gamma")
    check_positive(floor, "floor", strict=False)
    if len(lam) != len(f) or len(lam) < 1:
        raise ValueError(f"lam, f: expected two equally long non-empty lists, got {len(lam)} and {len(f)}")
    sch = schedule
    lam0 = float(sch.half_log_snr(torch.tensor(float(t_start), dtype=torch.float64)))
    top = max(f) if max(f) > 0 else 1.0
    rho = [(v + floor * top) ** gamma for v in f]
    nodes, dens = [lam0] + lam, [rho[0]] + rho
    cum = [0.0]
    for a, b, ra, rb in zip(nodes[:-1], nodes[1:], dens[:-1], dens[1:]):
        cum.append(cum[-1] + 0.5 * (ra + rb) * (b - a))
    decay = 2 * gamma
    total = cum[-1] + dens[-1] / decay
    out = [lam0]
    for k in range(1, n_steps):
        target = total * k / n_steps
        if target >= cum[-1]:  # in the exponential tail: dens_end / decay (1 - e^{-decay d}) = target - cum_end
            rest = 1 - (target - cum[-1]) * decay / dens[-1]
            out.append(nodes[-1] - math.log(max(rest, 1e-300)) / decay)
            continue
        j = max(i for i in range(len(cum)) if cum[i] <= target)
        a, ra, rb, w = nodes[j], dens[j], dens[j + 1], nodes[j + 1] - nodes[j]
        m = target - cum[j]  # solve ra s + (rb - ra) s^2 / (2 w) = m for s in [0, w]
        q = (rb - ra) / (2 * w)
        s = m / ra if abs(q) < 1e-14 * ra / w else (-ra + math.sqrt(ra * ra + 4 * q * m)) / (2 * q)
        out.append(a + s)
    ts = sch.t_from_half_log_snr(torch.tensor(out, dtype=torch.float64))
    ts = torch.cat([ts, torch.zeros(1, dtype=torch.float64)])
    ts[0] = float(t_start)
    for i in range(1, len(ts) - 1):  # strictly decreasing even where lambda's inverse rounds two points together
        if ts[i] >= ts[i - 1]:
            ts[i] = ts[i - 1] * (1 - 1e-9)
    return ts
