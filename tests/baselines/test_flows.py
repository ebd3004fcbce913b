"""Coupling-layer flows and continuous normalising flows (monograph §5.1-5.2)."""
import math

import pytest
import torch
from torch import nn

from diffedu.baselines.flows import AffineCoupling, CouplingFlow, cnf_log_prob, cnf_sample
from diffedu.gaussian import gaussian_prior_log_prob


def _random_flow(dim=2, seed=0):
    torch.manual_seed(seed)
    flow = CouplingFlow(dim, num_layers=4, hidden=16).double()
    with torch.no_grad():
        for layer in flow.layers:  # leave the identity initialisation
            layer.net[-1].weight.normal_(0, 0.5)
            layer.net[-1].bias.normal_(0, 0.5)
    return flow


def test_coupling_flow_is_invertible_with_exact_log_det():
    flow = _random_flow(3)
    x = torch.randn(6, 3, dtype=torch.float64)
    z, logdet = flow(x)
    torch.testing.assert_close(flow.inverse(z), x)
    for i in range(len(x)):
        J = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(J)[1])


def test_coupling_flow_density_integrates_to_one():
    flow = _random_flow(2)
    xs = torch.linspace(-10, 10, 401, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, xs, indexing="ij")
    with torch.no_grad():
        p = flow.log_prob(torch.stack([X.ravel(), Y.ravel()], -1)).exp()
    mass = p.sum() * (xs[1] - xs[0]) ** 2
    assert abs(mass.item() - 1) < 1e-3


def test_identity_initialisation():
    flow = CouplingFlow(2)
    x = torch.randn(4, 2)
    z, logdet = flow(x)
    torch.testing.assert_close(z, x)
    assert (logdet == 0).all()


class _Linear(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, x, t):
        return x @ self.A.T


def test_cnf_log_prob_of_linear_flow_is_closed_form():
    # dx/dt = A x from t = 0 to 1: z = expm(A) x, log p(x) = log N(z; 0, I) + tr A
    g = torch.Generator().manual_seed(1)
    A = 0.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    net = _Linear(A.clone())
    res = cnf_log_prob(net, x, n_steps=20)
    z = x @ torch.linalg.matrix_exp(A).T
    torch.testing.assert_close(res.z, z, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(res.log_prob, gaussian_prior_log_prob(z) + torch.trace(A), rtol=1e-7, atol=1e-8)
    assert res.nfe == 80
    # differentiable: the gradient of the mean log-likelihood reaches the parameters
    res.log_prob.mean().backward()
    assert net.A.grad is not None and torch.isfinite(net.A.grad).all() and net.A.grad.abs().sum() > 0
    # sampling inverts the flow
    torch.testing.assert_close(cnf_sample(net, z, n_steps=20), x, rtol=1e-7, atol=1e-8)


def test_cnf_hutchinson_is_unbiased_on_linear_flow():
    g = torch.Generator().manual_seed(2)
    A = 0.5 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.zeros(4000, 4, dtype=torch.float64)
    with torch.no_grad():
        res = cnf_log_prob(_Linear(A), x, n_steps=4, divergence="hutchinson", generator=g)
    exact = gaussian_prior_log_prob(x[:1]) + torch.trace(A)
    est = res.log_prob
    assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(len(est))
    assert est.std() > 1e-3


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="dim"):
        CouplingFlow(1)
    with pytest.raises(ValueError, match="x"):
        CouplingFlow(2)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="divergence"):
        cnf_log_prob(_Linear(torch.eye(2)), torch.zeros(2, 2), divergence="trace")
    with pytest.raises(ValueError, match="mask"):
        AffineCoupling(torch.tensor([0.5, 1.0]))
