"""The forward process: make x_t from x0 in one shot (the conditioning trick), times, couplings.

q(x_t | x0) = N(alpha_t x0, sigma_t^2 I), so x_t = alpha_t x0 + sigma_t eps with eps ~ N(0, I)
(monograph §2.2 for DDPM, §4.3 for SDEs, §5.3 for interpolants; §6.1 "conditioning trick").
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch

from diffedu._checks import append_dims, check_data, check_finite, check_generator, check_int, check_kind, check_like, check_model, check_positive, check_schedule, check_time
from diffedu.schedules import Schedule

__all__ = ["NoisySample", "add_noise", "sample_times", "independent_coupling", "ot_coupling",
           "transition", "posterior_coefficients", "posterior", "ddim_posterior_coefficients", "ddim_posterior",
           "VARIANCES", "reverse_log_variance", "reverse_kernel"]


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
    check_schedule(schedule)
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
    check_int(n, "n")
    check_kind(kind, TIME_DISTRIBUTIONS, "kind")
    check_generator(generator)
    loc, scale = check_finite(loc, "loc"), check_positive(scale, "scale")
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


# ------------------------------------------- forward transition q(x_t | x_s) and posterior q(x_s | x_t, x0)
def _time(t, like, name):
    """A time as a 0-d or (B,) float64 tensor on like's device, not expanded (coefficients stay cheap)."""
    if isinstance(t, float) or (isinstance(t, int) and not isinstance(t, bool)):
        t = torch.tensor(float(t), dtype=torch.float64)  # a Python float stays float64, not the default float32
    t = check_time(t, None, name)
    if like is not None:
        if t.ndim == 1 and t.shape[0] != like.shape[0]:
            raise ValueError(f"{name}: expected a scalar or shape ({like.shape[0]},) to match the batch, got {tuple(t.shape)}")
        t = t.to(like.device)
    return t.to(torch.float64)


def _pair(t, s, like: Optional[torch.Tensor] = None):
    """Validate a pair of times s < t (float64 internally, as the grids are)."""
    t, s = _time(t, like, "t"), _time(s, like, "s")
    if t.shape != s.shape:
        t, s = torch.broadcast_tensors(t, s)
    if (s >= t).any():
        raise ValueError("s, t: expected s < t (s is the less noisy, earlier time; t = 0 data, t = 1 noise)")
    return t, s


def transition(schedule: Schedule, t, s):
    """(alpha_{t|s}, sigma_{t|s}^2) of q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I), s < t (monograph §2.2).

    alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2, computed in
    float64. For DDPM, one grid step gives (sqrt(1 - beta_n), beta_n).
    """
    check_schedule(schedule)
    t, s = _pair(t, s)
    a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
    a_ts = a_t / a_s
    var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
    return a_ts, var_ts


def posterior_coefficients(schedule: Schedule, t, s):
    """(c_x0, c_xt, var) with q(x_s | x_t, x0) = N(c_x0 x0 + c_xt x_t, var I) for s < t (monograph §2.2).

    c_x0 = alpha_s sigma_{t|s}^2 / sigma_t^2, c_xt = alpha_{t|s} sigma_s^2 / sigma_t^2,
    var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (DDPM's tilde-beta). Where sigma_s = 0 (s = 0 of a VP
    schedule): (1, 0, 0), the point mass at x0.
    Float64 tensors of the broadcast shape of (t, s).
    """
    t, s = _pair(t, s)
    a_ts, var_ts = transition(schedule, t, s)
    a_s, s_s, s_t = schedule.alpha(s), schedule.sigma(s), schedule.sigma(t)
    c_x0 = a_s * var_ts / s_t**2
    c_xt = a_ts * s_s**2 / s_t**2
    var = var_ts * s_s**2 / s_t**2
    return c_x0, c_xt, var


