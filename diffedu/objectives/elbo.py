"""The DDPM evidence lower bound, term by term (monograph §2.2; Gallon-Jentzen-von Wurstemberger §4-5).

A diffusion model is a hierarchical VAE whose encoder is fixed: the forward chain
q(x_{t_1}, ..., x_{t_N} | x_0) on a time grid 0 = t_0 < t_1 < ... < t_N. Its decoder is the
reverse chain p(x_{t_{i-1}} | x_{t_i}). The ELBO splits into three kinds of terms
(monograph §2.2, eq. "L = L_prior + sum L_i + L_0"):

    -log p(x0) <= KL(q(x_{t_N}|x0) || p(x_{t_N}))                                   prior
                 + sum_{i=2}^{N} E_q KL(q(x_{t_{i-1}} | x_{t_i}, x0) || p(x_{t_{i-1}} | x_{t_i}))   per-step KL
                 - E_q log p(x0 | x_{t_1})                                           reconstruction

Everything here is *continuous-time first*: the forward transition between two grid times
s < t is q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I) with alpha_{t|s} = alpha_t / alpha_s and
sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2, and the posterior q(x_s | x_t, x0) is
Gaussian with mean c_x0 x0 + c_xt x_t and variance sigma_{t|s}^2 sigma_s^2 / sigma_t^2
(:func:`diffedu.forward.posterior`). On the 1000-step DDPM table these are exactly Ho et al.'s
beta_n and tilde-beta_n; the integer-step helpers (``ddpm_*``) take a
:class:`~diffedu.schedules.DiscreteSchedule` and exist to show that.

The forward transition, the posterior and the model's Gaussian reverse kernel (fixed beta or
tilde-beta, or learned variance) are forward-process mathematics and live in
:mod:`diffedu.forward`; the Gaussian KL and log-density in :mod:`diffedu.gaussian`. Here:
:func:`elbo_terms` (exact Gaussian KLs, Monte Carlo
only over x0 and x_t), the per-step weights that make L_simple a reweighted ELBO
(:func:`elbo_eps_weights`), and improved DDPM's learned variances with the hybrid loss
(:class:`LearnedVarianceDenoiser`, :func:`hybrid_loss`; Nichol & Dhariwal 2021).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_kind, check_like, check_positive, check_schedule, check_time
from diffedu.forward import VARIANCES, posterior, reverse_kernel, reverse_log_variance
from diffedu.gaussian import gaussian_kl, gaussian_log_prob
from diffedu.param import KINDS, Prediction, to_eps, to_x0
from diffedu.schedules import DiscreteSchedule, Schedule

__all__ = [
    "ddpm_forward_kernel", "ddpm_forward_step", "ddpm_posterior", "ddpm_time_grid",
    "ELBOTerms", "elbo_terms", "elbo_eps_weights",
    "TwoHeadNet", "LearnedVarianceDenoiser", "hybrid_loss",
]



# ----------------------------------------------------------------- integer DDPM (adapter only)
def _check_discrete(dsched):
    if not isinstance(dsched, DiscreteSchedule):
        raise TypeError(f"dsched: expected a diffedu.schedules.DiscreteSchedule, got {type(dsched).__name__}")
    return dsched


def _check_steps(n, dsched, lowest=0):
    n = torch.as_tensor(n)
    if n.is_floating_point():
        raise TypeError(f"n: expected integer DDPM step indices, got dtype {n.dtype}")
    if (n < lowest).any() or (n > dsched.num_steps - 1).any():
        raise ValueError(f"n: DDPM steps must lie in [{lowest}, {dsched.num_steps - 1}]")
    return n.long()


def ddpm_forward_kernel(dsched: DiscreteSchedule, n):
    """(sqrt(1 - beta_n), beta_n) of DDPM's one-step kernel q(x_n | x_{n-1}) = N(sqrt(1-beta_n) x_{n-1}, beta_n I).

    Integer steps n in {0, ..., N-1} (x_{-1} is the data); read straight from the beta table (monograph §2.2).
    """
    _check_discrete(dsched)
    n = _check_steps(n, dsched)
    beta = dsched.betas[n.cpu()]
    return torch.sqrt(1 - beta), beta


def ddpm_forward_step(dsched: DiscreteSchedule, x_prev: torch.Tensor, n: int,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw x_n ~ q(x_n | x_{n-1}) (monograph §2.2); iterate it to check the closed form q(x_n | x0)."""
    check_data(x_prev, "x_prev")
    scale, beta = ddpm_forward_kernel(dsched, n)
    noise = torch.randn(x_prev.shape, generator=generator, device=x_prev.device, dtype=x_prev.dtype)
    return scale.to(x_prev) * x_prev + beta.sqrt().to(x_prev) * noise


