"""Fokker-Planck and continuity equations on the exact mixture marginals (monograph §4.2, §4.4, §5.3)."""
import pytest
import torch

from diffedu import schedules as S, toy
from diffedu.likelihood.fokker_planck import (continuity_residual, fokker_planck_residual, fokker_planck_residual_grid,
                                   histogram_density, l1_distance, make_grid, solve_fokker_planck)
from diffedu.forward import add_noise
from diffedu.sde import simulate_forward_sde

SCHEDULES = [S.VPLinear(), S.SubVP(), S.VEGeometric(sigma_max=10.0), S.RectifiedFlow(), S.VPCosine()]
MIX = toy.labelled_mixture()  # anisotropic full covariances


def _points(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * 3, torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_exact_marginals_solve_fokker_planck(sch):
    x, t = _points()
    r = fokker_planck_residual(lambda z, s: MIX.log_prob_t(z, s, sch), sch, x, t)
    assert r.abs().max() < 1e-8
    # a density that is *not* the diffused one fails: the marginal of a different schedule
    wrong = S.VPCosine() if not isinstance(sch, S.VPCosine) else S.VPLinear()
    r_bad = fokker_planck_residual(lambda z, s: MIX.log_prob_t(z, s, wrong), sch, x, t)
    assert r_bad.abs().max() > 1e-2


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_marginal_velocity_solves_continuity_equation(sch):
    x, t = _points(seed=1)
    lp = lambda z, s: MIX.log_prob_t(z, s, sch)  # noqa: E731
    r = continuity_residual(lp, lambda z, s: MIX.velocity_t(z, s, sch), x, t)
    assert r.abs().max() < 1e-8
    r_bad = continuity_residual(lp, lambda z, s: 1.1 * MIX.velocity_t(z, s, sch), x, t)
    assert r_bad.abs().max() > 1e-2


def test_grid_residual_is_second_order():
    sch = S.VPLinear()
    pf = lambda pts, t: MIX.log_prob_t(pts, t, sch).exp()  # noqa: E731
    ratios = []
    for n in (30, 60):
        res, scale = fokker_planck_residual_grid(pf, sch, 0.2, make_grid(6.0, n), dt=1e-3)
        ratios.append(res / scale)
    assert ratios[1] < ratios[0] / 3  # ~ 4x per halving of h
    assert ratios[1] < 0.05


def test_finite_volume_solution_matches_exact_and_conserves_mass():
    sch = S.VPLinear()
    pf = lambda pts, t: MIX.log_prob_t(pts, t, sch).exp()  # noqa: E731
    errs = []
    for n in (40, 80):
        G = make_grid(6.0, n)
        p0 = pf(G.points, 0.05).reshape(G.shape).numpy()
        (p,) = solve_fokker_planck(p0, sch, G, 0.05, [0.3])
        assert abs(p.sum() * G.h**2 - p0.sum() * G.h**2) < 1e-10
        errs.append(l1_distance(p, pf(G.points, 0.3).reshape(G.shape).numpy(), G))
    assert errs[1] < 0.02 and errs[1] < errs[0] / 2.5, errs


def test_forward_sde_particles_match_exact_marginal():
    sch = S.VPLinear()
    g = torch.Generator().manual_seed(0)
    G = make_grid(6.0, 30)
    exact = MIX.log_prob_t(G.points, 0.3, sch).exp().reshape(G.shape).numpy()
    x0 = MIX.sample(20000, g, dtype=torch.float64)
    x_sde = simulate_forward_sde(sch, x0, torch.linspace(0, 0.3, 61, dtype=torch.float64), generator=g)
    x_ref = add_noise(sch, MIX.sample(20000, g, dtype=torch.float64), 0.3, generator=g).x_t
    d_sde = l1_distance(histogram_density(x_sde, G), exact, G)
    d_ref = l1_distance(histogram_density(x_ref, G), exact, G)
    assert d_sde < d_ref + 0.03, (d_sde, d_ref)
    # and particles of the wrong time are visibly different
    x_wrong = add_noise(sch, MIX.sample(20000, g, dtype=torch.float64), 0.6, generator=g).x_t
    assert l1_distance(histogram_density(x_wrong, G), exact, G) > d_ref + 0.2


def test_bad_inputs_raise():
    G = make_grid(3.0, 10)
    with pytest.raises(ValueError, match="p0"):
        solve_fokker_planck(torch.zeros(5, 5).numpy(), S.VPLinear(), G, 0.0, [0.1])
    with pytest.raises(ValueError, match="times"):
        solve_fokker_planck(torch.zeros(10, 10).numpy(), S.VPLinear(), G, 0.5, [0.1])
    with pytest.raises(ValueError, match="n"):
        make_grid(3.0, 2)
    with pytest.raises(TypeError, match="schedule"):
        fokker_planck_residual(lambda z, s: z.sum(1), "vp", torch.zeros(2, 2), 0.5)
