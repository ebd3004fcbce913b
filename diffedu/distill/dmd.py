"""Distribution-matching distillation: a one-step generator trained by the difference of two scores (monograph §10.2).

Variational score distillation (Wang et al. 2023), Diff-Instruct (Luo et al. 2023) and DMD (Yin et
al. 2024). A generator x = G_theta(z), z ~ N(0, I), has a law p_theta; noise it with the forward
process, x_t = alpha_t x + sigma_t eps, and call its marginal p_theta,t. The teacher's marginal is
p_t with score s_real = grad log p_t. Reparameterising the KL (the score-function term has mean
zero) gives the generator's gradient as a *difference of scores* (monograph §10.2):

    grad_theta KL(p_theta,t || p_t) = E_{z, eps}[ alpha_t (s_fake(x_t) - s_real(x_t))^T d G_theta(z) / d theta ],   (10.2)

where s_fake = grad log p_theta,t, the score of the generator's own noised samples, is unknown and
is learned online: a "fake" diffusion model trained by the ordinary denoising loss on G's samples.
Averaging (10.2) over t with a weight omega(t) is the gradient of sum_t omega(t) KL_t. DMD uses
omega so that the per-sample step is (x0_fake - x0_real) / mean|x - x0_real| (Yin et al. 2024,
eq. 8). Reverse KL is *mode seeking*; DMD adds a regression loss ||G(z) - y||^2 on pairs (z, y)
of the teacher's PF-ODE (noise in, sample out), which pins the modes the teacher covers.

The generator is a model like any other: ``G(z) = generator(z, t_start).x0`` (:func:`one_step`),
which is what :func:`diffedu.samplers.sample_ddim` returns on the grid [t_start, 0], so a
distilled generator is sampled, evaluated and compared with the same code as its teacher.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_finite, check_kind, check_model, check_time
from diffedu.engine import fit
from diffedu.forward import add_noise, sample_times
from diffedu.objectives import denoising_loss
from diffedu.param import Denoiser
from diffedu.samplers import sample_ddim

__all__ = ["one_step", "dmd_gradient", "dmd_loss", "regression_pairs", "DMDPair", "DMDResult", "train_dmd",
           "DMD_WEIGHTINGS"]

#: "kl": the exact per-t KL gradient alpha_t (s_fake - s_real) of (10.2); "dmd": Yin et al.'s normalised step
DMD_WEIGHTINGS = ("kl", "dmd")


def one_step(generator, z: torch.Tensor, t_start: float = 1.0, cond=None) -> torch.Tensor:
    """The one-step sample G(z) = x0_hat(z, t_start) of a generator that keeps the model contract (monograph §10.2).

    Equal to :func:`diffedu.samplers.sample_ddim` on the two-point grid [t_start, 0].
    """
    check_model(generator, "generator")
    check_data(z, "z")
    return generator(z, check_time(t_start, z, "t_start").to(z.dtype), cond).x0


def dmd_gradient(real, fake, x: torch.Tensor, t, *, eps: Optional[torch.Tensor] = None, cond=None,
                 weighting: str = "kl", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The per-sample generator step g(x) of (10.2), shaped like x and detached (monograph §10.2).

    x_t = alpha_t x + sigma_t eps; ``weighting="kl"``: g = alpha_t (s_fake(x_t, t) - s_real(x_t, t)),
    whose mean of g^T dx/dtheta is exactly grad_theta KL(p_theta,t || p_t); ``"dmd"``:
    g = (x0_fake - x0_real) / mean|x - x0_real| per example (Yin et al. 2024). ``real`` and
    ``fake`` keep the model contract and share a schedule.
    """
    check_model(real, "real")
    check_model(fake, "fake")
    check_data(x, "x")
    check_kind(weighting, DMD_WEIGHTINGS, "weighting")
    t = check_time(t, x).to(x.dtype)
    x = x.detach()
    x_t = add_noise(real.schedule, x, t, eps=eps, generator=generator).x_t
    with torch.no_grad():
        p_real, p_fake = real(x_t, t, cond), fake(x_t, t, cond)
        if weighting == "kl":
            return append_dims(real.schedule.alpha(t), x) * (p_fake.score - p_real.score)
        norm = (x - p_real.x0).abs().reshape(len(x), -1).mean(1).clamp_min(1e-8)
        return (p_fake.x0 - p_real.x0) / append_dims(norm, x)


