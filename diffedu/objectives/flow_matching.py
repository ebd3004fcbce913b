"""Flow matching: conditional vs marginal velocities, probability paths, rectified flow and Reflow (monograph §5.3-5.4, §6.4).

A probability path x_t = alpha_t x0 + sigma_t x1 (x0 ~ data at t = 0, x1 ~ N(0, I) at t = 1)
has the *conditional* velocity u_t(x | x0, x1) = alpha'_t x0 + sigma'_t x1 (Table 6.1, row
"velocity") and the *marginal* velocity u_t(x) = E[u_t(x | x0, x1) | x_t = x], the PF-ODE field
that transports p_t (continuity equation; :func:`diffedu.likelihood.fokker_planck.continuity_residual`).
The conditional FM loss E||v(x_t, t) - u_t(x_t | x0, x1)||^2 equals the marginal FM loss
E||v(x_t, t) - u_t(x_t)||^2 plus a constant independent of v, so both have the same gradients
(monograph §5.3) — and only the conditional one can be computed without knowing p_data.

Affine paths differ only by a reparameterisation of time and scale (monograph §6.4): two
schedules with the same log-SNR at t and s satisfy x^B_s = (alpha^B_s / alpha^A_t) x^A_t with the
*same* (x0, eps); :class:`PathChange` turns a model of one path into a model of the other.

Reflow (Liu et al. 2023; monograph §5.4): couple each noise x1 with the data point x0 = ODE(x1)
the current model maps it to, retrain on these pairs; the new flow's paths are straighter
(:func:`straightness`), so fewer Euler steps suffice.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_like, check_model, check_schedule, check_time
from diffedu.param import Prediction
from diffedu.schedules import RectifiedFlow, Schedule, VEGeometric, VPCosine, VPLinear

__all__ = ["PATHS", "conditional_velocity", "conditional_fm_loss", "marginal_fm_loss", "PathChange",
           "match_time", "reflow_pairs", "straightness"]

#: The interpolant table (monograph §5.3, §6.2): name -> schedule, t = 0 data, t = 1 noise.
PATHS = {
    "rectified_flow": RectifiedFlow(),      # alpha = 1 - t,        sigma = t
    "trigonometric": VPCosine(s=0.0),       # alpha = cos(pi t/2),  sigma = sin(pi t/2)
    "vp_linear": VPLinear(),                # Score SDE's VP:  alpha = exp(-int beta/2), sigma = sqrt(1 - alpha^2)
    "ve": VEGeometric(),                    # NCSN / Score SDE's VE: alpha = 1, sigma geometric
}


def conditional_velocity(x0: torch.Tensor, x1: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """u_t(x | x0, x1) = alpha'_t x0 + sigma'_t x1, the conditional velocity of the path (monograph §5.3, Table 6.1).

    For rectified flow it is x1 - x0, constant along each straight conditional path.
    """
    check_schedule(schedule)
    check_data(x0, "x0")
    check_like(x1, x0, "x1", "x0")
    t = check_time(t, x0).to(x0.dtype)
    return append_dims(schedule.d_alpha(t), x0) * x0 + append_dims(schedule.d_sigma(t), x0) * x1


def _velocity(model, x, t, cond):
    out = model(x, t, cond)
    return out.velocity if isinstance(out, Prediction) else out


def _sq(err):
    return err.pow(2).reshape(err.shape[0], -1).mean(1)


def conditional_fm_loss(model, x0: torch.Tensor, *, t: Optional[torch.Tensor] = None, x1: Optional[torch.Tensor] = None,
                        cond=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example conditional FM loss ||v(x_t, t) - (alpha'_t x0 + sigma'_t x1)||^2 / D (monograph §5.3).

    ``model(x_t, t, cond)`` returns a :class:`~diffedu.param.Prediction` (its ``.velocity`` is used)
    or a velocity tensor, and carries ``.schedule``. ``t`` ~ U(0, 1) and ``x1`` ~ N(0, I) by default;
    pass ``x1`` from a coupling (e.g. Reflow pairs, :func:`diffedu.forward.ot_coupling`) to train on it.
    """
    check_data(x0, "x0")
    sch = check_model(model).schedule
    B = x0.shape[0]
    gdev = generator.device if generator is not None else x0.device
    if t is None:
        t = torch.rand(B, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    t = check_time(t, x0).to(x0.dtype)
    if x1 is None:
        x1 = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    check_like(x1, x0, "x1", "x0")
    x_t = append_dims(sch.alpha(t), x0) * x0 + append_dims(sch.sigma(t), x0) * x1
    return _sq(_velocity(model, x_t, t, cond) - conditional_velocity(x0, x1, t, sch))


def marginal_fm_loss(model, target, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
    """Per-example marginal FM loss ||v(x_t, t) - u_t(x_t)||^2 / D with the true marginal velocity (monograph §5.3).

    ``target`` gives u_t: an exact model such as ``GaussianMixture.denoiser(schedule)``
    (its ``.velocity``), or a callable (x, t) -> velocity. Only computable when p_data is known.
    """
    check_data(x_t, "x_t")
    t = check_time(t, x_t).to(x_t.dtype)
    with torch.no_grad():
        u = _velocity(target, x_t, t, cond) if hasattr(target, "schedule") else target(x_t, t)
    return _sq(_velocity(model, x_t, t, cond) - u)


# ------------------------------------------------------------------------- path reparameterisation
def match_time(src: Schedule, dst: Schedule, t: torch.Tensor):
    """(s, scale) with log-SNR_dst(s) = log-SNR_src(t) and x^dst_s = scale * x^src_t (monograph §6.4).

    Both paths then carry the same (x0, eps): x^dst_s = alpha^dst_s (x0 + (sigma/alpha) eps).
    ``s`` is clamped to [0, 1] (the paths overlap only on their common SNR range).
    """
    check_schedule(src, "src")
    check_schedule(dst, "dst")
    t = check_time(t)
    s = dst.t_from_log_snr(src.log_snr(t))
    return s, dst.alpha(s) / src.alpha(t)


class PathChange(nn.Module):
    """A model of path ``src`` seen as a model of path ``dst`` (monograph §6.4: affine paths are equivalent).

    ``forward(x, s, cond)`` maps (x^dst, s) to the src time t with the same log-SNR and rescales
    x^src = x^dst * alpha^src_t / alpha^dst_s, then returns the src model's (x0, eps) as a
    :class:`~diffedu.param.Prediction` on ``dst``: the clean-data and noise estimates are the same
    on both paths, only the velocity changes. So ``PathChange(vp_model, RectifiedFlow())``
    samples with rectified flow's ODE, and the exact VP oracle mapped this way *is* the exact
    rectified-flow oracle.
    """

    def __init__(self, model, schedule: Schedule):
        super().__init__()
        check_model(model)
        self.model = model
        self.schedule = check_schedule(schedule)

    def forward(self, x: torch.Tensor, s, cond=None) -> Prediction:
        check_data(x, "x")
        s = check_time(s, x)
        t, _ = match_time(self.schedule, self.model.schedule, s)
        scale = self.model.schedule.alpha(t) / self.schedule.alpha(s)
        pred = self.model(x * append_dims(scale, x), t.to(x.dtype), cond)
        return Prediction(x0=pred.x0, eps=pred.eps, x_t=x, t=s, schedule=self.schedule)


# ------------------------------------------------------------------------- reflow and straightness
class ReflowPairs(NamedTuple):
    """A deterministic coupling (x0, x1): x0 = ODE_{1 -> 0}(x1) of the current flow (monograph §5.4)."""

    x0: torch.Tensor
    x1: torch.Tensor


def reflow_pairs(model, x1: torch.Tensor, sampler: Callable, *, cond=None) -> ReflowPairs:
    """Reflow's coupling: push noise x1 through the model's PF-ODE to data x0 (monograph §5.4; Liu et al. 2023).

    ``sampler(model, x1) -> x0`` solves the ODE from t = 1 to t = 0 (called with ``cond=cond`` when
    ``cond`` is given), e.g. Heun in t, which accepts alpha_1 = 0, on 32 uniform steps:
    ``functools.partial(diffedu.samplers.sample_heun_t, ts=diffedu.samplers.grid_uniform(32))``.
    Train a new flow with ``conditional_fm_loss(new_model, pairs.x0, x1=pairs.x1)`` on these fixed pairs.
    """
    check_data(x1, "x1")
    if not callable(sampler):
        raise TypeError(f"sampler: expected a callable sampler(model, x1) -> x0 (e.g. functools.partial(sample_heun_t, "
                        f"ts=grid_uniform(32))), got {type(sampler).__name__}")
    with torch.no_grad():
        x0 = sampler(model, x1) if cond is None else sampler(model, x1, cond=cond)
    check_like(x0, x1, "sampler output", "x1")
    return ReflowPairs(x0=x0.detach(), x1=x1.detach())


def straightness(path: torch.Tensor, ts) -> torch.Tensor:
    """Straightness S = int ||dx/dt - (x_end - x_start)/(t_end - t_start)||^2 dt / |t_end - t_start| per example (monograph §5.4).

    ``path`` (N+1, B, ...) holds positions at the N+1 grid times ``ts`` (as from
    :func:`diffedu.samplers.trajectory`); velocities are the finite differences. S = 0 exactly
    when every particle moves on a straight line at constant speed (Liu et al. 2023's measure,
    here averaged over data dimensions). Returns shape (B,).
    """
    if not torch.is_tensor(path) or path.ndim < 3:
        raise ValueError("path: expected a tensor of shape (N+1, B, ...) of positions along a trajectory")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() != path.shape[0]:
        raise ValueError(f"ts: expected {path.shape[0]} times (one per path point), got shape {tuple(ts.shape)}")
    p = path.double()
    dt = (ts[1:] - ts[:-1]).to(p.device)
    span = float(ts[-1] - ts[0])
    vel = (p[1:] - p[:-1]) / append_dims(dt, p[1:])
    chord = (p[-1] - p[0]) / span
    dev = (vel - chord[None]).pow(2).reshape(vel.shape[0], vel.shape[1], -1).mean(-1)  # (N, B)
    return (dev * dt.abs()[:, None]).sum(0) / abs(span)
