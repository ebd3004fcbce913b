"""Schrödinger bridges: static SB = entropic OT, the SB-CFM path, and diffusion couplings vs SB (monograph §7.3-§7.4).

* **Static SB = entropic OT** (monograph §7.3). With the reference process sigma W, whose (x_0, x_1)
  law is R(x_0, x_1) = mu_0(x_0) N(x_1; x_0, sigma^2 I), the static Schrödinger bridge
  min_{pi in Pi(mu_0, mu_1)} KL(pi | R) equals min E_pi ||x_0 - x_1||^2 / (2 sigma^2) - H(pi) + const,
  i.e. entropic OT with eps = 2 sigma^2 (:func:`sb_eps`). :func:`static_sb_plan` solves the SB
  *as a KL projection of R* (iterative proportional fitting, IPF), so comparing it with
  ``ot.sinkhorn(reg=2 sigma^2)`` checks the identity, factor 2 included.
* **The SB-CFM path** (Tong et al. 2024): given a pair (x_0, x_1) from the SB plan, the bridge is
  the Brownian bridge x_t = (1-t) x_0 + t x_1 + sigma sqrt(t(1-t)) z, whose conditional velocity is
  u_t(x | x_0, x_1) = (1 - 2t) / (2 t (1-t)) (x - mu_t) + x_1 - x_0 (:func:`sb_cfm_velocity`).
  Book convention: t = 0 data, t = 1 noise (torchcfm runs time the other way; the formulas are
  symmetric under t -> 1 - t with x_0 <-> x_1).
* **Is the diffusion SDE the SB?** (monograph §7.4). The forward SDE from p_data to time T is its
  own bridge: with itself as the reference and its own marginals (p_0, p_T), KL = 0. Between
  p_data and the *prior* N(0, I) it is not: running the exact reverse SDE from the prior gives
  the coupling prior(x_T) p(x_0 | x_T) (:func:`forward_backward_coupling`) -- which is exactly the
  first half-step of IPF started from the reference (De Bortoli et al. 2021) -- while the SB is
  IPF's limit (:func:`reference_sb_plan`, :func:`gaussian_ipf`). They coincide when p_T = prior.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from diffedu._checks import append_dims, check_data, check_like, check_positive, check_time
from diffedu.schedules import Schedule
from diffedu.transport.discrete import _check_cost, _weights, cost_matrix
from diffedu.transport.gaussian import GaussianPlan, _gaussian, _pair, gaussian_entropic_plan

__all__ = ["sb_eps", "static_sb_plan", "sb_cfm_mean_std", "sb_cfm_sample", "sb_cfm_velocity",
           "diffusion_coupling", "forward_backward_coupling", "reference_sb_plan", "gaussian_ipf"]


def sb_eps(sigma: float) -> float:
    """The entropic regularisation eps = 2 sigma^2 of the static SB with reference sigma W (monograph §7.3)."""
    return 2.0 * check_positive(sigma, "sigma") ** 2


def static_sb_plan(x0: torch.Tensor, x1: torch.Tensor, sigma: float, a: Optional[torch.Tensor] = None,
                   b: Optional[torch.Tensor] = None, *, max_iter: int = 10_000, tol: float = 1e-11) -> torch.Tensor:
    """The static SB between empirical measures as the KL projection of the Brownian reference (monograph §7.3).

    Starts from R_ij = a_i N(x1_j; x0_i, sigma^2 I) / Z_i (the reference's (x_0, x_1) law restricted
    to the samples) and alternately rescales rows to a and columns to b (IPF), in log space.
    The fixed point is argmin KL(P | R) over plans with marginals (a, b): the entropic OT plan
    with eps = 2 sigma^2. Returns P (n, m), float64.
    """
    sigma = check_positive(sigma, "sigma")
    C = _check_cost(cost_matrix(x0, x1))
    a, b = _weights(a, C.shape[0], "a", C), _weights(b, C.shape[1], "b", C)
    d = x0[0].numel()
    log_R = -C / (2 * sigma**2) - 0.5 * d * math.log(2 * math.pi * sigma**2)  # log N(x1_j; x0_i, sigma^2 I)
    log_R = a.log()[:, None] + log_R - torch.logsumexp(log_R, 1, keepdim=True)
    log_P = log_R
    for _ in range(max_iter):
        log_P = log_P + a.log()[:, None] - torch.logsumexp(log_P, 1, keepdim=True)  # fit the rows
        log_P = log_P + b.log()[None, :] - torch.logsumexp(log_P, 0, keepdim=True)  # fit the columns
        if float((log_P.exp().sum(1) - a).abs().sum()) < tol:
            break
    return log_P.exp()


def sb_cfm_mean_std(x0: torch.Tensor, x1: torch.Tensor, t, sigma: float):
    """The SB-CFM (Brownian bridge) conditional path: mu_t = (1-t) x0 + t x1, sigma_t = sigma sqrt(t(1-t)) (monograph §7.3; Tong et al. 2024).

    ``x0`` data at t = 0, ``x1`` noise/target at t = 1, both (B, ...); ``t`` (B,) or a float.
    Returns (mu_t (B, ...), sigma_t (B,)).
    """
    check_data(x0, "x0")
    check_like(x1, x0, "x1", "x0")
    sigma = check_positive(sigma, "sigma", strict=False)
    t = check_time(t, x0).to(x0.dtype)
    tt = append_dims(t, x0)
    return (1 - tt) * x0 + tt * x1, sigma * (t * (1 - t)).sqrt()


def sb_cfm_sample(x0: torch.Tensor, x1: torch.Tensor, t, sigma: float, *, noise: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x_t = (1-t) x0 + t x1 + sigma sqrt(t(1-t)) z, z ~ N(0, I): a draw of the Brownian bridge (monograph §7.3)."""
    mu, std = sb_cfm_mean_std(x0, x1, t, sigma)
    if noise is None:
        gdev = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
    check_like(noise, x0, "noise", "x0")
    return mu + append_dims(std, x0) * noise


