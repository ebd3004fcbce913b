"""Continuous-time consistency (sCM, monograph §11.3): TrigFlow in the book's time, the boundary condition, the JVP
tangent against finite differences along the exact PF-ODE, the zero tangent of the exact consistency function,
the loss's gradient, training through the engine, and clear errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffedu import distill, toy
from diffedu.data import batches
from diffedu.nets import MLP
from diffedu.schedules import RectifiedFlow, VPCosine

D64 = torch.float64


class TimeNet(nn.Module):
    """A float64 net of (z, c_noise) without an embedding, so finite differences are exact to ~1e-9."""

    def __init__(self, dim=2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, 32), nn.Tanh(), nn.Linear(32, dim)).double()

    def forward(self, z, t):
        return self.net(torch.cat([z, t[:, None].to(z.dtype)], 1))


class ExactF(nn.Module):
    """The exact F of data N(mu, s^2 I) on TrigFlow: f*(x, t) = mu + (s / c_t)(x - alpha_t mu), F = (cos x - f*) / (sin sigma_d)."""

    def __init__(self, mu, s, schedule, time_scale):
        super().__init__()
        self.mu, self.s, self.sch, self.k = mu, s, schedule, time_scale

    def stats(self, t):
        a, sg, da, ds = (c[:, None] for c in self.sch.coefficients(t))
        c = (a**2 * self.s**2 + sg**2).sqrt()
        return a * self.mu, c, da * self.mu, (a * da * self.s**2 + sg * ds) / c

    def f(self, x, t):
        m, c, _, _ = self.stats(t)
        return self.mu + self.s / c * (x - m)

    def velocity(self, x, t):
        m, c, dm, dc = self.stats(t)
        return dm + dc / c * (x - m)

    def forward(self, z, c_noise):
        t = c_noise / self.k
        x, tau = z * self.sch.sigma_data, math.pi / 2 * t[:, None]
        return (torch.cos(tau) * x - self.f(x, t)) / (torch.sin(tau) * self.sch.sigma_data)


def test_trigflow_is_the_book_time_cosine_path():
    t = torch.linspace(0.0, 1.0, 11, dtype=D64, requires_grad=True)
    one, half = distill.TrigFlow(1.0), distill.TrigFlow(0.5)
    vp = VPCosine(s=0.0)
    assert torch.allclose(one.alpha(t), vp.alpha(t), atol=1e-12) and torch.allclose(one.sigma(t), vp.sigma(t), atol=1e-12)
    assert torch.allclose(half.sigma(t), 0.5 * torch.sin(math.pi / 2 * t))
    for f, df in ((half.alpha, half.d_alpha), (half.sigma, half.d_sigma)):
        (grad,) = torch.autograd.grad(f(t).sum(), t)
        assert torch.allclose(grad, df(t), atol=1e-12)
    inner = torch.linspace(0.05, 0.95, 10, dtype=D64)
    assert torch.allclose(half.t_from_log_snr(half.log_snr(inner)), inner, atol=1e-12)
    assert float(half.alpha(torch.tensor(0.0, dtype=D64))) == 1.0 and float(half.sigma(torch.tensor(0.0, dtype=D64))) == 0.0


@pytest.mark.parametrize("shape", [(8, 2), (3, 1, 8, 8)])
def test_boundary_condition_holds_exactly_for_any_net(shape):
    torch.manual_seed(0)
    net = MLP(2, 32, 2) if len(shape) == 2 else (lambda z, t: torch.nn.functional.conv2d(z, torch.ones(1, 1, 3, 3), padding=1) + 3)
    model = distill.SCM(net, sigma_data=0.7)
    x = torch.randn(shape)
    assert torch.equal(model.consistency(x, 0.0), x)
    assert torch.equal(model(x, torch.zeros(shape[0])).x0, x)
    assert model(x, torch.full((shape[0],), 0.5)).x0.shape == x.shape
    loss = distill.scm_loss(model, x, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (shape[0],) and torch.isfinite(loss).all()


def test_tangent_equals_the_total_derivative_along_the_exact_pf_ode():
    sch = distill.TrigFlow(0.8)
    mix = toy.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.5]], dtype=D64), stds=0.3)
    torch.manual_seed(0)
    model = distill.SCM(TimeNet(), sigma_data=0.8, time_scale=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=g, dtype=D64)
    t, h = torch.full((6,), 0.55, dtype=D64), 1e-4
    v = mix.velocity_t(x, t, sch)  # dx/dt of the exact PF-ODE at (x, t)
    _, _, dfdt = distill.consistency_tangent(model, x, t, v)
    ends = [model.consistency(toy.flow_map(mix, sch, x, t, t + d), t + d) for d in (h, -h)]
    fd = (ends[0] - ends[1]) / (2 * h)
    assert torch.allclose(dfdt, fd, atol=1e-7)
    # the product-rule assembly equals one JVP of f itself
    _, direct = torch.func.jvp(lambda xx, tt: model.consistency(xx, tt), (x, t), (v, torch.ones_like(t)))
    assert torch.allclose(dfdt, direct, atol=1e-10)
    assert dfdt.abs().max() > 1e-2  # a random net is not consistent: the check has teeth


def test_exact_consistency_function_has_zero_tangent_and_warmup_breaks_it():
    sch = distill.TrigFlow(0.6)
    exact = ExactF(torch.tensor([0.7, -0.4], dtype=D64), 0.35, sch, time_scale=0.01)
    model = distill.SCM(exact, sigma_data=0.6, time_scale=0.01)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 2, generator=g, dtype=D64)
    t = 0.1 + 0.8 * torch.rand(32, generator=g, dtype=D64)
    assert torch.allclose(model.consistency(x, t), exact.f(x, t), atol=1e-12)
    v = exact.velocity(x, t)
    _, _, dfdt = distill.consistency_tangent(model, x, t, v)
    assert dfdt.abs().max() < 1e-10
    _, gvec = distill.scm_target(model, x, t, v, warmup=1.0, tangent_c=None)
    assert gvec.abs().max() < 1e-10
    _, half = distill.scm_target(model, x, t, v, warmup=0.5, tangent_c=None)
    assert half.norm(dim=1).mean() > 1e-2


def test_loss_gradient_is_the_continuous_consistency_gradient_and_tangent_is_normalised():
    torch.manual_seed(0)
    model = distill.SCM(TimeNet(), sigma_data=0.5, time_scale=1.0).double()
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(16, 2, generator=g, dtype=D64), torch.randn(16, 2, generator=g, dtype=D64)
    t = 0.05 + 0.9 * torch.rand(16, generator=g, dtype=D64)
    params = list(model.net.parameters())
    loss = distill.scm_loss(model, x0, t=t, eps=eps, warmup=0.7, tangent_c=0.1)
    grads = torch.autograd.grad(loss.sum(), params)
    a, s, da, ds = (c[:, None] for c in model.schedule.coefficients(t))
    x_t = a * x0 + s * eps
    _, gvec = distill.scm_target(model, x_t, t, da * x0 + ds * eps, warmup=0.7, tangent_c=0.1)
    assert (gvec.norm(dim=1) < 1).all()  # g / (||g|| + c)
    surrogate = -(2 / 2) * (gvec * model.raw(x_t, t)).sum()  # -2 e^{w} g . F / D with w = 0 (zero-initialised)
    for ga, gb in zip(grads, torch.autograd.grad(surrogate, params)):
        assert torch.allclose(ga, gb, atol=1e-12)


def test_training_through_the_engine_and_sampling_in_one_or_more_steps():
    x = toy.two_moons(256, torch.Generator().manual_seed(0))
    for teacher in (None, "exact"):
        torch.manual_seed(0)
        model = distill.SCM(MLP(2, 32, 2), sigma_data=1.0)
        if teacher == "exact":
            teacher = toy.eight_gaussians().denoiser(model.schedule)
        res = distill.train_scm(model, batches(x, 64, generator=0), steps=4, teacher=teacher, warmup_steps=2, seed=0,
                                progress=False)
        assert res.steps == 4 and torch.isfinite(torch.as_tensor(res.losses)).all()
    z = torch.randn(16, 2)
    for ts in ([1.0], [1.0, 0.6]):
        assert distill.sample_consistency(res.model, z, ts).shape == z.shape
    assert [distill.tangent_warmup(k, 10) for k in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    assert distill.tangent_warmup(3, 0) == 1.0
    tt = distill.sample_scm_times(1000, 0.5, generator=torch.Generator().manual_seed(0))
    assert (tt > 0).all() and (tt < 1).all()


def test_bad_inputs_give_clear_errors():
    model = distill.SCM(MLP(2, 16, 1), sigma_data=0.5)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="warmup"):
        distill.scm_target(model, x, 0.5, x, warmup=1.5)
    with pytest.raises(TypeError, match="SCM"):
        distill.scm_loss(MLP(2, 16, 1), x)
    with pytest.raises(ValueError, match="TrigFlow"):
        distill.scm_loss(model, x, teacher=toy.eight_gaussians().denoiser(RectifiedFlow()))
    with pytest.raises(ValueError, match="sigma_data"):
        distill.SCM(MLP(), sigma_data=0.0)
    with pytest.raises(ValueError, match="dx_dt"):
        distill.consistency_tangent(model, x, 0.5, torch.randn(4, 3))
    with pytest.raises(ValueError, match="t: must lie in"):
        model.consistency(x, 1.5)
