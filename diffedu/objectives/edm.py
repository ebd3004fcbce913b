"""EDM preconditioning, loss weight and time distribution (Karras et al. 2022; monograph §6.2, appendix D.6).

EDM writes the denoiser of x = x0 + sigma n as D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)
with the raw network F and

    c_in = 1 / sqrt(sigma^2 + sigma_d^2)            (network input has unit variance)
    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)      (skip what the input already knows)
    c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2) (the network's target has unit variance)
    c_noise = log(sigma) / 4,

trained with weight lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 on ||D - x0||^2 (so the
effective target of F has unit weight) and log sigma ~ N(P_mean, P_std^2). For a general
schedule x_t = alpha_t (x0 + (sigma_t/alpha_t) eps), so EDM acts on x_t / alpha_t with the
noise level sigma_bar = sigma_t / alpha_t (:meth:`~diffedu.schedules.Schedule.sigma_bar`): the same
four lines serve VP, VE and rectified flow.

In the four-choices view of a loss (monograph §6.2): schedule = any, prediction = x0 (through
the preconditioner), weight w = lambda, time distribution = log-normal in sigma_bar.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_like, check_positive, check_schedule, check_time
from diffedu.param import Denoiser
from diffedu.schedules import Schedule

__all__ = ["EDMCoefficients", "edm_preconditioning", "EDMDenoiser", "edm_weight", "edm_time_sampler",
           "edm_time_density"]


class EDMCoefficients(NamedTuple):
    """The four EDM preconditioning coefficients at noise level sigma (appendix D.6)."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_preconditioning(sigma: torch.Tensor, sigma_data: float = 0.5) -> EDMCoefficients:
    """(c_skip, c_out, c_in, c_noise) of EDM at noise level ``sigma`` (Karras et al. 2022, Table 1; appendix D.6)."""
    if not torch.is_tensor(sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.get_default_dtype())
    if (sigma < 0).any():
        raise ValueError("sigma: expected non-negative noise levels")
    sd = check_positive(sigma_data, "sigma_data")
    r = torch.sqrt(sigma**2 + sd**2)
    return EDMCoefficients(c_skip=sd**2 / r**2, c_out=sigma * sd / r, c_in=1 / r,
                           c_noise=torch.log(sigma.clamp_min(1e-20)) / 4)


class EDMDenoiser(Denoiser):
    """A :class:`~diffedu.param.Denoiser` whose net is EDM-preconditioned (appendix D.6).

    ``raw(x_t, t)`` returns D = c_skip x_bar + c_out F(c_in x_bar, c_noise, cond) with x_bar = x_t /
    alpha_t and coefficients at sigma_bar_t; it is an x0-prediction, so ``forward`` gives the usual
    :class:`~diffedu.param.Prediction` and every sampler and loss accepts the model. The raw net
    receives c_noise = log(sigma_bar)/4 as its "time" input.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, sigma_data: float = 0.5):
        super().__init__(net, schedule, prediction="x0")
        self.sigma_data = check_positive(sigma_data, "sigma_data")

    def raw(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        check_data(x_t, "x_t")
        t = check_time(t, x_t)
        a = append_dims(self.schedule.alpha(t).to(x_t.dtype), x_t)
        sb = self.schedule.sigma_bar(t).to(x_t.dtype)
        c = edm_preconditioning(sb, self.sigma_data)
        x_bar = x_t / a
        args = (append_dims(c.c_in, x_t) * x_bar, c.c_noise)
        F = self.net(*args, cond) if cond is not None else self.net(*args)
        check_like(F, x_t, "net output", "x_t")
        return append_dims(c.c_skip, x_t) * x_bar + append_dims(c.c_out, x_t) * F


def edm_weight(schedule: Schedule, sigma_data: float = 0.5) -> Callable[[torch.Tensor], torch.Tensor]:
    """w(t) = lambda(sigma_bar_t) = (sigma_bar^2 + sigma_d^2) / (sigma_bar sigma_d)^2 on the x0-MSE (appendix D.6).

    Pass it as ``weighting=`` to :func:`diffedu.objectives.denoising.denoising_loss` with an x0-predicting model.
    """
    sd = check_positive(sigma_data, "sigma_data")

    def w(t):
        sb = schedule.sigma_bar(t)
        return (sb**2 + sd**2) / (sb * sd) ** 2

    return w


def edm_time_sampler(schedule: Schedule, p_mean: float = -1.2, p_std: float = 1.2):
    """EDM's time distribution: log sigma_bar ~ N(p_mean, p_std^2), mapped to t by the half log-SNR -log sigma_bar (appendix D.6).

    Returns ``sampler(n, *, device=None, dtype=torch.float32, generator=None) -> t`` of shape (n,),
    usable as ``time_sampler=`` in :func:`diffedu.objectives.denoising.denoising_loss`. Times are clamped into
    [1e-6, 1] (the schedule's noise range).
    """
    check_schedule(schedule)
    check_positive(p_std, "p_std")

    def sampler(n, *, device=None, dtype=torch.float32, generator=None):
        gdev = generator.device if generator is not None else device
        z = torch.randn(n, generator=generator, device=gdev, dtype=torch.float64).to(device)
        log_sb = p_mean + p_std * z
        t = schedule.t_from_half_log_snr(-log_sb).clamp(1e-6, 1.0)
        return t.to(dtype)

    return sampler


def edm_time_density(t: torch.Tensor, schedule: Schedule, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """Density pi(t) of :func:`edm_time_sampler`'s t (ignoring the clamp): N(log sigma_bar_t; p_mean, p_std^2) |d log sigma_bar / dt|.

    With it, the importance-weighting identity E_{t~pi}[w(t) l(t)] = E_{t~U(0,1)}[pi(t) w(t) l(t)]
    turns a time distribution into a weight and back (monograph §6.2).
    """
    a, s, da, ds = schedule.coefficients(t)
    log_sb = -schedule.half_log_snr(t)
    dlog = ds / s - da / a  # d log sigma_bar / dt
    p_std = check_positive(p_std, "p_std")
    return torch.exp(-0.5 * ((log_sb - p_mean) / p_std) ** 2) / (p_std * math.sqrt(2 * math.pi)) * dlog.abs()

