"""Progressive distillation: one student DDIM step does the work of two teacher steps (monograph §10.3).

Salimans & Ho (2022). Let the teacher's deterministic sampler run on a grid of 2N steps and
let the student run on every other point of it, N steps. For a student step from (z, t) to
s < t the teacher takes two DDIM steps (monograph §9.3), t -> u -> s, through the teacher's
midpoint u:

    z'  = alpha_u  x0_T(z, t)   + sigma_u  eps_T(z, t)
    z'' = alpha_s  x0_T(z', u)  + sigma_s  eps_T(z', u).

A DDIM step of the student from (z, t) with a clean-data prediction x~ lands at
alpha_s x~ + (sigma_s / sigma_t)(z - alpha_t x~); asking it to land on z'' gives the
student's target in closed form (Salimans & Ho 2022, Alg. 2; monograph §10.3):

    x~ = (z'' - (sigma_s / sigma_t) z) / (alpha_s - (sigma_s / sigma_t) alpha_t).         (10.3)

The student regresses its own x0 on x~ at points z = alpha_t x0 + sigma_t eps of the forward
process, weighted by the truncated SNR max(alpha_t^2 / sigma_t^2, 1) (Salimans & Ho's choice:
the x0 error at small t, the v error at large t). A round halves the number of steps; the
student of one round is the teacher of the next, and starts as a copy of it (N = 256 -> 128 ->
... -> 1). Every student keeps the model contract ``model(x_t, t, cond) -> Prediction`` with
``model.schedule``, so every sampler of :mod:`diffedu.samplers` accepts it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_kind, check_model, check_time
from diffedu.engine import fit
from diffedu.forward import add_noise
from diffedu.samplers.grids import check_grid

__all__ = ["ddim_step", "pd_target", "pd_loss", "student_grid", "Round", "distill_round", "progressive_distillation",
           "PD_WEIGHTINGS"]

#: weightings of the x0 regression: "snr_trunc" = max(SNR, 1) (Salimans & Ho 2022), "snr", "none"
PD_WEIGHTINGS = ("snr_trunc", "snr", "none")


def _times(t, x, name):
    return check_time(t, x, name).to(x.dtype)


def ddim_step(model, x: torch.Tensor, t, s, cond=None) -> torch.Tensor:
    """One deterministic DDIM step x_s = alpha_s x0_hat(x, t) + sigma_s eps_hat(x, t) (monograph §9.3).

    ``t`` and ``s`` are floats or per-example (B,) tensors with s < t, so every example of a batch
    may sit on a different grid step (what a distillation loss needs). For one grid this equals
    :func:`diffedu.samplers.sample_ddim` on ``[t, s]``.
    """
    check_model(model)
    check_data(x, "x")
    t, s = _times(t, x, "t"), _times(s, x, "s")
    p = model(x, t, cond)
    sch = model.schedule
    return append_dims(sch.alpha(s), x) * p.x0 + append_dims(sch.sigma(s), x) * p.eps


def pd_target(teacher, z: torch.Tensor, t, u, s, cond=None) -> torch.Tensor:
    """The progressive-distillation target x~ of (10.3): the x0 that makes one DDIM step t -> s land where two
    teacher DDIM steps t -> u -> s land (Salimans & Ho 2022, Alg. 2; monograph §10.3).

    ``t > u > s`` are floats or (B,) tensors. Computed without gradients (the teacher is fixed).
    """
    check_model(teacher, "teacher")
    check_data(z, "z")
    t, u, s = _times(t, z, "t"), _times(u, z, "u"), _times(s, z, "s")
    if not ((t > u).all() and (u > s).all()):
        raise ValueError("t, u, s: expected t > u > s (the teacher's two steps run from noise towards data)")
    sch = teacher.schedule
    with torch.no_grad():
        z2 = ddim_step(teacher, ddim_step(teacher, z, t, u, cond), u, s, cond)
    ratio = append_dims(sch.sigma(s) / sch.sigma(t), z)
    return (z2 - ratio * z) / (append_dims(sch.alpha(s), z) - ratio * append_dims(sch.alpha(t), z))


def student_grid(teacher_ts: torch.Tensor) -> torch.Tensor:
    """The student's grid: every other point of the teacher's (2N steps -> N), float64 (monograph §10.3)."""
    ts = check_grid(teacher_ts)
    if (len(ts) - 1) % 2:
        raise ValueError(f"teacher_ts: expected an even number of teacher steps (2N), got {len(ts) - 1}")
    return ts[::2].clone()


def _weight(weighting, t, schedule):
    check_kind(weighting, PD_WEIGHTINGS, "weighting")
    if weighting == "none":
        return torch.ones_like(t)
    snr = (schedule.alpha(t) / schedule.sigma(t)) ** 2
    return snr.clamp_min(1.0) if weighting == "snr_trunc" else snr


def pd_loss(student, teacher, x0: torch.Tensor, teacher_ts: torch.Tensor, *, cond=None, weighting: str = "snr_trunc",
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example progressive-distillation loss w(t) ||x0_student(z, t) - x~||^2 / D, shape (B,) (monograph §10.3).

    Each example draws a student step i uniformly from the N = len(teacher_ts[::2]) - 1 steps of the
    student's grid, t = ts[2i], the teacher's midpoint u = ts[2i + 1] and s = ts[2i + 2]; then
    z = alpha_t x0 + sigma_t eps (:func:`diffedu.forward.add_noise`) and the target x~ is
    :func:`pd_target`. ``weighting``: ``"snr_trunc"`` max(alpha_t^2/sigma_t^2, 1) (Salimans & Ho 2022),
    ``"snr"`` or ``"none"``. Student and teacher must share a schedule.
    """
    check_model(student, "student")
    check_model(teacher, "teacher")
    check_data(x0, "x0")
    ts = check_grid(teacher_ts)
    if (len(ts) - 1) % 2:
        raise ValueError(f"teacher_ts: expected an even number of teacher steps (2N), got {len(ts) - 1}")
    n = (len(ts) - 1) // 2
    gdev = generator.device if generator is not None else x0.device
    i = torch.randint(0, n, (x0.shape[0],), generator=generator, device=gdev).to(x0.device)
    grid = ts.to(device=x0.device, dtype=x0.dtype)
    t, u, s = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
    z = add_noise(student.schedule, x0, t, generator=generator).x_t
    target = pd_target(teacher, z, t, u, s, cond)
    err = (student(z, t, cond).x0 - target).pow(2).reshape(x0.shape[0], -1).mean(1)
    return _weight(weighting, t, student.schedule) * err


