"""Consistency models in discrete time: one network that maps any point of a PF-ODE trajectory to its end (monograph §11.2).

Song et al. (2023); improved training: Song & Dhariwal (2023). The PF-ODE's flow map sends x_t
to the data point f(x_t, t) = Psi_{t->0}(x_t) where its trajectory ends
(:func:`diffedu.toy.consistency_function` is the exact one for a mixture). Two properties
characterise f, and a consistency model f_theta is trained to have both:

* the boundary condition f(x, 0) = x, built into the parameterisation
  f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(x, t) with c_skip(0) = 1, c_out(0) = 0
  (:func:`boundary_coefficients`, :class:`ConsistencyModel`);
* self-consistency f(x_t, t) = f(x_s, s) for x_s = Psi_{t->s}(x_t) (the semigroup), enforced
  between neighbours t_n > t_{n+1} of a time grid (this module's grids run from noise to data):

      L = E[ lambda(t_n) d( f_theta(x_{t_n}, t_n), f_theta-(x^_{t_{n+1}}, t_{n+1}) ) ]

  with theta- a stop-gradient (EMA) copy. *Distillation* (CD, :func:`cd_loss`) gets x^ from one
  ODE step of a teacher (the exact flow map, or a DDIM step of a trained model); *training* (CT,
  :func:`ct_loss`) uses the pair x_{t_n} = alpha x0 + sigma eps, x^ = alpha' x0 + sigma' eps with the
  same (x0, eps) — the one-step estimate with the known x0, whose expected target equals
  the DDIM step of the exact denoiser when f_theta- is affine in x (tests/distill/test_consistency.py).

Sampling (:func:`sample_consistency`) is one evaluation, f_theta(x_1, 1), or multistep: map to
data, re-noise to a smaller t, map again. Training composes :func:`diffedu.engine.fit`
(:func:`train_consistency`) with the discretisation curriculum N(k) (:func:`ct_curriculum`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from diffedu._checks import (append_dims, check_callable, check_data, check_generator, check_int, check_kind,
                             check_like, check_model, check_positive, check_schedule, check_time)
from diffedu.distill.progressive import ddim_step
from diffedu.engine import EMA, fit
from diffedu.forward import add_noise
from diffedu.param import Prediction
from diffedu.samplers.grids import check_grid, grid_karras
from diffedu.samplers.record import StepLoop
from diffedu.schedules import Schedule
from diffedu.toy import GaussianMixture, consistency_function, flow_map

__all__ = ["boundary_coefficients", "ConsistencyModel", "ExactConsistency", "pseudo_huber", "consistency_distance",
           "teacher_step", "cd_loss", "ct_loss", "ct_curriculum", "GRID_SPACINGS", "consistency_grid", "train_consistency",
           "sample_consistency", "DISTANCES", "CM_WEIGHTINGS"]

#: distances d(a, b) per example: "l2" (mean square), "pseudo_huber" (Song & Dhariwal 2023)
DISTANCES = ("l2", "pseudo_huber")
#: lambda(t_n): "none" or "inverse_step" 1 / (t_n - t_{n+1}) (Song & Dhariwal 2023's 1 / (sigma_{n+1} - sigma_n), in t)
CM_WEIGHTINGS = ("none", "inverse_step")


def _noise_level(schedule: Schedule, t: torch.Tensor):
    """(alpha_t, sigma_t, n_t) with n_t = sigma_t - alpha_t sigma_bar_0 the noise *added since t = 0* (n_0 = 0 exactly)."""
    a, s = schedule.alpha(t), schedule.sigma(t)
    zero = torch.zeros((), dtype=t.dtype, device=t.device)
    sb0 = schedule.sigma(zero) / schedule.alpha(zero)
    return a, s, s - a * sb0


def boundary_coefficients(schedule: Schedule, t, sigma_data: float = 0.5):
    """(c_skip(t), c_out(t), c_in(t)) of the consistency parameterisation, with c_skip(0) = 1, c_out(0) = 0 exactly (monograph §11.2).

    Song et al. (2023)'s EDM-style coefficients written for x_t = alpha_t x0 + sigma_t eps and any schedule:

        c_skip = alpha_t sigma_d^2 / (alpha_t^2 sigma_d^2 + n_t^2),   c_out = sigma_d n_t / sqrt(alpha_t^2 sigma_d^2 + sigma_t^2),
        c_in = 1 / sqrt(alpha_t^2 sigma_d^2 + sigma_t^2),

    where n_t = sigma_t - alpha_t sigma_0 / alpha_0 is the noise added since t = 0 (for VE, sigma - sigma_min as in the
    paper; sigma_t itself for schedules with sigma_0 = 0). Every schedule of :mod:`diffedu.schedules` has alpha_0 = 1,
    so c_skip(0) = sigma_d^2 / sigma_d^2 = 1 and c_out(0) = 0 in floating point, and f(x, 0) = x for any network.
    """
    check_schedule(schedule)
    sd = check_positive(sigma_data, "sigma_data")
    t = check_time(t)
    a, s, n = _noise_level(schedule, t)
    denom = a**2 * sd**2
    return a * sd**2 / (denom + n**2), sd * n / torch.sqrt(denom + s**2), 1 / torch.sqrt(denom + s**2)


class ConsistencyModel(nn.Module):
    """f_theta(x_t, t) = c_skip(t) x_t + c_out(t) F_theta(c_in(t) x_t, t) with f_theta(x, 0) = x for any net (monograph §11.2).

    ``net(x, t[, cond])`` is any network shaped like its input (e.g. :class:`diffedu.nets.MLP`,
    :class:`diffedu.nets.UNet`). Keeps the model contract: ``forward(x_t, t, cond)`` returns a
    :class:`~diffedu.param.Prediction` whose ``x0`` is f_theta(x_t, t) (and eps = (x_t - alpha_t x0) / sigma_t,
    0 where sigma_t = 0), so it composes with everything that takes a model; the samplers of
    :mod:`diffedu.samplers` then treat it as a denoiser. :meth:`consistency` returns f alone.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, sigma_data: float = 0.5):
        super().__init__()
        self.net = check_callable(net, "net", "a network net(x, t[, cond]) -> tensor shaped like x")
        self.schedule = check_schedule(schedule)
        self.sigma_data = check_positive(sigma_data, "sigma_data")
        one = self.schedule.alpha(torch.zeros((), dtype=torch.float64))
        if float(one) != 1.0:
            raise ValueError(f"schedule: the boundary condition needs alpha_0 = 1, got {float(one)}")

    def consistency(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """f_theta(x_t, t), shaped like x_t."""
        check_data(x_t, "x_t")
        t = check_time(t, x_t).to(x_t.dtype)
        c_skip, c_out, c_in = (append_dims(c, x_t) for c in boundary_coefficients(self.schedule, t, self.sigma_data))
        z = c_in * x_t
        out = self.net(z, t, cond) if cond is not None else self.net(z, t)
        check_like(out, x_t, "net output", "x_t")
        return c_skip * x_t + c_out * out

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        x0 = self.consistency(x_t, t, cond)
        return _prediction(x0, x_t, check_time(t, x_t), self.schedule)


def _prediction(x0, x_t, t, schedule):
    a, s = append_dims(schedule.alpha(t).to(x_t.dtype), x_t), append_dims(schedule.sigma(t).to(x_t.dtype), x_t)
    eps = torch.where(s > 0, (x_t - a * x0) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(x_t))
    return Prediction(x0=x0, eps=eps, x_t=x_t, t=t, schedule=schedule)


class ExactConsistency(nn.Module):
    """The exact consistency function Psi_{t->0} of a :class:`~diffedu.toy.GaussianMixture` as a model (monograph §11.1-§11.2).

    ``forward(x_t, t)`` returns the :class:`~diffedu.param.Prediction` with x0 = :func:`diffedu.toy.consistency_function`;
    :meth:`consistency` returns it alone. The reference every trained consistency model is measured against.
    """

    def __init__(self, mixture: GaussianMixture, schedule: Schedule, rtol: float = 1e-10, atol: float = 1e-10):
        super().__init__()
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture: expected a diffedu.toy.GaussianMixture, got {type(mixture).__name__}")
        self.mixture, self.schedule = mixture, check_schedule(schedule)
        self.tol = {"rtol": check_positive(rtol, "rtol"), "atol": check_positive(atol, "atol")}

    def consistency(self, x_t, t, cond=None):
        return consistency_function(self.mixture, self.schedule, x_t, t, **self.tol)

    def forward(self, x_t, t, cond=None) -> Prediction:
        return _prediction(self.consistency(x_t, t), x_t, check_time(t, x_t), self.schedule)


def _consistency(model, x, t, cond):
    """f(x, t) of a consistency model (its ``consistency`` method) or of any model (its x0 prediction)."""
    if hasattr(model, "consistency"):
        return model.consistency(x, t, cond)
    return model(x, t, cond).x0


# ------------------------------------------------------------------------------------------ losses
def pseudo_huber(diff: torch.Tensor, c: Optional[float] = None) -> torch.Tensor:
    """Per-example pseudo-Huber distance sqrt(||diff||^2 + c^2) - c (Song & Dhariwal 2023; monograph §11.2).

    ``c`` defaults to 0.00054 sqrt(D) (their choice for D = C H W); quadratic (||diff||^2 / 2c) for small
    differences, linear (||diff||) for large ones, so outliers pull less than under the squared error.
    """
    check_data(diff, "diff")
    D = diff[0].numel()
    c = 0.00054 * math.sqrt(D) if c is None else check_positive(c, "c")
    return torch.sqrt(diff.reshape(len(diff), -1).pow(2).sum(1) + c**2) - c


def consistency_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "pseudo_huber") -> torch.Tensor:
    """d(a, b) per example, shape (B,): ``"l2"`` = mean of squares, ``"pseudo_huber"`` = :func:`pseudo_huber` (monograph §11.2)."""
    check_kind(distance, DISTANCES, "distance")
    check_like(b, a, "b", "a", allow_nonfinite=True)
    if distance == "l2":
        return (a - b).pow(2).reshape(len(a), -1).mean(1)
    return pseudo_huber(a - b)


