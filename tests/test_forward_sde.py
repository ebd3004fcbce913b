"""Forward process and SDE coefficients: moments, Euler-Maruyama marginals, f and g^2 in closed form."""
import pytest
import torch

from diffedu import schedules as S, sde
from diffedu.forward import add_noise, ot_coupling, sample_times
from diffedu.metrics import sliced_wasserstein
from diffedu.toy import eight_gaussians


def test_add_noise_moments():
    sch = S.VPCosine()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((100_000, 2), 1.5, dtype=torch.float64)
    out = add_noise(sch, x0, 0.3, generator=g)
    a, s = sch.alpha(torch.tensor(0.3, dtype=torch.float64)), sch.sigma(torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(out.x_t.mean(0), (a * 1.5).expand(2), atol=4 * s.item() / 300, rtol=0)
    torch.testing.assert_close(out.x_t.std(0), s.expand(2), atol=0.01, rtol=0)
    torch.testing.assert_close(out.x_t, a * out.x0 + s * out.eps)
    assert out.t.shape == (100_000,)


def test_add_noise_shapes_and_given_eps():
    for shape in [(4, 2), (4, 1, 8, 8), (4, 3, 16, 16)]:
        x0, eps = torch.randn(shape), torch.randn(shape)
        t = torch.rand(4)
        out = add_noise(S.RectifiedFlow(), x0, t, eps=eps)
        expect = (1 - t).reshape(4, *[1] * (len(shape) - 1)) * x0 + t.reshape(4, *[1] * (len(shape) - 1)) * eps
        torch.testing.assert_close(out.x_t, expect)


@pytest.mark.parametrize("kind", ["uniform", "stratified", "logit_normal"])
def test_sample_times(kind):
    t = sample_times(4096, kind=kind, t_min=0.01, t_max=0.9, generator=torch.Generator().manual_seed(0))
    assert t.shape == (4096,) and t.min() >= 0.01 and t.max() <= 0.9
    if kind == "stratified":
        counts = torch.histc(t, bins=8, min=0.01, max=0.9)
        assert (counts - 512).abs().max() <= 1


def test_sde_coefficients_closed_forms():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    vp = S.VPLinear()
    torch.testing.assert_close(sde.drift_coef(vp, t), -0.5 * vp.beta(t))
    torch.testing.assert_close(sde.diffusion_sq(vp, t), vp.beta(t))
    sub = S.SubVP()
    a = sub.alpha(t)
    torch.testing.assert_close(sde.diffusion_sq(sub, t), sub.beta(t) * (1 - a**4))  # Song et al. 2021, eq. (34)
    ve = S.VEGeometric(0.01, 50.0)
    torch.testing.assert_close(sde.drift_coef(ve, t), torch.zeros_like(t))
    torch.testing.assert_close(sde.diffusion_sq(ve, t), 2 * ve.sigma(t) ** 2 * torch.log(torch.tensor(5000.0, dtype=torch.float64)))
    # the generic formula reproduces d/dt of the kernel variance: d sigma^2/dt = 2 f sigma^2 + g^2
    for sch in [S.VPCosine(), S.RectifiedFlow(), S.EDM()]:
        torch.testing.assert_close(sch.d_sigma2(t), 2 * sde.drift_coef(sch, t) * sch.sigma(t) ** 2 + sde.diffusion_sq(sch, t))


@pytest.mark.parametrize("sch,T,T_wrong", [(S.VPLinear(), 0.5, 0.35), (S.SubVP(), 0.5, 0.35),
                                           (S.VEGeometric(0.05, 4.0), 1.0, 0.8)], ids=["VP", "subVP", "VE"])
def test_forward_sde_reaches_add_noise_marginal(sch, T, T_wrong):
    # Euler-Maruyama from t=0 to T in 400 steps vs the closed-form kernel q(x_T | x0). Tolerance: the SW2
    # must be within 2.5x the sampling noise floor (the SW2 between two independent exact sample sets).
    gm = eight_gaussians()
    g = torch.Generator().manual_seed(7)
    n = 10_000
    start = add_noise(sch, gm.sample(n, g, dtype=torch.float64), 0.0, generator=g).x_t
    xs = sde.simulate_forward_sde(sch, start, torch.linspace(0, T, 401, dtype=torch.float64), generator=g)
    exact = add_noise(sch, gm.sample(n, g, dtype=torch.float64), T, generator=g).x_t
    sw = sliced_wasserstein(xs, exact, generator=g)
    floor = sliced_wasserstein(add_noise(sch, gm.sample(n, g, dtype=torch.float64), T, generator=g).x_t, exact, generator=g)
    assert sw < 2.5 * floor + 0.01, (sw, floor)
    # and the marginal at a wrong time is detectably different
    wrong = add_noise(sch, gm.sample(n, g, dtype=torch.float64), T_wrong, generator=g).x_t
    assert sliced_wasserstein(xs, wrong, generator=g) > 3 * sw


def test_pf_ode_velocity_equals_conditional_expectation():
    gm, sch = eight_gaussians(), S.VPCosine()
    x = torch.randn(64, 2, dtype=torch.float64) * 3
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    pred = gm.predict(x, t, sch)
    torch.testing.assert_close(sde.pf_ode_velocity(sch, x, t, pred.score), pred.velocity)
    # reverse SDE drift = PF-ODE velocity - g^2/2 score
    torch.testing.assert_close(sde.reverse_sde_drift(sch, x, t, pred.score),
                               pred.velocity - 0.5 * sde.diffusion_sq(sch, t)[:, None] * pred.score)


def test_ot_coupling_reduces_cost():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(256, 2, generator=g) + 3, torch.randn(256, 2, generator=g)
    _, x1p = ot_coupling(x0, x1)
    assert ((x0 - x1p) ** 2).sum() < ((x0 - x1) ** 2).sum()
    assert torch.equal(torch.sort(x1p[:, 0]).values, torch.sort(x1[:, 0]).values)