def posterior(schedule: Schedule, x_t: torch.Tensor, x0: torch.Tensor, t, s):
    """Mean and variance of the forward posterior q(x_s | x_t, x0), s < t (monograph §2.2).

    Returns ``(mean, var)`` with mean shaped like x_t and var of shape (B,) (isotropic). This is
    "denoise, then re-noise": put x0 (or a model's estimate of it) into the mean with weight c_x0.
    """
    check_data(x_t, "x_t")
    check_like(x0, x_t, "x0", "x_t")
    t, s = _pair(t, s, x_t)
    c_x0, c_xt, var = posterior_coefficients(schedule, t, s)
    c_x0, c_xt = c_x0.to(x_t.dtype), c_xt.to(x_t.dtype)
    mean = append_dims(c_x0, x_t) * x0 + append_dims(c_xt, x_t) * x_t
    return mean, var.to(x_t.dtype)


# ------------------------------ DDIM's non-Markovian family q_eta(x_s | x_t, x0) (Song, Meng, Ermon 2021)
def _check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta: expected a finite float >= 0 (0: deterministic DDIM, 1: the DDPM posterior), got {eta!r}")
    return float(eta)


def ddim_posterior_coefficients(schedule: Schedule, t, s, eta: float = 1.0):
    """(c_x0, c_xt, var) with q_eta(x_s | x_t, x0) = N(c_x0 x0 + c_xt x_t, var I), s < t: DDIM's family (monograph §9.3).

    Song, Meng & Ermon (2021) keep every marginal q(x_t | x0) = N(alpha_t x0, sigma_t^2 I) but
    replace the DDPM posterior by a family indexed by its standard deviation c = eta sqrt(tilde-beta):

        x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) (x_t - alpha_t x0) / sigma_t + c z,    z ~ N(0, I),

    i.e. "predict the noise of x_t, then re-noise with a share c of fresh noise", so
    c_xt = sqrt(sigma_s^2 - c^2) / sigma_t, c_x0 = alpha_s - c_xt alpha_t and var = c^2, with
    tilde-beta = sigma_s^2 (1 - (sigma_bar_s / sigma_bar_t)^2) the DDPM posterior variance
    (:func:`posterior_coefficients`). If x_t ~ q(x_t | x0), then x_s ~ q(x_s | x0) for *every* eta:
    the forward process built from this posterior is non-Markovian (x_t depends on x0 and x_s)
    but has DDPM's marginals, so one denoiser trained on them serves the whole family. eta = 1 is
    the DDPM posterior; eta = 0 is deterministic (var = 0), and with x0 -> x0_hat it is the DDIM
    ODE step. ``eta`` may exceed 1 as long as c <= sigma_s. At sigma_s = 0: (alpha_s, 0, 0).
    Float64 tensors of the broadcast shape of (t, s).
    """
    eta = _check_eta(eta)
    t, s = _pair(t, s)
    a_ts, var_ts = transition(schedule, t, s)
    a_t, s_t = schedule.alpha(t), schedule.sigma(t)
    a_s, s_s = schedule.alpha(s), schedule.sigma(s)
    r2 = (a_ts * s_s / s_t) ** 2               # (sigma_bar_s / sigma_bar_t)^2
    var = eta**2 * var_ts * s_s**2 / s_t**2    # c^2 = eta^2 tilde-beta
    keep = (1.0 - eta**2) + eta**2 * r2        # (sigma_s^2 - c^2) / sigma_s^2
    if (keep < -1e-12).any():
        raise ValueError(f"eta: {eta} makes the noise std c exceed sigma_s on this step; "
                         "DDIM's family needs c <= sigma_s (eta <= 1 always works)")
    c_xt = s_s * keep.clamp_min(0).sqrt() / s_t  # share of the noise estimate kept
    c_x0 = a_s - c_xt * a_t
    return c_x0, c_xt, var


def ddim_posterior(schedule: Schedule, x_t: torch.Tensor, x0: torch.Tensor, t, s, eta: float = 1.0):
    """Mean and variance of DDIM's non-Markovian posterior q_eta(x_s | x_t, x0), s < t (monograph §9.3; Song et al. 2021).

    Returns ``(mean, var)`` with mean shaped like x_t and var of shape (B,) or () (isotropic); see
    :func:`ddim_posterior_coefficients`. With x0 -> the model's x0_hat(x_t, t), mean + sqrt(var) z
    is one step of :func:`diffedu.samplers.sample_ddim` with this ``eta``.
    """
    check_data(x_t, "x_t")
    check_like(x0, x_t, "x0", "x_t")
    t, s = _pair(t, s, x_t)
    c_x0, c_xt, var = ddim_posterior_coefficients(schedule, t, s, eta)
    c_x0, c_xt = c_x0.to(x_t.dtype), c_xt.to(x_t.dtype)
    mean = append_dims(c_x0, x_t) * x0 + append_dims(c_xt, x_t) * x_t
    return mean, var.to(x_t.dtype)


