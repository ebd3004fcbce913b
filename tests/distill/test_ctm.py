"""Consistency trajectory models (monograph §11.4): G(x, t, t) = x, the s-derivative at s = t, gamma-sampling."""
import pytest
import torch
from torch import nn

from diffedu import distill, schedules as S, toy
from diffedu.data import batches
from diffedu.distill import consistency as C, ctm as T
from diffedu.engine import fit

SCHEDULES = [S.VPLinear(), S.VEGeometric(sigma_max=10.0), S.EDM(), S.RectifiedFlow()]


class PairConv(nn.Module):
    """A tiny conv net F(x, t, s) for (B, C, H, W): both times enter as extra channels."""

    def __init__(self, c=1):
        super().__init__()
        self.conv = nn.Conv2d(c + 2, c, 3, padding=1)

    def forward(self, x, t, s, cond=None):
        ch = [v.to(x.dtype).reshape(-1, 1, 1, 1).expand(len(x), 1, *x.shape[2:]) for v in (t, s)]
        return self.conv(torch.cat([x, *ch], 1))


def _models(sch):
    torch.manual_seed(0)
    return [(T.CTM(T.PairMLP(2, 32, 2), sch), torch.randn(8, 2) * 3), (T.CTM(PairConv(), sch), torch.randn(3, 1, 4, 4) * 3)]


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_a_jump_of_length_zero_is_the_identity(sch):
    for model, x in _models(sch):
        t = torch.rand(len(x)) * 0.9
        assert torch.equal(model.jump(x, t, t), x)
        assert torch.equal(model.jump(x, 0.0, 0.0), x)
        assert not torch.allclose(model.jump(x, t + 0.05, t), x)


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_the_s_derivative_at_s_equal_t_is_the_pf_ode_velocity(sch):
    # d/ds [A(t, s) x + B(t, s) g] at s = t, with g = E[x0 | x_t], is the PF-ODE velocity (autograd through the coefficients)
    mix = toy.eight_gaussians(radius=2.0)
    g = torch.Generator().manual_seed(0)
    x = mix.sample(16, g, dtype=torch.float64) + torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.8 + 0.1
    x0 = mix.posterior_mean(x, t, sch)
    h = 1e-5  # central differences of the coefficients in s, O(h^2)
    (Ap, Bp), (Am, Bm) = T.jump_coefficients(sch, t, t + h), T.jump_coefficients(sch, t, t - h)
    deriv = ((Ap - Am) / (2 * h))[:, None] * x + ((Bp - Bm) / (2 * h))[:, None] * x0
    torch.testing.assert_close(deriv, mix.velocity_t(x, t, sch), rtol=1e-6, atol=1e-6)
    # and the exact CTM's jumps (the flow map) have that derivative: finite differences with an O(h) gap
    exact = T.ExactCTM(mix, sch)
    v = mix.velocity_t(x, t, sch)
    errs = [float(((exact.jump(x, t, t - h) - x) / (-h) - v).abs().max()) for h in (1e-3, 5e-4)]
    assert errs[0] < 1e-2 * float(v.abs().max()) and 1.6 < errs[0] / errs[1] < 2.4


