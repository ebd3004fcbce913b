"""Langevin dynamics and annealed Langevin (NCSN) against exact stationary laws (monograph §3.1, §3.4)."""
import math

import pytest
import torch

from diffedu import toy
from diffedu.metrics import sliced_wasserstein
from diffedu.samplers import langevin_step, sample_annealed_langevin, sample_langevin, score_function
from diffedu.schedules import VEGeometric, VPLinear


@pytest.mark.parametrize("h", [0.05, 0.3])
def test_ula_stationary_law_of_a_gaussian_is_exact(h):
    # ULA on N(m, v): x' = (1 - h/v) x + h m / v + sqrt(2h) z has stationary law N(m, v / (1 - h / (2 v))).
    m, v, n = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64), 40_000
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 2, dtype=torch.float64)
    x = sample_langevin(lambda y: -(y - m) / v, x, step_size=h, n_steps=int(30 / h), generator=g)
    v_ula = v / (1 - h / (2 * v))
    assert (x.mean(0) - m).abs().max() < 4 * (v_ula.max() / n) ** 0.5
    assert ((x.var(0) / v_ula) - 1).abs().max() < 4 * math.sqrt(2 / n)
    # the bias is real: for the larger step the variance differs measurably from v
    if h == 0.3:
        assert (x.var(0) / v - 1)[0] > 0.25


def test_langevin_converges_to_a_mixture():
    mix = toy.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2]]), stds=0.7)
    g = torch.Generator().manual_seed(1)
    n = 4000
    x = 2 * torch.randn(n, 2, generator=g)
    x = sample_langevin(lambda y: mix.score_t(y, 0.0, None), x, step_size=0.01, n_steps=800, generator=g)
    ref = mix.sample(n, g)
    floor = sliced_wasserstein(mix.sample(n, g), ref, generator=g)
    sw = sliced_wasserstein(x, ref, generator=g)
    assert sw < 2 * floor, (float(sw), float(floor))  # measured: sw 0.03, floor 0.03


def test_annealed_langevin_recovers_mode_weights_on_eight_gaussians():
    # Plain Langevin on well-separated modes keeps the weights of its initialisation; annealing from a
    # large noise level (NCSN) lets particles choose modes while the density is still connected.
    mix = toy.eight_gaussians()
    sched = VEGeometric(0.05, 10.0)
    model = mix.denoiser(sched)
    g = torch.Generator().manual_seed(2)
    n = 4000
    ts = torch.linspace(1, 0, 30, dtype=torch.float64)[:-1]  # stop at t > 0
    x = sched.sigma(torch.tensor(1.0)) * torch.randn(n, 2, generator=g)
    eps = 0.1 * float(sched.sigma(ts[-1])) ** 2  # NCSN's epsilon: h_i / sigma_i^2 = 0.1 at every level
    x = sample_annealed_langevin(model, x, ts, n_steps_each=20, step_scale=eps, generator=g)
    ref = mix.sample(n, g)
    floor = sliced_wasserstein(mix.sample(n, g), ref, generator=g)  # two exact sample sets
    sw = sliced_wasserstein(x, ref, generator=g)
    assert sw < 2 * floor, (float(sw), float(floor))  # measured: sw 0.07, floor ~0.06
    nearest = torch.cdist(x.double(), mix.means).argmin(1)
    frac = torch.bincount(nearest, minlength=8) / n
    assert (frac - 1 / 8).abs().max() < 0.04


def test_score_function_from_a_model():
    mix = toy.eight_gaussians()
    model = mix.denoiser(VPLinear())
    x = torch.randn(10, 2)
    fn = score_function(model, t=0.4)
    assert torch.allclose(fn(x), mix.score_t(x, 0.4, VPLinear()), atol=1e-6)
    with pytest.raises(ValueError, match="t"):
        score_function(model)


def test_langevin_step_formula_and_errors():
    x, s, z = torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)
    assert torch.allclose(langevin_step(x, s, 0.1, noise=z), x + 0.1 * s + math.sqrt(0.2) * z)
    h = torch.full((5,), 0.1)
    assert torch.allclose(langevin_step(x, s, h, noise=z), x + 0.1 * s + math.sqrt(0.2) * z)
    with pytest.raises(ValueError, match="step_size"):
        langevin_step(x, s, -0.1)
    with pytest.raises(ValueError, match="score"):
        langevin_step(x, s[:, :1], 0.1)
    with pytest.raises(ValueError, match="n_steps"):
        sample_langevin(lambda y: -y, x, step_size=0.1, n_steps=0)
    with pytest.raises(ValueError, match="ts"):
        sample_annealed_langevin(toy.eight_gaussians().denoiser(VPLinear()), x, torch.linspace(1, 0, 5, dtype=torch.float64))
