"""Reverse-time SDE samplers: Euler-Maruyama and predictor-corrector (monograph §4.2, §4.4; Song et al. 2021).

The reverse-time SDE of dx = f(t) x dt + g(t) dw, run from t = 1 (noise) down to t = 0 (data), is

    dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar                      (monograph §4.2)

and has the same marginals p_t as the forward process. With a step h = t - s > 0 from t down to s,
Euler-Maruyama reads x_s = x_t - h [f x_t - g^2 score] + g sqrt(h) z. The predictor-corrector
sampler follows each step with a few Langevin steps at the new noise level,
x <- x + delta score + sqrt(2 delta) z, whose step delta is set by a target signal-to-noise
ratio r: delta = 2 (r ||z|| / ||score||)^2 (Song et al. 2021, Algorithm 5; monograph §4.4).

Every sampler takes the model contract ``model(x_t, t, cond) -> Prediction`` with ``.schedule``
and a float64 grid decreasing from noise to data; times are cast to x's dtype at the model call.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from diffedu._checks import check_data, check_generator, check_model, check_positive
from diffedu.sde import diffusion_sq, drift_coef
from .grids import check_grid
from .record import StepLoop

__all__ = ["reverse_sde_step", "langevin_corrector_step", "sample_euler_maruyama", "sample_pc"]


def _times(t, x):
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _noise(x, generator):
    gdev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)


def reverse_sde_step(model, x: torch.Tensor, t: float, s: float, *, cond=None, noise: Optional[torch.Tensor] = None,
                     generator: Optional[torch.Generator] = None):
    """One Euler-Maruyama step of the reverse SDE from t down to s < t (monograph §4.2).

    x_s = x_t - (t - s) [f(t) x_t - g(t)^2 score(x_t, t)] + g(t) sqrt(t - s) z. Returns
    ``(x_s, prediction at (x_t, t))``; ``noise`` (shaped like x) overrides the draw of z.
    """
    sch = model.schedule
    tt = torch.tensor(float(t), dtype=torch.float64)
    h = float(t) - float(s)
    pred = model(x, _times(t, x), cond)
    f, g2 = float(drift_coef(sch, tt)), float(diffusion_sq(sch, tt))
    z = _noise(x, generator) if noise is None else noise
    x_s = x - h * (f * x - g2 * pred.score) + (g2 * h) ** 0.5 * z
    return x_s, pred


def langevin_corrector_step(model, x: torch.Tensor, t: float, *, snr: float = 0.16, cond=None,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One Langevin step at fixed t with the step size set by the signal-to-noise ratio ``snr`` (monograph §3.4, §4.4).

    delta = 2 (snr ||z|| / ||score||)^2 with the norms averaged over the batch (as in the Score SDE
    code; per-example norms blow up in 2D where a score can vanish), then
    x <- x + delta score + sqrt(2 delta) z (Song et al. 2021, Algorithm 5, with their alpha_i = 1).
    Leaves p_t invariant as delta -> 0.
    """
    pred = model(x, _times(t, x), cond)
    score = pred.score
    z = _noise(x, generator)
    B = x.shape[0]
    s_norm = score.reshape(B, -1).norm(dim=1).mean().clamp_min(1e-12)
    z_norm = z.reshape(B, -1).norm(dim=1).mean()
    delta = 2 * (snr * z_norm / s_norm) ** 2
    return x + delta * score + torch.sqrt(2 * delta) * z


def sample_euler_maruyama(model, x: torch.Tensor, ts, *, cond=None, generator: Optional[torch.Generator] = None,
                          denoise: bool = False, callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """Euler-Maruyama for the reverse-time SDE along the decreasing grid ``ts`` (monograph §4.2; Song et al. 2021).

    ``x`` is the starting sample at ts[0] (e.g. N(0, sigma_1^2 I) for VP/VE at t = 1). Every step
    adds noise; the returned x is then a draw of p_{ts[-1]} up to discretisation error. With
    ``denoise=True`` the final x is replaced by the model's E[x0 | x] at ts[-1] (Tweedie,
    monograph §3.3), the usual last "denoising step", reported to the callback as one more step at
    t = 0. ``callback(step)`` after each step i sees a :class:`~diffedu.samplers.record.Step` with
    ``t = ts[i + 1]``, the new state ``x`` and the ``prediction`` at (x_{ts[i]}, ts[i]) (after the
    corrector, for :func:`sample_pc`); ``progress=True`` shows a tqdm bar.
    """
    return _reverse_sde_loop(model, x, ts, 0, 0.0, cond, generator, denoise, callback, progress, "reverse SDE")


def sample_pc(model, x: torch.Tensor, ts, *, snr: float = 0.16, n_corrector: int = 1, cond=None,
              generator: Optional[torch.Generator] = None, denoise: bool = False,
              callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """Predictor-corrector sampling (monograph §4.4; Song et al. 2021, Algorithm 1 with a Langevin corrector).

    At each grid time t_i: ``n_corrector`` Langevin corrector steps at t_i (target ``snr``), then one
    Euler-Maruyama predictor step of the reverse SDE to t_{i+1} — the order of the Score SDE
    reference code. ``denoise`` and ``callback`` as in :func:`sample_euler_maruyama`.
    """
    check_positive(snr, "snr")
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector: expected a non-negative int, got {n_corrector!r}")
    return _reverse_sde_loop(model, x, ts, n_corrector, snr, cond, generator, denoise, callback, progress,
                             "predictor-corrector")


def _reverse_sde_loop(model, x, ts, n_corrector, snr, cond, generator, denoise, callback, progress, desc):
    """Shared loop of both samplers: ``n_corrector`` Langevin steps at t_i, then one Euler-Maruyama step to t_{i+1}."""
    check_data(x, "x")
    check_model(model)
    check_generator(generator)
    ts = check_grid(ts)
    loop, times = StepLoop(len(ts) - 1, callback, progress, desc), ts.tolist()
    for i in loop:
        for _ in range(n_corrector):
            x = langevin_corrector_step(model, x, times[i], snr=snr, cond=cond, generator=generator)
        x, pred = reverse_sde_step(model, x, times[i], times[i + 1], cond=cond, generator=generator)
        loop.report(i, times[i + 1], x, pred)
    if denoise:  # Tweedie's E[x0 | x] at ts[-1]: one more step, to t = 0
        pred = model(x, _times(times[-1], x), cond)
        x = loop.report(len(times) - 1, 0.0, pred.x0, pred)
    return x
