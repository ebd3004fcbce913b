"""What does the network predict? Conversions between eps, x0, score, v and velocity (monograph §6.3, Table 6.1).

With x_t = alpha_t x0 + sigma_t eps, every prediction target is an affine combination
``A_t x0 + B_t eps`` (Table 6.1):

=========  ==========================  ====================
kind       target                      (A_t, B_t)
=========  ==========================  ====================
``x0``     clean data x0               (1, 0)
``eps``    noise eps                   (0, 1)
``score``  grad log p_t(x_t | x0)      (0, -1 / sigma_t)
``v``      alpha_t eps - sigma_t x0    (-sigma_t, alpha_t)    (Salimans & Ho 2022)
``velocity`` dx_t/dt                   (alpha'_t, sigma'_t)   (flow matching, §5.3)
=========  ==========================  ====================

Because (x_t, prediction) determines (x0, eps) whenever the 2x2 system is invertible, any
kind converts to any other (:func:`convert`). For the *marginal* quantities the same formulas
hold with x0 -> E[x0 | x_t] and eps -> E[eps | x_t] (Tweedie, monograph §3.3), which is why
one trained model can be sampled through any parameterisation (monograph §6.3).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_kind, check_like, check_schedule, check_time
from diffedu.schedules import Schedule

__all__ = ["KINDS", "target_coefficients", "to_x0", "to_eps", "from_x0_eps", "convert", "Prediction", "Denoiser"]

KINDS = ("eps", "x0", "score", "v", "velocity")


def target_coefficients(kind: str, t: torch.Tensor, schedule: Schedule):
    """(A_t, B_t) with target = A_t x0 + B_t eps for prediction ``kind`` (monograph Table 6.1)."""
    check_kind(kind, KINDS, "kind")
    check_schedule(schedule)
    t = check_time(t)
    a, s = schedule.alpha(t), schedule.sigma(t)
    if kind == "x0":
        return torch.ones_like(a), torch.zeros_like(a)
    if kind == "eps":
        return torch.zeros_like(a), torch.ones_like(a)
    if kind == "score":
        return torch.zeros_like(a), -1 / s
    if kind == "v":
        return -s, a
    return schedule.d_alpha(t), schedule.d_sigma(t)


def _coefs(t, x_t, schedule):
    a, s = schedule.alpha(t), schedule.sigma(t)
    return append_dims(a, x_t), append_dims(s, x_t)


def _velocity_det(t, x_t, schedule):
    a, s, da, ds = (append_dims(c, x_t) for c in schedule.coefficients(t))
    return a, s, da, ds, a * ds - s * da  # det > 0 whenever the log-SNR decreases


def _refuse_where(mask, t, what):
    """Raise a clear error where a conversion divides by an exact zero (an endpoint singularity)."""
    if bool(mask.any()):
        tt = t.reshape(-1)[mask.reshape(-1)] if t.numel() == mask.numel() else t.reshape(-1)
        raise ValueError(f"t: {what} (at t = {tt[0].item():g}); evaluate inside (0, 1) or use the model's own kind "
                         "(Prediction.as_kind returns a model's raw output unchanged)")


def _to_x0(out, kind, x_t, t, schedule):
    if kind == "x0":
        return out
    if kind == "velocity":
        a, s, da, ds, det = _velocity_det(t, x_t, schedule)
        x0 = (ds * x_t - s * out) / det
        if bool((s == 0).any()):  # sigma_t = 0: x_t is the data itself, the limit of the formula is x_t / alpha_t
            x0 = torch.where(s == 0, x_t / a, x0)
        return x0
    a, s = _coefs(t, x_t, schedule)
    if kind in ("eps", "score"):
        _refuse_where(a == 0, t, f"x0 from a {kind} prediction divides by alpha_t = 0 (the noise end, no data left)")
    if kind == "eps":
        return (x_t - s * out) / a
    if kind == "score":
        return (x_t + s**2 * out) / a
    if kind == "v":
        return (a * x_t - s * out) / (a**2 + s**2)
    raise ValueError(f"kind: unknown value {kind!r}; expected one of {sorted(KINDS)}")


def _to_eps(out, kind, x_t, t, schedule):
    if kind == "eps":
        return out
    if kind == "velocity":
        a, s, da, ds, det = _velocity_det(t, x_t, schedule)
        _refuse_where(~torch.isfinite(det), t, "eps from a velocity prediction is singular where sigma'_t is infinite "
                      "(sigma_t = 0 of a VP schedule: the velocity no longer sees the noise)")
        return (a * out - da * x_t) / det
    a, s = _coefs(t, x_t, schedule)
    if kind == "x0":
        _refuse_where(s == 0, t, "eps from an x0 prediction divides by sigma_t = 0 (the data end, no noise to recover)")
        return (x_t - a * out) / s
    if kind == "score":
        return -s * out
    if kind == "v":
        return (s * x_t + a * out) / (a**2 + s**2)
    raise ValueError(f"kind: unknown value {kind!r}; expected one of {sorted(KINDS)}")


def _from_x0_eps(x0, eps, kind, t, schedule):
    ref = x0 if x0 is not None else eps
    if kind == "x0":
        return x0
    if kind == "eps":
        return eps
    if kind == "score":
        sigma = schedule.sigma(t)
        _refuse_where(sigma == 0, t, "the score -eps / sigma_t is singular where sigma_t = 0 (the data end)")
        return -eps / append_dims(sigma, ref)
    A, B = target_coefficients(kind, t, schedule)
    if kind == "velocity":
        _refuse_where(~torch.isfinite(B), t, "the velocity alpha'_t x0 + sigma'_t eps is infinite where sigma'_t is "
                      "(sigma_t = 0 of a VP schedule, where sigma_t grows like sqrt(t))")
    return append_dims(A, ref) * x0 + append_dims(B, ref) * eps


_NEEDS = {"x0": ("x0",), "eps": ("eps",), "score": ("eps",), "v": ("x0", "eps"), "velocity": ("x0", "eps")}


def _checked(out, kind, x_t, t, schedule, out_name="out"):
    check_kind(kind, KINDS, "kind")
    check_schedule(schedule)
    check_data(x_t, "x_t")
    check_like(out, x_t, out_name, "x_t")
    return check_time(t, x_t)


def to_x0(out: torch.Tensor, kind: str, x_t: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """x0 (or E[x0|x_t] for a marginal prediction) from a prediction ``out`` of ``kind`` at (x_t, t) (monograph §6.3)."""
    t = _checked(out, kind, x_t, t, schedule)
    return _to_x0(out, kind, x_t, t, schedule)


def to_eps(out: torch.Tensor, kind: str, x_t: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """eps (or E[eps|x_t]) from a prediction ``out`` of ``kind`` at (x_t, t) (monograph §6.3)."""
    t = _checked(out, kind, x_t, t, schedule)
    return _to_eps(out, kind, x_t, t, schedule)


def from_x0_eps(x0: Optional[torch.Tensor], eps: Optional[torch.Tensor], kind: str, t, schedule: Schedule):
    """The ``kind`` target A_t x0 + B_t eps (monograph Table 6.1); pass only what ``kind`` needs (the other may be None)."""
    check_kind(kind, KINDS, "kind")
    check_schedule(schedule)
    need = _NEEDS[kind]
    if "x0" in need or x0 is not None:
        check_data(x0, "x0")
    if "eps" in need:
        check_data(eps, "eps") if x0 is None else check_like(eps, x0, "eps", "x0")
    ref = x0 if x0 is not None else eps
    return _from_x0_eps(x0, eps, kind, check_time(t, ref), schedule)


def convert(out: torch.Tensor, src: str, dst: str, x_t: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """Convert a prediction ``out`` of kind ``src`` at (x_t, t) into kind ``dst`` (monograph Table 6.1, §6.3).

    Kinds: ``"eps"``, ``"x0"``, ``"score"``, ``"v"``, ``"velocity"``. Works for any schedule and any
    shape (B, ...). Only the quantities ``dst`` needs are formed, so e.g. eps -> score never
    divides by alpha_t.
    """
    check_kind(src, KINDS, "src")
    check_kind(dst, KINDS, "dst")
    check_schedule(schedule)
    check_data(x_t, "x_t")
    check_like(out, x_t, "out", "x_t")
    t = check_time(t, x_t)
    if src == dst:
        return out
    need = _NEEDS[dst]
    x0 = _to_x0(out, src, x_t, t, schedule) if "x0" in need else None
    eps = _to_eps(out, src, x_t, t, schedule) if "eps" in need else None
    return _from_x0_eps(x0, eps, dst, t, schedule)


class Prediction:
    """A denoiser's answer at (x_t, t): the clean-data estimate x0 and noise estimate eps.

    For a trained or exact model these are E[x0 | x_t] and E[eps | x_t]; the other kinds
    follow (monograph Table 6.1): ``score = -eps / sigma_t`` (Tweedie, §3.3) and
    ``velocity = alpha'_t x0 + sigma'_t eps`` (the PF-ODE velocity, §4.4/§5.3).

    Built either from ``x0`` and ``eps``, or from a model's ``raw`` output of ``kind``: then x0 and
    eps are formed when first asked for, and ``as_kind(kind)`` returns ``raw`` itself, so a model's
    own kind survives at the endpoints where a conversion is singular (a score model's ``.score``
    at sigma_t = 0). A conversion that is singular there raises an error naming ``t``.
    """

    def __init__(self, x0=None, eps=None, *, x_t, t, schedule, kind=None, raw=None):
        if raw is None and (x0 is None or eps is None):
            raise ValueError("Prediction: give both x0 and eps, or a model's raw output and its kind")
        if raw is not None:
            check_kind(kind, KINDS, "kind")
        self._x0, self._eps = x0, eps
        self.x_t, self.t, self.schedule, self.kind, self.raw = x_t, t, schedule, kind, raw

    @property
    def x0(self) -> torch.Tensor:
        """E[x0 | x_t] (monograph §3.3, Tweedie)."""
        if self._x0 is None:
            self._x0 = _to_x0(self.raw, self.kind, self.x_t, self.t, self.schedule)
        return self._x0

    @property
    def eps(self) -> torch.Tensor:
        """E[eps | x_t] (monograph §6.3)."""
        if self._eps is None:
            self._eps = _to_eps(self.raw, self.kind, self.x_t, self.t, self.schedule)
        return self._eps

    def as_kind(self, kind: str) -> torch.Tensor:
        """The prediction in parameterisation ``kind`` (one of eps, x0, score, v, velocity; Table 6.1)."""
        check_kind(kind, KINDS, "kind")
        if self.raw is not None and kind == self.kind:
            return self.raw
        if kind == "velocity" and self.kind == "score" and self.raw is not None:
            # sigma'_t eps = -sigma_t sigma'_t score = -(sigma^2)'_t / 2 score: finite where sigma_t = 0 and
            # sigma'_t = inf (VP at t = 0), so a score model's velocity is the PF-ODE drift there (§4.4)
            da, ds2 = (append_dims(c, self.x_t) for c in (self.schedule.d_alpha(self.t), self.schedule.d_sigma2(self.t)))
            return da * self.x0 - 0.5 * ds2 * self.raw
        need = _NEEDS[kind]
        return _from_x0_eps(self.x0 if "x0" in need else None, self.eps if "eps" in need else None,
                            kind, self.t, self.schedule)

    @property
    def score(self) -> torch.Tensor:
        """grad_x log p_t(x_t) = -E[eps|x_t] / sigma_t (monograph §3.3)."""
        return self.as_kind("score")

    @property
    def velocity(self) -> torch.Tensor:
        """PF-ODE velocity dx/dt = alpha'_t x0 + sigma'_t eps (monograph §4.4, §6.3)."""
        return self.as_kind("velocity")

    @property
    def v(self) -> torch.Tensor:
        """Salimans-Ho v = alpha_t eps - sigma_t x0."""
        return self.as_kind("v")

    def __repr__(self):
        return f"Prediction(kind={self.kind!r}, shape={tuple(self.x_t.shape)}, schedule={self.schedule!r})"


class Denoiser(nn.Module):
    """A network plus a schedule plus the kind it predicts: the model contract every sampler accepts.

    ``net(x_t, t, cond)`` returns a tensor shaped like x_t in parameterisation ``prediction``;
    :meth:`forward` returns a :class:`Prediction` (x0 and eps). Wrappers (guidance, the exact
    Gaussian-mixture oracle in :mod:`diffedu.toy`) implement the same ``forward`` and carry
    ``.schedule``, so they compose (monograph §6.3).
    """

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "eps"):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net: expected a network net(x_t, t, cond) -> tensor shaped like x_t, got {type(net).__name__}")
        self.net = net
        self.schedule = check_schedule(schedule)
        self.prediction = check_kind(prediction, KINDS, "prediction")

    def raw(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """The network's raw output (in parameterisation ``self.prediction``)."""
        check_data(x_t, "x_t")
        t = check_time(t, x_t)
        out = self.net(x_t, t.to(x_t.dtype), cond) if cond is not None else self.net(x_t, t.to(x_t.dtype))
        check_like(out, x_t, "net output", "x_t")
        return out

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        check_data(x_t, "x_t")
        t = check_time(t, x_t)
        out = self.raw(x_t, t, cond)
        return Prediction(x_t=x_t, t=t, schedule=self.schedule, kind=self.prediction, raw=out)
