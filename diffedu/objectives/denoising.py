"""What do we minimise? Denoising regression losses as four choices (monograph §6.2).

A training loss is ``E_{t ~ pi, x0, eps} w(t) || net(x_t, t) - (A_t x0 + B_t eps) ||^2`` with
(A) a schedule (alpha_t, sigma_t), (B) a prediction target (A_t, B_t) from Table 6.1,
(C) a weight w(t), (D) a time distribution pi(t). DDPM's "simple" loss (§2.2), denoising score
matching (§3.2), flow matching (§5.3) and EDM (appendix D.6) are points in this space.
All losses here return a per-example loss of shape (B,); reduce it yourself.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from diffedu._checks import check_data, check_kind, check_like, check_positive, check_schedule, check_time
from diffedu.forward import add_noise, sample_times
from diffedu.param import KINDS, Denoiser, from_x0_eps, target_coefficients
from diffedu.schedules import Schedule

__all__ = ["WEIGHTINGS", "loss_weight", "denoising_loss", "regression_target"]

WEIGHTINGS = ("none", "eps", "x0", "min_snr", "elbo")


def regression_target(kind: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The regression target A_t x0 + B_t eps of prediction ``kind`` (monograph Table 6.1)."""
    check_kind(kind, KINDS, "kind")
    check_data(x0, "x0")
    check_like(eps, x0, "eps", "x0")
    return from_x0_eps(x0, eps, kind, check_time(t, x0), schedule)


def loss_weight(weighting: Union[str, Callable, None], t: torch.Tensor, schedule: Schedule, kind: str = "eps",
                gamma: float = 5.0) -> torch.Tensor:
    """Weight w(t) of component (C) (monograph §6.2), expressed for a loss on prediction ``kind``.

    ``"none"``: w = 1 on the model's own target (DDPM's L_simple for an eps model, plain flow
    matching for a velocity model). The other names fix the loss *in eps units* and convert it to
    the target ``kind`` by the exact factor ||eps - eps_hat||^2 / ||target - target_hat||^2, so a
    scheme means the same loss whatever the network predicts:
    ``"eps"``: the unweighted eps-MSE (equivalently sigma_t^2 times the score-MSE, Song & Ermon's
    lambda(t), §3.4); ``"x0"``: the unweighted x0-MSE (= eps-MSE / SNR); ``"min_snr"``:
    x0-MSE times min(SNR, gamma) (Hang et al. 2023); ``"elbo"``: the continuous-time ELBO weight
    -(1/2) d lambda/dt on the eps-MSE (Kingma et al. 2021; monograph §2.2, §4.5).
    A callable is used as w(t) directly.
    """
    check_schedule(schedule)
    t = check_time(t)
    if callable(weighting):
        return weighting(t)
    check_kind(weighting if weighting is not None else "none", WEIGHTINGS, "weighting")
    gamma = check_positive(gamma, "gamma")
    if weighting in (None, "none"):
        return torch.ones_like(t)
    snr = torch.exp(schedule.log_snr(t))
    A, B = target_coefficients(kind, t, schedule)
    a, s = schedule.alpha(t), schedule.sigma(t)
    # At fixed x_t, x0 = (x_t - s eps)/a, so target = A x_t / a + (B - A s / a) eps:
    # target - target_hat = (B - A s / a) (eps - eps_hat).
    c = 1.0 / (B - A * s / a)
    if weighting == "eps":
        w_eps = torch.ones_like(t)
    elif weighting == "x0":
        w_eps = 1 / snr
    elif weighting == "min_snr":
        w_eps = torch.clamp(snr, max=gamma) / snr
    else:  # elbo
        lam = t.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (dlam,) = torch.autograd.grad(schedule.log_snr(lam).sum(), lam)
        w_eps = -0.5 * dlam
    return w_eps * c**2


def denoising_loss(model: Denoiser, x0: torch.Tensor, *, t: Optional[torch.Tensor] = None,
                   eps: Optional[torch.Tensor] = None, weighting: Union[str, Callable, None] = "none",
                   time_sampler: Optional[Callable[..., torch.Tensor]] = None, cond=None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example denoising loss w(t) ||net(x_t, t) - target||^2 / D (mean over data dims) (monograph §6.2).

    ``model`` is a :class:`~diffedu.param.Denoiser`; its ``prediction`` fixes the target
    (Table 6.1) and its ``schedule`` the corruption. ``t`` defaults to ``time_sampler(B, generator=...)``
    or :func:`diffedu.forward.sample_times` (uniform on [1e-3, 1]). With an eps-predicting model and
    ``weighting="none"`` this is DDPM's L_simple (§2.2); with a velocity model on
    :class:`~diffedu.schedules.RectifiedFlow` it is conditional flow matching (§5.3).
    """
    if not isinstance(model, Denoiser):
        raise TypeError(f"model: expected a diffedu.param.Denoiser (net + schedule + prediction), got {type(model).__name__}")
    check_data(x0, "x0")
    if t is None:
        sampler = time_sampler or sample_times
        t = sampler(x0.shape[0], device=x0.device, dtype=x0.dtype, generator=generator)
    t = check_time(t, x0)
    noisy = add_noise(model.schedule, x0, t, eps=eps, generator=generator)
    target = regression_target(model.prediction, x0, noisy.eps, t, model.schedule)
    out = model.raw(noisy.x_t, t, cond)
    w = loss_weight(weighting, t, model.schedule, model.prediction)
    err = (out - target).pow(2).reshape(x0.shape[0], -1).mean(1)
    return w * err
