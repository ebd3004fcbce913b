"""Flow matching: conditional vs marginal velocity, path changes, straightness, Reflow (monograph §5.3-5.4, §6.4)."""
import functools

import pytest
import torch

from diffedu import schedules as S, toy
from diffedu.objectives.flow_matching import (PATHS, PathChange, conditional_fm_loss, conditional_velocity, marginal_fm_loss,
                                   match_time, reflow_pairs, straightness)
from diffedu.nets import MLP
from diffedu.param import Denoiser
from diffedu.samplers import grid_uniform, sample_heun_t, solve_pf_ode_reference

MIX = toy.eight_gaussians(radius=2.0, std=0.3)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_conditional_velocity_is_time_derivative_of_path(name):
    sch = PATHS[name]
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    t = torch.rand(5, generator=g, dtype=torch.float64) * 0.9 + 0.05
    tr = t.clone().requires_grad_(True)
    path = sch.alpha(tr)[:, None] * x0 + sch.sigma(tr)[:, None] * x1
    d = torch.stack([torch.autograd.grad(path[:, j].sum(), tr, retain_graph=True)[0] for j in range(2)], -1)
    torch.testing.assert_close(conditional_velocity(x0, x1, t, sch), d)
    if name == "rectified_flow":
        torch.testing.assert_close(conditional_velocity(x0, x1, t, sch), x1 - x0)


def test_posterior_mean_of_conditional_velocity_is_marginal_velocity():
    # E[u(x_t | x0, x1) | x_t] = u_t(x_t): the heart of "conditional FM = marginal FM + const" (monograph §5.3)
    sch = S.RectifiedFlow()
    g = torch.Generator().manual_seed(1)
    xt = torch.tensor([[0.7, 0.2], [-1.0, 1.3], [0.0, 0.0]], dtype=torch.float64)
    t = 0.6
    M = 20000
    xs = xt.repeat_interleave(M, 0)
    x0 = MIX.posterior_sample(xs, t, sch, generator=g)
    tt = torch.full((len(xs),), t, dtype=torch.float64)
    x1 = (xs - sch.alpha(tt)[:, None] * x0) / sch.sigma(tt)[:, None]
    uc = conditional_velocity(x0, x1, tt, sch).reshape(3, M, 2)
    u = MIX.velocity_t(xt, t, sch)
    se = uc.std(1) / M**0.5
    assert ((uc.mean(1) - u).abs() < 5 * se + 1e-9).all()


def test_conditional_and_marginal_fm_have_same_gradient():
    sch = S.RectifiedFlow()
    torch.manual_seed(0)
    model = Denoiser(MLP(2, 32, 2), sch, "velocity").double()
    target = MIX.denoiser(sch)
    g = torch.Generator().manual_seed(2)
    xt = MIX.sample(8, g, dtype=torch.float64) * 0.5
    t = torch.full((8,), 0.5, dtype=torch.float64)
    M = 16000
    xs, ts = xt.repeat_interleave(M, 0), t.repeat_interleave(M)
    x0 = MIX.posterior_sample(xs, ts, sch, generator=g)
    x1 = (xs - sch.alpha(ts)[:, None] * x0) / sch.sigma(ts)[:, None]

    def grad(loss):
        model.zero_grad()
        loss.mean().backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    g_cfm = grad(conditional_fm_loss(model, x0, t=ts, x1=x1))
    g_mfm = grad(marginal_fm_loss(model, target, xt, t))
    rel = (g_cfm - g_mfm).norm() / g_mfm.norm()
    assert rel < 0.05, rel.item()
    # ... while the gradient towards a different field (scaled velocity) is far off
    g_bad = grad(marginal_fm_loss(model, lambda x, s: 1.3 * target(x, s).velocity, xt, t))
    assert (g_bad - g_mfm).norm() / g_mfm.norm() > 4 * rel
    # the losses themselves differ (by the constant E||u_cond - u||^2 > 0)
    with torch.no_grad():
        gap = conditional_fm_loss(model, x0, t=ts, x1=x1).mean() - marginal_fm_loss(model, target, xt, t).mean()
    assert gap > 0.05