def teacher_step(teacher, substeps: int = 1) -> Callable:
    """One ODE step ``step(x, t, s)`` from time t to s < t of a teacher (monograph §11.2): the exact flow map
    :func:`diffedu.toy.flow_map` for a :class:`~diffedu.toy.GaussianMixture` (pass ``(mixture, schedule)``),
    ``substeps`` DDIM steps (:func:`diffedu.distill.progressive.ddim_step`, equal in t) for a model — CTM's long
    jumps want more than one — or a callable ``step(x, t, s)`` as it is."""
    substeps = check_int(substeps, "substeps", 1)
    if isinstance(teacher, tuple) and len(teacher) == 2 and isinstance(teacher[0], GaussianMixture):
        mix, sch = teacher[0], check_schedule(teacher[1], "teacher[1]")
        return lambda x, t, s: flow_map(mix, sch, x, t, s)
    if isinstance(getattr(teacher, "schedule", None), Schedule):
        check_model(teacher, "teacher")

        def step(x, t, s):
            for i in range(substeps):
                x = ddim_step(teacher, x, t + (s - t) * (i / substeps), t + (s - t) * ((i + 1) / substeps))
            return x
        return step
    return check_callable(teacher, "teacher", "a model, a (GaussianMixture, Schedule) pair or a step(x, t, s)")


