"""Itô processes with closed forms, the two textbook SDE integrators, and Girsanov weights (monograph Appendix A-C).

Appendix A of the monograph is a crash course on the differential equations beneath diffusion
models; Appendix B follows a density along them (change of variables -> continuity equation ->
Fokker-Planck). Both need processes whose answers are known exactly, so that a numerical
method's error can be *measured* rather than guessed. Two scalar (or diagonal) SDEs have them:

* geometric Brownian motion (GBM), multiplicative noise,
      dX = mu X dt + sigma X dW,      X_t = X_0 exp((mu - sigma^2/2) t + sigma W_t);
* the Ornstein-Uhlenbeck process (OU), additive noise (the VP SDE with constant beta = 2 theta
  is the OU process with sigma^2 = 2 theta, monograph §4.3),
      dX = -theta X dt + sigma dW,    X_t = e^{-theta t} X_0 + sigma int_0^t e^{-theta (t - s)} dW_s.

The integrators take the Brownian increments as an argument, so the *same* path drives the
numerical and the exact solution (strong error) and a coarse grid is the fine one summed in
blocks (:func:`coarsen`). Euler-Maruyama has strong order 1/2 and weak order 1 in general, and
strong order 1 for additive noise; Milstein's correction 1/2 b b' (dW^2 - dt) gives strong
order 1 (Kloeden & Platen 1992, §10.2-10.3). Time here is the SDE's own clock, any t >= 0 (not
the diffusion time in [0, 1]). Shapes: states (B, ...); increments (N, B, ...), time first, like
the path of :func:`diffedu.sde.simulate_forward_sde`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from diffedu._checks import (append_dims, check_callable, check_data, check_finite, check_generator, check_int,
                             check_like, check_positive)
from diffedu.gaussian import LOG_2PI, gaussian_log_prob

__all__ = ["brownian_increments", "coarsen", "euler_maruyama", "milstein",
           "gbm_solution", "gbm_moments", "gbm_log_prob",
           "ou_moments", "ou_log_prob", "ou_noise", "ou_solution", "girsanov_log_weight"]


# ----------------------------------------------------------------------------- checks
def _clock(t, x: torch.Tensor, name: str = "t", *, positive: bool = False) -> torch.Tensor:
    """An SDE time t >= 0 (a float or a (B,) tensor; gradients kept), broadcast against x of shape (B, ...)."""
    if isinstance(t, bool):
        raise TypeError(f"{name}: expected a time t >= 0 (a float or a tensor of shape (B,)), got bool")
    if not torch.is_tensor(t):
        t = torch.tensor(check_finite(t, name), dtype=x.dtype, device=x.device)
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point time, got dtype {t.dtype}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"{name}: expected a scalar or shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or inf")
    if (t < 0).any() or (positive and (t <= 0).any()):
        raise ValueError(f"{name}: expected {'t > 0' if positive else 't >= 0'} (the SDE's own clock), "
                         f"got min {t.min().item():.4g}")
    return append_dims(t.to(device=x.device, dtype=x.dtype), x)


def _check_shape(shape, name: str = "shape") -> tuple:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) == 0 or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"{name}: expected a shape (B, ...) of positive ints, got {shape!r}")
    return tuple(shape)


def _check_increments(dw, x0: torch.Tensor, name: str = "dw") -> torch.Tensor:
    if not torch.is_tensor(dw) or not dw.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor of shape (N, *x0.shape), got {type(dw).__name__}")
    if dw.ndim != x0.ndim + 1 or dw.shape[1:] != x0.shape or dw.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (N, {', '.join(map(str, x0.shape))}) with N >= 1 steps "
                         f"(time first), got {tuple(dw.shape)}")
    if not torch.isfinite(dw).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return dw


def _randn(shape, generator, dtype, device):
    gdev = generator.device if generator is not None else (device or "cpu")
    return torch.randn(shape, generator=generator, dtype=dtype, device=gdev).to(device or gdev)


# ----------------------------------------------------------------------------- Brownian paths
def brownian_increments(shape, n_steps: int, dt: float, *, generator: Optional[torch.Generator] = None,
                        dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Increments dW_k = W_{t_{k+1}} - W_{t_k} ~ N(0, dt), independent, shape (n_steps, *shape) (monograph Appendix A).

    ``shape`` is the state's shape (B, ...); row k drives step k of :func:`euler_maruyama`. The
    cumulative sum along dim 0 is the Brownian path on the grid t_k = k dt.
    """
    shape = _check_shape(shape)
    n_steps = check_int(n_steps, "n_steps")
    dt = check_positive(dt, "dt")
    check_generator(generator)
    return _randn((n_steps, *shape), generator, dtype, device) * math.sqrt(dt)


