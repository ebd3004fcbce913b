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
(:func:`forward_posterior`). On the 1000-step DDPM table these are exactly Ho et al.'s
beta_n and tilde-beta_n; the integer-step helpers (``ddpm_*``) take a
:class:`~diffedu.schedules.DiscreteSchedule` and exist to show that.

Also here: Gaussian KL / log-density helpers, the model's Gaussian reverse kernel with fixed
(beta or tilde-beta) or learned variance, :func:`elbo_terms` (exact Gaussian KLs, Monte Carlo
only over x0 and x_t), the per-step weights that make L_simple a reweighted ELBO
(:func:`elbo_eps_weights`), and improved DDPM's learned variances with the hybrid loss
(:class:`LearnedVarianceDenoiser`, :func:`hybrid_loss`; Nichol & Dhariwal 2021).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from diffedu._checks import append_dims, check_data, check_kind, check_like, check_positive, check_time
from diffedu.param import KINDS, Prediction, to_eps, to_x0
from diffedu.schedules import DiscreteSchedule, Schedule

__all__ = [
    "gaussian_log_prob", "gaussian_kl",
    "transition", "posterior_coefficients", "forward_posterior",
    "ddpm_forward_kernel", "ddpm_forward_step", "ddpm_posterior", "ddpm_time_grid",
    "VARIANCES", "reverse_log_variance", "reverse_kernel",
    "ELBOTerms", "elbo_terms", "elbo_eps_weights", "bits_per_dim",
    "TwoHeadNet", "LearnedVarianceDenoiser", "hybrid_loss",
]

LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------------- Gaussians
def _per_example_sum(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).sum(1)


def _as_var(var, x):
    """A variance given as a scalar, (B,) or shaped like x, broadcast against x."""
    if not torch.is_tensor(var):
        var = torch.as_tensor(float(var), dtype=x.dtype, device=x.device)
    if var.ndim == 1 and x.ndim > 1:
        return append_dims(var, x)
    return var


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, var) -> torch.Tensor:
    """log N(x; mean, var I) summed over the data dimensions, shape (B,) (monograph §2.1).

    ``var`` is a scalar, a per-example (B,) tensor or a per-dimension tensor shaped like x.
    """
    check_data(x, "x")
    check_like(mean, x, "mean")
    v = _as_var(var, x)
    if (torch.as_tensor(v) <= 0).any():
        raise ValueError("var: expected strictly positive variances")
    v = v.expand_as(x)
    return -0.5 * _per_example_sum((x - mean) ** 2 / v + torch.log(v) + LOG_2PI)


def gaussian_kl(mean_q: torch.Tensor, var_q, mean_p: torch.Tensor, var_p) -> torch.Tensor:
    """KL(N(mean_q, var_q I) || N(mean_p, var_p I)) in nats, summed over dimensions, shape (B,) (monograph §2.1).

    Closed form, per dimension: 0.5 [var_q / var_p - 1 - log(var_q / var_p) + (mean_q - mean_p)^2 / var_p].
    Variances are scalars, (B,) or shaped like the means; ``var_q = 0`` is allowed only if
    ``var_p`` is then positive and gives +inf (a point mass against a Gaussian).
    """
    check_data(mean_q, "mean_q", allow_nonfinite=False)
    check_like(mean_p, mean_q, "mean_p", "mean_q")
    vq = _as_var(var_q, mean_q).expand_as(mean_q)
    vp = _as_var(var_p, mean_q).expand_as(mean_q)
    if (vp <= 0).any():
        raise ValueError("var_p: expected strictly positive variances")
    if (vq < 0).any():
        raise ValueError("var_q: expected non-negative variances")
    ratio = vq / vp
    per_dim = 0.5 * (ratio - 1 - torch.log(ratio) + (mean_q - mean_p) ** 2 / vp)
    return _per_example_sum(per_dim)


# --------------------------------------------------------------- forward transition, posterior
def _check_schedule(schedule):
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a diffedu.schedules.Schedule, got {type(schedule).__name__}")
    return schedule


def _time(t, like, name):
    """A time as a 0-d or (B,) float64 tensor on like's device, not expanded (coefficients stay cheap)."""
    t = check_time(t, None, name)
    if like is not None:
        if t.ndim == 1 and t.shape[0] != like.shape[0]:
            raise ValueError(f"{name}: expected a scalar or shape ({like.shape[0]},) to match the batch, got {tuple(t.shape)}")
        t = t.to(like.device)
    return t.to(torch.float64)


