"""Distribution-matching distillation (diffedu.distill.dmd) against the closed-form Gaussian KL (monograph §10.2)."""
import pytest
import torch
from torch import nn

from diffedu import distill, toy
from diffedu.nets import MLP, UNet
from diffedu.param import Denoiser
from diffedu.samplers import grid_uniform, sample_ddim
from diffedu.schedules import RectifiedFlow, VPCosine, VPLinear

from distill_helpers import gaussian_kl

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (fixture in tests/conftest.py)

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[0.6, 0.2], [0.2, 0.3]], dtype=torch.float64)


class AffineGenerator(nn.Module):
    """G(z) = m + L z: its law is N(m, L L^T), so its noised law and KL to Gaussian data are closed form."""

    def __init__(self):
        super().__init__()
        self.m = nn.Parameter(torch.tensor([0.2, 0.4], dtype=torch.float64))
        self.L = nn.Parameter(torch.tensor([[0.9, 0.0], [0.3, 0.5]], dtype=torch.float64))

    def forward(self, z):
        return self.m + z @ self.L.T


def _closed_form_grad(G, sched, t):
    tt = torch.tensor([t], dtype=torch.float64)
    a, s = float(sched.alpha(tt)), float(sched.sigma(tt))
    eye = torch.eye(2, dtype=torch.float64)
    kl = gaussian_kl(a * G.m, a**2 * G.L @ G.L.T + s**2 * eye, a * MU, a**2 * SIGMA + s**2 * eye)
    gm, gL = torch.autograd.grad(kl, (G.m, G.L))
    return torch.cat([gm, gL.reshape(-1)])


