"""Minibatch couplings for flow matching: independent, exact OT, entropic, Schrödinger bridge (monograph §7.5; §5.3-§5.4).

Flow matching trains on pairs (x_0, x_1) from *some* coupling of data and noise. The independent
coupling (:func:`diffedu.forward.independent_coupling`) makes conditional paths cross, so the
marginal ODE paths bend. Re-pairing each minibatch by OT (Pooladian et al. 2023; Tong et al. 2024)
makes the conditional paths (nearly) non-crossing: the learned flow is straighter and needs fewer
Euler steps, and its map approaches the OT map as the batch grows (monograph §7.5).

* ``"ot"``: exact minibatch OT, a permutation (:func:`diffedu.forward.ot_coupling`, Hungarian);
* ``"entropic"``: B pairs drawn (with replacement) from the entropic plan with regulariser eps;
* ``"sb"``: the entropic plan with eps = 2 sigma^2 (static SB, monograph §7.3) -- used by SB-CFM
  (:func:`sb_cfm_loss`) together with its Brownian-bridge path.

Book convention: t = 0 data (x_0), t = 1 noise (x_1). torchcfm calls the noise x0 and runs t the
other way.
"""
from __future__ import annotations

from typing import Optional

import torch

from diffedu._checks import check_data, check_kind, check_like, check_positive, check_time
from diffedu.forward import independent_coupling, ot_coupling
from diffedu.objectives.flow_matching import conditional_fm_loss
from diffedu.param import Prediction
from diffedu.transport.bridge import sb_cfm_sample, sb_cfm_velocity, sb_eps
from diffedu.transport.discrete import entropic_ot

__all__ = ["COUPLINGS", "ot_pairs", "entropic_pairs", "sb_pairs", "couple", "ot_cfm_loss", "sb_cfm_loss"]

COUPLINGS = ("independent", "ot", "entropic", "sb")


def ot_pairs(x0: torch.Tensor, x1: torch.Tensor):
    """Exact minibatch OT: (x0, x1 permuted) minimising sum ||x0_i - x1_pi(i)||^2 (monograph §7.5).

    The same as :func:`diffedu.forward.ot_coupling` (Hungarian algorithm on the batch).
    """
    return ot_coupling(x0, x1)


def entropic_pairs(x0: torch.Tensor, x1: torch.Tensor, eps: float, *, generator: Optional[torch.Generator] = None):
    """B pairs (x0_i, x1_j) drawn i.i.d. from the minibatch entropic OT plan with regulariser eps (monograph §7.3, §7.5).

    ``eps`` is in the units of ||x0 - x1||^2. Small eps approaches :func:`ot_pairs` (but draws
    with replacement), large eps the independent coupling.
    """
    check_data(x0, "x0")
    check_like(x1, x0, "x1", "x0")
    plan = entropic_ot(x0, x1, check_positive(eps, "eps"), tol=1e-6).plan  # a sampling plan: 1e-6 is plenty
    B = x0.shape[0]
    p = (plan / plan.sum()).reshape(-1).float()
    gdev = generator.device if generator is not None else p.device
    idx = torch.multinomial(p.to(gdev), B, replacement=True, generator=generator).to(x0.device)
    i, j = idx // B, idx % B
    return x0[i], x1[j]


def sb_pairs(x0: torch.Tensor, x1: torch.Tensor, sigma: float, *, generator: Optional[torch.Generator] = None):
    """B pairs drawn from the static Schrödinger bridge = entropic plan with eps = 2 sigma^2 (monograph §7.3)."""
    return entropic_pairs(x0, x1, sb_eps(sigma), generator=generator)