def _pair(t, s, like: Optional[torch.Tensor] = None):
    """Validate a pair of times s < t (float64 internally, as the grids are)."""
    t, s = _time(t, like, "t"), _time(s, like, "s")
    if t.shape != s.shape:
        t, s = torch.broadcast_tensors(t, s)
    if (s >= t).any():
        raise ValueError("s, t: expected s < t (s is the less noisy, earlier time; t = 0 data, t = 1 noise)")
    return t, s


def transition(schedule: Schedule, t, s):
    """(alpha_{t|s}, sigma_{t|s}^2) of q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I), s < t (monograph §2.2).

    alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2, computed in
    float64. For DDPM, one grid step gives (sqrt(1 - beta_n), beta_n).
    """
    _check_schedule(schedule)
    t, s = _pair(t, s)
    a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
    a_ts = a_t / a_s
    var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
    return a_ts, var_ts


def posterior_coefficients(schedule: Schedule, t, s):
    """(c_x0, c_xt, var) with q(x_s | x_t, x0) = N(c_x0 x0 + c_xt x_t, var I) for s < t (monograph §2.2).

    c_x0 = alpha_s sigma_{t|s}^2 / sigma_t^2, c_xt = alpha_{t|s} sigma_s^2 / sigma_t^2,
    var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (DDPM's tilde-beta). Where sigma_s = 0 (s = 0 of a VP
    schedule): (1, 0, 0), the point mass at x0.
    Float64 tensors of the broadcast shape of (t, s).
    """
    t, s = _pair(t, s)
    a_ts, var_ts = transition(schedule, t, s)
    a_s, s_s, s_t = schedule.alpha(s), schedule.sigma(s), schedule.sigma(t)
    c_x0 = a_s * var_ts / s_t**2
    c_xt = a_ts * s_s**2 / s_t**2
    var = var_ts * s_s**2 / s_t**2
    return c_x0, c_xt, var


def forward_posterior(schedule: Schedule, x_t: torch.Tensor, x0: torch.Tensor, t, s):
    """Mean and variance of the forward posterior q(x_s | x_t, x0), s < t (monograph §2.2).

    Returns ``(mean, var)`` with mean shaped like x_t and var of shape (B,) (isotropic). This is
    "denoise, then re-noise": put x0 (or a model's estimate of it) into the mean with weight c_x0.
    """
    check_data(x_t, "x_t")
    check_like(x0, x_t, "x0", "x_t")
    t, s = _pair(t, s, x_t)
    c_x0, c_xt, var = posterior_coefficients(schedule, t, s)
    c_x0, c_xt = c_x0.to(x_t.dtype), c_xt.to(x_t.dtype)
    mean = append_dims(c_x0, x_t) * x0 + append_dims(c_xt, x_t) * x_t
    return mean, var.to(x_t.dtype)


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
    or a (B,) integer tensor. Returns (mean, var (B,)). Equal to :func:`forward_posterior` between
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


# -------------------------------------------------------------------- model's reverse kernel
VARIANCES = ("posterior", "beta", "learned")


def _default_decoder_var(schedule, t1):
    a, s = schedule.alpha(t1), schedule.sigma(t1)
    return (s / a) ** 2


def reverse_log_variance(schedule: Schedule, t, s, frac: Optional[torch.Tensor] = None, kind: str = "posterior"):
    """log of the reverse-kernel variance of p(x_s | x_t) (monograph §2.2; improved DDPM §3.1).

    ``kind="posterior"``: tilde-beta = sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (the lower bound of Ho et al.);
    ``"beta"``: sigma_{t|s}^2 (the upper bound); ``"learned"``: improved DDPM's interpolation in log
    space, frac log(beta) + (1 - frac) log(tilde-beta), with ``frac`` from the network. At s = 0
    (the reconstruction step), tilde-beta = 0, so every kind uses the decoder variance
    sigma_{t}^2 / alpha_{t}^2 instead (a fixed choice; see :func:`elbo_terms`). Float64, shape of t.
    """
    check_kind(kind, VARIANCES, "kind")
    t, s = _pair(t, s)
    _, var_ts = transition(schedule, t, s)
    _, _, tilde = posterior_coefficients(schedule, t, s)
    last = s == 0
    dec = _default_decoder_var(schedule, t)
    log_beta = torch.where(last, torch.log(dec), torch.log(var_ts))
    log_tilde = torch.where(last, torch.log(dec), torch.log(tilde.clamp_min(1e-300)))
    if kind == "posterior":
        return log_tilde
    if kind == "beta":
        return log_beta
    if frac is None:
        raise ValueError("frac: kind='learned' needs the network's interpolation fraction (shaped like x)")
    lb, lt = append_dims(log_beta, frac), append_dims(log_tilde, frac)
    return frac * lb.to(frac) + (1 - frac) * lt.to(frac)


