"""Denoising losses: Bayes error in closed form, and the same scheme in any parameterisation."""
import pytest
import torch

from diffedu import param, schedules as S
from diffedu.objectives.denoising import denoising_loss, loss_weight
from diffedu.param import Denoiser
from diffedu.toy import gaussian


class _OracleNet(torch.nn.Module):
    """Returns the oracle prediction in a chosen parameterisation (optionally perturbed)."""

    def __init__(self, gm, sch, kind, bias=0.0):
        super().__init__()
        self.gm, self.sch, self.kind, self.bias = gm, sch, kind, bias

    def forward(self, x, t, cond=None):
        return self.gm.predict(x, t, self.sch).as_kind(self.kind) + self.bias


def test_eps_loss_of_exact_model_is_the_bayes_error():
    # data N(0, s0^2 I): Var(eps | x_t) = alpha^2 s0^2 / (alpha^2 s0^2 + sigma^2) per dimension
    s0, D = 0.7, 3
    gm, sch = gaussian(torch.zeros(D), s0**2 * torch.eye(D)), S.VPCosine()
    model = Denoiser(_OracleNet(gm, sch, "eps"), sch, "eps")
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = gm.sample(n, g, dtype=torch.float64)
    t = torch.full((n,), 0.4, dtype=torch.float64)
    loss = denoising_loss(model, x0, t=t, generator=g)
    a, s = sch.alpha(t[0]), sch.sigma(t[0])
    expect = a**2 * s0**2 / (a**2 * s0**2 + s**2)
    assert loss.shape == (n,)
    assert loss.mean().item() == pytest.approx(expect.item(), rel=0.01)
    # any other predictor is worse (the conditional expectation minimises the MSE)
    worse = denoising_loss(Denoiser(_OracleNet(gm, sch, "eps", bias=0.1), sch, "eps"), x0, t=t, generator=g)
    assert worse.mean() > loss.mean()


@pytest.mark.parametrize("kind", ["x0", "score", "v", "velocity"])
@pytest.mark.parametrize("weighting", ["eps", "x0", "min_snr", "elbo"])
def test_same_scheme_same_loss_in_any_parameterisation(kind, weighting):
    # a model that is wrong in a fixed way (eps off by a bias) gives the same weighted loss
    # whether it reports eps or any other kind, once the weight is expressed for that kind.
    gm, sch = gaussian(torch.zeros(2), torch.eye(2)), S.VPLinear()
    g = torch.Generator().manual_seed(1)
    x0 = gm.sample(64, g, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 64, dtype=torch.float64)
    eps = torch.randn(64, 2, generator=g, dtype=torch.float64)

    class Wrong(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x, t_, cond=None):
            p = gm.predict(x, t_, sch)
            return param.convert(p.eps + 0.3, "eps", self.k, x, t_, sch)

    ref = denoising_loss(Denoiser(Wrong("eps"), sch, "eps"), x0, t=t, eps=eps, weighting=weighting)
    got = denoising_loss(Denoiser(Wrong(kind), sch, kind), x0, t=t, eps=eps, weighting=weighting)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


def test_elbo_weight_is_half_minus_dlambda_dt():
    sch = S.VPLinear()
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    fd = -(sch.log_snr(t + h) - sch.log_snr(t - h)) / (2 * h) / 2
    torch.testing.assert_close(loss_weight("elbo", t, sch, "eps"), fd, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss_weight(lambda u: u**2, t, sch), t**2)


def test_flow_matching_is_velocity_regression():
    # on rectified flow the velocity target is eps - x0 (monograph §5.3): a zero network scores ||eps - x0||^2 / D
    class Zero(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return torch.zeros_like(x)

    model = Denoiser(Zero(), S.RectifiedFlow(), "velocity")
    x0, eps = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    loss = denoising_loss(model, x0, t=torch.rand(16, dtype=torch.float64), eps=eps)
    torch.testing.assert_close(loss, ((eps - x0) ** 2).mean(1))
