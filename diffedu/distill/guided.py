"""Guided distillation: one student that takes the guidance scale w as an input (monograph §10.3, §8.2).

Meng et al. (2023), "On distillation of guided diffusion models". A classifier-free-guided
teacher costs two evaluations per step (monograph §8.2),

    eps_w(x, t, c) = (1 + w) eps(x, t, c) - w eps(x, t, null),

and its output depends on w. Stage one trains a student x0_S(x, t, c, w) to match the guided
teacher's x0 at random (t, w) -- one evaluation instead of two, for every w in a range; stage two
is progressive distillation (:mod:`diffedu.distill.progressive`) of that student, with the
*same* w fed to the teacher and the student at every target, so the final few-step student still
serves the whole range of w.

The guidance scale travels inside ``cond`` as a :class:`GuidedCond` (labels, w), so the models keep
the contract ``model(x_t, t, cond) -> Prediction``; :meth:`GuidedStudent.at` fixes w and returns a
model of plain labels, which every sampler accepts.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_finite, check_kind, check_model, check_schedule, check_time
from diffedu.forward import add_noise, sample_times
from diffedu.param import KINDS, Prediction, to_eps, to_x0

__all__ = ["GuidedCond", "GuidedTeacher", "GuidedStudent", "FixedGuidance", "sample_guided_cond", "guided_loss"]


class GuidedCond(NamedTuple):
    """The condition of a guided model: integer class ``labels`` (B,) and guidance scales ``w`` (B,) (monograph §8.2)."""

    labels: torch.Tensor
    w: torch.Tensor


def _check_guided_cond(cond, x) -> GuidedCond:
    if not isinstance(cond, GuidedCond):
        raise TypeError(f"cond: expected a diffedu.distill.GuidedCond(labels, w), got {type(cond).__name__}")
    lab, w = cond
    if not torch.is_tensor(lab) or lab.is_floating_point() or lab.shape != (x.shape[0],):
        raise ValueError(f"cond.labels: expected integer class labels of shape ({x.shape[0]},)")
    if not torch.is_tensor(w) or not w.is_floating_point() or w.shape != (x.shape[0],) or not torch.isfinite(w).all():
        raise ValueError(f"cond.w: expected finite float guidance scales of shape ({x.shape[0]},)")
    return GuidedCond(lab.to(x.device), w.to(device=x.device, dtype=x.dtype))


def _prediction(x0, eps, x, t, schedule):
    return Prediction(x0=x0, eps=eps, x_t=x, t=t, schedule=schedule)


class GuidedTeacher(nn.Module):
    """Classifier-free guidance with a per-example scale: eps_w = (1 + w) eps(x, t, c) - w eps(x, t, null) (monograph §8.2).

    The teacher of guided distillation (Meng et al. 2023). ``model`` is a class-conditional model
    whose label ``null_label`` means "unconditional" (e.g. a labelled mixture's exact denoiser);
    ``cond`` is a :class:`GuidedCond`. For one w it equals :func:`diffedu.guidance.cfg`.
    """

    def __init__(self, model, null_label: int):
        super().__init__()
        self.model = check_model(model)
        if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0:
            raise ValueError(f"null_label: expected the non-negative integer label meaning 'unconditional', got {null_label!r}")
        self.null_label = null_label

    @property
    def schedule(self):
        return self.model.schedule

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        check_data(x_t, "x_t")
        t = check_time(t, x_t)
        lab, w = _check_guided_cond(cond, x_t)
        both = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([lab, torch.full_like(lab, self.null_label)]))
        e_c, e_u = both.eps.chunk(2)
        w = append_dims(w, x_t)
        eps = (1 + w) * e_c - w * e_u
        return _prediction(to_x0(eps, "eps", x_t, t, self.schedule), eps, x_t, t, self.schedule)


class GuidedStudent(nn.Module):
    """A model of (x_t, t, c, w): the guidance scale enters as one extra input channel (Meng et al. 2023; monograph §10.3).

    ``net`` takes x with one more channel than the data -- (B, D + 1) for vectors, e.g.
    ``nets.MLP(dim=D + 1, out_dim=D, num_classes=K)``, or (B, C + 1, H, W) for images, e.g.
    ``nets.UNet(in_channels=C + 1, out_channels=C, num_classes=K)`` -- the extra channel filled with
    ``w / w_scale``; it returns a prediction of kind ``prediction`` shaped like the data.
    ``cond`` is a :class:`GuidedCond`; :meth:`at` fixes w.
    """

    def __init__(self, net: nn.Module, schedule, prediction: str = "x0", w_scale: float = 1.0):
        super().__init__()
        self.net = net
        self.schedule = check_schedule(schedule)
        self.prediction = check_kind(prediction, KINDS, "prediction")
        self.w_scale = check_finite(w_scale, "w_scale")
        if self.w_scale <= 0:
            raise ValueError(f"w_scale: expected a positive scale, got {w_scale!r}")

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        check_data(x_t, "x_t")
        t = check_time(t, x_t)
        lab, w = _check_guided_cond(cond, x_t)
        channel = (append_dims(w / self.w_scale, x_t) * torch.ones_like(x_t[:, :1])).to(x_t.dtype)
        out = self.net(torch.cat([x_t, channel], 1), t.to(x_t.dtype), lab)
        if out.shape != x_t.shape:
            raise ValueError(f"net output: expected shape {tuple(x_t.shape)} (the data's), got {tuple(out.shape)}")
        return _prediction(to_x0(out, self.prediction, x_t, t, self.schedule),
                           to_eps(out, self.prediction, x_t, t, self.schedule), x_t, t, self.schedule)

    def at(self, w: float) -> "FixedGuidance":
        """This student at one guidance scale ``w``: a model of (x_t, t, labels) that every sampler accepts."""
        return FixedGuidance(self, w)


class FixedGuidance(nn.Module):
    """A guided model (:class:`GuidedStudent` or :class:`GuidedTeacher`) at one scale w: ``forward(x_t, t, labels)``."""

    def __init__(self, model, w: float):
        super().__init__()
        self.model = check_model(model)
        self.w = check_finite(w, "w")

    @property
    def schedule(self):
        return self.model.schedule

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        check_data(x_t, "x_t")
        if cond is None or not torch.is_tensor(cond):
            raise ValueError(f"cond: expected integer class labels of shape ({x_t.shape[0]},), got {type(cond).__name__}")
        w = torch.full((x_t.shape[0],), self.w, dtype=x_t.dtype, device=x_t.device)
        return self.model(x_t, t, GuidedCond(cond, w))


def _check_range(w_range) -> Tuple[float, float]:
    try:
        lo, hi = (check_finite(v, "w_range") for v in w_range)
    except (TypeError, ValueError):
        raise ValueError(f"w_range: expected a pair (w_min, w_max) of finite numbers, got {w_range!r}") from None
    if hi < lo:
        raise ValueError(f"w_range: expected w_min <= w_max, got {w_range!r}")
    return lo, hi


def sample_guided_cond(labels: torch.Tensor, w_range=(0.0, 4.0), generator: Optional[torch.Generator] = None) -> GuidedCond:
    """``GuidedCond(labels, w)`` with w ~ U[w_min, w_max] per example (Meng et al. 2023 sample w uniformly; monograph §10.3)."""
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.ndim != 1:
        raise ValueError("labels: expected integer class labels of shape (B,)")
    lo, hi = _check_range(w_range)
    gdev = generator.device if generator is not None else labels.device
    u = torch.rand(labels.shape[0], generator=generator, device=gdev, dtype=torch.float64).to(labels.device)
    return GuidedCond(labels, (lo + (hi - lo) * u).to(torch.get_default_dtype()))


def guided_loss(student, teacher, x0: torch.Tensor, labels: torch.Tensor, *, w_range=(0.0, 4.0), t_min: float = 1e-3,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Stage one of guided distillation: ||x0_S(z, t, c, w) - x0_teacher,w(z, t, c)||^2 / D per example, (B,) (Meng et al. 2023; §10.3).

    t ~ U[t_min, 1], w ~ U[w_range] and z = alpha_t x0 + sigma_t eps; ``teacher`` is a
    :class:`GuidedTeacher` (or any model taking a :class:`GuidedCond`), ``student`` a :class:`GuidedStudent`.
    Weighted like :func:`~diffedu.distill.progressive.pd_loss` by max(SNR, 1).
    """
    check_model(student, "student")
    check_model(teacher, "teacher")
    check_data(x0, "x0")
    t = sample_times(x0.shape[0], t_min=t_min, device=x0.device, dtype=x0.dtype, generator=generator)
    cond = sample_guided_cond(labels.to(x0.device), w_range, generator)
    cond = GuidedCond(cond.labels, cond.w.to(x0.dtype))
    z = add_noise(student.schedule, x0, t, generator=generator).x_t
    with torch.no_grad():
        target = teacher(z, t, cond).x0
    err = (student(z, t, cond).x0 - target).pow(2).reshape(x0.shape[0], -1).mean(1)
    snr = (student.schedule.alpha(t) / student.schedule.sigma(t)) ** 2
    return snr.clamp_min(1.0) * err