@dataclass
class Round:
    """One round of progressive distillation: the ``student`` (in eval mode), its grid ``ts`` and training ``losses``."""

    student: nn.Module
    ts: torch.Tensor
    losses: object

    @property
    def n_steps(self) -> int:
        """Number of student steps (= NFE of its DDIM sampler)."""
        return len(self.ts) - 1


def _cond_split(batch):
    """A batch is x0, or (x0, cond) for class-conditional (or guided) distillation."""
    return batch if isinstance(batch, (tuple, list)) else (batch, None)


def distill_round(teacher, student, data_iter: Iterable, teacher_ts: torch.Tensor, *, steps: int, lr: float = 1e-4,
                  weighting: str = "snr_trunc", cond_fn: Optional[Callable] = None, seed: Optional[int] = 0,
                  progress: bool = False, **fit_kwargs) -> Round:
    """Train ``student`` for ``steps`` on :func:`pd_loss` against the frozen ``teacher`` on ``teacher_ts`` (monograph §10.3).

    ``data_iter`` yields x0 or (x0, cond) batches; ``cond_fn(cond, generator)``, if given, maps a
    batch's cond to the one both models see (e.g. :func:`diffedu.distill.guided.sample_guided_cond`
    draws a guidance scale per example). Trained with :func:`diffedu.engine.fit` (its EMA is used if
    it keeps one); returns the :class:`Round` on the student grid ``teacher_ts[::2]``.
    """
    check_model(teacher, "teacher")
    check_model(student, "student")
    if student is teacher:
        raise ValueError("student: must be a separate model from the teacher (pass copy.deepcopy(teacher))")
    if isinstance(teacher, nn.Module):
        teacher.eval()  # the targets are computed without gradients (pd_target)
    ts_student = student_grid(teacher_ts)

    def loss_fn(model, batch, gen):
        x0, cond = _cond_split(batch)
        if cond_fn is not None:
            cond = cond_fn(cond, gen)
        return pd_loss(model, teacher, x0, teacher_ts, cond=cond, weighting=weighting, generator=gen)

    res = fit(student, loss_fn, data_iter, steps=steps, lr=lr, seed=seed, progress=progress, **fit_kwargs)
    trained = res.ema_model if res.ema_model is not None else res.model
    trained.eval()
    return Round(student=trained, ts=ts_student, losses=res.losses)


def progressive_distillation(teacher, data_iter: Iterable, teacher_ts: torch.Tensor, *, rounds: int, steps: int,
                             student=None, **round_kwargs) -> List[Round]:
    """Rounds of :func:`distill_round`, halving the steps each time: 2N -> N -> N/2 -> ... (monograph §10.3).

    Round k's student starts as a copy of round k-1's student (the first as a copy of ``student``,
    default ``teacher``; pass a network when the teacher is the exact oracle, which has no weights)
    and round k's teacher is round k-1's student. ``steps`` is an int or one int per round. Returns
    the list of :class:`Round` (the student of round k samples in len(teacher_ts) // 2**k steps).
    """
    check_model(teacher, "teacher")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected a positive int, got {rounds!r}")
    n_teacher = len(check_grid(teacher_ts)) - 1
    if n_teacher % (2**rounds):
        raise ValueError(f"rounds: {rounds} halvings need a teacher grid with a multiple of {2**rounds} steps, got {n_teacher}")
    per_round = [steps] * rounds if isinstance(steps, int) else list(steps)
    if len(per_round) != rounds:
        raise ValueError(f"steps: expected an int or {rounds} ints (one per round), got {steps!r}")
    init = teacher if student is None else check_model(student, "student")
    if not isinstance(init, nn.Module) or not any(True for _ in init.parameters()):
        raise ValueError("student: the teacher has no trainable weights (e.g. the exact oracle); pass a student network")
    out, ts, current = [], check_grid(teacher_ts), teacher
    for k in range(rounds):
        r = distill_round(current, copy.deepcopy(init if k == 0 else current).requires_grad_(True), data_iter, ts, steps=per_round[k],
                          seed=k if round_kwargs.get("seed") is None else round_kwargs["seed"] + k,
                          **{kk: v for kk, v in round_kwargs.items() if kk != "seed"})
        out.append(r)
        ts, current = r.ts, r.student
    return out