def test_marginal_fm_loss_is_zero_for_exact_velocity():
    sch = S.RectifiedFlow()
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.full((6,), 0.4, dtype=torch.float64)
    assert marginal_fm_loss(MIX.denoiser(sch), MIX.denoiser(sch), x, t).abs().max() < 1e-20


@pytest.mark.parametrize("src,dst", [(S.VPLinear(), S.RectifiedFlow()), (S.RectifiedFlow(), S.VPCosine()),
                                     (S.VEGeometric(), S.RectifiedFlow())], ids=["vp->rf", "rf->cos", "ve->rf"])
def test_path_change_turns_one_oracle_into_the_other(src, dst):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64) * 2
    s = torch.rand(16, generator=g, dtype=torch.float64) * 0.5 + 0.25
    mapped = PathChange(MIX.denoiser(src), dst)(x, s)
    direct = MIX.predict(x, s, dst)
    for kind in ("x0", "eps", "velocity", "score"):
        torch.testing.assert_close(mapped.as_kind(kind), direct.as_kind(kind), rtol=1e-8, atol=1e-9)


def test_match_time_round_trip():
    vp, rf = S.VPLinear(), S.RectifiedFlow()
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    s, scale = match_time(vp, rf, t)
    t_back, scale_back = match_time(rf, vp, s)
    torch.testing.assert_close(t_back, t)
    torch.testing.assert_close(scale * scale_back, torch.ones_like(t))
    # for VP -> RF the closed form is s = sigma / (alpha + sigma), scale = 1 / (alpha + sigma)
    a, sg = vp.alpha(t), vp.sigma(t)
    torch.testing.assert_close(s, sg / (a + sg))
    torch.testing.assert_close(scale, 1 / (a + sg))


def test_straightness_closed_forms():
    ts = torch.linspace(0, 1, 2001, dtype=torch.float64)
    line = torch.stack([ts, 2 * ts], -1)[:, None, :]  # straight, constant speed
    assert straightness(line, ts).abs().max() < 1e-20
    para = torch.stack([ts, ts**2], -1)[:, None, :]  # v = (1, 2t), chord (1, 1): int (2t-1)^2 dt / 2 dims = 1/6
    assert abs(straightness(para, ts).item() - 1 / 6) < 1e-5


def test_reflow_pairs_follow_the_ode():
    sch = S.RectifiedFlow()
    model = MIX.denoiser(sch)
    x1 = torch.randn(20, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pairs = reflow_pairs(model, x1, functools.partial(sample_heun_t, ts=grid_uniform(64)))
    ref = solve_pf_ode_reference(model, x1, 1.0, 0.0, rtol=1e-8, atol=1e-8)
    assert (pairs.x0 - ref).abs().max() < 2e-2
    assert pairs.x1 is not None and torch.equal(pairs.x1, x1)
    # any solve(model, x1) -> x0 will do; cond is passed on only when given
    seen = {}

    def solve(m, x, cond=None):
        seen["cond"] = cond
        return sample_heun_t(m, x, grid_uniform(64))

    assert torch.equal(reflow_pairs(model, x1, solve).x0, pairs.x0) and seen["cond"] is None
    with pytest.raises(TypeError, match="sampler"):
        reflow_pairs(model, x1, 64)  # the old n_steps argument: the sampler is now required
    with pytest.raises(ValueError, match="sampler output"):
        reflow_pairs(model, x1, lambda m, x: x[:3])


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="schedule"):
        conditional_velocity(torch.zeros(2, 2), torch.zeros(2, 2), 0.5, "rf")
    with pytest.raises(ValueError, match="x1"):
        conditional_velocity(torch.zeros(2, 2), torch.zeros(3, 2), 0.5, S.RectifiedFlow())
    with pytest.raises(ValueError, match="ts"):
        straightness(torch.zeros(5, 2, 2), torch.linspace(0, 1, 4))
    with pytest.raises(TypeError, match="model"):
        PathChange(lambda x, t: x, S.RectifiedFlow())