def ddpm_posterior(dsched: DiscreteSchedule, x_n: torch.Tensor, x0: torch.Tensor, n):
    """Ho et al.'s posterior q(x_{n-1} | x_n, x0) from the beta table (monograph §2.2, DDPM eq. 6-7).

    mean = beta_n sqrt(abar_{n-1}) / (1 - abar_n) x0 + (1 - abar_{n-1}) sqrt(1 - beta_n) / (1 - abar_n) x_n,
    var = tilde-beta_n = (1 - abar_{n-1}) / (1 - abar_n) beta_n, with abar_{-1} = 1. ``n`` is an int
    or a (B,) integer tensor. Returns (mean, var (B,)). Equal to :func:`diffedu.forward.posterior` between
    t_n and t_{n-1} (tested).
    """
    _check_discrete(dsched)
    check_data(x_n, "x_n")
    check_like(x0, x_n, "x0", "x_n")
    n = _check_steps(n, dsched)
    if n.ndim == 0:
        n = n.expand(x_n.shape[0])
    betas, abar = dsched.betas, dsched.alphas_cumprod
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    nc = n.cpu()
    b, ab, abp = betas[nc], abar[nc], abar_prev[nc]
    c0 = (b * abp.sqrt() / (1 - ab)).to(x_n)
    ct = ((1 - abp) * (1 - b).sqrt() / (1 - ab)).to(x_n)
    var = ((1 - abp) / (1 - ab) * b).to(x_n)
    return append_dims(c0, x_n) * x0 + append_dims(ct, x_n) * x_n, var


def ddpm_time_grid(dsched: DiscreteSchedule) -> torch.Tensor:
    """The continuous times of all DDPM steps, from noise to data: [t_{N-1}, ..., t_0, 0] = [1, ..., 1/N, 0], float64.

    Feed it to :func:`diffedu.samplers.ancestral.sample_ancestral` to run classic 1000-step DDPM.
    """
    _check_discrete(dsched)
    n = torch.arange(dsched.num_steps - 1, -2, -1)
    return dsched.timestep_to_t(n)


# ------------------------------------------------------------------------------ the ELBO terms
@dataclass
class ELBOTerms:
    """The DDPM ELBO of each x0, term by term, in nats per example (monograph §2.2).

    ``prior`` (B,): KL(q(x_{t_N}|x0) || p(x_{t_N})); ``kl`` (B, N-1): E_q KL(q(x_{t_{i-1}}|x_{t_i},x0) ||
    p(x_{t_{i-1}}|x_{t_i})) for i = 2..N (column i-2); ``reconstruction`` (B,): -E_q log p(x0 | x_{t_1});
    ``ts``: the grid 0 = t_0 < ... < t_N. ``nll_bound`` = prior + sum(kl) + reconstruction >= -log p(x0);
    ``elbo`` = -nll_bound.
    """

    prior: torch.Tensor
    kl: torch.Tensor
    reconstruction: torch.Tensor
    ts: torch.Tensor

    @property
    def nll_bound(self) -> torch.Tensor:
        return self.prior + self.kl.sum(1) + self.reconstruction

    @property
    def elbo(self) -> torch.Tensor:
        return -self.nll_bound


def _check_grid(ts):
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError("ts: expected a 1-D float grid 0 = t_0 < t_1 < ... < t_N with N >= 1")
    if ts[0] != 0 or (ts[1:] <= ts[:-1]).any() or ts[-1] > 1:
        raise ValueError("ts: expected an increasing grid starting at t_0 = 0 and ending at t_N <= 1")
    return ts