def sb_cfm_velocity(x: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t, sigma: float) -> torch.Tensor:
    """The SB-CFM conditional velocity u_t(x | x0, x1) = (1-2t)/(2t(1-t)) (x - mu_t) + (x1 - x0) (monograph §7.3; Tong et al. 2024).

    It is sigma_t'/sigma_t (x - mu_t) + mu_t' for the path of :func:`sb_cfm_mean_std`, so it
    transports N(mu_t, sigma_t^2 I) (continuity equation); at sigma = 0 it is rectified flow's
    x1 - x0. Needs 0 < t < 1 (the factor blows up at the ends, where sigma_t = 0).
    """
    check_like(x, x0, "x", "x0")
    mu, _ = sb_cfm_mean_std(x0, x1, t, sigma)
    t = check_time(t, x0).to(x0.dtype)
    if ((t <= 0) | (t >= 1)).any():
        raise ValueError("t: the SB-CFM velocity needs 0 < t < 1 (sigma_t = 0 at the ends)")
    lam = append_dims((1 - 2 * t) / (2 * t * (1 - t)), x0)
    return lam * (x - mu) + (x1 - x0)


# -------------------------------------------------------------------------- §7.4: diffusion vs SB
def _schedule_at(schedule, t):
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a diffedu.schedules.Schedule, got {type(schedule).__name__}")
    t = float(t)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t: expected a terminal time in (0, 1], got {t}")
    tt = torch.tensor(t, dtype=torch.float64)
    return float(schedule.alpha(tt)), float(schedule.sigma(tt))


def diffusion_coupling(schedule: Schedule, m0, cov0, t: float = 1.0) -> GaussianPlan:
    """The (x_0, x_t) law of the forward process x_t = alpha_t x_0 + sigma_t eps for x_0 ~ N(m0, A) (monograph §7.4).

    Cross-covariance alpha_t A; x_t ~ N(alpha_t m0, alpha_t^2 A + sigma_t^2 I). The reverse SDE
    started from this p_t has the same joint law (time reversal).
    """
    m0, A = _gaussian(m0, cov0, "m0", "cov0")
    a, s = _schedule_at(schedule, t)
    eye = torch.eye(len(m0), dtype=torch.float64, device=A.device)
    return GaussianPlan(m0, A, a * m0, a**2 * A + s**2 * eye, a * A)


