"""Gaussian closed forms: Bures-W2, the OT map, entropic OT, the Schrödinger bridge (monograph §7.2-§7.3)."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from diffedu import transport as T

pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(d, d, generator=g, dtype=torch.float64)
    return scale * (Q @ Q.T / d + 0.3 * torch.eye(d, dtype=torch.float64))


def _pair(d, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    return (torch.randn(d, generator=g, dtype=torch.float64), _spd(d, seed),
            torch.randn(d, generator=g, dtype=torch.float64), _spd(d, seed + 50, 0.5))


@pytest.mark.parametrize("d", [1, 2, 5])
def test_ot_map_pushes_forward_and_is_symmetric_positive(d):
    m0, A, m1, B = _pair(d, d)
    Tm = T.gaussian_ot_map(m0, A, m1, B)
    M = Tm.matrix
    assert torch.allclose(M, M.T) and torch.linalg.eigvalsh(M).min() > 0  # gradient of a convex function
    assert torch.allclose(M @ A @ M, B, atol=1e-10)
    assert torch.allclose(Tm(m0[None]), m1[None])
    # W2^2 = E||x - T x||^2 under x ~ N(m0, A)
    cost = (m0 - m1).pow(2).sum() + torch.trace((torch.eye(d, dtype=torch.float64) - M) @ A @ (torch.eye(d, dtype=torch.float64) - M))
    assert torch.allclose(cost, T.gaussian_w2_sq(m0, A, m1, B), atol=1e-10)


def test_bures_special_cases():
    A = _spd(3, 1)
    assert float(T.bures_sq(A, A)) < 1e-10
    # commuting case: sum (sqrt a - sqrt b)^2
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 1.0], dtype=torch.float64)
    assert math.isclose(float(T.bures_sq(torch.diag(a), torch.diag(b))), float((a.sqrt() - b.sqrt()).pow(2).sum()), rel_tol=1e-12)


def test_sampled_w2_converges_to_bures_w2():
    m0, A, m1, B = _pair(2, 3)
    exact = float(T.gaussian_w2_sq(m0, A, m1, B))
    L0, L1 = torch.linalg.cholesky(A), torch.linalg.cholesky(B)
    errs = []
    for n in (100, 300, 900):
        vals = []
        for rep in range(3):
            g = torch.Generator().manual_seed(1000 * n + rep)
            x = m0 + torch.randn(n, 2, generator=g, dtype=torch.float64) @ L0.T
            y = m1 + torch.randn(n, 2, generator=g, dtype=torch.float64) @ L1.T
            vals.append(float(T.exact_ot(x, y).cost))
        errs.append(abs(np.mean(vals) - exact))
    assert errs[-1] < 0.05 * exact and errs[-1] < errs[0], (errs, exact)


@pytest.mark.parametrize("d, eps", [(1, 0.5), (2, 1.0), (3, 0.2)])
def test_entropic_closed_form_is_consistent(d, eps):
    m0, A, m1, B = _pair(d, d + 7)
    plan = T.gaussian_entropic_plan(m0, A, m1, B, eps)
    cost = T.gaussian_entropic_cost(m0, A, m1, B, eps)
    # Janati's value = transport + eps * mutual information of the plan (computed independently)
    assert torch.allclose(cost.mutual_information, plan.mutual_information, atol=1e-10)
    # stationarity of E||x - y||^2 + eps MI over the cross-covariance: C s^2 = A (B - C^T A^{-1} C)
    s2 = eps / 2
    C = plan.cross
    assert torch.allclose(s2 * C, A @ (B - C.T @ torch.linalg.solve(A, C)), atol=1e-10)
    # the joint is a valid covariance
    assert torch.linalg.eigvalsh(plan.cov).min() > 0
    # eps -> 0: the OT plan (cross = A M) and its cost W2^2; eps -> inf: independence
    M = T.gaussian_ot_map(m0, A, m1, B).matrix
    assert torch.allclose(T.gaussian_entropic_plan(m0, A, m1, B, 0.0).cross, A @ M, atol=1e-10)
    assert abs(float(T.gaussian_entropic_plan(m0, A, m1, B, 1e-6).transport_cost - T.gaussian_w2_sq(m0, A, m1, B))) < 1e-5
    assert T.gaussian_entropic_plan(m0, A, m1, B, 1e6).cross.abs().max() < 1e-4


def test_entropic_closed_form_equals_pot_on_large_samples():
    m0, A, m1, B = _pair(2, 11)
    eps, n = 1.0, 1500
    plan = T.gaussian_entropic_plan(m0, A, m1, B, eps)
    L0, L1 = torch.linalg.cholesky(A), torch.linalg.cholesky(B)
    costs, crosses = [], []
    for rep in range(3):
        g = torch.Generator().manual_seed(rep)
        x = m0 + torch.randn(n, 2, generator=g, dtype=torch.float64) @ L0.T
        y = m1 + torch.randn(n, 2, generator=g, dtype=torch.float64) @ L1.T
        res = T.entropic_ot(x, y, eps)
        costs.append(float(res.cost))
        xc, yc = x - x.mean(0), y - y.mean(0)
        crosses.append((xc.T @ res.plan @ yc).numpy())
    se = np.std(costs) / math.sqrt(len(costs)) + 0.02  # MC error bar (+ the O(1/n) entropic bias)
    assert abs(np.mean(costs) - float(plan.transport_cost)) < 4 * se, (np.mean(costs), float(plan.transport_cost))
    assert np.abs(np.mean(crosses, 0) - plan.cross.numpy()).max() < 0.08


def test_sb_marginals_interpolate_and_reduce_to_mccann():
    m0, A, m1, B = _pair(2, 13)
    mean, cov = T.gaussian_sb_marginal(m0, A, m1, B, 0.7, 0.0)
    assert torch.allclose(mean, m0) and torch.allclose(cov, A)
    mean, cov = T.gaussian_sb_marginal(m0, A, m1, B, 0.7, 1.0)
    assert torch.allclose(mean, m1) and torch.allclose(cov, B)
    M = T.gaussian_ot_map(m0, A, m1, B).matrix
    I = torch.eye(2, dtype=torch.float64)
    for t in (0.25, 0.6):
        _, cov0 = T.gaussian_sb_marginal(m0, A, m1, B, 0.0, t)
        K = (1 - t) * I + t * M
        assert torch.allclose(cov0, K @ A @ K, atol=1e-10)  # the W2 geodesic (displacement interpolation)
        _, covs = T.gaussian_sb_marginal(m0, A, m1, B, 0.7, t)
        assert torch.linalg.eigvalsh(covs - cov0).min() > 0  # the bridge is more spread out


def test_full_gaussian_kl():
    m0, A, m1, B = _pair(3, 17)
    assert abs(float(T.full_gaussian_kl(m0, A, m0, A))) < 1e-12
    g = torch.Generator().manual_seed(0)
    L = torch.linalg.cholesky(A)
    x = m0 + torch.randn(200000, 3, generator=g, dtype=torch.float64) @ L.T
    def logp(x, m, S):
        d = x - m
        return -0.5 * (d @ torch.linalg.inv(S) * d).sum(1) - 0.5 * torch.linalg.slogdet(2 * math.pi * S)[1]
    mc = (logp(x, m0, A) - logp(x, m1, B)).mean()
    assert abs(float(mc - T.full_gaussian_kl(m0, A, m1, B))) < 0.05


@pytest.mark.parametrize("call, words", [
    (lambda: T.gaussian_w2_sq(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)), "cov0: expected a \\(2, 2\\)"),
    (lambda: T.gaussian_w2_sq(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3)), "m1: expected dimension 2"),
    (lambda: T.gaussian_ot_map(torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2)), "cov0: expected a positive-definite"),
    (lambda: T.gaussian_ot_map(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.tensor([[1.0, 2.0], [0.0, 1.0]])), "cov1: expected a finite symmetric"),
    (lambda: T.gaussian_entropic_plan(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(2), -1.0), "eps"),
    (lambda: T.gaussian_entropic_cost(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(2), 0.0), "eps"),
    (lambda: T.gaussian_sb_marginal(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(2), 1.0, 1.5), "t: must lie"),
    (lambda: T.gaussian_sb_marginal(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(2), -1.0, 0.5), "sigma"),
    (lambda: T.gaussian_w2_sq(torch.zeros(2, 1), torch.eye(2), torch.zeros(2), torch.eye(2)), "m0: expected a mean vector"),
])
def test_bad_inputs_name_the_argument(call, words):
    with pytest.raises((ValueError, TypeError), match=words):
        call()
