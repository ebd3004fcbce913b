"""The forward process: make x_t from x0 in one shot (the conditioning trick), times, couplings.

q(x_t | x0) = N(alpha_t x0, sigma_t^2 I), so x_t = alpha_t x0 + sigma_t eps with eps ~ N(0, I)
(monograph §2.2 for DDPM, §4.3 for SDEs, §5.3 for interpolants; §6.1 "conditioning trick").
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from diffedu._checks import append_dims, check_data, check_kind, check_like, check_time
from diffedu.schedules import Schedule

__all__ = ["NoisySample", "add_noise", "sample_times", "independent_coupling", "ot_coupling"]


class NoisySample(NamedTuple):
    """x_t = alpha_t x0 + sigma_t eps together with the (t, x0, eps) that made it."""

    x_t: torch.Tensor
    t: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor


def add_noise(schedule: Schedule, x0: torch.Tensor, t, eps: Optional[torch.Tensor] = None,
              generator: Optional[torch.Generator] = None) -> NoisySample:
    """Sample x_t ~ q(x_t | x0) = N(alpha_t x0, sigma_t^2 I) (monograph §2.2, eq. for q(x_t|x0); §6.1).

    ``t`` is a float or a (B,) tensor in [0, 1]; ``eps`` defaults to fresh standard normal noise
    drawn with ``generator`` on x0's device.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a diffedu.schedules.Schedule, got {type(schedule).__name__}")
    check_data(x0, "x0")
    t = check_time(t, x0).to(x0.dtype)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        check_like(eps, x0, "eps", "x0")
    x_t = append_dims(schedule.alpha(t), x0) * x0 + append_dims(schedule.sigma(t), x0) * eps
    return NoisySample(x_t=x_t, t=t, x0=x0, eps=eps)


TIME_DISTRIBUTIONS = ("uniform", "stratified", "logit_normal")


def sample_times(n: int, *, kind: str = "uniform", t_min: float = 1e-3, t_max: float = 1.0,
                 device=None, dtype=torch.float32, generator: Optional[torch.Generator] = None,
                 loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Training times t ~ pi(t) on [t_min, t_max] (component (D) of a loss, monograph §6.2).

    ``kind``: ``"uniform"``; ``"stratified"`` (one uniform draw per stratum, a low-variance
    estimate of the same expectation, as in VDM); ``"logit_normal"`` (t = sigmoid(loc + scale z),
    as in SD3), rescaled into [t_min, t_max].
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int batch size, got {n!r}")
    check_kind(kind, TIME_DISTRIBUTIONS, "kind")
    if not (0.0 <= t_min < t_max <= 1.0):
        raise ValueError(f"t_min, t_max: expected 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if kind == "uniform":
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    elif kind == "stratified":
        u = (torch.arange(n, device=device, dtype=dtype) + torch.rand(n, generator=generator, device=device, dtype=dtype)) / n
        u = u[torch.argsort(torch.rand(n, generator=generator, device=device))]
    else:
        u = torch.sigmoid(loc + scale * torch.randn(n, generator=generator, device=device, dtype=dtype))
    return t_min + (t_max - t_min) * u


def independent_coupling(x0: torch.Tensor, x1: torch.Tensor):
    """The independent coupling pi(x0, x1) = p_data(x0) N(x1; 0, I) used by flow matching (monograph §5.3)."""
    check_data(x0, "x0")
    check_like(x1, x0, "x1", "x0")
    return x0, x1


def ot_coupling(x0: torch.Tensor, x1: torch.Tensor):
    """Minibatch optimal-transport coupling: permute x1 to minimise sum ||x0_i - x1_pi(i)||^2 (monograph §7.4).

    Solved exactly with the Hungarian algorithm (scipy) on the batch; returns (x0, x1 permuted).
    """
    check_data(x0, "x0")
    check_like(x1, x0, "x1", "x0")
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.reshape(len(x0), -1).double(), x1.reshape(len(x1), -1).double()).pow(2)
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    return x0, x1[torch.as_tensor(np.asarray(cols), device=x1.device)]
