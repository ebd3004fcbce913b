"""Optimal transport between empirical measures: exact, entropic, and Sinkhorn as the lesson (monograph §7.2-§7.3).

Two empirical measures mu = sum_i a_i delta_{x_i} and nu = sum_j b_j delta_{y_j} (weights
uniform unless given) and the quadratic cost C_ij = ||x_i - y_j||^2 (data flattened, so images
work too). A *coupling* (plan) P >= 0 has row sums a and column sums b.

* **Exact OT** (Kantorovich, monograph §7.2): W_2^2(mu, nu) = min_P <P, C>, a linear program
  solved by POT's network simplex (:func:`exact_ot`).
* **Entropic OT** (monograph §7.3): min_P <P, C> + eps KL(P | a b^T). The solution is
  P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) for dual potentials (f, g), found by Sinkhorn's
  alternating projections; :func:`entropic_ot` calls POT, :func:`sinkhorn_log` is the lesson
  (log domain, so small eps does not underflow), tested equal to ``ot.sinkhorn`` to 1e-8.
  As eps -> 0 its transport cost <P_eps, C> falls to W_2^2, with
  0 <= <P_eps, C> - W_2^2 <= eps (H(a) + H(b)) (compare the objectives at P_eps and at P*).
* **Barycentric map** T(x_i) = sum_j P_ij y_j / a_i: the map a plan induces (for an exact
  plan between equal-size uniform samples, a permutation of the y's).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
import torch

from diffedu._checks import check_data, check_positive

__all__ = ["OTResult", "SinkhornResult", "cost_matrix", "uniform_weights", "exact_ot", "entropic_ot",
           "sinkhorn_f_update", "sinkhorn_g_update", "sinkhorn_log", "barycentric_map", "plan_entropy"]


class OTResult(NamedTuple):
    """A transport plan P (n, m) and its transport cost <P, C> (a 0-d tensor), both float64."""

    plan: torch.Tensor
    cost: torch.Tensor


class SinkhornResult(NamedTuple):
    """Output of :func:`sinkhorn_log` with its convergence diagnostics (monograph §7.3).

    ``plan`` P (n, m); ``cost`` <P, C>; ``objective`` <P, C> + eps KL(P | a b^T); ``f``, ``g`` the
    dual potentials; ``marginal_errors`` ||P 1 - a||_1 after each iteration (the columns are
    exact after every g-update); ``dual`` the dual objective <f, a> + <g, b> after each
    iteration (it increases to ``objective``); ``n_iter``; ``converged`` (error below ``tol``).
    """

    plan: torch.Tensor
    cost: torch.Tensor
    objective: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    marginal_errors: torch.Tensor
    dual: torch.Tensor
    n_iter: int
    converged: bool


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    check_data(x, name)
    return x.reshape(x.shape[0], -1).double()


def cost_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C_ij = ||x_i - y_j||^2 for samples x (n, ...) and y (m, ...), float64 (n, m) (monograph §7.2)."""
    xf, yf = _flat(x, "x"), _flat(y, "y")
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"y: expected samples of the same dimension as x ({xf.shape[1]}), got {yf.shape[1]}")
    return ((xf * xf).sum(1)[:, None] + (yf * yf).sum(1)[None] - 2 * xf @ yf.T).clamp_min(0)


