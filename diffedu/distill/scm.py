"""Continuous-time consistency models (sCM): TrigFlow and the tangent of f along the PF-ODE (Lu & Song 2024; monograph §11.3).

**Time.** TrigFlow interpolates x_tau = cos(tau) x0 + sin(tau) z, z ~ N(0, sigma_d^2 I), on tau in
[0, pi/2] with tau = 0 the data — the same direction as the book. The book's time is
t = 2 tau / pi in [0, 1] and the schedule is :class:`TrigFlow`: alpha_t = cos(pi t / 2),
sigma_t = sigma_d sin(pi t / 2) (x_t = alpha_t x0 + sigma_t eps with eps ~ N(0, I)); for sigma_d = 1 it is
``VPCosine(s=0)``. Every function here takes and returns the book's t; derivatives in t are pi / 2
times those in tau.

**Parameterisation.** f_theta(x_t, t) = cos(tau) x_t - sin(tau) sigma_d F_theta(x_t / sigma_d, t), so f(x, 0) = x
exactly and the exact F is the (scaled) v-prediction: sigma_d F* = dx/dtau on the PF-ODE.

**Objective.** The discrete consistency loss d(f_theta(x_t, t), f_theta-(x_{t-dt}, t - dt)) divided by dt
tends, as dt -> 0, to a loss whose gradient is that of E[ f_theta^T df_theta-/dt ]: only the *tangent*
df_theta-/dt, the total derivative of f along the PF-ODE, is needed (monograph §11.3). With the
product rule (in tau) and v = dx/dtau the PF-ODE velocity,

    cos(tau) df-/dtau = -cos^2(tau) (sigma_d F- - v) - cos(tau) sin(tau) (x_tau + sigma_d dF-/dtau),

where dF-/dtau = grad_x F- . v / sigma_d + d_tau F- is one ``torch.func.jvp`` (:func:`consistency_tangent`).
sCT takes v = the conditional velocity cos(tau) z - sin(tau) x0; sCD a teacher's velocity. Lu & Song's
stabilisers (:func:`scm_target`): *tangent warm-up* (the second term scaled by r rising from 0 to 1 over
the first steps), *tangent normalisation* g / (||g|| + c), and *adaptive weighting* (a learned
w_phi(t): loss e^{w}/D ||F_theta - F- - g||^2 - w, :func:`scm_loss`). Training composes
:func:`diffedu.engine.fit` (:func:`train_scm`); an :class:`SCM` has ``consistency`` and the model contract,
so :func:`diffedu.distill.consistency.sample_consistency` samples it in one or more steps.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from diffedu._checks import (append_dims, check_callable, check_data, check_finite, check_generator, check_int,
                             check_like, check_model, check_positive, check_time)
from diffedu.engine import fit
from diffedu.nets.embedding import sinusoidal_embedding
from diffedu.param import Prediction
from diffedu.schedules import Schedule

__all__ = ["TrigFlow", "SCM", "consistency_tangent", "scm_target", "sample_scm_times", "scm_loss", "train_scm",
           "tangent_warmup"]

_HALF_PI = math.pi / 2


class TrigFlow(Schedule):
    """TrigFlow's interpolation in the book's time: alpha_t = cos(pi t / 2), sigma_t = sigma_d sin(pi t / 2) (monograph §11.3).

    TrigFlow's tau in [0, pi/2] is tau = pi t / 2 (t = 0 data, t = 1 noise in both). With ``sigma_data = 1``
    the same path as ``VPCosine(s=0)``; otherwise the noise has the data's scale sigma_d (Lu & Song 2024).
    """

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = check_positive(sigma_data, "sigma_data")

    def _alpha(self, t):
        return torch.cos(_HALF_PI * t).clamp_min(0)

    def _sigma(self, t):
        return self.sigma_data * torch.sin(_HALF_PI * t)

    def _d_alpha(self, t):
        return -_HALF_PI * torch.sin(_HALF_PI * t)

    def _d_sigma(self, t):
        return self.sigma_data * _HALF_PI * torch.cos(_HALF_PI * t)

    def _log_snr(self, t):
        return 2 * (torch.log(torch.cos(_HALF_PI * t).clamp_min(0)) - torch.log(self._sigma(t)))

    def _t_from_log_snr(self, lam):
        # tan(tau) = alpha / (sigma / sigma_d) ... i.e. sigma_d tan(tau) = exp(-lam / 2)
        return torch.atan(torch.exp(-lam / 2) / self.sigma_data) / _HALF_PI


def _tau(t):
    return _HALF_PI * t


class SCM(nn.Module):
    """f_theta(x_t, t) = cos(tau) x_t - sin(tau) sigma_d F_theta(x_t / sigma_d, t), tau = pi t / 2 (Lu & Song 2024; §11.3).

    ``net(x, t[, cond])`` is any network shaped like its input; ``schedule`` is :class:`TrigFlow` (sigma_d).
    f(x, 0) = x for any net. The net sees the time as c_noise = ``time_scale`` * t: Lu & Song found small
    time-embedding frequencies essential for a stable tangent (dF/dt grows with them; 1 is the raw t in
    [0, 1]). ``weight_dim > 0`` adds the adaptive weighting w_phi(t) (a linear map of a
    sinusoidal embedding of t, trained with the model; :meth:`log_weight`). Keeps the model contract
    (Prediction with x0 = f) and has :meth:`consistency`, :meth:`raw` (F_theta).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, weight_dim: int = 32, time_scale: float = 0.01):
        super().__init__()
        self.time_scale = check_positive(time_scale, "time_scale", upper=1.0 + 1e-12)
        self.net = check_callable(net, "net", "a network net(x, t[, cond]) -> tensor shaped like x")
        self.schedule = TrigFlow(sigma_data)
        self.sigma_data = self.schedule.sigma_data
        self.weight_dim = check_int(weight_dim, "weight_dim", 0)
        self.weight = nn.Linear(weight_dim, 1) if weight_dim else None
        if self.weight is not None:
            nn.init.zeros_(self.weight.weight)
            nn.init.zeros_(self.weight.bias)

    def raw(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """F_theta(x_t / sigma_d, c_noise(t)), shaped like x_t."""
        check_data(x_t, "x_t")
        t = check_time(t, x_t).to(x_t.dtype)
        z = x_t / self.sigma_data
        c_noise = self.time_scale * t
        out = self.net(z, c_noise) if cond is None else self.net(z, c_noise, cond)
        return check_like(out, x_t, "net output", "x_t")

    def consistency(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """f_theta(x_t, t) = cos(tau) x_t - sin(tau) sigma_d F_theta."""
        t = check_time(t, x_t).to(x_t.dtype)
        c, s = append_dims(torch.cos(_tau(t)), x_t), append_dims(torch.sin(_tau(t)), x_t)
        return c * x_t - s * self.sigma_data * self.raw(x_t, t, cond)

    def log_weight(self, t: torch.Tensor) -> torch.Tensor:
        """w_phi(t), shape (B,) (zero without adaptive weighting)."""
        if self.weight is None:
            return torch.zeros_like(t)
        return self.weight(sinusoidal_embedding(t, self.weight_dim).to(t.dtype))[:, 0]

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        t = check_time(t, x_t)
        x0 = self.consistency(x_t, t, cond)
        a, s = append_dims(self.schedule.alpha(t).to(x_t.dtype), x_t), append_dims(self.schedule.sigma(t).to(x_t.dtype), x_t)
        eps = torch.where(s > 0, (x_t - a * x0) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x_t))
        return Prediction(x0=x0, eps=eps, x_t=x_t, t=t, schedule=self.schedule)


def consistency_tangent(model: SCM, x_t: torch.Tensor, t, dx_dt: torch.Tensor, *, cond=None
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(F, dF/dtau, df/dt): the network, its total tau-derivative and f's total t-derivative along dx/dt (monograph §11.3).

    ``dx_dt`` is the velocity in the book's time (e.g. a PF-ODE velocity); dF/dt comes from one
    ``torch.func.jvp`` of F_theta(x / sigma_d, t) with tangent (dx/dt, 1), dF/dtau = dF/dt / (pi/2), and df/dt is the
    product rule, (pi/2) [-sin(tau) x - cos(tau) sigma_d F + cos(tau) dx/dtau - sin(tau) sigma_d dF/dtau].
    All three are detached.
    """
    if not isinstance(model, SCM):
        raise TypeError(f"model: expected a diffedu.distill.SCM, got {type(model).__name__}")
    check_data(x_t, "x_t")
    check_like(dx_dt, x_t, "dx_dt", "x_t")
    t = check_time(t, x_t).to(x_t.dtype)
    dx_dtau = dx_dt / _HALF_PI
    with torch.no_grad():
        F, dF_dt = torch.func.jvp(lambda x, tt: model.raw(x, tt, cond), (x_t, t), (dx_dt, torch.ones_like(t)))
    dF_dtau = dF_dt / _HALF_PI
    c, s, sd = append_dims(torch.cos(_tau(t)), x_t), append_dims(torch.sin(_tau(t)), x_t), model.sigma_data
    df_dtau = -s * x_t - c * sd * F + c * dx_dtau - s * sd * dF_dtau
    return F, dF_dtau, _HALF_PI * df_dtau


def scm_target(model: SCM, x_t: torch.Tensor, t, dx_dt: torch.Tensor, *, warmup: float = 1.0,
               tangent_c: Optional[float] = 0.1, cond=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(F-, g): the stop-gradient network and the step g of the sCM loss ||F_theta - F- - g||^2 (Lu & Song 2024; §11.3).

    g = -cos^2(tau) (sigma_d F- - dx/dtau) - r cos(tau) sin(tau) (x_tau + sigma_d dF-/dtau) = cos(tau) df-/dtau at
    r = ``warmup`` = 1 (the tangent warm-up scales the second term by r in [0, 1]); ``tangent_c``: tangent
    normalisation g / (||g|| + c) per example (None: off). Detached.
    """
    r = check_finite(warmup, "warmup")
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"warmup: expected the tangent warm-up factor r in [0, 1], got {r}")
    F, dF_dtau, _ = consistency_tangent(model, x_t, t, dx_dt, cond=cond)
    t = check_time(t, x_t).to(x_t.dtype)
    c, s, sd = append_dims(torch.cos(_tau(t)), x_t), append_dims(torch.sin(_tau(t)), x_t), model.sigma_data
    g = -c**2 * (sd * F - dx_dt / _HALF_PI) - r * c * s * (x_t + sd * dF_dtau)
    if tangent_c is not None:
        norm = g.reshape(len(g), -1).norm(dim=1)
        g = g / append_dims(norm + check_positive(tangent_c, "tangent_c"), g)
    return F, g


def sample_scm_times(n: int, sigma_data: float = 0.5, *, p_mean: float = -1.0, p_std: float = 1.4,
                     generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Training times t = (2/pi) arctan(e^{p_mean + p_std n} / sigma_d), n ~ N(0, 1): log-normal in sigma_bar (§11.3)."""
    check_int(n, "n")
    check_generator(generator)
    sd, p_mean, p_std = check_positive(sigma_data, "sigma_data"), check_finite(p_mean, "p_mean"), check_positive(p_std, "p_std")
    gdev = generator.device if generator is not None else device
    z = torch.randn(n, generator=generator, device=gdev, dtype=dtype).to(device)
    return (torch.atan(torch.exp(p_mean + p_std * z) / sd) / _HALF_PI).clamp(1e-4, 1.0 - 1e-4)


def _teacher_velocity(teacher, x_t, t, cond, schedule):
    check_model(teacher, "teacher")
    ts = teacher.schedule
    if not (isinstance(ts, TrigFlow) and ts.sigma_data == schedule.sigma_data):
        raise ValueError(f"teacher: its schedule must be TrigFlow(sigma_data={schedule.sigma_data}) like the student's "
                         f"(the same path x_t), got {ts!r}")
    with torch.no_grad():
        return teacher(x_t, t, cond).velocity


def scm_loss(model: SCM, x0: torch.Tensor, *, t=None, eps: Optional[torch.Tensor] = None, teacher=None,
             warmup: float = 1.0, tangent_c: Optional[float] = 0.1, cond=None, p_mean: float = -1.0,
             p_std: float = 1.4, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example sCM loss e^{w(t)} ||F_theta - F- - g||^2 / D - w(t), shape (B,) (Lu & Song 2024, Alg. 1; §11.3).

    x_t = cos(tau) x0 + sigma_d sin(tau) eps; dx/dt the conditional velocity (sCT, ``teacher=None``) or the
    teacher's PF-ODE velocity (sCD: a model on the same :class:`TrigFlow`, e.g. the exact mixture denoiser);
    g = :func:`scm_target`. Its value is not the quantity minimised (F_theta - F- = 0); its gradient in theta
    is the continuous-time consistency gradient -2 e^{w} g . grad F_theta / D, and in w it fits e^{-w} to the
    residual's mean square (the adaptive weighting).
    """
    if not isinstance(model, SCM):
        raise TypeError(f"model: expected a diffedu.distill.SCM, got {type(model).__name__}")
    check_data(x0, "x0")
    check_generator(generator)
    sch, B = model.schedule, x0.shape[0]
    if t is None:
        t = sample_scm_times(B, model.sigma_data, p_mean=p_mean, p_std=p_std, generator=generator,
                             device=x0.device, dtype=x0.dtype)
    t = check_time(t, x0).to(x0.dtype)
    if eps is None:
        gdev = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    check_like(eps, x0, "eps", "x0")
    a, s, da, ds = (append_dims(k.to(x0.dtype), x0) for k in sch.coefficients(t))
    x_t = a * x0 + s * eps
    dx_dt = da * x0 + ds * eps if teacher is None else _teacher_velocity(teacher, x_t, t, cond, sch)
    F_minus, g = scm_target(model, x_t, t, dx_dt, warmup=warmup, tangent_c=tangent_c, cond=cond)
    sq = (model.raw(x_t, t, cond) - F_minus - g).pow(2).reshape(B, -1).mean(1)
    w = model.log_weight(t)
    return torch.exp(w) * sq - w


def tangent_warmup(step: int, warmup_steps: int) -> float:
    """r = min(1, step / warmup_steps), the tangent warm-up factor at a training step (Lu & Song 2024; §11.3)."""
    check_int(step, "step", 0)
    check_int(warmup_steps, "warmup_steps", 0)
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


def train_scm(model: SCM, data_iter, *, steps: int, teacher=None, warmup_steps: int = 1000,
              tangent_c: Optional[float] = 0.1, p_mean: float = -1.0, p_std: float = 1.4, **fit_kwargs):
    """Train an :class:`SCM` by :func:`scm_loss` (sCT, or sCD with ``teacher``) with :func:`diffedu.engine.fit` (§11.3).

    The tangent warm-up r = :func:`tangent_warmup` (step, ``warmup_steps``) advances after every step (through
    fit's callback). Batches are x0 or (x0, cond). Returns fit's :class:`~diffedu.engine.FitResult`.
    """
    if not isinstance(model, SCM):
        raise TypeError(f"model: expected a diffedu.distill.SCM, got {type(model).__name__}")
    check_int(steps, "steps")
    check_int(warmup_steps, "warmup_steps", 0)
    if teacher is not None:
        check_model(teacher, "teacher")
    state = {"k": 0}

    def loss_fn(net, batch, gen):
        x0, cond = batch if isinstance(batch, (tuple, list)) else (batch, None)
        return scm_loss(net, x0, teacher=teacher, warmup=tangent_warmup(state["k"], warmup_steps), tangent_c=tangent_c,
                        cond=cond, p_mean=p_mean, p_std=p_std, generator=gen)

    user_cb = fit_kwargs.pop("callback", None)

    def callback(step, loss, net):
        state["k"] = step
        if user_cb is not None:
            user_cb(step, loss, net)

    return fit(model, loss_fn, data_iter, steps=steps, callback=callback, **fit_kwargs)
