"""Table 6.1 conversions: every pair round-trips for every shape, near both ends of time."""
import itertools

import pytest
import torch

from diffedu import param, schedules as S
from diffedu.param import KINDS, Denoiser
from diffedu.toy import eight_gaussians

SHAPES = [(5, 2), (3, 1, 8, 8), (2, 3, 16, 16)]
SCHEDULES = [S.VPLinear(), S.VPCosine(), S.VEGeometric(), S.RectifiedFlow(), S.EDM(), S.DiscreteSchedule.linear()]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t0", [1e-3, 0.5, 0.995])
@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_all_pairs_round_trip(shape, t0, sch):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.full((shape[0],), t0, dtype=torch.float64)
    a, s = sch.alpha(t), sch.sigma(t)
    x_t = param.append_dims(a, x0) * x0 + param.append_dims(s, x0) * eps
    truth = {k: param.from_x0_eps(x0, eps, k, t, sch) for k in KINDS}
    for src, dst in itertools.permutations(KINDS, 2):
        out = param.convert(truth[src], src, dst, x_t, t, sch)
        assert torch.isfinite(out).all(), (src, dst)
        scale = truth[dst].abs().max().clamp_min(1.0)
        assert (out - truth[dst]).abs().max() / scale < 1e-7, (src, dst, (out - truth[dst]).abs().max())
        back = param.convert(out, dst, src, x_t, t, sch)
        scale = truth[src].abs().max().clamp_min(1.0)
        assert (back - truth[src]).abs().max() / scale < 1e-7, (src, dst)


def test_table_6_1_coefficients():
    sch, t = S.VPLinear(), torch.tensor([0.3, 0.7], dtype=torch.float64)
    a, s, da, ds = sch.coefficients(t)
    expect = {"x0": (1, 0), "eps": (0, 1), "score": (0, -1 / s), "v": (-s, a), "velocity": (da, ds)}
    for k, (A, B) in expect.items():
        gotA, gotB = param.target_coefficients(k, t, sch)
        torch.testing.assert_close(gotA, torch.as_tensor(A, dtype=torch.float64).expand_as(t))
        torch.testing.assert_close(gotB, torch.as_tensor(B, dtype=torch.float64).expand_as(t))


def test_velocity_is_time_derivative_of_path():
    sch = S.VPCosine()
    x0, eps = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64).requires_grad_(True)
    x_t = param.append_dims(sch.alpha(t), x0) * x0 + param.append_dims(sch.sigma(t), x0) * eps
    dx = torch.stack([torch.autograd.grad(x_t[:, j].sum(), t, retain_graph=True)[0] for j in range(2)], -1)
    torch.testing.assert_close(param.from_x0_eps(x0, eps, "velocity", t.detach(), sch), dx)


class _EpsNet(torch.nn.Module):
    """A fixed 'network' that returns the oracle's eps prediction, to test the Denoiser wrapper."""

    def __init__(self, gm, sch):
        super().__init__()
        self.gm, self.sch = gm, sch

    def forward(self, x, t, cond=None):
        return self.gm.eps_t(x, t, self.sch)


@pytest.mark.parametrize("kind", KINDS)
def test_denoiser_any_parameterisation_gives_same_prediction(kind):
    gm, sch = eight_gaussians(), S.VPLinear()
    x = gm.sample(16, torch.Generator().manual_seed(1), dtype=torch.float64) * 0.7
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64)
    exact = gm.predict(x, t, sch)

    class Net(torch.nn.Module):
        def forward(self, x_, t_, cond=None):
            return gm.predict(x_, t_, sch).as_kind(kind)

    pred = Denoiser(Net(), sch, prediction=kind)(x, t)
    torch.testing.assert_close(pred.x0, exact.x0)
    torch.testing.assert_close(pred.eps, exact.eps)
    torch.testing.assert_close(pred.velocity, exact.velocity)


class _Constant(torch.nn.Module):
    """A 'network' whose output is a fixed finite tensor: the endpoint tests need no training."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x_t, t):
        return self.value.expand_as(x_t)


@pytest.mark.parametrize("end", [0.0, 1.0])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sch", SCHEDULES + [S.VPCosine(), S.SubVP()], ids=lambda s: type(s).__name__)
def test_a_models_own_kind_survives_and_no_conversion_is_a_silent_nan(sch, kind, end):
    # at t = 0 (sigma_t = 0) and t = 1 (alpha_t = 0 for VPCosine and rectified flow) some conversions
    # divide by zero: each must either return a finite value (a well-defined limit) or raise an
    # error naming t; the model's own kind is returned unchanged (monograph Table 6.1, §6.3)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = torch.tensor([0.3, -0.7], dtype=torch.float64)
    pred = Denoiser(_Constant(out), sch, kind)(x_t, torch.full((4,), end, dtype=torch.float64))
    assert torch.equal(pred.as_kind(kind), out.expand_as(x_t))
    for other in KINDS:
        try:
            got = pred.as_kind(other)
        except ValueError as err:
            assert str(err).startswith("t: ") and "t = " in str(err), str(err)
            continue
        assert torch.isfinite(got).all(), f"{kind} -> {other} at t = {end} under {type(sch).__name__}: {got}"


def test_the_singular_conversions_raise_and_the_regular_limits_are_returned():
    vp, rf = S.VPLinear(), S.RectifiedFlow()
    x_t = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = torch.randn(3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    zero, one = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"score -eps / sigma_t is singular where sigma_t = 0 .*\(at t = 0\)"):
        param.convert(out, "eps", "score", x_t, zero, vp)
    with pytest.raises(ValueError, match="alpha_t = 0"):
        param.to_x0(out, "eps", x_t, one, rf)
    with pytest.raises(ValueError, match="sigma_t = 0"):
        param.to_eps(out, "x0", x_t, zero, vp)
    # velocity -> x0 at sigma_t = 0: x_t is the data, the limit is x_t / alpha_t (= x_t there)
    assert torch.equal(param.to_x0(out, "velocity", x_t, zero, vp), x_t)
    assert torch.equal(param.to_x0(out, "velocity", x_t, zero, rf), x_t)
    # a score model evaluated at sigma_t = 0 keeps its own score (it used to be NaN through eps)
    pred = Denoiser(_Constant(out[0]), vp, "score")(x_t, zero)
    assert torch.equal(pred.score, out[0].expand_as(x_t))
