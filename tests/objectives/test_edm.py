"""EDM preconditioning, weight and time distribution (Karras et al. 2022; monograph appendix D.6)."""
import math

import pytest
import torch
from torch import nn

from diffedu import schedules as S, toy
from diffedu.objectives.edm import EDMDenoiser, edm_preconditioning, edm_time_density, edm_time_sampler, edm_weight
from diffedu.objectives.denoising import denoising_loss

SD = 0.5


def test_preconditioning_gives_unit_variance_input_and_target():
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c = edm_preconditioning(sigma, SD)
    # x = x0 + sigma n with Var x0 = sd^2: Var(c_in x) = 1
    torch.testing.assert_close(c.c_in**2 * (SD**2 + sigma**2), torch.ones_like(sigma))
    # effective target (x0 - c_skip x) / c_out has unit variance
    var_target = ((1 - c.c_skip) ** 2 * SD**2 + c.c_skip**2 * sigma**2) / c.c_out**2
    torch.testing.assert_close(var_target, torch.ones_like(sigma))
    torch.testing.assert_close(c.c_noise, torch.log(sigma) / 4)


class _Zero(nn.Module):
    def forward(self, x, t, cond=None):
        return torch.zeros_like(x)


@pytest.mark.parametrize("sch", [S.EDM(sigma_data=SD), S.VPLinear(), S.RectifiedFlow()], ids=lambda s: type(s).__name__)
def test_zero_net_is_the_exact_denoiser_of_gaussian_data(sch):
    # for x0 ~ N(0, sd^2 I) the Bayes denoiser is c_skip x_bar: F* = 0
    gauss = toy.gaussian(torch.zeros(2), SD**2 * torch.eye(2))
    model = EDMDenoiser(_Zero(), sch, sigma_data=SD)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, generator=g, dtype=torch.float64) * 2
    t = torch.rand(10, generator=g, dtype=torch.float64) * 0.9 + 0.05
    torch.testing.assert_close(model(x, t).x0, gauss.posterior_mean(x, t, sch))
    torch.testing.assert_close(model(x, t).eps, gauss.eps_t(x, t, sch))
    # a wrong sigma_data is not exact
    wrong = EDMDenoiser(_Zero(), sch, sigma_data=1.0)
    assert (wrong(x, t).x0 - gauss.posterior_mean(x, t, sch)).abs().max() > 1e-3


def test_weight_times_c_out_squared_is_one():
    sch = S.EDM()
    t = torch.linspace(0.01, 1, 20, dtype=torch.float64)
    c = edm_preconditioning(sch.sigma_bar(t), SD)
    torch.testing.assert_close(edm_weight(sch, SD)(t) * c.c_out**2, torch.ones_like(t))


def test_time_sampler_is_log_normal_in_sigma():
    sch = S.EDM(sigma_max=80.0)
    t = edm_time_sampler(sch)(40000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    log_s = torch.log(sch.sigma_bar(t))
    assert abs(log_s.mean() + 1.2) < 0.03 and abs(log_s.std() - 1.2) < 0.03


@pytest.mark.parametrize("sch", [S.EDM(), S.VPLinear(), S.RectifiedFlow()], ids=lambda s: type(s).__name__)
def test_time_density_matches_sampler(sch):
    t = edm_time_sampler(sch)(40000, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    edges = torch.linspace(1e-4, 0.6, 13, dtype=torch.float64)
    for a, b in zip(edges[:-1], edges[1:]):
        tt = torch.linspace(float(a), float(b), 201, dtype=torch.float64)
        mass = torch.trapezoid(edm_time_density(tt, sch), tt)
        frac = ((t >= a) & (t < b)).double().mean()
        assert abs(frac - mass) < 4 * math.sqrt(max(mass, 1e-4) / 40000) + 2e-3


def test_edm_loss_runs_through_denoising_loss():
    sch = S.EDM()
    model = EDMDenoiser(_Zero(), sch)
    x0 = torch.randn(16, 1, 4, 4)
    loss = denoising_loss(model, x0, weighting=edm_weight(sch), time_sampler=edm_time_sampler(sch),
                          generator=torch.Generator().manual_seed(0))
    assert loss.shape == (16,) and torch.isfinite(loss).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="sigma_data"):
        edm_preconditioning(torch.ones(2), -1.0)
    with pytest.raises(ValueError, match="sigma"):
        edm_preconditioning(-torch.ones(2))
    with pytest.raises(TypeError, match="schedule"):
        edm_time_sampler("edm")
