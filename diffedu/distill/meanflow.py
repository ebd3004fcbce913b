"""MeanFlow: a network of (x, r, t) for the *average* velocity, trained from scratch (Geng et al. 2025; monograph §11.5).

The PF-ODE dx/dtau = v(x, tau) carries x_t at time t to Psi_{t->r}(x_t) at time r (t = 0 data,
t = 1 noise; a sampler runs r < t). The average velocity over [r, t] is

    u(x_t, r, t) = (Psi_{t->r}(x_t) - x_t) / (r - t) = 1/(t - r) int_r^t v(x_tau, tau) dtau,

so one network evaluation jumps anywhere: x_r = x_t - (t - r) u(x_t, r, t) (:func:`sample_meanflow`;
one step is r = 0, t = 1). Differentiating (t - r) u = int_r^t v in t along the trajectory gives the
*MeanFlow identity* (monograph §11.5)

    u(x_t, r, t) = v(x_t, t) - (t - r) d/dt u(x_t, r, t),   d/dt u = v . grad_x u + d_t u,     (11.5)

whose right-hand side needs only u itself and the velocity: :func:`meanflow_loss` regresses
u_theta on sg[v - (t - r) d/dt u_theta], with v the conditional velocity alpha'_t x0 + sigma'_t eps
(unbiased for the marginal one, as in flow matching, monograph §5.3) and the total derivative
one forward-mode product ``torch.func.jvp`` of u_theta with the tangent (v, 0, 1) in (x, r, t)
(:func:`total_derivative`). At r = t the target is v itself: MeanFlow is flow matching on the
diagonal, and the fraction of pairs with r != t (``ratio``) is the knob between the two.

The book's convention is kept (t = 0 data, t = 1 noise, x_t = alpha_t x0 + sigma_t eps); the paper's
own (r, t) convention agrees with it. **Schedules:** any whose alpha'_t and sigma'_t are finite on
all of [0, 1] — :class:`~diffedu.schedules.RectifiedFlow` (the paper's, x_t = (1 - t) x0 + t eps) and
the trigonometric :class:`~diffedu.distill.scm.TrigFlow` (closed-form derivatives); VP-linear and VP-cosine
have sigma'_0 = inf or 0/0 (sigma_t = sqrt(1 - alpha_t^2) near the data) and are refused with a clear error (:func:`check_meanflow_schedule`). A :class:`MeanFlow` keeps the model
contract (its ``forward`` is the instantaneous velocity u(x, t, t) as a Prediction) and has a
``consistency(x, t) = x - t u(x, 0, t)``, so the ODE samplers and consistency sampling accept it.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from diffedu._checks import (append_dims, check_callable, check_data, check_finite, check_generator, check_like,
                             check_model, check_positive, check_schedule, check_time)
from diffedu.engine import fit
from diffedu.nets.embedding import sinusoidal_embedding
from diffedu.param import Prediction, to_eps, to_x0
from diffedu.samplers.record import StepLoop
from diffedu.schedules import Schedule

__all__ = ["check_meanflow_schedule", "TwoTimeNet", "MeanFlow", "sample_meanflow_times", "total_derivative",
           "meanflow_target", "adaptive_weight", "meanflow_loss", "train_meanflow", "sample_meanflow"]


def check_meanflow_schedule(schedule: Schedule) -> Schedule:
    """``schedule`` if alpha'_t and sigma'_t are finite on all of [0, 1], else a ValueError saying why (monograph §11.5).

    The MeanFlow target v - (t - r) du/dt needs the conditional velocity v = alpha'_t x0 + sigma'_t eps at every
    training time. Supported: RectifiedFlow (alpha = 1 - t, sigma = t) and distill.TrigFlow (cos, sigma_d sin of pi t / 2);
    VPLinear and VPCosine have sigma'_0 = inf or 0/0 (sigma_t = sqrt(1 - alpha_t^2) near the data).
    """
    check_schedule(schedule)
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    _, _, da, ds = schedule.coefficients(t)
    bad = ~(torch.isfinite(da) & torch.isfinite(ds))
    if bad.any():
        raise ValueError(f"schedule: MeanFlow needs finite alpha'_t and sigma'_t on [0, 1], but {schedule!r} has an "
                         f"infinite derivative at t = {float(t[bad][0]):.3g}; use schedules.RectifiedFlow() (the "
                         "paper's) or distill.TrigFlow()")
    return schedule


class TwoTimeNet(nn.Module):
    """A one-time network made a network of two times: net(x, r, t) = base([x, emb(t - r)], t) (monograph §11.5).

    The gap t - r enters through a sinusoidal embedding of size ``emb_dim`` appended to the input — as
    features for (B, D) data (build the base as ``nets.MLP(dim=D + emb_dim, out_dim=D)``), as constant
    channels for (B, C, H, W) images (``nets.UNet(in_channels=C + emb_dim, out_channels=C)``); the base
    network embeds t itself. (t, t - r) is the conditioning Geng et al. (2025) found best.
    """

    def __init__(self, base: nn.Module, emb_dim: int = 16):
        super().__init__()
        self.base = check_callable(base, "base", "a network base(x, t[, cond]) -> tensor")
        if isinstance(emb_dim, bool) or not isinstance(emb_dim, int) or emb_dim < 2:
            raise ValueError(f"emb_dim: expected an int >= 2, got {emb_dim!r}")
        self.emb_dim = emb_dim

    def forward(self, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        e = sinusoidal_embedding(t - r, self.emb_dim).to(x.dtype)
        e = e.reshape(*e.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
        z = torch.cat([x, e], 1)
        return self.base(z, t) if cond is None else self.base(z, t, cond)


class MeanFlow(nn.Module):
    """u_theta(x_t, r, t), the average velocity from time t to r, with the model contract (monograph §11.5).

    ``net(x, r, t[, cond])`` returns a tensor shaped like x (e.g. :class:`TwoTimeNet`). :meth:`average_velocity`
    is u; :meth:`jump` the one-step flow map x - (t - r) u; :meth:`consistency` the jump to r = 0; ``forward(x_t, t)``
    the instantaneous velocity u(x_t, t, t) as a :class:`~diffedu.param.Prediction` (so the ODE samplers of
    :mod:`diffedu.samplers` integrate the learned PF-ODE).
    """

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__()
        self.net = check_callable(net, "net", "a network net(x, r, t[, cond]) -> tensor shaped like x")
        self.schedule = check_meanflow_schedule(schedule)

    def average_velocity(self, x: torch.Tensor, r, t, cond=None) -> torch.Tensor:
        """u_theta(x, r, t), shaped like x; r, t: floats or (B,) tensors."""
        check_data(x, "x")
        r, t = check_time(r, x, "r").to(x.dtype), check_time(t, x).to(x.dtype)
        out = self.net(x, r, t) if cond is None else self.net(x, r, t, cond)
        return check_like(out, x, "net output", "x")

    def jump(self, x: torch.Tensor, t, r, cond=None) -> torch.Tensor:
        """x_r = x_t - (t - r) u_theta(x_t, r, t): the learned flow map Psi_{t->r} in one evaluation."""
        check_data(x, "x")
        r, t = check_time(r, x, "r").to(x.dtype), check_time(t, x).to(x.dtype)
        return x - append_dims(t - r, x) * self.average_velocity(x, r, t, cond)

    def consistency(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        """f(x, t) = x - t u_theta(x, 0, t), the jump to the data (f(x, 0) = x exactly)."""
        return self.jump(x, t, 0.0, cond)

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        t = check_time(t, x_t)
        v = self.average_velocity(x_t, t, t, cond)
        sch = self.schedule
        return Prediction(x0=to_x0(v, "velocity", x_t, t, sch), eps=to_eps(v, "velocity", x_t, t, sch), x_t=x_t, t=t,
                          schedule=sch)


def sample_meanflow_times(n: int, *, ratio: float = 0.25, loc: float = -0.4, scale: float = 1.0,
                          generator: Optional[torch.Generator] = None, device=None,
                          dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """(r, t) with r <= t, shape (n,) each: two logit-normal times sorted, and r = t except on a ``ratio`` share (§11.5).

    t = sigmoid(loc + scale z); Geng et al. (2025) found logit-normal(-0.4, 1.0) and 25 % of pairs with
    r != t best on ImageNet. ``ratio = 0`` is flow matching; ``ratio = 1`` never trains the diagonal.
    """
    check_generator(generator)
    ratio = check_finite(ratio, "ratio")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: expected the share of pairs with r != t in [0, 1], got {ratio}")
    loc, scale = check_finite(loc, "loc"), check_positive(scale, "scale")
    gdev = generator.device if generator is not None else device
    a = torch.sigmoid(loc + scale * torch.randn(2, n, generator=generator, device=gdev, dtype=dtype)).to(device)
    t, r = a.max(0).values, a.min(0).values
    off = torch.rand(n, generator=generator, device=gdev, dtype=dtype).to(device) < ratio
    return torch.where(off, r, t), t


def total_derivative(u_fn: Callable, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                     v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(u, d/dt u) with d/dt u(x_t, r, t) = v . grad_x u + d_t u, by one ``torch.func.jvp`` (monograph §11.5).

    ``u_fn(x, r, t)`` is any differentiable function; the tangent is (v, 0, 1): x moves with velocity v,
    r is held, t advances. ``u`` keeps its graph (for the loss's gradient); the derivative is a plain tensor.
    """
    check_callable(u_fn, "u_fn", "a function u_fn(x, r, t) -> tensor shaped like x")
    check_data(x, "x")
    check_like(v, x, "v", "x")
    u, dudt = torch.func.jvp(u_fn, (x, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    return u, dudt


def meanflow_target(v: torch.Tensor, dudt: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The MeanFlow regression target v - (t - r) d/dt u (11.5), detached (monograph §11.5); t, r: (B,)."""
    check_data(v, "v")
    check_like(dudt, v, "dudt", "v")
    t, r = check_time(t, v).to(v.dtype), check_time(r, v, "r").to(v.dtype)
    return (v - append_dims(t - r, v) * dudt).detach()


def adaptive_weight(sq: torch.Tensor, p: float = 1.0, c: float = 1e-3) -> torch.Tensor:
    """w = 1 / (||Delta||^2 + c)^p, detached (Geng et al. 2025; monograph §11.5); p = 0 is the plain squared error.

    w ||Delta||^2 with p = 1 behaves like ||Delta||^2 / (||Delta||^2 + c): large residuals pull with bounded
    force (p = 0.5 is a pseudo-Huber-like loss).
    """
    p = check_positive(p, "p", strict=False)
    c = check_positive(c, "c")
    return 1.0 / (sq.detach() + c) ** p


def meanflow_loss(model: MeanFlow, x0: torch.Tensor, *, r=None, t=None, eps: Optional[torch.Tensor] = None,
                  cond=None, ratio: float = 0.25, loc: float = -0.4, scale: float = 1.0, p: float = 1.0,
                  c: float = 1e-3, generator: Optional[torch.Generator] = None,
                  tangent_model: Optional[MeanFlow] = None) -> torch.Tensor:
    """Per-example MeanFlow loss w ||u_theta(x_t, r, t) - sg[v - (t - r) du_theta/dt]||^2 / D, shape (B,) (monograph §11.5).

    x_t = alpha_t x0 + sigma_t eps and v = alpha'_t x0 + sigma'_t eps (the conditional velocity); (r, t) from
    :func:`sample_meanflow_times` unless given; du/dt by :func:`total_derivative`; w = :func:`adaptive_weight`
    of the per-example mean square (p = 0: none). At r = t with p = 0 this is exactly the conditional
    flow-matching loss :func:`diffedu.objectives.conditional_fm_loss` of the velocity u_theta(x, t, t).

    ``tangent_model``: the same network without a DistributedDataParallel wrapper (e.g. the plain model of
    :func:`diffedu.engine.distributed.wrap_model`). Function transforms cannot run through DDP, so du/dt — a
    detached target anyway — is then computed with it, and u, which carries the gradient, by a plain forward of
    ``model``; the loss and its gradient are the same.
    """
    if not isinstance(model, MeanFlow):
        raise TypeError(f"model: expected a diffedu.distill.MeanFlow, got {type(model).__name__}")
    if tangent_model is not None and not isinstance(tangent_model, MeanFlow):
        raise TypeError(f"tangent_model: expected a diffedu.distill.MeanFlow or None, got {type(tangent_model).__name__}")
    check_data(x0, "x0")
    check_generator(generator)
    B, sch = x0.shape[0], model.schedule
    if (r is None) != (t is None):
        raise ValueError("r, t: give both times or neither (then they are drawn by sample_meanflow_times)")
    if t is None:
        r, t = sample_meanflow_times(B, ratio=ratio, loc=loc, scale=scale, generator=generator, device=x0.device,
                                     dtype=x0.dtype)
    r, t = check_time(r, x0, "r").to(x0.dtype), check_time(t, x0).to(x0.dtype)
    if (r > t).any():
        raise ValueError("r: expected r <= t (the jump runs from t towards the data)")
    if eps is None:
        gdev = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    check_like(eps, x0, "eps", "x0")
    a, s, da, ds = (append_dims(k.to(x0.dtype), x0) for k in sch.coefficients(t))
    x_t, v = a * x0 + s * eps, da * x0 + ds * eps
    if tangent_model is None:
        u, dudt = total_derivative(lambda x, rr, tt: model.average_velocity(x, rr, tt, cond), x_t, r, t, v)
    else:
        with torch.no_grad():
            _, dudt = total_derivative(lambda x, rr, tt: tangent_model.average_velocity(x, rr, tt, cond), x_t, r, t, v)
        u = model.average_velocity(x_t, r, t, cond)
    sq = (u - meanflow_target(v, dudt, t, r)).pow(2).reshape(B, -1).mean(1)
    return (adaptive_weight(sq, p, c) * sq) if p else sq


def train_meanflow(model: MeanFlow, data_iter, *, steps: int, ratio: float = 0.25, loc: float = -0.4,
                   scale: float = 1.0, p: float = 1.0, c: float = 1e-3, **fit_kwargs):
    """Train a :class:`MeanFlow` by :func:`meanflow_loss` with :func:`diffedu.engine.fit` (monograph §11.5).

    Batches are x0 or (x0, cond); ``fit_kwargs`` go to ``fit`` (lr, seed, ema_decay, ...). Returns its
    :class:`~diffedu.engine.FitResult`; sample with ``.ema_model`` if ``fit`` kept one.
    """
    if not isinstance(model, MeanFlow):
        raise TypeError(f"model: expected a diffedu.distill.MeanFlow, got {type(model).__name__}")

    def loss_fn(net, batch, gen):
        x0, cond = batch if isinstance(batch, (tuple, list)) else (batch, None)
        return meanflow_loss(net, x0, cond=cond, ratio=ratio, loc=loc, scale=scale, p=p, c=c, generator=gen)

    return fit(model, loss_fn, data_iter, steps=steps, **fit_kwargs)


@torch.no_grad()
def sample_meanflow(model, x: torch.Tensor, ts, *, cond=None, callback=None, progress: bool = False) -> torch.Tensor:
    """Few-step MeanFlow sampling x_{t_{i+1}} = x_{t_i} - (t_i - t_{i+1}) u(x_{t_i}, t_{i+1}, t_i) (monograph §11.5).

    ``ts`` decreases from noise to data (e.g. ``[1.0, 0.0]``: one step; ``grid_uniform(2)``: two); one
    evaluation per interval. ``model`` has ``average_velocity(x, r, t, cond)`` (a :class:`MeanFlow`). Each
    step is reported to ``callback`` as a :class:`~diffedu.samplers.Step`.
    """
    check_model(model)
    check_callable(getattr(model, "average_velocity", None), "model.average_velocity", "a method average_velocity(x, r, t, cond)")
    check_data(x, "x")
    ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
    check_time(ts, name="ts")
    if len(ts) < 2 or not (ts[1:] < ts[:-1]).all():
        raise ValueError("ts: expected at least two strictly decreasing times (noise -> data), e.g. [1.0, 0.0]")
    loop = StepLoop(len(ts) - 1, callback, progress, "MeanFlow sampling")
    for i in loop:
        t, r = float(ts[i]), float(ts[i + 1])
        x = loop.report(i, r, x - (t - r) * model.average_velocity(x, r, t, cond))
    return x
