"""Closed forms of OT, entropic OT and the Schrödinger bridge between Gaussians, any dimension (monograph §7.3-§7.5).

For mu_0 = N(m_0, A) and mu_1 = N(m_1, B) (A, B symmetric positive definite, float64):

* **W_2 / Bures** (monograph §7.2): W_2^2 = ||m_0 - m_1||^2 + B^2(A, B) with the Bures distance
  B^2(A, B) = tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2}.
* **The OT map** is linear: T(x) = m_1 + M (x - m_0), M = A^{-1/2} (A^{1/2} B A^{1/2})^{1/2} A^{-1/2}
  (symmetric positive definite, so the gradient of a convex function: Brenier).
* **Entropic OT** with cost ||x - y||^2 and regulariser eps KL(pi | mu_0 x mu_1) (monograph §7.3):
  the optimal plan is Gaussian with cross-covariance
  C_s = 1/2 A^{1/2} D_s A^{-1/2} - s^2/2 I,  D_s = (4 A^{1/2} B A^{1/2} + s^4 I)^{1/2},  s^2 = eps / 2
  (Janati et al. 2020; Mallasto et al. 2021), and its value is
  OT_eps = ||m_0 - m_1||^2 + tr A + tr B - tr D_s + d s^2 (1 - log 2 s^2) + s^2 log det(D_s + s^2 I).
  As eps -> 0, C_s -> A M (the OT plan); as eps -> infinity, C_s -> 0 (independence).
* **The Schrödinger bridge** with reference s W (Brownian motion of variance s^2 per unit time) has
  the entropic plan with eps = 2 s^2 as its (x_0, x_1) law and Brownian bridges in between
  (monograph §7.3), so its marginals are Gaussian with mean (1-t) m_0 + t m_1 and covariance
  Sigma_t = (1-t)^2 A + t^2 B + t(1-t)(C_s + C_s^T + s^2 I) (Bunne et al. 2023).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["GaussianPlan", "GaussianMap", "EntropicCost", "sqrtm_psd", "bures_sq", "gaussian_w2_sq", "gaussian_ot_map",
           "gaussian_entropic_plan", "gaussian_entropic_cost", "gaussian_sb_marginal", "full_gaussian_kl"]


class GaussianPlan(NamedTuple):
    """A Gaussian coupling of N(m0, cov0) and N(m1, cov1) with cross-covariance Cov(x0, x1) = ``cross`` (monograph §7.3)."""

    m0: torch.Tensor
    cov0: torch.Tensor
    m1: torch.Tensor
    cov1: torch.Tensor
    cross: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Mean (2d,) of the joint (x0, x1)."""
        return torch.cat([self.m0, self.m1])

    @property
    def cov(self) -> torch.Tensor:
        """Covariance (2d, 2d) of the joint (x0, x1)."""
        return torch.cat([torch.cat([self.cov0, self.cross], 1), torch.cat([self.cross.T, self.cov1], 1)], 0)

    @property
    def transport_cost(self) -> torch.Tensor:
        """E ||x0 - x1||^2 = ||m0 - m1||^2 + tr cov0 + tr cov1 - 2 tr cross."""
        return (self.m0 - self.m1).pow(2).sum() + torch.trace(self.cov0) + torch.trace(self.cov1) - 2 * torch.trace(self.cross)

    @property
    def mutual_information(self) -> torch.Tensor:
        """KL(pi | mu_0 x mu_1) = -1/2 log det(I - A^{-1} C B^{-1} C^T) (infinite for a deterministic plan)."""
        d = self.cov0.shape[0]
        eye = torch.eye(d, dtype=self.cov0.dtype, device=self.cov0.device)
        m = eye - torch.linalg.solve(self.cov0, self.cross) @ torch.linalg.solve(self.cov1, self.cross.T)
        return -0.5 * torch.linalg.slogdet(m)[1]

    def sample(self, n: int, generator=None):
        """n draws (x0, x1) from the joint Gaussian, each of shape (n, d), float64."""
        d = self.m0.shape[0]
        L = torch.linalg.cholesky(self.cov + 1e-12 * torch.eye(2 * d, dtype=self.cov.dtype, device=self.cov.device))
        gdev = generator.device if generator is not None else self.cov.device
        z = torch.randn(n, 2 * d, generator=generator, device=gdev, dtype=torch.float64).to(self.cov.device)
        xy = self.mean + z @ L.T
        return xy[:, :d], xy[:, d:]


