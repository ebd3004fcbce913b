"""MeanFlow (monograph §11.5): the identity u = v - (t - r) du/dt on exact average velocities, the reduction to
flow matching at r = t, the JVP's total derivative, sampling, training through the engine, and clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffedu import distill, toy
from diffedu.data import batches
from diffedu.nets import MLP, UNet
from diffedu.objectives import conditional_fm_loss
from diffedu.schedules import RectifiedFlow, VPLinear

RF = RectifiedFlow()
D64 = torch.float64


class GaussianRF(nn.Module):
    """The exact average velocity of data N(mu, s^2 I) on rectified flow, in closed form (an affine flow map).

    x_t ~ N(m_t, c_t^2 I), m_t = (1 - t) mu, c_t^2 = (1 - t)^2 s^2 + t^2; Psi_{t->r}(x) = m_r + (c_r / c_t)(x - m_t).
    """

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s

    def stats(self, t):
        t = t[:, None]
        c = ((1 - t) ** 2 * self.s**2 + t**2).sqrt()
        dc = (-(1 - t) * self.s**2 + t) / c
        return (1 - t) * self.mu, c, -self.mu, dc

    def flow(self, x, t, r):
        m_t, c_t, _, _ = self.stats(t)
        m_r, c_r, _, _ = self.stats(r)
        return m_r + c_r / c_t * (x - m_t)

    def velocity(self, x, t):
        m, c, dm, dc = self.stats(t)
        return dm + dc / c * (x - m)

    def forward(self, x, r, t, cond=None):
        same = r == t
        gap = torch.where(same, torch.ones_like(t), r - t)[:, None]
        return torch.where(same[:, None], self.velocity(x, t), (self.flow(x, t, r) - x) / gap)


def _points(B=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = 0.15 + 0.8 * torch.rand(B, generator=g, dtype=D64)
    r = t * torch.rand(B, generator=g, dtype=D64)
    return torch.randn(B, 2, generator=g, dtype=D64) * 1.5, r, t


def test_identity_holds_for_the_exact_average_velocity_and_fails_for_the_instantaneous_one():
    exact = GaussianRF(torch.tensor([1.0, -0.5], dtype=D64), 0.3)
    x, r, t = _points()
    v = exact.velocity(x, t)  # the marginal PF-ODE velocity: x_t moves along the exact flow
    u, dudt = distill.total_derivative(exact, x, r, t, v)
    assert torch.allclose(u, distill.meanflow_target(v, dudt, t, r), atol=1e-10)
    # u = v (no averaging) violates it by (t - r) dv/dt, measurably away from r = t and vanishing at r = t
    inst = lambda x, r, t: exact.velocity(x, t)  # noqa: E731
    vv, dvdt = distill.total_derivative(inst, x, r, t, v)
    gap = (vv - distill.meanflow_target(v, dvdt, t, r)).norm(dim=1)
    far = (t - r) > 0.3
    assert gap[far].mean() > 0.1  # measurably wrong ...
    assert torch.allclose(gap, (t - r) * dvdt.norm(dim=1), atol=1e-12)  # ... by exactly (t - r) |dv/dt|
    _, dvdt0 = distill.total_derivative(inst, x, t, t, v)
    assert torch.allclose(vv, distill.meanflow_target(v, dvdt0, t, t), atol=1e-12)


def test_identity_holds_on_the_exact_mixture_flow_map_by_finite_differences():
    mix = toy.GaussianMixture(torch.tensor([[-1.5, 0.0], [1.0, 1.0]], dtype=D64), stds=0.4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=g, dtype=D64)
    t, r, h = 0.6, 0.2, 1e-4
    u = toy.average_velocity(mix, RF, x, r, t)
    ups = [toy.average_velocity(mix, RF, toy.flow_map(mix, RF, x, t, t + d), r, t + d) for d in (h, -h)]
    dudt = (ups[0] - ups[1]) / (2 * h)  # d/dt u(x_t, r, t) along the exact trajectory through x
    v = mix.velocity_t(x, torch.full((6,), t, dtype=D64), RF)
    tt, rr = torch.full((6,), t, dtype=D64), torch.full((6,), r, dtype=D64)
    assert torch.allclose(u, distill.meanflow_target(v, dudt, tt, rr), atol=1e-6)
    assert (u - v).norm(dim=1).max() > 1e-2  # and u is not v here, so the check has teeth


def test_jvp_total_derivative_equals_finite_differences():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.SiLU(), nn.Linear(32, 2)).double()  # float64 all the way (no embedding)
    fn = lambda x, r, t: net(torch.cat([x, r[:, None], t[:, None]], 1))  # noqa: E731
    x, r, t = _points(8)
    v = torch.randn_like(x)
    u, dudt = distill.total_derivative(fn, x, r, t, v)
    h = 1e-5
    fd = (fn(x + h * v, r, t + h) - fn(x - h * v, r, t - h)) / (2 * h)
    assert torch.allclose(u, fn(x, r, t)) and torch.allclose(dudt, fd, atol=1e-8, rtol=1e-7)
    # and through a MeanFlow network's own average_velocity (its time embedding runs in float32)
    model = distill.MeanFlow(distill.TwoTimeNet(MLP(2 + 16, 32, 2, out_dim=2)), RF).double()
    _, dudt = distill.total_derivative(model.average_velocity, x, r, t, v)
    h = 1e-4
    fd = (model.average_velocity(x + h * v, r, t + h) - model.average_velocity(x - h * v, r, t - h)) / (2 * h)
    assert (dudt - fd).abs().max() < 2e-2 * dudt.abs().max()


class ConvTwoTime(nn.Module):
    """A tiny (B, C, H, W) network of (x, r, t) for the shape tests."""

    def __init__(self, c=1):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, r, t, cond=None):
        return self.conv(x) * (1 + t - r)[:, None, None, None] + t[:, None, None, None]


@pytest.mark.parametrize("shape, net", [((16, 2), lambda: distill.TwoTimeNet(MLP(2 + 16, 32, 2, out_dim=2))),
                                        ((4, 1, 8, 8), lambda: ConvTwoTime())])
@pytest.mark.parametrize("schedule", [RF, distill.TrigFlow(1.0)])
def test_meanflow_loss_at_r_equal_t_is_flow_matching(shape, net, schedule):
    torch.manual_seed(0)
    model = distill.MeanFlow(net(), schedule).double()
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(shape, generator=g, dtype=D64), torch.randn(shape, generator=g, dtype=D64)
    t = torch.rand(shape[0], generator=g, dtype=D64)
    mf = distill.meanflow_loss(model, x0, r=t, t=t, eps=eps, p=0.0)
    fm = conditional_fm_loss(model, x0, t=t, x1=eps)
    assert torch.allclose(mf, fm, atol=1e-12)
    # with r != t the target moves off v, and the adaptive weight is 1 / (||Delta||^2 + c)
    r = 0.5 * t
    plain = distill.meanflow_loss(model, x0, r=r, t=t, eps=eps, p=0.0)
    assert (plain - fm).abs().max() > 1e-6
    weighted = distill.meanflow_loss(model, x0, r=r, t=t, eps=eps, p=1.0, c=1e-3)
    assert torch.allclose(weighted, plain / (plain + 1e-3), atol=1e-12)


def test_meanflow_image_net_and_one_step_contract():
    torch.manual_seed(0)
    model = distill.MeanFlow(distill.TwoTimeNet(UNet(in_channels=1 + 4, out_channels=1, base=8), emb_dim=4), RF)
    x = torch.randn(2, 1, 8, 8)
    assert model.jump(x, 1.0, 0.0).shape == x.shape
    assert torch.equal(model.consistency(x, 0.0), x)  # the jump of length zero is the identity
    loss = distill.meanflow_loss(model, x, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (2,) and torch.isfinite(loss).all()


def test_sampling_with_the_exact_average_velocity_lands_on_the_flow_map():
    exact = GaussianRF(torch.tensor([1.0, -0.5], dtype=D64), 0.3)
    model = distill.MeanFlow(exact, RF)
    z = torch.randn(32, 2, dtype=D64, generator=torch.Generator().manual_seed(0))
    target = exact.flow(z, torch.ones(32, dtype=D64), torch.zeros(32, dtype=D64))
    for ts in ([1.0, 0.0], [1.0, 0.4, 0.0], [1.0, 0.8, 0.5, 0.1, 0.0]):
        steps = []
        out = distill.sample_meanflow(model, z, ts, callback=steps.append)
        assert torch.allclose(out, target, atol=1e-12) and len(steps) == len(ts) - 1
    # its instantaneous velocity (forward) is the PF-ODE velocity, as a Prediction
    t = torch.full((32,), 0.5, dtype=D64)
    assert torch.allclose(model(z, t).velocity, exact.velocity(z, t), atol=1e-12)


def test_time_sampler_and_training_through_the_engine():
    g = torch.Generator().manual_seed(0)
    r, t = distill.sample_meanflow_times(20000, ratio=0.25, generator=g)
    assert (r <= t).all() and abs((r != t).double().mean().item() - 0.25) < 0.02
    r0, t0 = distill.sample_meanflow_times(100, ratio=0.0, generator=g)
    assert torch.equal(r0, t0)
    torch.manual_seed(0)
    model = distill.MeanFlow(distill.TwoTimeNet(MLP(2 + 16, 32, 2, out_dim=2)), RF)
    x = toy.two_moons(256, torch.Generator().manual_seed(0))
    res = distill.train_meanflow(model, batches(x, 64, generator=0), steps=5, seed=0, progress=False)
    assert res.steps == 5 and torch.isfinite(torch.as_tensor(res.losses)).all()


def test_bad_inputs_give_clear_errors():
    net = distill.TwoTimeNet(MLP(2 + 16, 16, 1, out_dim=2))
    with pytest.raises(ValueError, match="MeanFlow needs finite alpha'_t and sigma'_t"):
        distill.MeanFlow(net, VPLinear())
    with pytest.raises(TypeError, match="schedule"):
        distill.MeanFlow(net, "rectified")
    model = distill.MeanFlow(net, RF)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="r: expected r <= t"):
        distill.meanflow_loss(model, x, r=torch.full((4,), 0.8), t=torch.full((4,), 0.2))
    with pytest.raises(ValueError, match="give both times"):
        distill.meanflow_loss(model, x, t=torch.full((4,), 0.2))
    with pytest.raises(TypeError, match="MeanFlow"):
        distill.meanflow_loss(net, x)
    with pytest.raises(ValueError, match="ratio"):
        distill.sample_meanflow_times(4, ratio=1.5)
    with pytest.raises(ValueError, match="ts: expected at least two strictly decreasing"):
        distill.sample_meanflow(model, x, [0.0, 1.0])
    with pytest.raises(ValueError, match="emb_dim"):
        distill.TwoTimeNet(MLP(), emb_dim=1)
    with pytest.raises(ValueError, match="r: must lie in"):
        model.average_velocity(x, 1.5, 0.5)
