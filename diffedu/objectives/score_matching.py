"""Score matching in four forms, Tweedie's formula and SURE (monograph §3.1-3.3).

The score of a density p is s(x) = grad_x log p(x); an energy-based model p = exp(-E)/Z has score
-grad E, free of the normaliser Z (monograph §3.1). Fitting a model s_theta to it:

* **explicit** (ESM): 1/2 E ||s_theta(x) - grad log p(x)||^2 — needs the true score (here: the
  Gaussian-mixture oracle of :mod:`diffedu.toy`);
* **implicit** (ISM, Hyvärinen 2005): E [tr(grad_x s_theta(x)) + 1/2 ||s_theta(x)||^2], equal to ESM
  minus the data-only constant 1/2 E||grad log p||^2 (integration by parts); the trace exactly in
  low dimension, by Hutchinson's estimator in high dimension (:func:`diffedu.autodiff.jacobian_trace`,
  :func:`diffedu.autodiff.hutchinson_trace`);
* **sliced** (SSM, Song et al. 2019): E_v [v^T grad_x s_theta v + 1/2 (v^T s_theta)^2] over random
  directions v; with ``variance_reduction`` the second term becomes 1/2 ||s_theta||^2;
* **denoising** (DSM, Vincent 2011): 1/2 E ||s_theta(x_t, t) - grad_{x_t} log q(x_t | x0)||^2 with the
  conditional score -(x_t - alpha_t x0) / sigma_t^2 = -eps / sigma_t; equal to ESM on p_t up to a
  constant, so its minimiser is the true noisy score grad log p_t (monograph §3.2).

Every loss returns a per-example tensor of shape (B,). Score functions are plain callables:
``score_fn(x)`` for a single density, ``score_fn(x_t, t)`` for the noise-conditional DSM
(:func:`model_score` turns a model into one).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from diffedu._checks import append_dims, check_callable, check_data, check_int, check_kind, check_like, check_model, check_positive, check_schedule, check_time
from diffedu.autodiff import hutchinson_trace, jacobian_trace, quadratic_form, random_probe
from diffedu.schedules import Schedule

__all__ = [
    "model_score",
    "explicit_score_matching", "implicit_score_matching", "sliced_score_matching",
    "dsm_target", "denoising_score_matching", "tweedie_x0", "sure",
]


def model_score(model) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(x_t, t) -> model(x_t, t).score = -E[eps|x_t]/sigma_t for a model obeying the model contract (monograph §3.3)."""
    check_model(model)
    return lambda x, t: model(x, t).score


def _flat(v):
    return v.reshape(v.shape[0], -1)


def explicit_score_matching(score_fn: Callable, x: torch.Tensor, true_score: torch.Tensor) -> torch.Tensor:
    """ESM: 1/2 ||s_theta(x) - grad log p(x)||^2 per example (monograph §3.2); ``true_score`` shaped like x."""
    check_callable(score_fn, "score_fn", "a score function x -> grad log p(x)")
    check_data(x, "x")
    check_like(true_score, x, "true_score")
    s = score_fn(x)
    check_like(s, x, "score_fn(x)")
    return 0.5 * _flat(s - true_score).pow(2).sum(1)