def uniform_weights(n: int, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The uniform weights a = (1/n, ..., 1/n) of an empirical measure (monograph §7.2), float64, on ``like``'s device."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    return torch.full((n,), 1.0 / n, dtype=torch.float64, device=None if like is None else like.device)


def _weights(w, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return uniform_weights(n, like)
    if not torch.is_tensor(w) or w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{name}: expected a tensor of {n} weights (one per sample), got "
                         f"{tuple(w.shape) if torch.is_tensor(w) else type(w).__name__}")
    w = w.double().to(like.device)
    if not torch.isfinite(w).all() or (w <= 0).any() or abs(float(w.sum()) - 1.0) > 1e-8:
        raise ValueError(f"{name}: weights must be positive and sum to 1, got sum {float(w.sum()):.6g}")
    return w


def _check_cost(C) -> torch.Tensor:
    if not torch.is_tensor(C) or C.ndim != 2 or not C.is_floating_point():
        raise ValueError(f"C: expected a floating (n, m) cost matrix, got "
                         f"{tuple(C.shape) if torch.is_tensor(C) else type(C).__name__}")
    if not torch.isfinite(C).all():
        raise ValueError("C: contains NaN or inf")
    return C.double()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def exact_ot(x: torch.Tensor, y: torch.Tensor, a: Optional[torch.Tensor] = None,
             b: Optional[torch.Tensor] = None) -> OTResult:
    """The exact OT plan and W_2^2 = min_P <P, C> between empirical measures, by POT's ``ot.emd`` (monograph §7.2).

    ``x`` (n, ...), ``y`` (m, ...); weights ``a`` (n,), ``b`` (m,) uniform by default. For
    n = m and uniform weights the optimal plan is a permutation matrix / n (Birkhoff).
    """
    import ot

    C = cost_matrix(x, y)
    a, b = _weights(a, C.shape[0], "a", C), _weights(b, C.shape[1], "b", C)
    P = torch.as_tensor(ot.emd(_np(a), _np(b), _np(C), numItermax=10_000_000), device=C.device)
    return OTResult(P, (P * C).sum())


def entropic_ot(x: torch.Tensor, y: torch.Tensor, eps: float, a: Optional[torch.Tensor] = None,
                b: Optional[torch.Tensor] = None, *, tol: float = 1e-9, max_iter: int = 20_000) -> OTResult:
    """The entropic OT plan argmin_P <P, C> + eps KL(P | a b^T) and its cost <P, C>, by POT's ``ot.sinkhorn`` (monograph §7.3).

    ``eps`` > 0 is in the units of the cost (squared distance). The kernel form of Sinkhorn is
    used when exp(-C/eps) does not underflow, the log-domain form otherwise. POT stops at marginal
    error ``tol`` or after ``max_iter`` iterations; this raises only if the plan is then clearly
    wrong (non-finite, or marginal error above 1e-4: eps too small for the iteration budget).
    """
    import ot

    eps = check_positive(eps, "eps")
    C = cost_matrix(x, y)
    a, b = _weights(a, C.shape[0], "a", C), _weights(b, C.shape[1], "b", C)
    method = "sinkhorn" if float(C.max()) / eps < 200 else "sinkhorn_log"
    P = ot.sinkhorn(_np(a), _np(b), _np(C), eps, method=method, stopThr=tol, numItermax=max_iter, warn=False)
    P = torch.as_tensor(P, device=C.device)
    err = float((P.sum(1) - a).abs().sum() + (P.sum(0) - b).abs().sum()) if torch.isfinite(P).all() else math.inf
    if err > 1e-4:
        raise RuntimeError(f"entropic_ot: Sinkhorn did not converge (eps={eps:g}, marginal error {err:.2e}); "
                           "increase eps or max_iter")
    return OTResult(P, (P * C).sum())


def sinkhorn_f_update(g: torch.Tensor, C: torch.Tensor, log_b: torch.Tensor, eps: float) -> torch.Tensor:
    """One half-step of log-domain Sinkhorn: f_i = -eps log sum_j b_j exp((g_j - C_ij) / eps) (monograph §7.3).

    It makes the row sums of P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps) equal to a exactly.
    ``torch.logsumexp`` keeps it finite however small eps is.
    """
    return -eps * torch.logsumexp(log_b[None, :] + (g[None, :] - C) / eps, dim=1)


def sinkhorn_g_update(f: torch.Tensor, C: torch.Tensor, log_a: torch.Tensor, eps: float) -> torch.Tensor:
    """The other half-step: g_j = -eps log sum_i a_i exp((f_i - C_ij) / eps), making the column sums b (monograph §7.3)."""
    return sinkhorn_f_update(f, C.T, log_a, eps)


def sinkhorn_log(a: torch.Tensor, b: torch.Tensor, C: torch.Tensor, eps: float, *, max_iter: int = 10_000,
                 tol: float = 1e-10) -> SinkhornResult:
    """Log-domain Sinkhorn for min_P <P, C> + eps KL(P | a b^T) with P 1 = a, P^T 1 = b (monograph §7.3).

    Block-coordinate ascent on the dual max_{f, g} <f, a> + <g, b> - eps sum_ij a_i b_j
    (exp((f_i + g_j - C_ij)/eps) - 1): alternately :func:`sinkhorn_f_update` and
    :func:`sinkhorn_g_update`, until the row marginal error ||P 1 - a||_1 < ``tol``. The plan is
    P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps). Returns a :class:`SinkhornResult` with the
    per-iteration diagnostics; it does not raise when not converged (see ``converged``).
    """
    C = _check_cost(C)
    a, b = _weights(a, C.shape[0], "a", C), _weights(b, C.shape[1], "b", C)
    eps = check_positive(eps, "eps")
    check_positive(tol, "tol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: expected a positive int, got {max_iter!r}")
    log_a, log_b = a.log(), b.log()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    errors, duals = [], []
    for it in range(1, max_iter + 1):
        f = sinkhorn_f_update(g, C, log_b, eps)
        g = sinkhorn_g_update(f, C, log_a, eps)
        log_P = log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - C) / eps
        P = log_P.exp()
        errors.append(float((P.sum(1) - a).abs().sum()))
        duals.append(float(f @ a + g @ b - eps * (P.sum() - 1.0)))
        if errors[-1] < tol:
            break
    kl = (P * (log_P - log_a[:, None] - log_b[None, :])).sum()
    cost = (P * C).sum()
    return SinkhornResult(P, cost, cost + eps * kl, f, g, torch.tensor(errors, dtype=torch.float64),
                          torch.tensor(duals, dtype=torch.float64), it, errors[-1] < tol)


def barycentric_map(plan: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """T(x_i) = sum_j P_ij y_j / sum_j P_ij, the map induced by a plan (monograph §7.2-§7.3).

    ``plan`` (n, m), ``y`` (m, ...); returns (n, ...) in y's dtype. For an entropic plan between
    samples of two Gaussians it estimates E[y | x] under the entropic coupling.
    """
    if not torch.is_tensor(plan) or plan.ndim != 2:
        raise ValueError(f"plan: expected an (n, m) tensor, got "
                         f"{tuple(plan.shape) if torch.is_tensor(plan) else type(plan).__name__}")
    yf = _flat(y, "y")
    if yf.shape[0] != plan.shape[1]:
        raise ValueError(f"y: expected {plan.shape[1]} samples (one per column of plan), got {yf.shape[0]}")
    rows = plan.double().sum(1, keepdim=True)
    if (rows <= 0).any():
        raise ValueError("plan: every row must have positive mass")
    out = (plan.double() @ yf) / rows
    return out.reshape(plan.shape[0], *y.shape[1:]).to(y.dtype)


def plan_entropy(plan: torch.Tensor) -> torch.Tensor:
    """H(P) = -sum_ij P_ij log P_ij (0 log 0 = 0), the entropy in the bound <P_eps, C> - W_2^2 <= eps (H(a) + H(b) - H(P*)) (monograph §7.3)."""
    if not torch.is_tensor(plan) or plan.ndim != 2:
        raise ValueError("plan: expected an (n, m) tensor")
    p = plan.double()
    return -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))).sum()