def _pick(ts, x0, generator, n):
    """Per-example grid neighbours (t_n, t_{n+1}) with t_n > t_{n+1}; ``n`` fixes the indices (B,) or an int."""
    ts = check_grid(ts).to(device=x0.device, dtype=x0.dtype)
    if n is None:
        gdev = generator.device if generator is not None else x0.device
        n = torch.randint(0, len(ts) - 1, (len(x0),), generator=generator, device=gdev).to(x0.device)
    n = torch.as_tensor(n, device=x0.device).long().expand(len(x0))
    if (n < 0).any() or (n >= len(ts) - 1).any():
        raise ValueError(f"n: grid indices must lie in [0, {len(ts) - 2}]")
    return ts[n], ts[n + 1]


def _noisy_pair(model, x0, ts, generator, n, eps):
    """(t_n, t_{n+1}, eps, x_{t_n}) of one CD / CT draw: grid neighbours per example and x_t = alpha_t x0 + sigma_t eps
    (:func:`diffedu.forward.add_noise`; eps drawn on the generator's device unless given)."""
    check_model(model)
    check_data(x0, "x0")
    check_generator(generator)
    t, s = _pick(ts, x0, generator, n)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=generator.device if generator else x0.device).to(x0)
    return t, s, eps, add_noise(model.schedule, x0, t, eps).x_t


def _weight(weighting, t, s):
    check_kind(weighting, CM_WEIGHTINGS, "weighting")
    return torch.ones_like(t) if weighting == "none" else 1 / (t - s)


def _cm_loss(model, target, x_t, t, x_s, s, cond, distance, weighting):
    """lambda(t) d(f_theta(x_t, t), sg f_target(x_s, s)), per example."""
    check_model(model)
    with torch.no_grad():
        goal = _consistency(target if target is not None else model, x_s, s, cond).detach()
    return _weight(weighting, t, s) * consistency_distance(_consistency(model, x_t, t, cond), goal, distance)