# ------------------------------------- the model's reverse kernel: the posterior with x0 -> x0_hat
VARIANCES = ("posterior", "beta", "learned")


def _default_decoder_var(schedule, t1):
    return schedule.sigma_bar(t1) ** 2


def reverse_log_variance(schedule: Schedule, t, s, frac: Optional[torch.Tensor] = None, kind: str = "posterior"):
    """log of the reverse-kernel variance of p(x_s | x_t) (monograph §2.2; improved DDPM §3.1).

    ``kind="posterior"``: tilde-beta = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (the lower bound of Ho et al.);
    ``"beta"``: sigma_{t|s}^2 (the upper bound); ``"learned"``: improved DDPM's interpolation in log
    space, frac log(beta) + (1 - frac) log(tilde-beta), with ``frac`` from the network. At s = 0
    (the reconstruction step), tilde-beta = 0, so every kind uses the decoder variance
    sigma_{t}^2 / alpha_{t}^2 instead (a fixed choice; see :func:`diffedu.objectives.elbo.elbo_terms`). Float64, shape of t.
    """
    check_kind(kind, VARIANCES, "kind")
    t, s = _pair(t, s)
    _, var_ts = transition(schedule, t, s)
    _, _, tilde = posterior_coefficients(schedule, t, s)
    last = s == 0
    dec = _default_decoder_var(schedule, t)
    log_beta = torch.where(last, torch.log(dec), torch.log(var_ts))
    log_tilde = torch.where(last, torch.log(dec), torch.log(tilde.clamp_min(1e-300)))
    if kind == "posterior":
        return log_tilde
    if kind == "beta":
        return log_beta
    if frac is None:
        raise ValueError("frac: kind='learned' needs the network's interpolation fraction (shaped like x)")
    lb, lt = append_dims(log_beta, frac), append_dims(log_tilde, frac)
    return frac * lb.to(frac) + (1 - frac) * lt.to(frac)


def reverse_kernel(model, x_t: torch.Tensor, t, s, *, variance: str = "posterior", cond=None,
                   detach_mean: bool = False):
    """The model's Gaussian reverse kernel p(x_s | x_t) = N(mu, var) (monograph §2.2: "denoise, then re-noise").

    mu = c_x0 x0_hat(x_t, t) + c_xt x_t is the forward posterior mean with the model's x0 estimate
    plugged in; the variance is chosen by ``variance`` (see :func:`reverse_log_variance`;
    ``"learned"`` needs a :class:`~diffedu.objectives.elbo.LearnedVarianceDenoiser`). Returns ``(mean, var, prediction)``
    with var of shape (B,) or shaped like x_t (learned). ``detach_mean`` stops the gradient through
    the mean, as in improved DDPM's L_vlb.
    """
    check_kind(variance, VARIANCES, "variance")
    check_data(x_t, "x_t")
    t, s = _pair(t, s, x_t)
    sched = check_model(model).schedule
    t_model = t.to(x_t.dtype).expand(x_t.shape[0])
    if variance == "learned":
        if not hasattr(model, "predict_with_variance"):
            raise TypeError("model: variance='learned' needs a LearnedVarianceDenoiser (with predict_with_variance)")
        pred, frac = model.predict_with_variance(x_t, t_model, cond)
    else:
        pred, frac = model(x_t, t_model, cond), None
    x0_hat = pred.x0.detach() if detach_mean else pred.x0
    mean, _ = posterior(sched, x_t, x0_hat, t, s)
    logv = reverse_log_variance(sched, t, s, frac, variance)
    return mean, torch.exp(logv).to(x_t.dtype), pred
