"""The unified lens: one model, any parameterisation, the same PF-ODE; weights vs time distributions (monograph §6.1-6.4)."""
import math

import pytest
import torch
from torch import nn

from diffedu import schedules as S, toy
from diffedu.objectives.edm import edm_time_density, edm_time_sampler
from diffedu.objectives.flow_matching import PathChange
from diffedu.nets import MLP
from diffedu.param import KINDS, Denoiser
from diffedu.samplers.grids import grid_uniform
from diffedu.samplers.ode import sample_euler, sample_heun, trajectory
from diffedu.sde import pf_ode_velocity

MIX = toy.eight_gaussians(radius=2.0, std=0.3)


class _AsKind(nn.Module):
    """A net that outputs model's prediction in parameterisation ``kind`` (what a net trained on that target learns)."""

    def __init__(self, model, kind):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x, t, cond=None):
        return self.model(x, t).as_kind(self.kind)


@pytest.mark.parametrize("sch", [S.VPLinear(), S.RectifiedFlow(), S.VEGeometric(sigma_max=10.0)], ids=lambda s: type(s).__name__)
def test_every_parameterisation_gives_the_same_trajectory(sch):
    torch.manual_seed(0)
    base = Denoiser(MLP(2, 32, 2), sch, "eps").double()
    x1 = torch.randn(8, 2, dtype=torch.float64) * float(sch.sigma(torch.tensor(0.95)))
    ts = grid_uniform(20, 0.95, 0.05)
    ref = trajectory(sample_euler, base, x1, ts)
    for kind in KINDS:
        model = Denoiser(_AsKind(base, kind), sch, kind)
        torch.testing.assert_close(trajectory(sample_euler, model, x1, ts), ref, rtol=1e-9, atol=1e-9)
    # a *different* network (another prediction of the same kind, perturbed) does not
    other = Denoiser(_AsKind(base, "x0"), sch, "eps")  # x0-output read as eps: a parameterisation mistake
    assert (trajectory(sample_euler, other, x1, ts) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("sch", [S.VPLinear(), S.SubVP(), S.VEGeometric(), S.RectifiedFlow(), S.VPCosine()],
                         ids=lambda s: type(s).__name__)
def test_score_form_and_velocity_form_of_pf_ode_agree(sch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 2, generator=g, dtype=torch.float64) * 2
    t = torch.rand(12, generator=g, dtype=torch.float64) * 0.9 + 0.05
    pred = MIX.predict(x, t, sch)
    torch.testing.assert_close(pf_ode_velocity(sch, x, t, pred.score), pred.velocity)


def test_vp_path_mapped_to_rectified_flow_and_back():
    vp, rf = S.VPLinear(), S.RectifiedFlow()
    # sampling rectified flow's ODE with the VP oracle mapped onto the RF path equals the RF oracle's ODE ...
    x1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ts = grid_uniform(30, 0.9, 0.05)
    via = sample_heun(PathChange(MIX.denoiser(vp), rf), x1, ts)
    direct = sample_heun(MIX.denoiser(rf), x1, ts)
    torch.testing.assert_close(via, direct, rtol=1e-8, atol=1e-8)
    # ... and mapping back to VP recovers the VP oracle
    back = PathChange(PathChange(MIX.denoiser(vp), rf), vp)
    x = torch.randn(16, 2, dtype=torch.float64)
    t = torch.full((16,), 0.4, dtype=torch.float64)
    torch.testing.assert_close(back(x, t).velocity, MIX.velocity_t(x, t, vp), rtol=1e-8, atol=1e-8)


def test_importance_weighting_identity():
    # E_{t ~ pi}[w(t) l(t)] = E_{t ~ U(0,1)}[pi(t) w(t) l(t)] = int pi w l dt, with l(t) the exact eps-MMSE of Gaussian data
    sch, c2 = S.VPLinear(), 0.3
    def ell(t):  # per-dim eps-MSE of the Bayes denoiser for x0 ~ N(0, c2): alpha^2 c2 / (alpha^2 c2 + sigma^2)
        a, s = sch.alpha(t), sch.sigma(t)
        return a**2 * c2 / (a**2 * c2 + s**2)
    w = lambda t: 1.0 / (1e-2 + t)  # noqa: E731
    pi = lambda t: edm_time_density(t, sch)  # noqa: E731
    n = 200000
    g = torch.Generator().manual_seed(3)
    t_pi = edm_time_sampler(sch)(n, dtype=torch.float64, generator=g)
    a_vals = w(t_pi) * ell(t_pi)
    t_u = torch.rand(n, generator=g, dtype=torch.float64).clamp_min(1e-6)
    b_vals = pi(t_u) * w(t_u) * ell(t_u)
    tq = torch.linspace(1e-6, 1, 200001, dtype=torch.float64)
    exact = torch.trapezoid(pi(tq) * w(tq) * ell(tq), tq)
    for v in (a_vals, b_vals):
        assert abs(v.mean() - exact) < 4 * v.std() / math.sqrt(n) + 1e-3 * exact, (v.mean().item(), exact.item())
    # using the density without correcting for it (uniform t, weight w only) gives a different number
    assert abs((w(t_u) * ell(t_u)).mean() - exact) > 0.1 * exact
