"""Consistency models (monograph §11.2) against the exact flow map of a Gaussian mixture."""
import pytest
import torch
from torch import nn

from diffedu import nets, schedules as S, toy
from diffedu.data import batches
from diffedu.distill import consistency as C

SCHEDULES = [S.VPLinear(), S.VPCosine(), S.VEGeometric(sigma_max=10.0), S.EDM(), S.RectifiedFlow()]


class ConvNet(nn.Module):
    """A tiny time-conditioned conv net for (B, C, H, W) tests: the time enters as an extra channel."""

    def __init__(self, c=1):
        super().__init__()
        self.conv = nn.Conv2d(c + 1, c, 3, padding=1)

    def forward(self, x, t, cond=None):
        tt = t.to(x.dtype).reshape(-1, 1, 1, 1).expand(len(x), 1, *x.shape[2:])
        return torch.tanh(self.conv(torch.cat([x, tt], 1))) * 3


class AffineNet(nn.Module):
    """F(x, t) = W x + b + t c: affine in x, so the consistency model is affine in x at every t."""

    def __init__(self, dim=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.5)
        self.b = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))
        self.c = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x, t):
        return x @ self.W.T + self.b + t[:, None] * self.c


def _models(sch):
    torch.manual_seed(0)
    return [(C.ConsistencyModel(nets.MLP(2, 32, 2), sch), torch.randn(16, 2) * 5),
            (C.ConsistencyModel(ConvNet(), sch), torch.randn(4, 1, 4, 4) * 5)]


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_boundary_condition_is_exact_for_any_network(sch):
    c_skip, c_out, _ = C.boundary_coefficients(sch, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(c_skip, torch.ones(3, dtype=torch.float64)) and torch.equal(c_out, torch.zeros(3, dtype=torch.float64))
    for model, x in _models(sch):
        assert torch.equal(model.consistency(x, 0.0), x)
        assert torch.equal(model(x, torch.zeros(len(x))).x0, x)
        assert not torch.allclose(model.consistency(x, 0.5), x)  # away from t = 0 the network matters


@pytest.mark.parametrize("shape", [(8, 2), (4, 1, 2, 2)], ids=["points", "images"])
def test_the_exact_consistency_function_has_zero_cd_loss(shape):
    sch = S.VPLinear()
    dim = 2 if len(shape) == 2 else 4
    mix = toy.eight_gaussians(radius=2.0) if dim == 2 else toy.GaussianMixture(
        torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), stds=0.4)
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(shape[0], g, dtype=torch.float64).reshape(shape)
    ts = C.consistency_grid(sch, 4)
    exact = C.ExactConsistency(mix, sch, rtol=1e-8, atol=1e-8)
    kw = dict(distance="l2", generator=g)
    assert C.cd_loss(exact, None, (mix, sch), x0, ts, **kw).max() < 1e-12
    # the denoiser E[x0 | x_t] is not the consistency function: its CD loss is far from zero
    assert C.cd_loss(mix.denoiser(sch), None, (mix, sch), x0.reshape(len(x0), -1), ts, **kw).mean() > 1e-3


def _ct_and_cd_gradients(gap):
    """Expected CT gradient (closed form, see below) and the CD gradient with the exact flow-map teacher at t -> t - gap."""
    mix, sch = toy.eight_gaussians(radius=2.0, std=0.4), S.VPLinear()
    g = torch.Generator().manual_seed(1)
    t = 0.5
    x = mix.sample(64, g, dtype=torch.float64) * float(sch.alpha(torch.tensor(t))) + \
        float(sch.sigma(torch.tensor(t))) * torch.randn(64, 2, generator=g, dtype=torch.float64)
    ts = torch.tensor([t, t - gap], dtype=torch.float64)
    model = C.ConsistencyModel(AffineNet(), sch)
    kw = dict(distance="l2", weighting="inverse_step", n=0)
    # f is affine in x, so E[f(alpha_s x0 + sigma_s eps) | x_t] = f(alpha_s E[x0|x_t] + sigma_s E[eps|x_t]): the CT loss
    # at the posterior means (x_t is reproduced exactly) has the expected CT gradient given x_t.
    p = mix.predict(x, t, sch)
    grads = []
    for loss in (C.ct_loss(model, None, p.x0, ts, eps=p.eps, **kw),
                 C.cd_loss(model, None, (mix, sch), p.x0, ts, eps=p.eps, **kw),
                 C.cd_loss(model, None, mix.denoiser(sch), p.x0, ts, eps=p.eps, **kw)):
        grads.append(torch.cat([gg.reshape(-1) for gg in torch.autograd.grad(loss.mean(), list(model.parameters()))]))
    return grads


def test_ct_gradient_tends_to_the_cd_gradient_at_rate_dt():
    gaps, scale = [], None
    for dt in (0.04, 0.02, 0.01):
        ct, cd_exact, cd_ddim = _ct_and_cd_gradients(dt)
        torch.testing.assert_close(ct, cd_ddim, rtol=1e-9, atol=1e-10)  # E[CT | x_t] = CD with the exact DDIM teacher
        gaps.append(float((ct - cd_exact).norm()))
        scale = float(cd_exact.norm())
    assert gaps[-1] < 0.05 * scale  # the gradients agree ...
    for a, b in zip(gaps, gaps[1:]):  # ... with an O(dt) gap: halving dt halves it
        assert 1.7 < a / b < 2.3, gaps


