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