def dmd_loss(real, fake, x: torch.Tensor, *, t=None, t_range: Tuple[float, float] = (0.02, 0.98), cond=None,
             weighting: str = "dmd", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example surrogate 0.5 ||x - stopgrad(x - g)||^2 whose gradient in x is g = :func:`dmd_gradient` (monograph §10.2).

    Backpropagating it through x = G_theta(z) gives the DMD / VSD generator gradient (10.2);
    t ~ U[t_range] per example unless given. Shape (B,).
    """
    check_data(x, "x")
    if t is None:
        lo, hi = (check_finite(v, "t_range") for v in t_range)
        t = sample_times(x.shape[0], t_min=lo, t_max=hi, device=x.device, dtype=x.dtype, generator=generator)
    g = dmd_gradient(real, fake, x, t, cond=cond, weighting=weighting, generator=generator)
    return 0.5 * (x - (x - g).detach()).pow(2).reshape(x.shape[0], -1).sum(1)


def regression_pairs(teacher, z: torch.Tensor, ts: torch.Tensor, *, sampler: Callable = sample_ddim, cond=None,
                     batch_size: int = 4096) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (z, y) with y the teacher's PF-ODE sample from the noise z, ``sampler(teacher, z, ts)`` (DMD's regression set; §10.2)."""
    check_model(teacher, "teacher")
    check_data(z, "z")
    with torch.no_grad():
        ys = [sampler(teacher, z[i:i + batch_size], ts, cond=None if cond is None else cond[i:i + batch_size])
              for i in range(0, len(z), batch_size)]
    return z, torch.cat(ys)


class DMDPair(nn.Module):
    """The two networks DMD trains together: the one-step ``generator`` and the ``fake`` score model (monograph §10.2).

    Both are :class:`diffedu.param.Denoiser` models on the teacher's schedule. One optimiser step on
    :meth:`loss` updates both: the DMD surrogate reaches only the generator (the scores are
    detached) and the fake's denoising loss only the fake (the samples are detached).
    """

    def __init__(self, generator: Denoiser, fake: Denoiser, t_start: float = 1.0):
        super().__init__()
        for name, m in (("generator", generator), ("fake", fake)):
            if not isinstance(m, Denoiser):
                raise TypeError(f"{name}: expected a diffedu.param.Denoiser, got {type(m).__name__}")
        self.generator, self.fake, self.t_start = generator, fake, check_finite(t_start, "t_start")

    def loss(self, real, batch, generator: Optional[torch.Generator] = None, *, reg_weight: float = 0.0,
             weighting: str = "dmd", t_range=(0.02, 0.98)) -> torch.Tensor:
        """DMD loss + ``reg_weight`` ||G(z) - y||^2 (for a batch (z, y)) + the fake's denoising loss on G(z), (B,)."""
        z, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        x = one_step(self.generator, z, self.t_start)
        out = dmd_loss(real, self.fake, x, t_range=t_range, weighting=weighting, generator=generator)
        out = out + denoising_loss(self.fake, x.detach(), generator=generator)
        if y is not None and reg_weight:
            out = out + reg_weight * (x - y).pow(2).reshape(len(x), -1).sum(1)
        return out


@dataclass
class DMDResult:
    """What :func:`train_dmd` returns: the trained ``generator`` and ``fake`` (eval mode) and the ``losses``."""

    generator: Denoiser
    fake: Denoiser
    losses: object


def train_dmd(pair: DMDPair, real, data_iter: Iterable, *, steps: int, lr: float = 1e-3, fake_lr: Optional[float] = None,
              reg_weight: float = 0.0, weighting: str = "dmd", t_range=(0.02, 0.98), seed: Optional[int] = 0,
              progress: bool = False, **fit_kwargs) -> DMDResult:
    """Train a one-step generator by distribution matching against the fixed ``real`` model (Yin et al. 2024; §10.2).

    ``data_iter`` yields noise batches z, or pairs (z, y) from :func:`regression_pairs` when
    ``reg_weight > 0``. Uses :func:`diffedu.engine.fit` with Adam, the generator at ``lr`` and the fake
    at ``fake_lr`` (default ``lr``); the EMA generator is returned when fit keeps one.
    """
    check_model(real, "real")
    if not isinstance(pair, DMDPair):
        raise TypeError(f"pair: expected a diffedu.distill.DMDPair(generator, fake), got {type(pair).__name__}")
    if isinstance(real, nn.Module):
        real.eval()  # its scores are computed without gradients (dmd_gradient)
    reg = check_finite(reg_weight, "reg_weight")
    f_lr = lr if fake_lr is None else check_finite(fake_lr, "fake_lr")

    def optimizer(_params):
        return torch.optim.Adam([{"params": pair.generator.parameters(), "lr": lr},
                                 {"params": pair.fake.parameters(), "lr": f_lr}])

    def loss_fn(model, batch, gen):
        return model.loss(real, batch, gen, reg_weight=reg, weighting=weighting, t_range=t_range)

    res = fit(pair, loss_fn, data_iter, steps=steps, lr=lr, optimizer=optimizer, seed=seed, progress=progress, **fit_kwargs)
    best = res.ema_model if res.ema_model is not None else res.model
    best.eval()
    return DMDResult(generator=best.generator, fake=best.fake, losses=res.losses)
