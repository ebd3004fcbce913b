"""Exact and entropic OT between samples; Sinkhorn (ours) against POT (monograph §7.2-§7.3)."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from diffedu import transport as T

pytestmark = pytest.mark.usefixtures("one_thread")


def _clouds(n=40, m=None, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 0.7 * torch.randn(m or n, d, generator=g, dtype=torch.float64) + torch.tensor([1.0] + [0.0] * (d - 1), dtype=torch.float64)
    return x, y


def test_cost_matrix_is_squared_distance_and_flattens_images():
    x, y = _clouds(5, 7, d=4)
    C = T.cost_matrix(x, y)
    assert C.shape == (5, 7) and torch.allclose(C, torch.cdist(x, y).pow(2), atol=1e-12)
    assert torch.allclose(T.cost_matrix(x.reshape(5, 1, 2, 2), y.reshape(7, 1, 2, 2)), C)


@pytest.mark.parametrize("n, m", [(30, 30), (20, 35)])
def test_exact_ot_matches_pot_and_has_the_marginals(n, m):
    x, y = _clouds(n, m, seed=1)
    g = torch.Generator().manual_seed(2)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    a = a / a.sum()
    res = T.exact_ot(x, y, a=a)
    assert math.isclose(float(res.cost), ot.emd2(a.numpy(), np.full(m, 1 / m), T.cost_matrix(x, y).numpy()), rel_tol=1e-12)
    assert torch.allclose(res.plan.sum(1), a, atol=1e-12) and torch.allclose(res.plan.sum(0), torch.full((m,), 1 / m, dtype=torch.float64), atol=1e-12)


def test_exact_plan_between_equal_uniform_samples_is_a_permutation_and_its_map_too():
    x, y = _clouds(25, seed=3)
    res = T.exact_ot(x, y)
    assert torch.allclose(torch.sort(res.plan.reshape(-1), descending=True).values[:25], torch.full((25,), 1 / 25, dtype=torch.float64))
    Tx = T.barycentric_map(res.plan, y)
    perm = res.plan.argmax(1)
    assert torch.allclose(Tx, y[perm], atol=1e-12)
    # the same optimum as the package's Hungarian coupling
    _, y_perm = T.ot_pairs(x, y)
    assert torch.allclose(y_perm, y[perm])


@pytest.mark.parametrize("eps", [1.0, 0.3, 0.1])
def test_our_sinkhorn_equals_pot_to_1e8(eps):
    x, y = _clouds(30, 40, seed=4)
    C = T.cost_matrix(x, y)
    a, b = T.uniform_weights(30), T.uniform_weights(40)
    ours = T.sinkhorn_log(a, b, C, eps, tol=1e-13, max_iter=50_000)
    P = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), eps, method="sinkhorn_log", stopThr=1e-14, numItermax=200_000)
    cost = ot.sinkhorn2(a.numpy(), b.numpy(), C.numpy(), eps, method="sinkhorn_log", stopThr=1e-14, numItermax=200_000)
    assert ours.converged
    assert np.abs(ours.plan.numpy() - P).max() < 1e-8
    assert abs(float(ours.cost) - float(cost)) < 1e-8
    # and the package's POT wrapper agrees too
    assert torch.allclose(T.entropic_ot(x, y, eps, tol=1e-13).plan, ours.plan, atol=1e-8)


def test_sinkhorn_diagnostics_dual_rises_to_the_primal_and_errors_fall():
    x, y = _clouds(30, seed=5)
    res = T.sinkhorn_log(T.uniform_weights(30), T.uniform_weights(30), T.cost_matrix(x, y), 0.2, tol=1e-12)
    assert res.converged and res.marginal_errors[-1] < 1e-12 and res.n_iter == len(res.marginal_errors)
    assert torch.all(res.dual[1:] >= res.dual[:-1] - 1e-12)  # block-coordinate ascent never goes down
    assert abs(float(res.dual[-1] - res.objective)) < 1e-9  # strong duality at convergence
    assert float(res.marginal_errors[-1]) < float(res.marginal_errors[0])
    short = T.sinkhorn_log(T.uniform_weights(30), T.uniform_weights(30), T.cost_matrix(x, y), 0.01, max_iter=3)
    assert not short.converged and short.n_iter == 3


def test_entropic_cost_falls_to_the_exact_cost_at_the_proven_rate():
    x, y = _clouds(30, seed=6)
    C = T.cost_matrix(x, y)
    a = T.uniform_weights(30)
    w2 = float(T.exact_ot(x, y).cost)
    gaps = []
    for eps in (2.0, 1.0, 0.5, 0.25, 0.1):
        res = T.sinkhorn_log(a, a, C, eps, tol=1e-11, max_iter=50_000)
        gap = float(res.cost) - w2
        # 0 <= <P_eps, C> - W2^2 <= eps (H(a) + H(b) - H(P*)) = eps log n for a permutation P*
        assert -1e-10 <= gap <= eps * math.log(30) + 1e-10
        gaps.append(gap)
    assert all(g1 > g2 for g1, g2 in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.1 * gaps[0]


def test_barycentric_map_of_an_independent_plan_is_the_mean():
    x, y = _clouds(6, 9, seed=7)
    plan = torch.full((6, 9), 1 / 54, dtype=torch.float64)
    assert torch.allclose(T.barycentric_map(plan, y), y.mean(0).expand(6, 2))
    assert math.isclose(float(T.plan_entropy(plan)), math.log(54), rel_tol=1e-12)


@pytest.mark.parametrize("call, words", [
    (lambda x, y: T.exact_ot(x, y[:, :1]), "y: expected samples of the same dimension"),
    (lambda x, y: T.exact_ot(x, y, a=torch.ones(len(x), dtype=torch.float64)), "a: weights must be positive and sum to 1"),
    (lambda x, y: T.exact_ot(x, y, b=torch.ones(3)), "b: expected a tensor of"),
    (lambda x, y: T.entropic_ot(x, y, 0.0), "eps"),
    (lambda x, y: T.sinkhorn_log(T.uniform_weights(len(x)), T.uniform_weights(len(y)), T.cost_matrix(x, y)[0], 1.0), "C: expected"),
    (lambda x, y: T.sinkhorn_log(T.uniform_weights(len(x)), T.uniform_weights(len(y)), T.cost_matrix(x, y), -1.0), "eps"),
    (lambda x, y: T.sinkhorn_log(T.uniform_weights(len(x)), T.uniform_weights(len(y)), T.cost_matrix(x, y), 1.0, max_iter=0), "max_iter"),
    (lambda x, y: T.barycentric_map(torch.ones(len(x), len(y) + 1), y), "y: expected"),
    (lambda x, y: T.exact_ot(x[0], y), "x: expected shape"),
])
def test_bad_inputs_name_the_argument(call, words):
    x, y = _clouds(5, 6)
    with pytest.raises((ValueError, TypeError), match=words):
        call(x, y)


def test_entropic_ot_small_eps_uses_the_log_domain_without_warnings(recwarn):
    x, y = _clouds(20, seed=8)
    C = T.cost_matrix(2 * x, 2 * y)
    eps = float(C.max()) / 250  # C.max() / eps > 200: the log domain
    res = T.entropic_ot(2 * x, 2 * y, eps, tol=1e-6, max_iter=3000)
    assert torch.allclose(res.plan.sum(1), T.uniform_weights(20), atol=1e-4)
    assert torch.isfinite(res.plan).all() and not [w for w in recwarn if "Sinkhorn" in str(w.message)]