def implicit_score_matching(score_fn: Callable, x: torch.Tensor, *, estimator: str = "exact", n_probes: int = 1,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ISM (Hyvärinen 2005): tr(grad_x s_theta(x)) + 1/2 ||s_theta(x)||^2 per example (monograph §3.2).

    E[ISM] = E[ESM] - 1/2 E||grad log p||^2: same minimiser, no true score needed.
    ``estimator``: ``"exact"`` (D backward passes) or ``"hutchinson"`` (``n_probes`` Rademacher probes).
    """
    check_callable(score_fn, "score_fn", "a score function x -> grad log p(x)")
    check_kind(estimator, ("exact", "hutchinson"), "estimator")
    if estimator == "exact":
        s, tr = jacobian_trace(score_fn, x, create_graph=True)
    else:
        s, tr = hutchinson_trace(score_fn, x, n_probes=n_probes, generator=generator, create_graph=True)
    return tr + 0.5 * _flat(s).pow(2).sum(1)


def sliced_score_matching(score_fn: Callable, x: torch.Tensor, *, n_projections: int = 1,
                          variance_reduction: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """SSM (Song et al. 2019): mean over Gaussian directions v of v^T grad_x s v + 1/2 (v^T s)^2 (monograph §3.2).

    Its expectation over v equals ISM. ``variance_reduction`` (SSM-VR) replaces 1/2 (v^T s)^2 by its
    expectation 1/2 ||s||^2. Cost: one vector-Jacobian product per projection.
    """
    check_callable(score_fn, "score_fn", "a score function x -> grad log p(x)")
    check_data(x, "x")
    check_int(n_projections, "n_projections")
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    with torch.enable_grad():
        s = score_fn(x)
        check_like(s, x, "score_fn(x)")
        total = torch.zeros(x.shape[0], device=x.device, dtype=s.dtype)
        for _ in range(n_projections):
            v = random_probe(x, "gaussian", generator)
            quad = quadratic_form(s, x, v, create_graph=True)
            second = 0.5 * _flat(s).pow(2).sum(1) if variance_reduction else 0.5 * _flat(s * v).sum(1) ** 2
            total = total + quad + second
    return total / n_projections


def dsm_target(schedule: Schedule, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
    """The DSM regression target grad_{x_t} log q(x_t | x0) = -(x_t - alpha_t x0) / sigma_t^2 = -eps / sigma_t (monograph §3.2)."""
    check_schedule(schedule)
    check_data(x_t, "x_t")
    check_like(x0, x_t, "x0", "x_t")
    t = check_time(t, x_t)
    a, s = append_dims(schedule.alpha(t).to(x_t), x_t), append_dims(schedule.sigma(t).to(x_t), x_t)
    return -(x_t - a * x0) / s**2


def denoising_score_matching(score_fn: Callable, x0: torch.Tensor, t, schedule: Schedule, *,
                             eps: Optional[torch.Tensor] = None, weighting: str = "sigma2",
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DSM: 1/2 lambda(t) ||s_theta(x_t, t) - grad log q(x_t|x0)||^2 per example (Vincent 2011; monograph §3.2, §3.4).

    x_t = alpha_t x0 + sigma_t eps; ``score_fn(x_t, t)`` (see :func:`model_score`); ``weighting``:
    ``"sigma2"`` (lambda = sigma_t^2, NCSN's choice, which makes the loss 1/2 ||sigma_t s_theta + eps||^2)
    or ``"none"`` (lambda = 1). Minimised over functions by s_theta(., t) = grad log p_t.
    """
    check_schedule(schedule)
    check_data(x0, "x0")
    check_kind(weighting, ("sigma2", "none"), "weighting")
    t = check_time(t, x0).to(x0.dtype)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    check_like(eps, x0, "eps", "x0")
    a, s = append_dims(schedule.alpha(t), x0), append_dims(schedule.sigma(t), x0)
    x_t = a * x0 + s * eps
    score = score_fn(x_t, t)
    check_like(score, x0, "score_fn(x_t, t)", "x0")
    target = -eps / s
    lam = schedule.sigma(t) ** 2 if weighting == "sigma2" else torch.ones_like(t)
    return 0.5 * lam * _flat(score - target).pow(2).sum(1)


def tweedie_x0(x_t: torch.Tensor, score: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """Tweedie's formula E[x0 | x_t] = (x_t + sigma_t^2 grad log p_t(x_t)) / alpha_t (monograph §3.3).

    With the exact score this is the exact posterior mean (the Bayes-optimal denoiser); with a
    learned score it is the model's denoiser.
    """
    check_schedule(schedule)
    check_data(x_t, "x_t")
    check_like(score, x_t, "score", "x_t")
    t = check_time(t, x_t)
    a, s = append_dims(schedule.alpha(t).to(x_t), x_t), append_dims(schedule.sigma(t).to(x_t), x_t)
    return (x_t + s**2 * score) / a


def sure(denoise_fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, sigma: float, *,
         estimator: str = "exact", n_probes: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Stein's unbiased risk estimate of ||D(y) - x||^2 for y = x + sigma n, n ~ N(0, I) (Stein 1981; monograph §3.3).

    SURE(D, y) = ||D(y) - y||^2 - d sigma^2 + 2 sigma^2 div D(y); its expectation equals the true
    squared error E||D(y) - x||^2 without knowing x. Divergence exact or by Hutchinson
    (``estimator``). Per example, shape (B,).
    """
    check_callable(denoise_fn, "denoise_fn", "a denoiser y -> D(y)")
    check_data(y, "y")
    sigma = check_positive(sigma, "sigma")
    check_kind(estimator, ("exact", "hutchinson"), "estimator")
    if estimator == "exact":
        d, div = jacobian_trace(denoise_fn, y)
    else:
        d, div = hutchinson_trace(denoise_fn, y, n_probes=n_probes, generator=generator)
    dim = _flat(y).shape[1]
    return (_flat(d - y).pow(2).sum(1) - dim * sigma**2 + 2 * sigma**2 * div).detach()