def _mc_grads(G, sched, t, n=20000, sign=1.0, seed=0):
    """Per-sample DMD gradients in (m, L): g_i and outer(g_i, z_i), with the exact real and the exact fake score."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    real = toy.gaussian(MU, SIGMA).denoiser(sched)
    fake = toy.gaussian(G.m.detach(), (G.L @ G.L.T).detach()).denoiser(sched)
    with torch.no_grad():
        x = G(z)
    g = sign * distill.dmd_gradient(real, fake, x, t, weighting="kl", generator=gen)
    return torch.cat([g, (g[:, :, None] * z[:, None, :]).reshape(n, -1)], 1)


@pytest.mark.parametrize("sched", [VPLinear(), RectifiedFlow()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("t", [0.2, 0.6])
def test_dmd_gradient_is_the_kl_gradient_within_its_standard_error(sched, t):
    """(10.2): E[alpha_t (s_fake - s_real)^T dG/dtheta] = grad_theta KL(p_theta,t || p_t), closed form for Gaussians.
    20,000 samples: every component within 4 standard errors; the sign-flipped estimate is many errors away."""
    G = AffineGenerator()
    exact = _closed_form_grad(G, sched, t)
    per = _mc_grads(G, sched, t)
    mean, se = per.mean(0), per.std(0) / per.shape[0] ** 0.5
    z = (mean - exact) / se
    assert z.abs().max() < 4.0, z
    flipped = _mc_grads(G, sched, t, sign=-1.0)
    assert ((flipped.mean(0) - exact) / se).abs().max() > 20.0


def test_dmd_loss_backpropagates_the_dmd_gradient():
    """The surrogate 0.5||x - sg(x - g)||^2 gives d/dtheta = mean_i g_i^T dG(z_i)/dtheta exactly (same t, same noise)."""
    sched = VPLinear()
    G = AffineGenerator()
    real = toy.gaussian(MU, SIGMA).denoiser(sched)
    fake = toy.gaussian(G.m.detach(), (G.L @ G.L.T).detach()).denoiser(sched)
    z = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((256,), 0.4, dtype=torch.float64)
    loss = distill.dmd_loss(real, fake, G(z), t=t, weighting="kl", generator=torch.Generator().manual_seed(7))
    assert loss.shape == (256,)
    loss.mean().backward()
    g = distill.dmd_gradient(real, fake, G(z).detach(), t, weighting="kl", generator=torch.Generator().manual_seed(7))
    assert torch.allclose(G.m.grad, g.mean(0), atol=1e-12)
    assert torch.allclose(G.L.grad, (g[:, :, None] * z[:, None, :]).mean(0), atol=1e-12)


def test_dmd_weighting_is_a_positive_rescaling_of_the_kl_step():
    sched = VPCosine()
    real = toy.eight_gaussians().denoiser(sched)
    fake = toy.gaussian([0.0, 0.0], [[4.0, 0.0], [0.0, 4.0]]).denoiser(sched)
    x = 3 * torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.full((64,), 0.5, dtype=torch.float64)
    kl = distill.dmd_gradient(real, fake, x, t, weighting="kl", generator=torch.Generator().manual_seed(3))
    dmd = distill.dmd_gradient(real, fake, x, t, weighting="dmd", generator=torch.Generator().manual_seed(3))
    ratio = (dmd * kl).sum(1) / (kl * kl).sum(1)
    assert (ratio > 0).all()
    assert torch.allclose(dmd, ratio[:, None] * kl, atol=1e-10)


def test_matching_scores_give_zero_gradient():
    sched = VPLinear()
    real = toy.eight_gaussians().denoiser(sched)
    x = torch.randn(32, 2, dtype=torch.float64)
    for w in distill.DMD_WEIGHTINGS:
        assert distill.dmd_gradient(real, real, x, 0.5, weighting=w).abs().max() < 1e-12


def test_one_step_generator_is_a_model_every_sampler_accepts():
    sched = VPLinear()
    gen = Denoiser(MLP(2, 32, 2).double(), sched, "x0")
    z = torch.randn(16, 2, dtype=torch.float64)
    one = distill.one_step(gen, z)
    assert torch.allclose(one, sample_ddim(gen, z, torch.tensor([1.0, 0.0], dtype=torch.float64)), atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 2), (4, 1, 8, 8)])
def test_train_dmd_runs_and_updates_both_networks(shape):
    torch.manual_seed(0)
    sched = VPCosine()
    if len(shape) == 2:
        real = toy.eight_gaussians().denoiser(sched)
        nets = [MLP(2, 32, 2), MLP(2, 32, 2)]
    else:
        real = Denoiser(UNet(1, base=8), sched, "v")
        nets = [UNet(1, base=8), UNet(1, base=8)]
    pair = distill.DMDPair(Denoiser(nets[0], sched, "x0"), Denoiser(nets[1], sched, "eps"), t_start=0.999)
    before = [p.detach().clone() for p in pair.parameters()]
    z = torch.randn(shape)
    zs, ys = distill.regression_pairs(real, z, grid_uniform(2, 0.999, 0.0))
    res = distill.train_dmd(pair, real, [(zs, ys)], steps=3, reg_weight=0.25, ema_decay=None)
    assert all(not torch.equal(a, b) for a, b in zip(before, pair.parameters()))
    assert distill.one_step(res.generator, z, 0.999).shape == z.shape and len(res.losses) == 3


def test_bad_input_names_the_argument():
    sched = VPLinear()
    real = toy.eight_gaussians().denoiser(sched)
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="weighting"):
        distill.dmd_gradient(real, real, x, 0.5, weighting="fisher")
    with pytest.raises(TypeError, match="fake"):
        distill.dmd_gradient(real, object(), x, 0.5)
    with pytest.raises(ValueError, match="t"):
        distill.dmd_gradient(real, real, x, 1.5)
    with pytest.raises(TypeError, match="generator"):
        distill.DMDPair(real, Denoiser(MLP(2, 8, 1), sched, "eps"))
    with pytest.raises(TypeError, match="pair"):
        distill.train_dmd(real, real, [x], steps=1)