def test_curriculum_doubles_from_s0_to_s1():
    K = 1000
    ns = [C.ct_curriculum(k, K, 10, 160) for k in range(K)]
    assert ns[0] == 11 and ns[-1] == 161 and sorted(set(ns)) == [11, 21, 41, 81, 161]
    assert all(b >= a for a, b in zip(ns, ns[1:]))
    with pytest.raises(ValueError, match="^s1:"):
        C.ct_curriculum(0, K, 10, 5)


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_away():
    small, big = torch.full((1, 2), 1e-6, dtype=torch.float64), torch.full((1, 2), 1e3, dtype=torch.float64)
    c = 0.01
    torch.testing.assert_close(C.pseudo_huber(small, c), small.pow(2).sum(1) / (2 * c), rtol=1e-6, atol=0)
    torch.testing.assert_close(C.pseudo_huber(big, c), big.norm(dim=1) - c, rtol=1e-9, atol=0)


def test_sampling_one_and_multistep_and_images():
    sch = S.VPLinear()
    mix = toy.eight_gaussians(radius=2.0)
    exact = C.ExactConsistency(mix, sch, rtol=1e-8, atol=1e-8)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 2, generator=g, dtype=torch.float64)
    steps = []
    out = C.sample_consistency(exact, z, [1.0, 0.5], generator=g, callback=steps.append)
    assert len(steps) == 2 and torch.equal(steps[-1].x, out)
    torch.testing.assert_close(C.sample_consistency(exact, z, [1.0]), toy.flow_map(mix, sch, z, 1.0, 0.0), rtol=0, atol=1e-6)
    model = _models(sch)[1][0]
    img = C.sample_consistency(model, torch.randn(3, 1, 4, 4), [1.0, 0.6, 0.2], generator=g)
    assert img.shape == (3, 1, 4, 4) and torch.isfinite(img).all()
    with pytest.raises(ValueError, match="^ts:"):
        C.sample_consistency(exact, z, [0.5, 1.0])


def test_short_consistency_training_approaches_the_exact_consistency_function(one_thread):
    sch, mix = S.VPLinear(), toy.eight_gaussians(radius=2.0, std=0.3)
    g = torch.Generator().manual_seed(0)
    x = mix.sample(4096, g)
    torch.manual_seed(0)
    model = C.ConsistencyModel(nets.MLP(2, 64, 2), sch, sigma_data=float(x.std()))
    a, sg = float(sch.alpha(torch.tensor(0.6))), float(sch.sigma(torch.tensor(0.6)))
    xt = mix.sample(128, g, dtype=torch.float64) * a + sg * torch.randn(128, 2, generator=g, dtype=torch.float64)
    t = torch.full((128,), 0.6, dtype=torch.float64)
    ref = toy.consistency_function(mix, sch, xt, t, rtol=1e-7, atol=1e-7).float()

    def error(m):
        with torch.no_grad():
            return float((m.consistency(xt.float(), t.float()) - ref).norm(dim=1).mean())

    before = error(model)
    res = C.train_consistency(model, batches(x, 256, generator=1), steps=400, lr=2e-3, seed=0, progress=False,
                              curriculum=(40, 40), target_decay=0.95)  # CT with an EMA target (Song et al. 2023)
    after = error(res.ema_model)
    assert after < 0.65 * before, (before, after)


def test_losses_run_on_images_and_errors_name_the_argument():
    sch = S.RectifiedFlow()
    model = _models(sch)[1][0]
    x0 = torch.randn(4, 1, 4, 4)
    ts = C.consistency_grid(sch, 4)
    for loss in (C.ct_loss(model, None, x0, ts), C.cd_loss(model, None, model, x0, ts)):
        assert loss.shape == (4,) and torch.isfinite(loss).all()
        loss.mean().backward()
    with pytest.raises(ValueError, match="^ts:"):
        C.ct_loss(model, None, x0, ts.flip(0))
    with pytest.raises(ValueError, match="^distance:"):
        C.ct_loss(model, None, x0, ts, distance="l3")
    with pytest.raises(ValueError, match="^n:"):
        C.ct_loss(model, None, x0, ts, n=7)
    with pytest.raises(TypeError, match="^teacher:"):
        C.cd_loss(model, None, "teacher", x0, ts)
    with pytest.raises(TypeError, match="^net:"):
        C.ConsistencyModel("net", sch)


def test_consistency_grid_spacing_follows_the_schedules_clock():
    """Rectified flow: equal steps in t by default; the Karras grid in sigma_bar crowds its top (monograph §11.2)."""
    rf, vp = S.RectifiedFlow(), S.VPLinear()
    uni = C.consistency_grid(rf, 18)
    assert torch.allclose(uni, torch.linspace(1 - 1e-3, 0.0, 19, dtype=torch.float64))
    karras = C.consistency_grid(rf, 18, spacing="karras")
    assert int((karras[:-1] > 0.95).sum()) == 8 and int((uni[:-1] > 0.95).sum()) == 1
    # VP keeps EDM's grid: equal steps in sigma_bar^(1/rho)
    g = C.consistency_grid(vp, 6)
    sb = (vp.sigma(g) / vp.alpha(g)) ** (1 / 7)
    assert torch.allclose(sb[:-1] - sb[1:], (sb[0] - sb[-1]).expand(6) / 6, rtol=1e-6)
    assert torch.equal(C.consistency_grid(vp, 6, spacing="uniform"), torch.linspace(1.0, 0.0, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="spacing"):
        C.consistency_grid(vp, 6, spacing="log")
    with pytest.raises(ValueError, match="t_max"):
        C.consistency_grid(vp, 6, t_max=0.0, spacing="uniform")