def _condition(plan: GaussianPlan, m1, cov1) -> GaussianPlan:
    """Keep plan's conditional law of x0 given x1, replace the x1 marginal by N(m1, cov1) (an IPF half-step)."""
    K = torch.linalg.solve(plan.cov1, plan.cross.T).T  # E[x0 | x1] = m0 + K (x1 - plan.m1)
    resid = plan.cov0 - K @ plan.cross.T
    cov0 = resid + K @ cov1 @ K.T
    return GaussianPlan(plan.m0 + K @ (m1 - plan.m1), 0.5 * (cov0 + cov0.T), m1, cov1, K @ cov1)


def _swap(plan: GaussianPlan) -> GaussianPlan:
    return GaussianPlan(plan.m1, plan.cov1, plan.m0, plan.cov0, plan.cross.T)


def forward_backward_coupling(schedule: Schedule, m0, cov0, t: float = 1.0, prior_mean=None,
                              prior_cov=None) -> GaussianPlan:
    """The (x_0, x_t) law of the exact reverse SDE started from the prior N(0, I) instead of p_t (monograph §7.4).

    The reverse SDE's transitions are the forward posteriors, so the joint is prior(x_t) p(x_0 | x_t):
    the reference :func:`diffusion_coupling` with its x_t marginal replaced by the prior -- the
    first half-step of IPF (De Bortoli et al. 2021). Its x_0 marginal is p_data only when p_t = prior.
    """
    ref = diffusion_coupling(schedule, m0, cov0, t)
    d = len(ref.m0)
    pm = torch.zeros(d, dtype=torch.float64) if prior_mean is None else prior_mean
    pc = torch.eye(d, dtype=torch.float64) if prior_cov is None else prior_cov
    pm, pc = _gaussian(pm, pc, "prior_mean", "prior_cov")
    return _condition(ref, pm.to(ref.m0.device), pc.to(ref.m0.device))


def reference_sb_plan(schedule: Schedule, m0, cov0, m1, cov1, t: float = 1.0) -> GaussianPlan:
    """The Schrödinger bridge from N(m0, A) to N(m1, B) with the forward diffusion on [0, t] as reference (monograph §7.4).

    KL(pi | R) with R(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) is E||x_t - alpha_t x_0||^2 / (2 sigma_t^2)
    - H(pi) + const: entropic OT between alpha_t x_0 ~ N(alpha_t m0, alpha_t^2 A) and x_t with
    eps = 2 sigma_t^2; the cross-covariance is then divided by alpha_t. With (m1, B) = p_t the
    answer is :func:`diffusion_coupling` itself.
    """
    m0, A, m1, B = _pair(m0, cov0, m1, cov1)
    a, s = _schedule_at(schedule, t)
    if a <= 0:
        raise ValueError("schedule: alpha_t = 0 at the terminal time; the reference forgets x_0 (take t < 1)")
    p = gaussian_entropic_plan(a * m0, a**2 * A, m1, B, 2 * s**2)
    return GaussianPlan(m0, A, m1, B, p.cross / a)


def gaussian_ipf(reference: GaussianPlan, m0, cov0, m1, cov1, n_iter: int = 50) -> List[GaussianPlan]:
    """Iterative proportional fitting between Gaussians, in closed form (monograph §7.3-§7.4; IPF / DSB).

    Starting from the ``reference`` joint, alternately replace the x1 marginal by N(m1, cov1)
    (keeping x0 | x1) and the x0 marginal by N(m0, cov0) (keeping x1 | x0). Returns the plan after
    every half-step (2 n_iter plans); the first is the forward-backward coupling, the limit the SB.
    """
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter: expected a positive int, got {n_iter!r}")
    m0, A, m1, B = _pair(m0, cov0, m1, cov1)
    plans, p = [], reference
    for _ in range(n_iter):
        p = _condition(p, m1, B)
        plans.append(p)
        p = _swap(_condition(_swap(p), m0, A))
        plans.append(p)
    return plans
