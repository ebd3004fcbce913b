"""Langevin dynamics and NCSN's annealed Langevin sampling (monograph §3.1, §3.4; Song & Ermon 2019).

Unadjusted Langevin algorithm (ULA) for a density p with score s = grad log p:

    x_{k+1} = x_k + h s(x_k) + sqrt(2 h) z_k,       z_k ~ N(0, I),

the Euler-Maruyama discretisation of dX = grad log p(X) dt + sqrt(2) dW, whose stationary law
is p. ULA's own stationary law is p only as h -> 0 (for a Gaussian N(m, v) it is
N(m, v / (1 - h / (2 v))), tested). Annealed Langevin (NCSN) runs a few ULA steps at each of
a decreasing sequence of noise levels, on the noised densities p_t, with step
h_i = step_scale * sigma_{t_i}^2 / sigma_{t_last}^2 (Song & Ermon 2019, Algorithm 1).

Langevin needs only a score, so it takes either a score function ``score_fn(x) -> grad log p(x)``
or a model obeying the model contract (its ``.score`` at a given t, monograph §3.3).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from diffedu._checks import append_dims, check_data, check_like, check_model, check_positive, check_time
from .grids import check_grid
from .record import StepLoop

__all__ = ["langevin_step", "sample_langevin", "sample_annealed_langevin", "score_function"]


def score_function(model_or_fn, t=None, cond=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable x -> score: ``model_or_fn`` itself if it is a plain function, else x -> model(x, t, cond).score.

    For a model (anything with ``.schedule`` returning a Prediction), ``t`` in [0, 1] picks the
    noise level; the score is -E[eps | x_t] / sigma_t (Tweedie, monograph §3.3).
    """
    if hasattr(model_or_fn, "schedule"):
        if t is None:
            raise ValueError("t: a model's score depends on the noise level; pass t in [0, 1]")
        t = float(check_time(t))

        def fn(x):
            with torch.no_grad():
                return model_or_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype), cond).score
        return fn
    if not callable(model_or_fn):
        raise TypeError(f"score: expected a callable score_fn(x) or a model with .schedule, got {type(model_or_fn).__name__}")
    return model_or_fn


def langevin_step(x: torch.Tensor, score: torch.Tensor, step_size, *, noise: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One unadjusted Langevin step x + h score + sqrt(2 h) z (monograph §3.1, eq. for Langevin dynamics).

    ``step_size`` h is a positive float or a per-example (B,) tensor; ``score`` = grad log p(x).
    """
    check_data(x, "x")
    check_like(score, x, "score")
    if torch.is_tensor(step_size):
        if (step_size <= 0).any():
            raise ValueError("step_size: expected positive step sizes")
        h = append_dims(step_size.to(x), x)
    else:
        h = check_positive(step_size, "step_size")
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    root = torch.sqrt(2 * h) if torch.is_tensor(h) else (2 * h) ** 0.5
    return x + h * score + root * noise


def sample_langevin(score, x: torch.Tensor, *, step_size: float, n_steps: int, t=None, cond=None,
                    generator: Optional[torch.Generator] = None, callback: Optional[Callable] = None,
                    progress: bool = False) -> torch.Tensor:
    """Run ``n_steps`` of unadjusted Langevin dynamics from ``x`` (monograph §3.1).

    ``score`` is a function x -> grad log p(x) or a model (then ``t`` picks p_t, see
    :func:`score_function`). Samples approach p as n_steps -> inf and step_size -> 0.
    ``callback(step)`` after each step k sees a :class:`~diffedu.samplers.record.Step` with
    ``i = k``, ``t`` the fixed time of a model's p_t (None for a bare score function), the new
    state ``x`` and ``prediction = None``; ``progress=True`` shows a tqdm bar.
    """
    check_data(x, "x")
    check_positive(step_size, "step_size")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive int, got {n_steps!r}")
    fn = score_function(score, t, cond)
    t_fixed = float(t) if hasattr(score, "schedule") else None
    loop = StepLoop(n_steps, callback, progress, "Langevin")
    for k in loop:
        x = loop.report(k, t_fixed, langevin_step(x, fn(x), step_size, generator=generator))
    return x


def sample_annealed_langevin(model, x: torch.Tensor, ts, *, n_steps_each: int = 10, step_scale: float = 2e-3,
                             cond=None, denoise_last: bool = True, generator: Optional[torch.Generator] = None,
                             callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """NCSN's annealed Langevin dynamics over the noise levels of the decreasing grid ``ts`` (monograph §3.4).

    At each level t_i (from noise to data), ``n_steps_each`` ULA steps target p_{t_i} with step
    h_i = step_scale * sigma_{t_i}^2 / sigma_{t_last}^2 (Song & Ermon 2019, Algorithm 1: larger steps
    where the density is wider). ``model`` follows the model contract (score = model(x, t).score;
    any schedule: VE gives NCSN, VP reuses a DDPM network). ULA on a Gaussian of width sigma is
    stable only for h < 2 sigma^2, so keep h_i / sigma_{t_i}^2 = step_scale / sigma_{t_last}^2 well
    below 1 (e.g. step_scale = 0.1 sigma_{t_last}^2). ``denoise_last`` returns the Tweedie
    estimate E[x0 | x_{t_last}] at the end (monograph §3.3), reported as one more step at t = 0.

    ``callback(step)`` after each ULA step sees a :class:`~diffedu.samplers.record.Step`: ``i``
    counts all steps (inner step k at level j is i = j n_steps_each + k), ``t = ts[j]``, the new
    state ``x`` and the ``prediction`` whose score made the step; ``progress=True`` shows a tqdm bar.
    """
    check_data(x, "x")
    ts = check_grid(ts)
    check_model(model)
    if not isinstance(n_steps_each, int) or n_steps_each < 1:
        raise ValueError(f"n_steps_each: expected a positive int, got {n_steps_each!r}")
    check_positive(step_scale, "step_scale")
    sched = model.schedule
    if float(ts[-1]) == 0.0 and float(sched.sigma(ts[-1])) == 0.0:
        raise ValueError("ts: the last noise level has sigma = 0 (no score there); end the grid at t > 0")
    sig_last2 = float(sched.sigma(ts[-1])) ** 2
    times = ts.tolist()
    loop = StepLoop(len(times) * n_steps_each, callback, progress, "annealed Langevin")
    with torch.no_grad():
        for i in loop:
            level, k = divmod(i, n_steps_each)
            if k == 0:  # a new noise level t_j: its step size h_j and the batch of times
                h = step_scale * float(sched.sigma(ts[level])) ** 2 / sig_last2
                tb = torch.full((x.shape[0],), times[level], device=x.device, dtype=x.dtype)
            pred = model(x, tb, cond)
            x = loop.report(i, times[level], langevin_step(x, pred.score, h, generator=generator), pred)
        if denoise_last:
            pred = model(x, tb, cond)
            x = loop.report(loop.n, 0.0, pred.x0, pred)
    return x