def reverse_kernel(model, x_t: torch.Tensor, t, s, *, variance: str = "posterior", cond=None,
                   detach_mean: bool = False):
    """The model's Gaussian reverse kernel p(x_s | x_t) = N(mu, var) (monograph §2.2: "denoise, then re-noise").

    mu = c_x0 x0_hat(x_t, t) + c_xt x_t is the forward posterior mean with the model's x0 estimate
    plugged in; the variance is chosen by ``variance`` (see :func:`reverse_log_variance`;
    ``"learned"`` needs a :class:`LearnedVarianceDenoiser`). Returns ``(mean, var, prediction)``
    with var of shape (B,) or shaped like x_t (learned). ``detach_mean`` stops the gradient through
    the mean, as in improved DDPM's L_vlb.
    """
    check_kind(variance, VARIANCES, "variance")
    check_data(x_t, "x_t")
    t, s = _pair(t, s, x_t)
    sched = model.schedule
    t_model = t.to(x_t.dtype).expand(x_t.shape[0])
    if variance == "learned":
        if not hasattr(model, "predict_with_variance"):
            raise TypeError("model: variance='learned' needs a LearnedVarianceDenoiser (with predict_with_variance)")
        pred, frac = model.predict_with_variance(x_t, t_model, cond)
    else:
        pred, frac = model(x_t, t_model, cond), None
    x0_hat = pred.x0.detach() if detach_mean else pred.x0
    mean, _ = forward_posterior(sched, x_t, x0_hat, t, s)
    logv = reverse_log_variance(sched, t, s, frac, variance)
    return mean, torch.exp(logv).to(x_t.dtype), pred


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
    p(x_s|x_t) = N(posterior mean with x0 -> x0_hat(x_t), var) (:func:`reverse_kernel`).
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
    sched = _check_schedule(model.schedule)
    B, N = x0.shape[0], ts.numel() - 1
    D = x0[0].numel()
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
        decoder_var = float(_default_decoder_var(sched, ts[1]))
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
        mean_q, var_q = forward_posterior(sched, x_t, x0r, t, s)
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
    _check_schedule(schedule)
    t, s = ts[2:], ts[1:-1]
    snr_t, snr_s = torch.exp(schedule.log_snr(t)), torch.exp(schedule.log_snr(s))
    return 0.5 * (snr_s / snr_t - 1)


def bits_per_dim(nats: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Convert a per-example negative log-likelihood (or bound) in nats to bits per dimension."""
    check_data(x0, "x0")
    return nats / (x0[0].numel() * math.log(2))


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
    variance is exp(frac log beta + (1 - frac) log tilde-beta) (:func:`reverse_log_variance`;
    monograph §2.2, improved DDPM). ``forward`` keeps the model contract (returns a
    :class:`~diffedu.param.Prediction`), so every sampler accepts it; ``predict_with_variance``
    returns ``(Prediction, frac)``.
    """

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "eps"):
        super().__init__()
        self.net = net
        self.schedule = _check_schedule(schedule)
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
    mean_p, _ = forward_posterior(sched, x_t, pred.x0.detach(), t, s)
    var_p = torch.exp(reverse_log_variance(sched, t, s, frac, "learned"))
    last = s == 0
    mean_q, var_q = forward_posterior(sched, x_t, x0, t, s.clamp_min(0))
    # KL where n > 0; decoder NLL where n = 0 (var_q = 0 there, so guard it)
    safe_var_q = torch.where(last.to(var_q.device), torch.ones_like(var_q), var_q)
    kl = gaussian_kl(mean_q, safe_var_q, mean_p, var_p)
    nll = -gaussian_log_prob(x0, mean_p, var_p)
    l_vlb = torch.where(last.to(dev), nll, kl) / D
    return l_simple + lam * N * l_vlb