class GaussianMap(NamedTuple):
    """The affine map T(x) = m1 + matrix (x - m0) (monograph §7.2, §7.5); call it on (B, d) points."""

    matrix: torch.Tensor
    m0: torch.Tensor
    m1: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (self.m1 + (x.double() - self.m0) @ self.matrix.T).to(x.dtype)


def _gaussian(m, S, name_m: str, name_S: str):
    m = torch.as_tensor(m, dtype=torch.float64)
    S = torch.as_tensor(S, dtype=torch.float64, device=m.device)
    if m.ndim != 1:
        raise ValueError(f"{name_m}: expected a mean vector of shape (d,), got shape {tuple(m.shape)}")
    d = m.shape[0]
    if S.shape != (d, d):
        raise ValueError(f"{name_S}: expected a ({d}, {d}) covariance to match {name_m}, got shape {tuple(S.shape)}")
    if not torch.isfinite(S).all() or not torch.allclose(S, S.T, atol=1e-10, rtol=1e-8):
        raise ValueError(f"{name_S}: expected a finite symmetric matrix")
    if torch.linalg.eigvalsh(S).min() <= 0:
        raise ValueError(f"{name_S}: expected a positive-definite covariance (smallest eigenvalue "
                         f"{torch.linalg.eigvalsh(S).min().item():.3g})")
    return m, 0.5 * (S + S.T)


def _pair(m0, S0, m1, S1):
    m0, S0 = _gaussian(m0, S0, "m0", "cov0")
    m1, S1 = _gaussian(m1, S1, "m1", "cov1")
    if m1.shape != m0.shape:
        raise ValueError(f"m1: expected dimension {m0.shape[0]} like m0, got {m1.shape[0]}")
    return m0, S0, m1.to(m0.device), S1.to(m0.device)