def cd_loss(model, target, teacher, x0: torch.Tensor, ts, *, cond=None, distance: str = "pseudo_huber",
            weighting: str = "none", generator: Optional[torch.Generator] = None, n=None, eps=None) -> torch.Tensor:
    """Consistency *distillation* loss per example, shape (B,) (Song et al. 2023, Alg. 2; monograph §11.2).

    For each example a grid index n (uniform, or given), x_{t_n} = alpha x0 + sigma eps, one teacher ODE step
    x^ = step(x_{t_n}, t_n, t_{n+1}) (:func:`teacher_step`: the exact flow map or DDIM of a model), and
    lambda(t_n) d(f_theta(x_{t_n}, t_n), f_target(x^, t_{n+1})) with the target under no_grad (``target=None``:
    the model itself, stop-gradient; else e.g. an EMA copy). ``ts`` decreases from noise to data.
    """
    t, s, eps, x_t = _noisy_pair(model, x0, ts, generator, n, eps)
    with torch.no_grad():
        x_s = teacher_step(teacher)(x_t, t, s)
    return _cm_loss(model, target, x_t, t, x_s, s, cond, distance, weighting)


def ct_loss(model, target, x0: torch.Tensor, ts, *, cond=None, distance: str = "pseudo_huber", weighting: str = "none",
            generator: Optional[torch.Generator] = None, n=None, eps=None) -> torch.Tensor:
    """Consistency *training* loss per example, shape (B,): no teacher (Song et al. 2023, Alg. 3; monograph §11.2).

    The pair x_{t_n} = alpha_{t_n} x0 + sigma_{t_n} eps and x_{t_{n+1}} = alpha_{t_{n+1}} x0 + sigma_{t_{n+1}} eps with the
    same (x0, eps) replaces the teacher's ODE step: it is the one-step estimate with the known x0, unbiased for the
    DDIM step of the exact denoiser, so the CT gradient tends to the CD gradient as the step shrinks.
    """
    t, s, eps, x_t = _noisy_pair(model, x0, ts, generator, n, eps)
    x_s = add_noise(model.schedule, x0, s, eps).x_t
    return _cm_loss(model, target, x_t, t, x_s, s, cond, distance, weighting)