@torch.no_grad()
def elbo_terms(model, x0: torch.Tensor, ts, *, variance: str = "posterior", prior_var: Optional[float] = None,
               decoder_var: Optional[float] = None, cond=None, generator: Optional[torch.Generator] = None,
               chunk: int = 64) -> ELBOTerms:
    """Every term of the DDPM ELBO for each x0, with Gaussian KLs in closed form (monograph §2.2).

    ``model`` follows the model contract (a trained :class:`~diffedu.param.Denoiser` or the exact
    :meth:`diffedu.toy.GaussianMixture.denoiser`); its reverse kernel is
    p(x_s|x_t) = N(posterior mean with x0 -> x0_hat(x_t), var) (:func:`diffedu.forward.reverse_kernel`).
    What is exact and what is sampled: each KL between the Gaussians q(x_s|x_t,x0) and p(x_s|x_t)
    and the Gaussian decoder log-density are closed forms; the only Monte Carlo is one draw
    x_{t_i} ~ q(x_{t_i} | x0) per step and per example (and the x0 you pass). ``ts`` is an increasing
    float grid 0 = t_0 < ... < t_N. Prior p(x_{t_N}) = N(0, prior_var I) (default 1 for a VP
    schedule, sigma_{t_N}^2 otherwise); decoder p(x0 | x_{t_1}) = N(x0_hat, decoder_var I)
    (default sigma_{t_1}^2 / alpha_{t_1}^2, about beta_1).
    """
    check_data(x0, "x0")
    check_kind(variance, VARIANCES, "variance")
    ts = _check_grid(ts)
    sched = check_schedule(model.schedule)
    B, N = x0.shape[0], ts.numel() - 1
    dev, dt = x0.device, x0.dtype

    def draw(t):  # x_t ~ q(x_t | x0) for a (B,) float64 time
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=dt)
        return append_dims(sched.alpha(t).to(dt), x0) * x0 + append_dims(sched.sigma(t).to(dt), x0) * eps

    # prior: KL(N(alpha_T x0, sigma_T^2) || N(0, prior_var)), exact
    tN = ts[-1].to(dev).expand(B)
    if prior_var is None:
        prior_var = 1.0 if sched.variance_preserving else float(sched.sigma(ts[-1]) ** 2)
    check_positive(prior_var, "prior_var")
    prior = gaussian_kl(append_dims(sched.alpha(tN).to(dt), x0) * x0, (sched.sigma(tN) ** 2).to(dt),
                        torch.zeros_like(x0), prior_var)

    # reconstruction: -log N(x0; x0_hat(x_{t_1}), decoder_var)
    t1 = ts[1].to(dev).expand(B)
    if decoder_var is None:
        decoder_var = float(sched.sigma_bar(ts[1]) ** 2)
    check_positive(decoder_var, "decoder_var")
    x1 = draw(t1)
    if variance == "learned":
        pred, _ = model.predict_with_variance(x1, t1.to(dt), cond)
    else:
        pred = model(x1, t1.to(dt), cond)
    recon = -gaussian_log_prob(x0, pred.x0, decoder_var)

    # per-step KL for i = 2..N, processed in chunks of steps (one big batch per chunk)
    kls = []
    steps = list(range(2, N + 1))
    for c in range(0, len(steps), chunk):
        idx = steps[c:c + chunk]
        m = len(idx)
        t = ts[idx].to(dev).repeat_interleave(B)
        s = ts[[i - 1 for i in idx]].to(dev).repeat_interleave(B)
        x0r = x0.repeat(m, *([1] * (x0.ndim - 1)))
        eps = torch.randn(x0r.shape, generator=generator, device=dev, dtype=dt)
        x_t = append_dims(sched.alpha(t).to(dt), x0r) * x0r + append_dims(sched.sigma(t).to(dt), x0r) * eps
        condr = None if cond is None else cond.repeat(m)
        mean_p, var_p, _ = reverse_kernel(model, x_t, t, s, variance=variance, cond=condr)
        mean_q, var_q = posterior(sched, x_t, x0r, t, s)
        kls.append(gaussian_kl(mean_q, var_q, mean_p, var_p).reshape(m, B).T)
    kl = torch.cat(kls, 1) if kls else torch.zeros(B, 0, device=dev, dtype=dt)
    return ELBOTerms(prior=prior, kl=kl, reconstruction=recon, ts=ts)


def elbo_eps_weights(schedule: Schedule, ts) -> torch.Tensor:
    """Weights w_i with (mean part of the ELBO's step-i KL) = w_i ||eps - eps_hat||^2 (monograph §2.2).

    With the tilde-beta variance, the KL between q(x_s|x_t,x0) and p(x_s|x_t) is
    c_x0^2 ||x0 - x0_hat||^2 / (2 tilde-beta) = (SNR_s - SNR_t)/2 ||x0 - x0_hat||^2
    = (SNR_s / SNR_t - 1)/2 ||eps - eps_hat||^2, so the ELBO is a *weighted* eps-loss and L_simple
    (w = 1) is a reweighted ELBO (Ho et al. 2020; Kingma et al. 2021). Returns w_i for the steps
    (t_{i-1}, t_i), i = 2..N, of an increasing grid ``ts`` starting at 0; float64, shape (N-1,).
    """
    ts = _check_grid(ts)
    check_schedule(schedule)
    t, s = ts[2:], ts[1:-1]
    snr_t, snr_s = torch.exp(schedule.log_snr(t)), torch.exp(schedule.log_snr(s))
    return 0.5 * (snr_s / snr_t - 1)


# ------------------------------------------------------------------ improved DDPM: learned variance
class TwoHeadNet(nn.Module):
    """Two networks side by side: ``net(x, t, cond) = cat([mean_net(...), var_net(...)], dim=1)``.

    Lets a toy MLP (which outputs shape like x) serve as improved DDPM's 2C-channel network.
    """

    def __init__(self, mean_net: nn.Module, var_net: nn.Module):
        super().__init__()
        self.mean_net, self.var_net = mean_net, var_net

    def forward(self, x, t, cond=None):
        a = self.mean_net(x, t) if cond is None else self.mean_net(x, t, cond)
        b = self.var_net(x, t) if cond is None else self.var_net(x, t, cond)
        return torch.cat([a, b], 1)