def couple(x0: torch.Tensor, x1: torch.Tensor, kind: str = "ot", *, eps: Optional[float] = None,
           sigma: Optional[float] = None, generator: Optional[torch.Generator] = None):
    """Pair a data batch x0 with a noise batch x1 by coupling ``kind`` in :data:`COUPLINGS` (monograph §7.5).

    ``eps`` is needed for ``"entropic"``, ``sigma`` for ``"sb"``. Returns (x0', x1') of x0's shape.
    """
    check_kind(kind, COUPLINGS, "kind")
    if kind == "independent":
        return independent_coupling(x0, x1)
    if kind == "ot":
        return ot_pairs(x0, x1)
    if kind == "entropic":
        if eps is None:
            raise ValueError("eps: the entropic coupling needs a regularisation eps > 0")
        return entropic_pairs(x0, x1, eps, generator=generator)
    if sigma is None:
        raise ValueError("sigma: the SB coupling needs the bridge's noise level sigma > 0")
    return sb_pairs(x0, x1, sigma, generator=generator)


def _noise_like(x0, generator):
    gdev = generator.device if generator is not None else x0.device
    return torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)


def ot_cfm_loss(model, x0: torch.Tensor, *, coupling: str = "ot", eps: Optional[float] = None, t=None,
                x1: Optional[torch.Tensor] = None, cond=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example OT-CFM loss: pair (x0, x1) by a minibatch ``coupling``, then the conditional FM loss (monograph §7.5, §5.3).

    ||v(x_t, t) - (alpha'_t x0 + sigma'_t x1)||^2 / D on the model's own path (rectified flow:
    x_t = (1-t) x0 + t x1, target x1 - x0), via
    :func:`diffedu.objectives.flow_matching.conditional_fm_loss`. ``x1`` ~ N(0, I) by default;
    ``coupling="independent"`` is plain CFM. With ``cond``, pairing across labels is allowed
    (the label stays with x0).
    """
    check_data(x0, "x0")
    if x1 is None:
        x1 = _noise_like(x0, generator)
    check_kind(coupling, COUPLINGS, "coupling")
    if coupling == "sb":
        raise ValueError("coupling: for 'sb' use sb_cfm_loss (it also changes the path)")
    if coupling == "entropic" and cond is not None:
        raise ValueError("cond: the entropic coupling resamples x0, so labels cannot follow; use coupling='ot'")
    x0c, x1c = couple(x0, x1, coupling, eps=eps, generator=generator)
    return conditional_fm_loss(model, x0c, t=t, x1=x1c, cond=cond, generator=generator)


def sb_cfm_loss(model, x0: torch.Tensor, sigma: float, *, t=None, x1: Optional[torch.Tensor] = None,
                t_min: float = 1e-3, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example SB-CFM loss ||v(x_t, t) - u_t(x_t | x0, x1)||^2 / D (Tong et al. 2024; monograph §7.3).

    Pairs come from the minibatch static SB (eps = 2 sigma^2, :func:`sb_pairs`), x_t from the
    Brownian bridge x_t = (1-t) x0 + t x1 + sigma sqrt(t(1-t)) z, and the target is
    :func:`~diffedu.transport.bridge.sb_cfm_velocity`. ``t`` ~ U(t_min, 1 - t_min) by default (the
    target's variance grows like 1/(t(1-t)) at the ends). ``model(x_t, t)`` returns a velocity (a
    :class:`~diffedu.param.Prediction`'s ``.velocity`` or a tensor); sample the learned flow with
    any ODE sampler on rectified flow's schedule (its marginal at t = 1 is exactly N(0, I)).
    """
    check_data(x0, "x0")
    sigma = check_positive(sigma, "sigma")
    check_positive(t_min, "t_min", upper=0.5)
    if x1 is None:
        x1 = _noise_like(x0, generator)
    x0c, x1c = sb_pairs(x0, x1, sigma, generator=generator)
    B = x0.shape[0]
    if t is None:
        gdev = generator.device if generator is not None else x0.device
        t = t_min + (1 - 2 * t_min) * torch.rand(B, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    t = check_time(t, x0).to(x0.dtype)
    x_t = sb_cfm_sample(x0c, x1c, t, sigma, noise=_noise_like(x0, generator))
    target = sb_cfm_velocity(x_t, x0c, x1c, t, sigma)
    out = model(x_t, t)
    v = out.velocity if isinstance(out, Prediction) else out
    return (v - target).pow(2).reshape(B, -1).mean(1)