# ------------------------------------------------------------------------------------------ training
def ct_curriculum(k: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """The number of grid intervals N(k) at training step k of K (Song & Dhariwal 2023, improved CT; monograph §11.2).

    N(k) = min(s0 * 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2(s1 / s0) + 1)): the grid doubles at
    equal intervals from s0 + 1 to s1 + 1 — coarse grids early (large, low-variance steps), fine grids late (small bias).
    """
    check_int(k, "k", 0)
    check_int(total_steps, "total_steps")
    check_int(s0, "s0")
    check_int(s1, "s1")
    if s1 < s0:
        raise ValueError(f"s1: expected s1 >= s0 = {s0}, got {s1}")
    k_prime = max(1, math.floor(total_steps / (math.log2(s1 / s0) + 1)))
    return min(s0 * 2 ** (k // k_prime), s1) + 1


#: spacings of :func:`consistency_grid`
GRID_SPACINGS = ("karras", "uniform")


def consistency_grid(schedule: Schedule, n: int, t_max: Optional[float] = None, t_min: float = 0.0, rho: float = 7.0,
                     spacing: Optional[str] = None) -> torch.Tensor:
    """The decreasing training/sampling grid of n intervals from ``t_max`` to ``t_min`` (monograph §11.2).

    ``spacing="karras"``: EDM's grid in sigma_bar with exponent ``rho``
    (:func:`diffedu.samplers.grids.grid_karras`), the consistency models' choice for VE/VP
    schedules; ``"uniform"``: equal steps in t. The default is ``"uniform"`` where alpha_1 = 0
    (rectified flow, whose natural clock is t) and ``"karras"`` otherwise. On rectified flow
    sigma_bar = t / (1 - t) reaches 999 at ``t_max`` = 1 - 1e-3 (the default there, where sigma_bar is
    infinite), and the Karras grid with N = 18 puts 8 of its 18 intervals above t = 0.95. Measured
    on two moons (a 4 x 256 MLP, 2,000 steps, exact teacher): one-step exact W2 1.73 (CD) and 1.56 (CT)
    on that grid against 0.53 and 0.70 on the uniform one.
    """
    check_schedule(schedule)
    n = check_int(n, "n")
    alpha_1 = float(schedule.alpha(torch.ones((), dtype=torch.float64)))
    if t_max is None:
        t_max = 1.0 if alpha_1 > 0 else 1.0 - 1e-3
    spacing = ("karras" if alpha_1 > 0 else "uniform") if spacing is None else check_kind(spacing, GRID_SPACINGS, "spacing")
    hi, lo = (check_time(v, None, name) for v, name in ((t_max, "t_max"), (t_min, "t_min")))
    if hi.ndim or lo.ndim or not float(hi) > float(lo):
        raise ValueError(f"t_max: expected two numbers t_max > t_min, got {t_max!r} and {t_min!r}")
    if spacing == "uniform":
        return torch.linspace(float(hi), float(lo), n + 1, dtype=torch.float64)
    return grid_karras(schedule, n, t_start=float(hi), t_end=float(lo), rho=rho)


def train_consistency(model: ConsistencyModel, data_iter, *, steps: int, teacher=None, target_decay: float = 0.0,
                      grid: Optional[Callable[[int], torch.Tensor]] = None, curriculum: Sequence[int] = (10, 1280),
                      distance: str = "pseudo_huber", weighting: str = "none", cond_fn=None, **fit_kwargs):
    """Train a consistency model with :func:`diffedu.engine.fit`: CT (``teacher=None``) or CD (monograph §11.2).

    At step k the grid is ``grid(N(k))`` (:func:`ct_curriculum` with ``curriculum = (s0, s1)``; for a fixed N pass
    ``(N, N)``); ``grid`` defaults to :func:`consistency_grid` on the model's schedule. The target network is the model
    itself under stop-gradient (``target_decay=0``, Song & Dhariwal 2023) or an :class:`~diffedu.engine.EMA` with that
    decay, updated after every step (Song et al. 2023). Batches are x0 or (x0, cond). Returns the
    :class:`~diffedu.engine.FitResult` (sample with ``.ema_model`` if ``fit`` kept one).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a ConsistencyModel (an nn.Module), got {type(model).__name__}")
    check_model(model)
    check_int(steps, "steps")
    s0, s1 = curriculum
    grid = grid if grid is not None else (lambda n: consistency_grid(model.schedule, n))
    check_callable(grid, "grid", "a function n -> decreasing grid of n intervals")
    decay = check_positive(target_decay, "target_decay", strict=False, upper=1.0)
    ema = EMA(model, decay=decay, warmup=False) if decay > 0 else None
    state = {"k": 0, "grids": {}}

    def loss_fn(net, batch, gen):
        x0, cond = batch if isinstance(batch, (tuple, list)) else (batch, None)
        cond = cond_fn(cond, gen) if cond_fn is not None else cond
        N = ct_curriculum(state["k"], steps, s0, s1)
        ts = state["grids"].setdefault(N, grid(N))
        target = None if ema is None else ema.model
        kw = dict(cond=cond, distance=distance, weighting=weighting, generator=gen)
        if teacher is None:
            return ct_loss(net, target, x0, ts, **kw)
        return cd_loss(net, target, teacher, x0, ts, **kw)

    user_cb = fit_kwargs.pop("callback", None)

    def callback(step, loss, net):
        state["k"] = step
        if ema is not None:
            ema.update(net)
        if user_cb is not None:
            user_cb(step, loss, net)

    return fit(model, loss_fn, data_iter, steps=steps, callback=callback, **fit_kwargs)


# ------------------------------------------------------------------------------------------ sampling
@torch.no_grad()
def sample_consistency(model, x: torch.Tensor, ts, *, cond=None, generator: Optional[torch.Generator] = None,
                       callback=None, progress: bool = False) -> torch.Tensor:
    """One-step or multistep consistency sampling (Song et al. 2023, Alg. 1; monograph §11.2).

    ``x`` is noise at time ts[0] (e.g. sigma_1 z). x0 = f(x, ts[0]); then for each later time tau of the decreasing
    grid ``ts``: re-noise x_tau = alpha_tau x0 + sigma_tau z (fresh z) and x0 = f(x_tau, tau). ``ts = [1.0]`` is
    one evaluation; every extra time costs one more. ``model``: a consistency model (its ``consistency``) or any model
    (its x0 prediction, e.g. :class:`~diffedu.distill.ctm.CTM`). Reports one :class:`~diffedu.samplers.Step` per evaluation.
    """
    check_model(model)
    check_data(x, "x")
    check_generator(generator)
    ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
    check_time(ts)
    if len(ts) < 1 or (len(ts) > 1 and not (ts[1:] < ts[:-1]).all()):
        raise ValueError("ts: expected a non-empty decreasing list of times (noise -> data)")
    sch, loop = model.schedule, StepLoop(len(ts), callback, progress, "consistency sampling")
    for i in loop:
        tau = float(ts[i])
        if i > 0:
            z = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device).to(x)
            tt = torch.tensor(tau, dtype=torch.float64)
            x = float(sch.alpha(tt)) * x0 + float(sch.sigma(tt)) * z
        x0 = _consistency(model, x, tau, cond)
        loop.report(i, 0.0, x0)
    return x0