def sqrtm_psd(S: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """S^power for a symmetric positive semi-definite S by an eigen-decomposition, float64: the A^{1/2}, A^{-1/2} of the closed forms (monograph §7.2-§7.3)."""
    S = torch.as_tensor(S, dtype=torch.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"S: expected a square matrix, got shape {tuple(S.shape)}")
    w, V = torch.linalg.eigh(0.5 * (S + S.T))
    if power < 0 and w.min() <= 0:
        raise ValueError("S: a negative power needs a positive-definite matrix")
    return (V * w.clamp_min(0).pow(power)) @ V.T


def bures_sq(cov0: torch.Tensor, cov1: torch.Tensor) -> torch.Tensor:
    """The squared Bures distance tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2} (monograph §7.2): W_2^2 of centred Gaussians."""
    _, A, _, B = _pair(torch.zeros(len(cov0)), cov0, torch.zeros(len(cov1)), cov1)
    rA = sqrtm_psd(A)
    cross = torch.linalg.eigvalsh(rA @ B @ rA).clamp_min(0).sqrt().sum()
    return (torch.trace(A) + torch.trace(B) - 2 * cross).clamp_min(0)


def gaussian_w2_sq(m0, cov0, m1, cov1) -> torch.Tensor:
    """W_2^2(N(m0, A), N(m1, B)) = ||m0 - m1||^2 + Bures^2(A, B) (monograph §7.2, §7.5)."""
    m0, A, m1, B = _pair(m0, cov0, m1, cov1)
    return (m0 - m1).pow(2).sum() + bures_sq(A, B)


def gaussian_ot_map(m0, cov0, m1, cov1) -> GaussianMap:
    """The Brenier map between Gaussians, T(x) = m1 + A^{-1/2} (A^{1/2} B A^{1/2})^{1/2} A^{-1/2} (x - m0) (monograph §7.2, §7.5)."""
    m0, A, m1, B = _pair(m0, cov0, m1, cov1)
    rA, irA = sqrtm_psd(A), sqrtm_psd(A, -0.5)
    M = irA @ sqrtm_psd(rA @ B @ rA) @ irA
    return GaussianMap(0.5 * (M + M.T), m0, m1)


def _check_eps(eps, allow_zero=False):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0 or (eps == 0 and not allow_zero):
        raise ValueError(f"eps: expected a finite {'non-negative' if allow_zero else 'positive'} number, got {eps!r}")
    return float(eps)


def gaussian_entropic_plan(m0, cov0, m1, cov1, eps: float) -> GaussianPlan:
    """The entropic OT plan argmin E||x0 - x1||^2 + eps KL(pi | mu_0 x mu_1) between Gaussians (monograph §7.3).

    Cross-covariance C_s = 1/2 A^{1/2} D_s A^{-1/2} - s^2/2 I with D_s = (4 A^{1/2} B A^{1/2} + s^4 I)^{1/2}
    and s^2 = eps/2 (Janati et al. 2020; Mallasto et al. 2021). ``eps = 0`` gives the OT plan
    (cross-covariance A M, M of :func:`gaussian_ot_map`): a deterministic coupling.
    """
    eps = _check_eps(eps, allow_zero=True)
    m0, A, m1, B = _pair(m0, cov0, m1, cov1)
    s2 = eps / 2
    rA, irA = sqrtm_psd(A), sqrtm_psd(A, -0.5)
    eye = torch.eye(len(m0), dtype=torch.float64, device=A.device)
    D = sqrtm_psd(4 * rA @ B @ rA + s2**2 * eye)
    return GaussianPlan(m0, A, m1, B, 0.5 * rA @ D @ irA - 0.5 * s2 * eye)


class EntropicCost(NamedTuple):
    """The entropic OT value ``total`` = ``transport`` + eps * ``mutual_information`` at the optimal plan."""

    total: torch.Tensor
    transport: torch.Tensor
    mutual_information: torch.Tensor


def gaussian_entropic_cost(m0, cov0, m1, cov1, eps: float) -> EntropicCost:
    """OT_eps = min_pi E||x0 - x1||^2 + eps KL(pi | mu_0 x mu_1) between Gaussians, in closed form (monograph §7.3).

    total = ||m0 - m1||^2 + tr A + tr B - tr D_s + d s^2 (1 - log 2 s^2) + s^2 log det(D_s + s^2 I),
    s^2 = eps/2 (Janati et al. 2020, Thm 1 with their sigma^2 = s^2), split into its transport part
    E_pi ||x0 - x1||^2 and its entropic part (the plan's mutual information).
    """
    eps = _check_eps(eps)
    plan = gaussian_entropic_plan(m0, cov0, m1, cov1, eps)
    A, B, d, s2 = plan.cov0, plan.cov1, len(plan.m0), eps / 2
    rA = sqrtm_psd(A)
    eye = torch.eye(d, dtype=torch.float64, device=A.device)
    D = sqrtm_psd(4 * rA @ B @ rA + s2**2 * eye)
    total = ((plan.m0 - plan.m1).pow(2).sum() + torch.trace(A) + torch.trace(B) - torch.trace(D)
             + d * s2 * (1 - math.log(2 * s2)) + s2 * torch.linalg.slogdet(D + s2 * eye)[1])
    transport = plan.transport_cost
    return EntropicCost(total, transport, (total - transport) / eps)


def gaussian_sb_marginal(m0, cov0, m1, cov1, sigma: float, t):
    """Mean and covariance of the Schrödinger bridge between N(m0, A) and N(m1, B) at time t (monograph §7.3; Bunne et al. 2023).

    The reference is sigma W (t = 0 at mu_0, t = 1 at mu_1); the bridge is the entropic plan with
    eps = 2 sigma^2 glued to Brownian bridges: mean (1-t) m0 + t m1,
    Sigma_t = (1-t)^2 A + t^2 B + t(1-t)(C + C^T) + sigma^2 t(1-t) I. ``sigma = 0`` gives
    McCann's displacement interpolation (the W_2 geodesic). Returns (mean (d,), cov (d, d)).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma: expected a finite non-negative number, got {sigma!r}")
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t: must lie in [0, 1], got {t}")
    p = gaussian_entropic_plan(m0, cov0, m1, cov1, 2 * float(sigma) ** 2)
    eye = torch.eye(len(p.m0), dtype=torch.float64, device=p.cov0.device)
    cov = ((1 - t) ** 2 * p.cov0 + t**2 * p.cov1 + t * (1 - t) * (p.cross + p.cross.T)
           + sigma**2 * t * (1 - t) * eye)
    return (1 - t) * p.m0 + t * p.m1, cov


def full_gaussian_kl(m0, cov0, m1, cov1) -> torch.Tensor:
    """KL(N(m0, S0) || N(m1, S1)) = 1/2 [tr(S1^{-1} S0) + (m1-m0)^T S1^{-1} (m1-m0) - d + log det S1 - log det S0]
    for full covariances (used to say how far two couplings are, monograph §7.4; the isotropic per-example
    version is :func:`diffedu.gaussian.gaussian_kl`)."""
    m0, S0, m1, S1 = _pair(m0, cov0, m1, cov1)
    diff = m1 - m0
    return 0.5 * (torch.trace(torch.linalg.solve(S1, S0)) + diff @ torch.linalg.solve(S1, diff) - len(m0)
                  + torch.linalg.slogdet(S1)[1] - torch.linalg.slogdet(S0)[1])
