"""Reverse-SDE samplers: Euler-Maruyama and predictor-corrector against exact marginals (monograph §4.2, §4.4)."""
import pytest
import torch

from diffedu import schedules as S, toy
from diffedu.forward import add_noise
from diffedu.metrics import moment_errors, sliced_wasserstein
from diffedu.samplers.grids import grid_uniform
from diffedu.samplers.ode import sample_heun
from diffedu.samplers.sde import langevin_corrector_step, reverse_sde_step, sample_euler_maruyama, sample_pc
from diffedu.sde import diffusion_sq, drift_coef

GAUSS = toy.gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.2], [0.2, 0.3]]))


def _start(mix, sch, n, g, t=1.0):
    return add_noise(sch, mix.sample(n, g, dtype=torch.float64), t, generator=g).x_t


def _exact_moments(mix, sch, t):
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = sch.alpha(tt), sch.sigma(tt)
    return a * mix.mean(), a**2 * mix.covariance() + s**2 * torch.eye(mix.dim, dtype=torch.float64)


@pytest.mark.parametrize("sch", [S.VPLinear(), S.SubVP(), S.VEGeometric(sigma_max=5.0)], ids=lambda s: type(s).__name__)
def test_euler_maruyama_reaches_exact_gaussian_marginal(sch):
    g = torch.Generator().manual_seed(0)
    n, t_end = 10000, 0.05
    x = sample_euler_maruyama(GAUSS.denoiser(sch), _start(GAUSS, sch, n, g), grid_uniform(100, 1.0, t_end), generator=g)
    mean, cov = _exact_moments(GAUSS, sch, t_end)
    em, ec = moment_errors(x, mean, cov)
    assert em < 0.05 and ec < 0.1, (em.item(), ec.item())
    # a sampler that stops early (wrong marginal) is caught by the same check
    x_bad = sample_euler_maruyama(GAUSS.denoiser(sch), _start(GAUSS, sch, n, g), grid_uniform(20, 1.0, 0.8), generator=g)
    assert sum(moment_errors(x_bad, mean, cov)) > 0.3


def test_pc_and_em_and_pf_ode_share_the_mixture_marginal():
    mix, sch = toy.eight_gaussians(radius=2.0, std=0.3), S.VPLinear()
    g = torch.Generator().manual_seed(1)
    n, t_end, model = 2000, 1e-3, mix.denoiser(sch)
    x1 = _start(mix, sch, n, g)
    outs = {
        "em": sample_euler_maruyama(model, x1, grid_uniform(150, 1.0, t_end), generator=g),
        "pc": sample_pc(model, x1, grid_uniform(40, 1.0, t_end), generator=g),
        "ode": sample_heun(model, x1, grid_uniform(40, 1.0, t_end)),
    }
    ref = _start(mix, sch, n, g, t_end)
    floor = sliced_wasserstein(_start(mix, sch, n, g, t_end), ref, generator=torch.Generator().manual_seed(0))
    for name, x in outs.items():
        d = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
        assert d < floor + 0.06, (name, d.item(), floor.item())
    # without noise the reverse SDE does not reach p_0 (its drift is the PF-ODE's doubled)
    x_nonoise = x1.clone()
    ts = grid_uniform(100, 1.0, t_end)
    for i in range(100):
        x_nonoise, _ = reverse_sde_step(model, x_nonoise, float(ts[i]), float(ts[i + 1]), noise=torch.zeros_like(x1))
    assert sliced_wasserstein(x_nonoise, ref, generator=torch.Generator().manual_seed(0)) > floor + 0.2


def test_reverse_step_formula():
    sch, model = S.VPLinear(), GAUSS.denoiser(S.VPLinear())
    x = torch.randn(5, 2, dtype=torch.float64)
    z = torch.randn(5, 2, dtype=torch.float64)
    t, s = 0.6, 0.55
    out, pred = reverse_sde_step(model, x, t, s, noise=z)
    tt = torch.tensor(t, dtype=torch.float64)
    f, g2 = drift_coef(sch, tt), diffusion_sq(sch, tt)
    score = GAUSS.score_t(x, t, sch)
    torch.testing.assert_close(out, x - (t - s) * (f * x - g2 * score) + torch.sqrt(g2 * (t - s)) * z)


def test_langevin_corrector_keeps_exact_marginal_invariant():
    sch = S.VPLinear()
    g = torch.Generator().manual_seed(2)
    x = _start(GAUSS, sch, 10000, g, 0.3)
    for _ in range(20):
        x = langevin_corrector_step(GAUSS.denoiser(sch), x, 0.3, snr=0.1, generator=g)
    em, ec = moment_errors(x, *_exact_moments(GAUSS, sch, 0.3))
    assert em < 0.05 and ec < 0.1


def test_bad_inputs_raise():
    model = GAUSS.denoiser(S.VPLinear())
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="decreasing"):
        sample_euler_maruyama(model, x, torch.linspace(0, 1, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="model"):
        sample_pc(lambda a, b, c=None: a, x, grid_uniform(3))
    with pytest.raises(ValueError, match="snr"):
        sample_pc(model, x, grid_uniform(3), snr=-1.0)
