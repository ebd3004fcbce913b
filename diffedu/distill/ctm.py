"""Consistency trajectory models: one network G(x_t, t, s) ~ Psi_{t->s}(x_t) for *any* jump s <= t (monograph §11.4).

Kim et al. (2024). A consistency model learns only the jump to the data, Psi_{t->0}; CTM learns the
whole flow map. Written as a DDIM step with a learned clean-data estimate g_theta,

    G_theta(x_t, t, s) = (sigma_s / sigma_t) x_t + (alpha_s - alpha_t sigma_s / sigma_t) g_theta(x_t, t, s),

so G(x, t, t) = x exactly (the coefficient of g vanishes), and d/ds G at s = t is
(sigma'_t / sigma_t) x + (alpha'_t - alpha_t sigma'_t / sigma_t) g(x, t, t): the PF-ODE velocity exactly when
g(x, t, t) is the denoiser E[x0 | x_t]. That is why CTM adds a denoising-score-matching term on g(x, t, t)
(:func:`ctm_loss`) and why its ``forward`` is a model every ODE sampler accepts (its score is g(x, t, t)).

Soft consistency: for t > u >= s, compare the student's jump t -> s with a teacher step t -> u followed by
the (stop-gradient) student's jump u -> s, both carried on to the data by the stop-gradient student,

    d( G_sg(G_theta(x_t, t, s), s, 0),  G_sg(G_sg(x^_u, u, s), s, 0) ).

u next to t is the local consistency of a CM; u = s is pure distillation of the teacher's trajectory.
gamma-sampling (:func:`sample_gamma`) interpolates between deterministic jumps (gamma = 0) and CM's
multistep sampling (gamma = 1).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from diffedu._checks import (append_dims, check_callable, check_data, check_generator, check_int, check_like,
                             check_model, check_positive, check_schedule, check_time)
from diffedu.distill.consistency import boundary_coefficients, consistency_distance, teacher_step
from diffedu.forward import add_noise
from diffedu.nets import sinusoidal_embedding
from diffedu.param import Prediction
from diffedu.samplers.grids import check_grid
from diffedu.samplers.record import StepLoop
from diffedu.schedules import Schedule
from diffedu.toy import GaussianMixture, flow_map

__all__ = ["jump_coefficients", "CTM", "ExactCTM", "PairMLP", "ctm_loss", "sample_gamma"]


def jump_coefficients(schedule: Schedule, t: torch.Tensor, s: torch.Tensor):
    """(A, B) with G(x, t, s) = A x + B g: A = sigma_s / sigma_t, B = alpha_s - alpha_t A; A = 1, B = 0 where s = t (monograph §11.4)."""
    a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
    same = s == t
    A = torch.where(same, torch.ones_like(s_s), s_s / torch.where(same, torch.ones_like(s_t), s_t))
    return A, torch.where(same, torch.zeros_like(a_s), a_s - a_t * A)


def _pair_times(x, t, s):
    t, s = check_time(t, x, "t").to(x.dtype), check_time(s, x, "s").to(x.dtype)
    if (s > t).any():
        raise ValueError("s: a CTM jump runs towards the data, expected s <= t")
    return t, s


class PairMLP(nn.Module):
    """F(x, t, s): an MLP on x and sinusoidal embeddings of both times, for (B, D) data (a CTM or MeanFlow net)."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, time_dim: int = 32):
        super().__init__()
        self.dim, self.time_dim = check_int(dim, "dim"), check_int(time_dim, "time_dim", 2)
        layers = [nn.Linear(dim + 2 * time_dim, hidden), nn.SiLU()]
        for _ in range(check_int(depth, "depth") - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def forward(self, x, t, s, cond=None):
        emb = [sinusoidal_embedding(v.to(x.dtype).expand(len(x)), self.time_dim) for v in (t, s)]
        return self.net(torch.cat([x.reshape(len(x), -1), *emb], -1)).reshape(x.shape)


class CTM(nn.Module):
    """G_theta(x_t, t, s) = A x_t + B g_theta(x_t, t, s) with g = c_skip x + c_out F(c_in x, t, s) (Kim et al. 2024; monograph §11.4).

    ``net(x, t, s[, cond])`` returns a tensor shaped like x (e.g. :class:`PairMLP`); (c_skip, c_out, c_in) are the
    consistency coefficients at t (:func:`~diffedu.distill.consistency.boundary_coefficients`). :meth:`jump` is G;
    :meth:`consistency` is the jump to the data G(x, t, 0); ``forward(x_t, t, cond)`` is the denoiser g(x_t, t, t) as a
    :class:`~diffedu.param.Prediction`, so ODE samplers run on CTM's own score and :func:`sample_gamma` on its jumps.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, sigma_data: float = 0.5):
        super().__init__()
        self.net = check_callable(net, "net", "a network net(x, t, s[, cond]) -> tensor shaped like x")
        self.schedule = check_schedule(schedule)
        self.sigma_data = check_positive(sigma_data, "sigma_data")

    def denoise(self, x_t, t, s, cond=None) -> torch.Tensor:
        """g_theta(x_t, t, s), the clean-data estimate behind the jump."""
        check_data(x_t, "x_t")
        t, s = _pair_times(x_t, t, s)
        c_skip, c_out, c_in = (append_dims(c, x_t) for c in boundary_coefficients(self.schedule, t, self.sigma_data))
        z = c_in * x_t
        out = self.net(z, t, s, cond) if cond is not None else self.net(z, t, s)
        check_like(out, x_t, "net output", "x_t")
        return c_skip * x_t + c_out * out

    def jump(self, x_t, t, s, cond=None) -> torch.Tensor:
        """G_theta(x_t, t, s) ~ Psi_{t->s}(x_t), with G(x, t, t) = x exactly."""
        check_data(x_t, "x_t")
        t, s = _pair_times(x_t, t, s)
        A, B = (append_dims(c, x_t) for c in jump_coefficients(self.schedule, t, s))
        return A * x_t + B * self.denoise(x_t, t, s, cond)

    def consistency(self, x_t, t, cond=None) -> torch.Tensor:
        return self.jump(x_t, t, 0.0, cond)

    def forward(self, x_t, t, cond=None) -> Prediction:
        t = check_time(t, x_t)
        x0 = self.denoise(x_t, t, t, cond)
        a, s = append_dims(self.schedule.alpha(t).to(x_t.dtype), x_t), append_dims(self.schedule.sigma(t).to(x_t.dtype), x_t)
        eps = torch.where(s > 0, (x_t - a * x0) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x_t))
        return Prediction(x0=x0, eps=eps, x_t=x_t, t=t, schedule=self.schedule)


class ExactCTM(nn.Module):
    """The exact CTM of a :class:`~diffedu.toy.GaussianMixture`: ``jump`` is :func:`diffedu.toy.flow_map`, ``forward`` the exact denoiser."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        super().__init__()
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture: expected a diffedu.toy.GaussianMixture, got {type(mixture).__name__}")
        self.mixture, self.schedule = mixture, check_schedule(schedule)

    def jump(self, x_t, t, s, cond=None):
        t, s = _pair_times(x_t, t, s)
        return flow_map(self.mixture, self.schedule, x_t, t, s)

    def consistency(self, x_t, t, cond=None):
        return self.jump(x_t, t, 0.0)

    def forward(self, x_t, t, cond=None) -> Prediction:
        return self.mixture.predict(x_t, t, self.schedule)


def _ctm_indices(n_grid, B, generator, device, local: bool = False):
    """Per-example grid indices i < j <= k on a decreasing grid of n_grid times: t = ts[i], u = ts[j], s = ts[k].

    ``local``: j = i + 1, u the neighbour of t (the only u for which the pair x_u = alpha_u x0 + sigma_u eps approximates
    the ODE step from x_t; further away it is a step along the *conditional* path, a different trajectory).
    """
    gdev = generator.device if generator is not None else device
    u = lambda: torch.rand(B, generator=generator, device=gdev, dtype=torch.float64).to(device)  # noqa: E731
    i = (u() * (n_grid - 1)).long().clamp_max(n_grid - 2)
    k = i + 1 + (u() * (n_grid - 1 - i)).long().clamp_max(n_grid - 2 - i)
    j = i + 1 + (u() * (k - i)).long().clamp_max(k - i - 1)
    return i, (i + 1 if local else j), k


def ctm_loss(model: CTM, x0: torch.Tensor, ts, *, teacher=None, dsm_weight: float = 1.0, cond=None,
             distance: str = "l2", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """CTM's soft-consistency loss plus its DSM term, per example, shape (B,) (Kim et al. 2024; monograph §11.4).

    Per example: grid indices i < j <= k of the decreasing grid ``ts`` (t = ts[i] > u = ts[j] >= s = ts[k]),
    x_t = alpha_t x0 + sigma_t eps, the teacher's step x^_u = step(x_t, t, u) (:func:`~diffedu.distill.consistency.teacher_step`:
    the exact flow map or DDIM of a model, or ``teacher_step(model, substeps=k)`` for k DDIM steps over a long jump;
    ``teacher=None``: the pair x^_u = alpha_u x0 + sigma_u eps with u = ts[i + 1] the neighbour of t, as in consistency
    training — the pair follows the conditional path, which approximates the ODE step only over one grid interval),
    then d(G_sg(G(x_t, t, s), s, 0), G_sg(G_sg(x^_u, u, s), s, 0)) + dsm_weight ||g(x_t, t, t) - x0||^2 / D.
    The stop-gradient copy is the model itself under no_grad.
    """
    check_model(model)
    check_data(x0, "x0")
    check_generator(generator)
    dsm_weight = check_positive(dsm_weight, "dsm_weight", strict=False)
    grid = check_grid(ts).to(device=x0.device, dtype=x0.dtype)
    i, j, k = _ctm_indices(len(grid), len(x0), generator, x0.device, local=teacher is None)
    t, u, s = grid[i], grid[j], grid[k]
    eps = torch.randn(x0.shape, generator=generator, device=generator.device if generator else x0.device).to(x0)
    sch = model.schedule
    x_t = add_noise(sch, x0, t, eps).x_t
    with torch.no_grad():
        if teacher is None:
            x_u = add_noise(sch, x0, u, eps).x_t
        else:
            x_u = teacher_step(teacher)(x_t, t, u)
        goal = model.jump(model.jump(x_u, u, s, cond), s, torch.zeros_like(s), cond)
    student = model.jump(x_t, t, s, cond)
    zero = torch.zeros_like(s)
    params = [p for p in model.parameters() if p.requires_grad]
    flags = [p.requires_grad for p in params]
    for p in params:  # G_sg(., s, 0): gradients flow through its input only
        p.requires_grad_(False)
    try:
        carried = model.jump(student, s, zero, cond)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    soft = consistency_distance(carried, goal, distance)
    dsm = (model.denoise(x_t, t, t, cond) - x0).pow(2).reshape(len(x0), -1).mean(1)
    return soft + dsm_weight * dsm


@torch.no_grad()
def sample_gamma(model, x: torch.Tensor, ts, gamma: float = 0.0, *, cond=None, generator: Optional[torch.Generator] = None,
                 callback=None, progress: bool = False) -> torch.Tensor:
    """gamma-sampling of a CTM along the decreasing grid ``ts`` (Kim et al. 2024, Alg. 2; monograph §11.4).

    From x at t_n: jump to the time s' with sigma_bar(s') = sqrt(1 - gamma^2) sigma_bar(t_{n+1}), then add back
    noise, x_{t_{n+1}} = (alpha_{n+1} / alpha_{s'}) G(x, t_n, s') + gamma sigma_{n+1} z, which has the marginal noise
    of t_{n+1} again. gamma = 0: deterministic jumps along the flow map; gamma = 1: consistency multistep sampling
    (jump to the data, re-noise). One evaluation per interval; if ts[-1] > 0 a last jump goes to t = 0, so
    ``ts = [1.0]`` is one-step generation.
    """
    check_model(model)
    check_data(x, "x")
    check_generator(generator)
    if not hasattr(model, "jump"):
        raise TypeError(f"model: expected a CTM with a jump(x, t, s) method, got {type(model).__name__}")
    gamma = check_positive(gamma, "gamma", strict=False)
    if gamma > 1:
        raise ValueError(f"gamma: expected a value in [0, 1], got {gamma}")
    if isinstance(ts, (list, tuple)):
        ts = torch.tensor(ts, dtype=torch.float64)
    if torch.is_tensor(ts) and ts.is_floating_point() and ts.ndim == 1 and len(ts) == 1 and ts[0] > 0:
        ts = torch.cat([ts.detach().cpu().double(), torch.zeros(1, dtype=torch.float64)])  # [t] is one jump to the data
    grid = check_grid(ts)
    if grid[-1] > 0:
        grid = torch.cat([grid, grid.new_zeros(1)])
    sch, loop = model.schedule, StepLoop(len(grid) - 1, callback, progress, "gamma sampling")
    for n in loop:
        nxt = grid[n + 1 : n + 2]
        sb = math.sqrt(1 - gamma**2) * sch.sigma_bar(nxt)
        mid = sch.t_from_sigma_bar(sb).clamp(0.0, float(grid[n])) if float(nxt) > 0 else nxt
        jumped = model.jump(x, float(grid[n]), float(mid), cond)
        if float(nxt) > 0 and gamma > 0:
            z = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device).to(x)
            ratio = float(sch.alpha(nxt) / sch.alpha(mid))
            jumped = ratio * jumped + gamma * float(sch.sigma(nxt)) * z
        x = loop.report(n, float(nxt), jumped)
    return x