def test_gamma_one_is_consistency_multistep_and_gamma_zero_follows_the_flow():
    sch, mix = S.VPLinear(), toy.eight_gaussians(radius=2.0)
    model = _models(sch)[0][0]
    z = torch.randn(8, 2)
    ts = torch.tensor([1.0, 0.6, 0.3])
    a = T.sample_gamma(model, z, ts, 1.0, generator=torch.Generator().manual_seed(3))
    b = C.sample_consistency(model, z, ts.tolist(), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    exact = T.ExactCTM(mix, sch)
    zz = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(T.sample_gamma(exact, zz, ts.double(), 0.0), toy.flow_map(mix, sch, zz, 1.0, 0.0),
                               rtol=0, atol=1e-7)  # the semigroup: three exact jumps are one
    steps = []
    T.sample_gamma(model, z, ts, 0.5, generator=torch.Generator().manual_seed(0), callback=steps.append)
    assert [s.t for s in steps] == pytest.approx([0.6, 0.3, 0.0])
    one = T.sample_gamma(exact, zz, [1.0], 0.0)  # a one-time grid is one jump to the data
    torch.testing.assert_close(one, toy.flow_map(mix, sch, zz, 1.0, 0.0), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="^gamma:"):
        T.sample_gamma(model, z, ts, 1.5)
    with pytest.raises(ValueError, match="^ts:"):
        T.sample_gamma(model, z, [0.5, 0.7], 0.0)


def test_ctm_loss_on_both_shapes_and_errors(one_thread):
    sch, mix = S.VPLinear(), toy.eight_gaussians(radius=2.0)
    ts = C.consistency_grid(sch, 8)
    for model, x in _models(sch):
        loss = T.ctm_loss(model, x, ts, generator=torch.Generator().manual_seed(0))
        assert loss.shape == (len(x),) and torch.isfinite(loss).all()
        loss.mean().backward()
        assert all(p.grad is not None for p in model.parameters())
    model, x = _models(sch)[0]
    with torch.no_grad():
        assert torch.isfinite(T.ctm_loss(model, x, ts, teacher=mix.denoiser(sch))).all()
    with pytest.raises(ValueError, match="^s:"):
        model.jump(x, 0.2, 0.5)
    with pytest.raises(TypeError, match="^net:"):
        T.CTM(3, sch)


def test_short_ctm_training_approaches_the_exact_flow_map(one_thread):
    sch, mix = S.VPLinear(), toy.eight_gaussians(radius=2.0, std=0.3)
    g = torch.Generator().manual_seed(0)
    data = mix.sample(4096, g)
    torch.manual_seed(0)
    model = T.CTM(T.PairMLP(2, 64, 2), sch, sigma_data=float(data.std()))
    xt = mix.sample(64, g, dtype=torch.float64) * float(sch.alpha(torch.tensor(0.7))) + \
        float(sch.sigma(torch.tensor(0.7))) * torch.randn(64, 2, generator=g, dtype=torch.float64)
    t, s = torch.full((64,), 0.7, dtype=torch.float64), torch.full((64,), 0.2, dtype=torch.float64)
    ref = toy.flow_map(mix, sch, xt, t, s, rtol=1e-7, atol=1e-7).float()

    def error(m):
        with torch.no_grad():
            return float((m.jump(xt.float(), t.float(), s.float()) - ref).norm(dim=1).mean())

    ts = C.consistency_grid(sch, 20)
    before = error(model)
    res = fit(model, lambda m, x0, gen: T.ctm_loss(m, x0, ts, generator=gen), batches(data, 256, generator=1),
              steps=300, lr=2e-3, seed=0, progress=False)
    after = error(res.ema_model)
    assert after < 0.9 * before, (before, after)  # 300 steps: ~0.87 -> ~0.71 on this machine


def test_indices_are_ordered_and_local_pairs_are_neighbours():
    g = torch.Generator().manual_seed(0)
    i, j, k = T._ctm_indices(12, 4000, g, "cpu")
    assert (i < j).all() and (j <= k).all() and (k <= 11).all() and (j > i + 1).any()  # u anywhere in (t, s]
    i, j, k = T._ctm_indices(12, 4000, g, "cpu", local=True)
    assert (j == i + 1).all() and (j <= k).all()  # without a teacher: u is t's neighbour


def test_teacher_substeps_are_ddim_steps_equal_in_t():
    sch, mix = S.VPLinear(), toy.eight_gaussians(radius=2.0)
    exact = mix.denoiser(sch)
    x = torch.randn(16, 2, dtype=torch.float64)
    t, s = torch.full((16,), 0.9, dtype=torch.float64), torch.full((16,), 0.1, dtype=torch.float64)
    one, four = C.teacher_step(exact)(x, t, s), C.teacher_step(exact, substeps=4)(x, t, s)
    by_hand = x
    for a, b in ((0.9, 0.7), (0.7, 0.5), (0.5, 0.3), (0.3, 0.1)):
        by_hand = distill.ddim_step(exact, by_hand, torch.full_like(t, a), torch.full_like(t, b))
    torch.testing.assert_close(four, by_hand)
    ref = toy.flow_map(mix, sch, x, t, s)
    assert (four - ref).norm(dim=1).mean() < 0.5 * (one - ref).norm(dim=1).mean()  # more substeps, closer to the map
    with pytest.raises(ValueError, match="^substeps"):
        C.teacher_step(exact, substeps=0)
