"""The exact flow map Psi_{s->t} of the Gaussian-mixture oracle (monograph §11.1): semigroup, closed form, errors."""
import math

import pytest
import torch

from diffedu import schedules as S, toy

SCHEDULES = [S.VPLinear(), S.RectifiedFlow(), S.VEGeometric(sigma_max=10.0)]


def _points(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return toy.eight_gaussians().sample(n, g, dtype=torch.float64), g


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_semigroup_holds_and_a_perturbed_map_breaks_it(sch):
    mix = toy.eight_gaussians()
    x, g = _points()
    t, u, r = 0.9, 0.5, 0.1
    xt = x + torch.randn(x.shape, generator=g, dtype=torch.float64)  # every point at time t is on a trajectory
    direct = toy.flow_map(mix, sch, xt, t, r)
    two = toy.flow_map(mix, sch, toy.flow_map(mix, sch, xt, t, u), u, r)
    torch.testing.assert_close(two, direct, rtol=0, atol=1e-7)
    # a map that is off by 1 % of the jump violates the semigroup far above the solver tolerance
    bad = lambda z, a, b: toy.flow_map(mix, sch, z, a, b) * 1.01  # noqa: E731
    assert (bad(bad(xt, t, u), u, r) - bad(xt, t, r)).abs().max() > 1e-3
    # and the flow inverts: Psi_{r->t} o Psi_{t->r} = id
    torch.testing.assert_close(toy.flow_map(mix, sch, direct, r, t), xt, rtol=0, atol=1e-7)


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_gaussian_data_has_the_affine_closed_form_flow_map(sch):
    # x0 ~ N(mu, Sigma): p_t = N(alpha_t mu, C(t)), C(t) = alpha_t^2 Sigma + sigma_t^2 I, and the PF-ODE map is
    # Psi_{s->t}(x) = alpha_t mu + C(t)^{1/2} C(s)^{-1/2} (x - alpha_s mu) (C(s), C(t) share Sigma's eigenvectors)
    A = torch.tensor([[1.0, 0.4], [0.0, 0.5]], dtype=torch.float64)
    mu, cov = torch.tensor([1.0, -2.0], dtype=torch.float64), A @ A.T
    mix = toy.gaussian(mu, cov)
    lam, Q = torch.linalg.eigh(cov)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 2, generator=g, dtype=torch.float64) * 2
    s = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    out = toy.flow_map(mix, sch, x, s, t)
    a_s, sg_s, a_t, sg_t = sch.alpha(s), sch.sigma(s), sch.alpha(t), sch.sigma(t)
    ratio = ((a_t[:, None] ** 2 * lam + sg_t[:, None] ** 2) / (a_s[:, None] ** 2 * lam + sg_s[:, None] ** 2)).sqrt()
    z = (x - a_s[:, None] * mu) @ Q
    expect = a_t[:, None] * mu + (ratio * z) @ Q.T
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-8 * max(1.0, float(expect.abs().max())))


@pytest.mark.parametrize("sch", [S.VPLinear(), S.RectifiedFlow()], ids=lambda s: type(s).__name__)
def test_the_map_runs_over_the_whole_interval(sch):
    # VP's sigma'_0 and RF's alpha_1 = 0 make one of the two velocity formulas 0 * inf at an end point
    mix = toy.eight_gaussians()
    x, _ = _points(8)
    z = toy.flow_map(mix, sch, x, 0.0, 1.0)
    torch.testing.assert_close(toy.consistency_function(mix, sch, z, 1.0), x, rtol=0, atol=1e-6)


def test_consistency_function_and_average_velocity():
    mix, sch = toy.eight_gaussians(), S.RectifiedFlow()
    x, g = _points(8)
    t = torch.full((8,), 0.7, dtype=torch.float64)
    xt = toy.flow_map(mix, sch, x, 0.0, t)
    torch.testing.assert_close(toy.consistency_function(mix, sch, xt, t), x, rtol=0, atol=1e-7)
    torch.testing.assert_close(toy.consistency_function(mix, sch, x, 0.0), x, rtol=0, atol=0)  # f(x, 0) = x
    r = torch.tensor([0.2] * 4 + [0.7] * 4, dtype=torch.float64)  # half of the pairs have r = t
    u = toy.average_velocity(mix, sch, xt, r, t)
    torch.testing.assert_close(xt - (t - r)[:, None] * u, toy.flow_map(mix, sch, xt, t, r), rtol=0, atol=1e-9)
    torch.testing.assert_close(u[4:], mix.velocity_t(xt[4:], t[4:], sch), rtol=0, atol=0)
    # r -> t: the average velocity tends to the instantaneous one, with an O(t - r) gap
    gaps = [(toy.average_velocity(mix, sch, xt, t - h, t) - mix.velocity_t(xt, t, sch)).abs().max() for h in (1e-2, 1e-3)]
    assert 5 < gaps[0] / gaps[1] < 20


def test_shape_dtype_and_device_are_kept_and_images_work():
    mix = toy.GaussianMixture(torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), stds=0.3)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    out = toy.flow_map(mix, S.VPLinear(), x, 0.8, 0.3)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device == x.device
    flat = toy.flow_map(mix, S.VPLinear(), x.double().reshape(5, 4), 0.8, 0.3)
    torch.testing.assert_close(out.double().reshape(5, 4), flat, rtol=1e-6, atol=1e-6)
    assert torch.equal(toy.flow_map(mix, S.VPLinear(), x, 0.4, 0.4), x)


def test_bad_inputs_name_the_argument():
    mix, sch = toy.eight_gaussians(), S.VPLinear()
    x = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="^mixture:"):
        toy.flow_map("not a mixture", sch, x, 0.1, 0.5)
    with pytest.raises(TypeError, match="^schedule:"):
        toy.flow_map(mix, None, x, 0.1, 0.5)
    with pytest.raises(ValueError, match="^x:"):
        toy.flow_map(mix, sch, torch.zeros(4, 3), 0.1, 0.5)
    with pytest.raises(ValueError, match="^t:"):
        toy.flow_map(mix, sch, x, 0.1, 1.5)
    with pytest.raises(ValueError, match="^s:"):
        toy.flow_map(mix, sch, x, torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="^rtol:"):
        toy.flow_map(mix, sch, x, 0.1, 0.5, rtol=-1.0)
    with pytest.raises(ValueError, match="^r:"):
        toy.average_velocity(mix, sch, x, math.nan, 0.5)
