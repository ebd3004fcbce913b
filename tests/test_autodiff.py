"""diffedu.autodiff: the exact trace and Hutchinson's estimator against closed forms (monograph §3.2, §4.5)."""
import math

import pytest
import torch

from diffedu.autodiff import hutchinson_trace, jacobian_trace, quadratic_form, random_probe


def test_exact_divergence_of_linear_field_is_trace():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    v, div = jacobian_trace(lambda z: z @ A.T, x)
    torch.testing.assert_close(div, torch.full((7,), float(torch.trace(A)), dtype=torch.float64))
    torch.testing.assert_close(v, x @ A.T)


def test_hutchinson_is_unbiased():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    x = torch.randn(20000, 6, generator=g, dtype=torch.float64)
    z = torch.randint(0, 2, x.shape, generator=g).double() * 2 - 1
    _, est = hutchinson_trace(lambda y: y @ A.T, x, probe=z)
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean() - torch.trace(A)) < 4 * se + 1e-12
    assert est.std() > 0.1  # a genuine estimate, not the exact trace


def test_exact_and_hutchinson_trace_of_a_linear_map():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    fn = lambda x: x @ A.T + 1.0  # noqa: E731
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    out, tr = jacobian_trace(fn, x)
    assert torch.allclose(tr, torch.diagonal(A).sum().expand(4))
    assert torch.allclose(out, fn(x))
    _, est = hutchinson_trace(fn, x, n_probes=4000, generator=g)
    # Rademacher variance per probe: sum_{i != j} A_ij (A_ij + A_ji) ... bounded by 2 ||A||_F^2
    assert (est - torch.diagonal(A).sum()).abs().max() < 4 * math.sqrt(2 * (A**2).sum() / 4000)
    _, est_g = hutchinson_trace(fn, x, n_probes=4000, kind="gaussian", generator=g)
    assert (est_g - torch.diagonal(A).sum()).abs().max() < 4 * math.sqrt(2 * (A**2).sum() / 4000)


def test_quadratic_form_is_zt_a_z_and_probes_have_identity_covariance():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    q = quadratic_form(x @ A.T, x, z)
    torch.testing.assert_close(q, torch.einsum("bi,ij,bj->b", z, A, z))
    for kind in ("rademacher", "gaussian"):
        p = random_probe(torch.zeros(40000, 3, dtype=torch.float64), kind, torch.Generator().manual_seed(1))
        cov = p.T @ p / len(p)
        assert (cov - torch.eye(3, dtype=torch.float64)).abs().max() < 0.05, (kind, cov)
    assert set(random_probe(torch.zeros(100, 3), "rademacher").unique().tolist()) == {-1.0, 1.0}


def test_create_graph_lets_the_trace_be_differentiated():
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    _, tr = jacobian_trace(lambda y: w * y**2, x, create_graph=True)   # tr = 2 w sum(x)
    (g,) = torch.autograd.grad(tr.sum(), w)
    torch.testing.assert_close(g, 2 * x.sum())
    _, tr_h = hutchinson_trace(lambda y: w * y**2, x, probe=torch.ones_like(x), create_graph=True)
    (gh,) = torch.autograd.grad(tr_h.sum(), w)
    torch.testing.assert_close(gh, 2 * x.sum())


def test_bad_inputs_name_the_argument():
    x = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="fn"):
        jacobian_trace("not a function", x)
    with pytest.raises(ValueError, match="fn\\(x\\)"):
        jacobian_trace(lambda y: y[:, :1], x)
    with pytest.raises(ValueError, match="n_probes"):
        hutchinson_trace(lambda y: y, x, n_probes=0)
    with pytest.raises(ValueError, match="kind"):
        random_probe(x, "uniform")
    with pytest.raises(ValueError, match="probe"):
        quadratic_form(x.requires_grad_(True) * 2, x, torch.zeros(3, 3))
