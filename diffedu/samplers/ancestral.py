"""Ancestral (DDPM) sampling: denoise, then re-noise (monograph §2.2; Ho et al. 2020, Algorithm 2).

Between consecutive grid times s < t the model's reverse kernel is the forward posterior
q(x_s | x_t, x0) with the unknown x0 replaced by the model's estimate x0_hat(x_t, t):

    x_s = c_x0 x0_hat + c_xt x_t + sqrt(var) z,     z ~ N(0, I),

with (c_x0, c_xt, tilde-beta) from :func:`diffedu.forward.posterior_coefficients`. The grid is any
float64 grid from noise to data; on the 1000-step DDPM grid (:func:`diffedu.objectives.elbo.ddpm_time_grid`)
this is exactly Ho et al.'s update x_{n-1} = (x_n - beta_n / sqrt(1 - abar_n) eps_hat) / sqrt(1 - beta_n)
+ sqrt(tilde-beta_n) z (tested).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from diffedu._checks import append_dims, check_data, check_kind, check_model
from diffedu.forward import VARIANCES, reverse_kernel
from .grids import check_grid
from .record import StepLoop

__all__ = ["ancestral_step", "sample_ancestral"]


def ancestral_step(model, x: torch.Tensor, t, s, *, variance: str = "posterior", cond=None,
                   noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None):
    """One ancestral step x_t -> x_s ~ p(x_s | x_t) (monograph §2.2: "denoise, then re-noise").

    1. denoise: x0_hat = model(x_t, t).x0;  2. re-noise: x_s = posterior mean(x_t, x0_hat) + sqrt(var) z.
    ``t``, ``s`` are floats (or 0-d tensors) with s < t; at s = 0 no noise is added (the output is the
    mean, as in DDPM). Returns ``(x_s, prediction)``.
    """
    tt = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    ss = torch.as_tensor(s, dtype=torch.float64, device=x.device)
    if tt.ndim or ss.ndim:
        raise ValueError("t, s: ancestral_step takes one pair of grid times (floats or 0-d tensors)")
    mean, var, pred = reverse_kernel(model, x, tt, ss, variance=variance, cond=cond)
    if float(ss) == 0.0:
        return mean, pred
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if var.ndim == 1:
        var = append_dims(var, x)
    return mean + var.sqrt() * noise, pred


def sample_ancestral(model, x: torch.Tensor, ts, *, variance: str = "posterior", cond=None,
                     generator: Optional[torch.Generator] = None,
                     callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """DDPM ancestral sampling along a decreasing float64 grid ``ts`` (monograph §2.2; Ho et al. 2020, Alg. 2).

    ``model(x_t, t, cond) -> Prediction`` with ``model.schedule`` (any schedule; VP for DDPM);
    ``x`` is the starting noise at ts[0] (e.g. ``torch.randn(...)`` for a VP schedule at t = 1).
    ``variance``: ``"posterior"`` (tilde-beta), ``"beta"`` (sigma_{t|s}^2) or ``"learned"``
    (:class:`diffedu.objectives.elbo.LearnedVarianceDenoiser`). Ending the grid at 0 returns the final
    denoised mean. ``callback(step)`` after every step i sees a :class:`~diffedu.samplers.record.Step`
    with ``t = ts[i + 1]``, the new state ``x`` and the ``prediction`` at (x_{ts[i]}, ts[i]);
    ``progress=True`` shows a tqdm bar.
    """
    check_data(x, "x")
    check_kind(variance, VARIANCES, "variance")
    ts = check_grid(ts)
    check_model(model)
    loop = StepLoop(len(ts) - 1, callback, progress, "ancestral")
    times = ts.tolist()
    with torch.no_grad():
        for i in loop:
            x, pred = ancestral_step(model, x, ts[i], ts[i + 1], variance=variance, cond=cond, generator=generator)
            loop.report(i, times[i + 1], x, pred)
    return x