class LearnedVarianceDenoiser(nn.Module):
    """Improved DDPM's model: one net predicts eps (or any kind) *and* a variance interpolation (Nichol & Dhariwal 2021).

    ``net(x_t, t[, cond])`` returns 2C channels along dim 1: the first C are the prediction in
    parameterisation ``prediction``, the last C are v, mapped to frac = (v + 1)/2, so that the reverse
    variance is exp(frac log beta + (1 - frac) log tilde-beta) (:func:`diffedu.forward.reverse_log_variance`;
    monograph §2.2, improved DDPM). ``forward`` keeps the model contract (returns a
    :class:`~diffedu.param.Prediction`), so every sampler accepts it; ``predict_with_variance``
    returns ``(Prediction, frac)``.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "eps"):
        super().__init__()
        self.net = net
        self.schedule = check_schedule(schedule)
        self.prediction = check_kind(prediction, KINDS, "prediction")

    def predict_with_variance(self, x_t: torch.Tensor, t, cond=None):
        check_data(x_t, "x_t")
        t = check_time(t, x_t)
        out = self.net(x_t, t.to(x_t.dtype)) if cond is None else self.net(x_t, t.to(x_t.dtype), cond)
        C = x_t.shape[1]
        if out.shape[0] != x_t.shape[0] or out.shape[1] != 2 * C or out.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"net output: expected shape {(x_t.shape[0], 2 * C, *x_t.shape[2:])} "
                             f"(prediction and variance channels), got {tuple(out.shape)}")
        raw, v = out[:, :C], out[:, C:]
        x0 = to_x0(raw, self.prediction, x_t, t, self.schedule)
        eps = to_eps(raw, self.prediction, x_t, t, self.schedule)
        return Prediction(x0=x0, eps=eps, x_t=x_t, t=t, schedule=self.schedule), (v + 1) / 2

    def forward(self, x_t: torch.Tensor, t, cond=None) -> Prediction:
        return self.predict_with_variance(x_t, t, cond)[0]


def hybrid_loss(model: LearnedVarianceDenoiser, x0: torch.Tensor, dsched: DiscreteSchedule, *, lam: float = 1e-3,
                cond=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Improved DDPM's L_hybrid = L_simple + lam * L_vlb, per example (B,) (Nichol & Dhariwal 2021; monograph §2.2).

    A DDPM step n ~ U{0..N-1} is drawn per example (integer steps live only here, on the
    :class:`~diffedu.schedules.DiscreteSchedule`); L_simple = ||eps - eps_hat||^2 (mean over
    dimensions); L_vlb = N * L_n with L_n the step's ELBO term (KL, or decoder NLL at n = 0) per
    dimension in nats, computed with a **stopped gradient on the mean**, so L_vlb trains only the
    variance and L_simple only the mean. ``lam = 1e-3`` as in the paper. ``model.schedule`` must be
    ``dsched`` (or agree with it).
    """
    if not isinstance(model, LearnedVarianceDenoiser):
        raise TypeError(f"model: expected a LearnedVarianceDenoiser, got {type(model).__name__}")
    _check_discrete(dsched)
    check_data(x0, "x0")
    check_positive(lam, "lam", strict=False)
    B, N = x0.shape[0], dsched.num_steps
    dev = x0.device
    gdev = generator.device if generator is not None else dev
    n = torch.randint(0, N, (B,), generator=generator, device=gdev).cpu()
    t = dsched.timestep_to_t(n).to(dev)
    s = dsched.timestep_to_t(n - 1).to(dev)
    eps = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(dev)
    sched = model.schedule
    x_t = append_dims(sched.alpha(t).to(x0.dtype), x0) * x0 + append_dims(sched.sigma(t).to(x0.dtype), x0) * eps
    pred, frac = model.predict_with_variance(x_t, t.to(x0.dtype), cond)
    D = x0[0].numel()
    l_simple = (pred.eps - eps).pow(2).reshape(B, -1).mean(1)
    mean_p, _ = posterior(sched, x_t, pred.x0.detach(), t, s)
    var_p = torch.exp(reverse_log_variance(sched, t, s, frac, "learned"))
    last = s == 0
    mean_q, var_q = posterior(sched, x_t, x0, t, s.clamp_min(0))
    # KL where n > 0; decoder NLL where n = 0 (var_q = 0 there, so guard it)
    safe_var_q = torch.where(last.to(var_q.device), torch.ones_like(var_q), var_q)
    kl = gaussian_kl(mean_q, safe_var_q, mean_p, var_p)
    nll = -gaussian_log_prob(x0, mean_p, var_p)
    l_vlb = torch.where(last.to(dev), nll, kl) / D
    return l_simple + lam * N * l_vlb