def coarsen(dw: torch.Tensor, factor: int) -> torch.Tensor:
    """The increments of the *same* Brownian path on a grid ``factor`` times coarser: sums of consecutive blocks.

    (N, B, ...) -> (N / factor, B, ...) (monograph Appendix A): this is how a strong error is
    measured, every step size driven by one path.
    """
    if not torch.is_tensor(dw) or dw.ndim < 2:
        raise TypeError(f"dw: expected increments of shape (N, B, ...), got {getattr(dw, 'shape', type(dw).__name__)}")
    factor = check_int(factor, "factor")
    if dw.shape[0] % factor:
        raise ValueError(f"factor: must divide the number of steps N = {dw.shape[0]}, got {factor}")
    return dw.reshape(dw.shape[0] // factor, factor, *dw.shape[1:]).sum(1)


# ----------------------------------------------------------------------------- integrators
def _integrate(step, x0, dt, dw, t0, return_path):
    x, path = x0, [x0]
    for k in range(dw.shape[0]):
        x = step(x, t0 + k * dt, dw[k])
        if return_path:
            path.append(x)
    return torch.stack(path) if return_path else x


def _check_integrator(x0, dt, dw, t0, **fns):
    for name, fn in fns.items():
        check_callable(fn, name, f"a function {name}(x, t) returning a tensor shaped like x")
    check_data(x0, "x0")
    _check_increments(dw, x0)
    return check_positive(dt, "dt"), check_finite(t0, "t0")


def euler_maruyama(drift: Callable, diffusion: Callable, x0: torch.Tensor, dt: float, dw: torch.Tensor, *,
                   t0: float = 0.0, return_path: bool = False) -> torch.Tensor:
    """Euler-Maruyama for dX = a(X, t) dt + b(X, t) dW with diagonal noise (monograph Appendix A, §4.3):

        X_{k+1} = X_k + a(X_k, t_k) dt + b(X_k, t_k) dW_k,     t_k = t0 + k dt.

    ``drift(x, t)`` and ``diffusion(x, t)`` return tensors shaped like x (b acts entrywise);
    ``dw`` (N, *x0.shape) are the increments (:func:`brownian_increments`). Returns X_N, or the
    path (N + 1, *x0.shape) with ``return_path``. Strong order 1/2, weak order 1; strong order 1
    when b does not depend on x (Kloeden & Platen 1992, §10.2, §14.1).
    """
    dt, t0 = _check_integrator(x0, dt, dw, t0, drift=drift, diffusion=diffusion)
    return _integrate(lambda x, t, w: x + drift(x, t) * dt + diffusion(x, t) * w, x0, dt, dw, t0, return_path)


def milstein(drift: Callable, diffusion: Callable, d_diffusion: Callable, x0: torch.Tensor, dt: float,
             dw: torch.Tensor, *, t0: float = 0.0, return_path: bool = False) -> torch.Tensor:
    """Milstein's scheme for dX = a dt + b dW with diagonal noise (monograph Appendix A):

        X_{k+1} = X_k + a dt + b dW_k + 1/2 b (db/dx) (dW_k^2 - dt),

    the Euler-Maruyama step plus the Itô correction from expanding b(X) to first order.
    ``d_diffusion(x, t)`` is db/dx entrywise. Strong order 1 (Kloeden & Platen 1992, §10.3);
    equal to Euler-Maruyama for additive noise (db/dx = 0). Same arguments and returns as
    :func:`euler_maruyama`.
    """
    dt, t0 = _check_integrator(x0, dt, dw, t0, drift=drift, diffusion=diffusion, d_diffusion=d_diffusion)

    def step(x, t, w):
        b = diffusion(x, t)
        return x + drift(x, t) * dt + b * w + 0.5 * b * d_diffusion(x, t) * (w * w - dt)

    return _integrate(step, x0, dt, dw, t0, return_path)


# ----------------------------------------------------------------------------- geometric Brownian motion
def _gbm_params(mu, sigma, *, strict_sigma=False):
    return check_finite(mu, "mu"), check_positive(sigma, "sigma", strict=strict_sigma)


def gbm_solution(x0: torch.Tensor, w: torch.Tensor, t, mu: float, sigma: float) -> torch.Tensor:
    """The exact GBM X_t = X_0 exp((mu - sigma^2/2) t + sigma W_t) from the Brownian value W_t (monograph Appendix A).

    Solves dX = mu X dt + sigma X dW (Itô's formula on log X, monograph Appendix C). ``x0`` (B, ...),
    ``w`` shaped like x0 (e.g. ``dw.sum(0)``), ``t`` a float or (B,) tensor >= 0. Shaped like x0.
    """
    check_data(x0, "x0")
    check_like(w, x0, "w", "x0")
    mu, sigma = _gbm_params(mu, sigma)
    t = _clock(t, x0)
    return x0 * torch.exp((mu - 0.5 * sigma**2) * t + sigma * w)


def gbm_moments(x0: torch.Tensor, t, mu: float, sigma: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(E[X_t], Var[X_t]) of GBM from X_0 = x0: (x0 e^{mu t}, x0^2 e^{2 mu t} (e^{sigma^2 t} - 1)) (monograph Appendix A).

    Both shaped like x0 (B, ...); ``t`` a float or (B,) tensor >= 0.
    """
    check_data(x0, "x0")
    mu, sigma = _gbm_params(mu, sigma)
    t = _clock(t, x0)
    mean = x0 * torch.exp(mu * t)
    return mean, mean**2 * torch.expm1(sigma**2 * t)


def gbm_log_prob(x: torch.Tensor, x0: torch.Tensor, t, mu: float, sigma: float) -> torch.Tensor:
    """log p_t(x | x0) of GBM, the log-normal: log X_t ~ N(log x0 + (mu - sigma^2/2) t, sigma^2 t) (monograph Appendix B).

    log p = log N(log x; m, s^2) - log x per entry, summed over the non-batch dims: shape (B,).
    ``x``, ``x0`` (B, ...) positive, ``t`` > 0, ``sigma`` > 0.
    """
    check_data(x, "x")
    check_like(x0, x, "x0")
    if (x <= 0).any() or (x0 <= 0).any():
        raise ValueError("x: GBM lives on (0, inf); x and x0 must be positive")
    mu, sigma = _gbm_params(mu, sigma, strict_sigma=True)
    t = _clock(t, x, positive=True)
    m, s2 = torch.log(x0) + (mu - 0.5 * sigma**2) * t, sigma**2 * t
    per = -0.5 * (torch.log(x) - m) ** 2 / s2 - 0.5 * torch.log(s2) - 0.5 * LOG_2PI - torch.log(x)
    return per.expand_as(x).reshape(x.shape[0], -1).sum(1)


# ----------------------------------------------------------------------------- Ornstein-Uhlenbeck
def _ou_params(theta, sigma):
    return check_positive(theta, "theta"), check_positive(sigma, "sigma", strict=False)


def ou_moments(x0: torch.Tensor, t, theta: float, sigma: float, var0: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of the OU process dX = -theta X dt + sigma dW at time t (monograph Appendix B, §4.3).

    From X_0 ~ N(x0, var0 I): mean x0 e^{-theta t}, variance var0 e^{-2 theta t} +
    sigma^2 (1 - e^{-2 theta t}) / (2 theta) (-> the stationary sigma^2 / (2 theta)). ``var0 = 0``
    is a point start (the transition density). Both shaped like x0 (B, ...); ``t`` a float or
    (B,) tensor >= 0, gradients kept (the Fokker-Planck check differentiates in t).
    """
    check_data(x0, "x0")
    theta, sigma = _ou_params(theta, sigma)
    var0 = check_positive(var0, "var0", strict=False)
    t = _clock(t, x0)
    decay = torch.exp(-theta * t)
    var = var0 * decay**2 - sigma**2 / (2 * theta) * torch.expm1(-2 * theta * t)
    return x0 * decay, var.expand_as(x0)


def ou_log_prob(x: torch.Tensor, x0: torch.Tensor, t, theta: float, sigma: float, var0: float = 0.0) -> torch.Tensor:
    """log p_t(x) of the OU process started at N(x0, var0 I), summed over non-batch dims, shape (B,) (monograph Appendix B).

    The Gaussian with :func:`ou_moments`; it solves the Fokker-Planck equation
    d_t p = theta div(x p) + sigma^2/2 Laplacian p exactly. ``t`` > 0 unless ``var0`` > 0.
    """
    check_data(x, "x")
    check_like(x0, x, "x0")
    mean, var = ou_moments(x0, t, theta, sigma, var0)
    if (var <= 0).any():
        raise ValueError("t, sigma: a point start (var0 = 0) has a density only for t > 0 and sigma > 0")
    return gaussian_log_prob(x, mean, var)


def ou_noise(shape, n_steps: int, dt: float, theta: float, *, generator: Optional[torch.Generator] = None,
             dtype: torch.dtype = torch.float64, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dW_k, I_k) per step, each (n_steps, *shape): the Brownian increment and I_k = int_{t_k}^{t_{k+1}} e^{-theta (t_{k+1} - s)} dW_s.

    Jointly Gaussian (monograph Appendix A): Var dW = dt, Var I = (1 - e^{-2 theta dt}) / (2 theta),
    Cov(dW, I) = (1 - e^{-theta dt}) / theta. I drives the exact OU step (:func:`ou_solution`) and
    dW, on the same path, Euler-Maruyama: the strong error is then measured without a reference
    solver.
    """
    shape = _check_shape(shape)
    n_steps = check_int(n_steps, "n_steps")
    dt, theta = check_positive(dt, "dt"), check_positive(theta, "theta")
    check_generator(generator)
    z = _randn((2, n_steps, *shape), generator, dtype, device)
    var_i = -math.expm1(-2 * theta * dt) / (2 * theta)
    cov = -math.expm1(-theta * dt) / theta
    dw = math.sqrt(dt) * z[0]
    return dw, (cov / dt) * dw + math.sqrt(max(var_i - cov**2 / dt, 0.0)) * z[1]


def ou_solution(x0: torch.Tensor, integrals: torch.Tensor, dt: float, theta: float, sigma: float, *,
                return_path: bool = False) -> torch.Tensor:
    """The exact OU solution on the grid t_k = k dt: X_{k+1} = e^{-theta dt} X_k + sigma I_k (monograph Appendix A).

    The integrating factor e^{theta t} makes d(e^{theta t} X) = sigma e^{theta t} dW, hence this
    recursion with no discretisation error. ``integrals`` (N, *x0.shape) from :func:`ou_noise`.
    Returns X_N, or the path (N + 1, *x0.shape) with ``return_path``.
    """
    check_data(x0, "x0")
    _check_increments(integrals, x0, "integrals")
    dt = check_positive(dt, "dt")
    theta, sigma = _ou_params(theta, sigma)
    decay = math.exp(-theta * dt)
    return _integrate(lambda x, t, i: decay * x + sigma * i, x0, dt, integrals, 0.0, return_path)


# ----------------------------------------------------------------------------- Girsanov
def girsanov_log_weight(u: torch.Tensor, dw: torch.Tensor, dt: float) -> torch.Tensor:
    """log dQ/dP of a path on the grid: sum_k u_k . dW_k - 1/2 sum_k |u_k|^2 dt, shape (B,) (monograph Appendix C, §4).

    P is the law of dX = a dt + g dW and Q that of dX = (a + g u) dt + g dW (diagonal g > 0, so
    u = (b_Q - b_P) / g); ``dw`` (N, B, ...) are the increments of P's Brownian motion along the
    path and ``u`` (N, B, ...) the drift change at the left points t_k (Itô), e.g. u(X_k, t_k).
    Girsanov's theorem: E_Q[F(X)] = E_P[F(X) exp(log weight)]. Under Q the same path has
    dW^P = dW^Q + u dt, and KL(Q || P) = E_Q[log weight] = 1/2 E_Q int |u|^2 dt, the identity behind
    the continuous-time diffusion ELBO (monograph §4). Summed over the non-batch dims.
    """
    if not torch.is_tensor(u) or not u.is_floating_point() or u.ndim < 2:
        raise TypeError(f"u: expected a floating tensor of shape (N, B, ...), got {getattr(u, 'shape', type(u).__name__)}")
    if u.shape[0] < 1 or u.shape[1] < 1:
        raise ValueError(f"u: expected N >= 1 steps and B >= 1 paths, got shape {tuple(u.shape)}")
    if not torch.isfinite(u).all():
        raise ValueError("u: contains NaN or inf")
    _check_increments(dw, u[0])
    if dw.shape != u.shape:
        raise ValueError(f"dw: expected the shape of u {tuple(u.shape)} (one increment per step), got {tuple(dw.shape)}")
    dt = check_positive(dt, "dt")
    per = (u * dw - 0.5 * u * u * dt).sum(0)
    return per.reshape(per.shape[0], -1).sum(1)
