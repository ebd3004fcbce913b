"""Schedules: closed-form derivatives vs autograd, monotone log-SNR, inverse round trips, DDPM tables."""
import math

import pytest
import torch

from diffedu import schedules as S

ALL = [S.VPLinear(), S.VPCosine(), S.SubVP(), S.VEGeometric(), S.EDM(), S.RectifiedFlow(),
       S.DiscreteSchedule.linear(), S.DiscreteSchedule.cosine()]
IDS = [type(s).__name__ + str(i) for i, s in enumerate(ALL)]


def _grid(n=257, lo=1e-3, hi=1 - 1e-3):
    return torch.linspace(lo, hi, n, dtype=torch.float64)


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_derivatives_match_autograd(sch):
    t = _grid()
    if isinstance(sch, S.DiscreteSchedule):  # piecewise linear in log alpha: avoid the kinks
        t = (torch.arange(3, 997, dtype=torch.float64) + 0.37) / 1000
    tt = t.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(sch.alpha(tt).sum(), tt, materialize_grads=True)
    tt = t.clone().requires_grad_(True)
    (gs,) = torch.autograd.grad(sch.sigma(tt).sum(), tt, materialize_grads=True)
    torch.testing.assert_close(sch.d_alpha(t), ga, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sch.d_sigma(t), gs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sch.d_sigma2(t), 2 * sch.sigma(t) * sch.d_sigma(t), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_coefficients_equal_the_four_methods(sch, dtype):
    # coefficients() shares work between the four (one log-alpha pass for VP); it must not change them,
    # in either precision, and least of all at the endpoints t = 0 and t = 1, which the grid contains
    t = torch.linspace(0, 1, 257, dtype=dtype)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    for name, got, want in zip(("alpha", "sigma", "d_alpha", "d_sigma"), sch.coefficients(t),
                               (sch.alpha(t), sch.sigma(t), sch.d_alpha(t), sch.d_sigma(t))):
        fin = torch.isfinite(want)
        assert torch.equal(fin, torch.isfinite(got)), name
        assert torch.equal(got[~fin], want[~fin]), name  # the same infinities, with the same sign
        torch.testing.assert_close(got[fin], want[fin], rtol=rtol, atol=rtol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_the_endpoints_have_the_limits_of_the_closed_forms(sch, dtype):
    # sigma_t >= 0 rises from its value at t = 0, so sigma'_0 is +inf or positive, never -inf or -0.0;
    # alpha_t falls (or stays), so alpha'_1 <= 0 and is the closed form's value, not 0 * inf
    ends = torch.tensor([0.0, 1.0], dtype=dtype)
    a, s, da, ds = sch.coefficients(ends)
    assert not torch.signbit(s).any(), f"sigma at the endpoints: {s.tolist()} (a negative zero)"
    assert ds[0] > 0, f"d_sigma at t = 0: {ds[0].item()}"
    inner = torch.tensor([1e-7, 1 - 1e-7], dtype=torch.float64)
    a_in, s_in, da_in, ds_in = sch.coefficients(inner)
    torch.testing.assert_close(da.double(), da_in, rtol=0.05, atol=1e-3, msg="d_alpha at the endpoints vs just inside")
    if torch.isfinite(ds[0]):
        torch.testing.assert_close(ds[0].double(), ds_in[0], rtol=0.05, atol=1e-3)
    if sch.variance_preserving:
        assert a[0].item() == 1.0 and s[0].item() == 0.0, "VP schedules start exactly at alpha = 1, sigma = 0"


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_log_snr_monotone_and_inverse(sch):
    t = _grid()
    lam = sch.log_snr(t)
    assert torch.isfinite(lam).all()
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must strictly decrease from data (t=0) to noise (t=1)"
    torch.testing.assert_close(lam, torch.log(sch.alpha(t) ** 2 / sch.sigma(t) ** 2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sch.t_from_log_snr(lam), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_half_log_snr_and_sigma_bar_are_the_log_snr_rescaled(sch):
    # one convention per name: log_snr = log(alpha^2/sigma^2), half_log_snr = log(alpha/sigma) = log_snr / 2 exactly,
    # sigma_bar = sigma/alpha = exp(-half_log_snr); on [0, 1] including the ends (+inf at the data, alpha = 0 at t = 1)
    t = torch.linspace(0, 1, 257, dtype=torch.float64)
    half, sb = sch.half_log_snr(t), sch.sigma_bar(t)
    assert torch.equal(2 * half, sch.log_snr(t))
    assert torch.equal(sch.t_from_half_log_snr(half), sch.t_from_log_snr(sch.log_snr(t)))
    a, s = sch.alpha(t), sch.sigma(t)
    fin = torch.isfinite(half)
    torch.testing.assert_close(half[fin], (torch.log(a) - torch.log(s))[fin], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sb, s / a, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(sb[fin], torch.exp(-half[fin]), rtol=1e-12, atol=0)
    if float(s[0]) == 0:  # the data: sigma_bar = 0, half log-SNR = +inf, and both map back to t = 0 exactly
        assert sb[0] == 0 and half[0] == math.inf and sch.t_from_sigma_bar(sb[:1]).item() == 0.0
    if float(a[-1]) == 0:
        assert sb[-1] == math.inf and sch.t_from_sigma_bar(sb[-1:]).item() == 1.0


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_half_log_snr_and_sigma_bar_round_trips_and_derivatives(sch):
    t = _grid()
    torch.testing.assert_close(sch.t_from_half_log_snr(sch.half_log_snr(t)), t, rtol=0, atol=1e-9)
    torch.testing.assert_close(sch.t_from_sigma_bar(sch.sigma_bar(t)), t, rtol=0, atol=1e-9)
    sb = torch.logspace(-3, 2, 60, dtype=torch.float64)
    lo, hi = sch.sigma_bar(torch.tensor([1e-3, 0.999], dtype=torch.float64))
    sb = sb[(sb > lo) & (sb < hi)]
    torch.testing.assert_close(sch.sigma_bar(sch.t_from_sigma_bar(sb)), sb, rtol=1e-9, atol=0)
    # d lambda/dt = alpha'/alpha - sigma'/sigma and d sigma_bar/dt = (sigma' alpha - sigma alpha')/alpha^2, by autograd
    if isinstance(sch, S.DiscreteSchedule):  # piecewise linear in log alpha: avoid the kinks
        t = (torch.arange(3, 997, dtype=torch.float64) + 0.37) / 1000
    a, s, da, ds = sch.coefficients(t)
    tt = t.clone().requires_grad_(True)
    (gl,) = torch.autograd.grad(sch.half_log_snr(tt).sum(), tt)
    tt = t.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(sch.sigma_bar(tt).sum(), tt)
    torch.testing.assert_close(gl, da / a - ds / s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gb, (ds * a - s * da) / a**2, rtol=1e-9, atol=1e-9)
    # and the inverses have the reciprocal derivative
    lam = sch.half_log_snr(t).detach().requires_grad_(True)
    (gt,) = torch.autograd.grad(sch.t_from_half_log_snr(lam).sum(), lam)
    torch.testing.assert_close(gt, 1 / (da / a - ds / s), rtol=1e-7, atol=1e-12)


def test_noise_level_inverses_check_their_input():
    sch = S.VPLinear()
    with pytest.raises(ValueError, match="sigma_bar"):
        sch.t_from_sigma_bar(torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="lam"):
        sch.t_from_half_log_snr(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="sigma_bar"):
        sch.t_from_sigma_bar("1.0")
    assert sch.t_from_sigma_bar(0.0).item() == 0.0 and 0 < sch.t_from_half_log_snr(0.0).item() < 1


@pytest.mark.parametrize("sch", [s for s in ALL if s.variance_preserving], ids=lambda s: type(s).__name__)
def test_variance_preserving(sch):
    t = _grid()
    torch.testing.assert_close(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t))


def test_endpoints():
    for sch in [S.VPLinear(), S.VPCosine(), S.RectifiedFlow(), S.DiscreteSchedule.linear()]:
        z = torch.zeros(1, dtype=torch.float64)
        assert sch.alpha(z).item() == pytest.approx(1.0) and sch.sigma(z).item() == pytest.approx(0.0, abs=1e-12)
    assert S.RectifiedFlow().alpha(torch.ones(1)).item() == 0.0
    assert S.VPLinear().alpha(torch.ones(1, dtype=torch.float64)).item() == pytest.approx(math.exp(-0.25 * 19.9 - 0.05))
    assert S.EDM(sigma_max=80).sigma(torch.ones(1)).item() == pytest.approx(80.0)


def test_discrete_adapter_reproduces_ddpm_tables():
    # Ho et al. (2020): beta linear from 1e-4 to 0.02 over 1000 steps; alpha_bar_n = prod (1 - beta_i)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    sch = S.DiscreteSchedule.linear()
    torch.testing.assert_close(sch.alphas_cumprod, abar)
    n = torch.arange(1000, dtype=torch.float64)
    t = sch.timestep_to_t(n)
    torch.testing.assert_close(sch.alpha(t) ** 2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(sch.t_to_timestep(t), n)
    # improved-DDPM cosine table: alpha_bar_n = f(n+1)/f(0), clipped betas at 0.999
    s = 0.008
    f = lambda k: math.cos(((k / 1000) + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    cos = S.DiscreteSchedule.cosine()
    assert cos.alphas_cumprod[499].item() == pytest.approx(f(500) / f(0), rel=1e-10)
    # between knots, log alpha is linear in t
    mid = (sch.timestep_to_t(torch.tensor(10.0)) + sch.timestep_to_t(torch.tensor(11.0))) / 2
    expect = 0.5 * (0.5 * math.log(abar[10]) + 0.5 * math.log(abar[11]))
    assert math.log(sch.alpha(mid).item()) == pytest.approx(expect, rel=1e-12)


def test_discrete_linear_approaches_vp_linear():
    # Score SDE: the 1000-step DDPM linear table is the discretisation of beta(t) = 0.1 + 19.9 t
    t = _grid(50, 0.05, 0.95)
    # log(1 - beta) = -beta - beta^2/2 - ...: the tables agree in log alpha to O(beta) relative error (< 1%)
    la_d, la_c = S.DiscreteSchedule.linear().alpha(t).log(), S.VPLinear().alpha(t).log()
    torch.testing.assert_close(la_d, la_c, rtol=1e-2, atol=2e-3)
    assert not torch.allclose(la_d, la_c, rtol=1e-4, atol=0)  # they are not the same schedule


def test_subvp_sigma_below_vp():
    t = _grid()
    assert (S.SubVP().sigma(t) <= S.VPLinear().sigma(t) + 1e-15).all()


def test_follows_device_and_dtype():
    for sch in ALL:
        t32 = torch.tensor([0.25, 0.5], dtype=torch.float32)
        assert sch.alpha(t32).dtype == torch.float32 and sch.sigma(t32).dtype == torch.float32
