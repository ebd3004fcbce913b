"""Guidance wrappers (diffedu.guidance) against the exact scores of a labelled Gaussian mixture (monograph §8.1-8.3)."""
import pytest
import torch

from diffedu import guidance, schedules, toy
from diffedu.samplers import ode


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _setup(batch=64):
    mix = toy.labelled_mixture()
    sch = schedules.VPLinear()
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(batch, 2, generator=g, dtype=torch.float64)
    c = torch.randint(0, mix.num_classes, (batch,), generator=g)
    return mix, sch, mix.denoiser(sch), x, c


def _grad(f, x):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xg).sum(), xg)
    return g


@pytest.mark.parametrize("t", [0.05, 0.3, 0.7])
@pytest.mark.parametrize("w", [0.5, 3.0])
def test_cfg_is_the_score_of_the_tilted_density(t, w):
    mix, sch, model, x, c = _setup()
    guide = guidance.cfg(model, w, null_label=mix.num_classes)
    tt = torch.full((len(x),), t, dtype=x.dtype)
    got = guide(x, tt, c).score
    tilted = _grad(lambda z: (1 + w) * mix.log_prob_t(z, tt, sch, cond=c) - w * mix.log_prob_t(z, tt, sch), x)
    assert torch.allclose(got, tilted, atol=1e-9, rtol=1e-7)


def test_cfg_limits():
    mix, sch, model, x, c = _setup()
    tt = torch.full((len(x),), 0.4, dtype=x.dtype)
    C = mix.num_classes
    assert torch.allclose(guidance.cfg(model, 0.0, C)(x, tt, c).eps, model(x, tt, c).eps, atol=1e-12)
    assert torch.allclose(guidance.cfg(model, -1.0, C)(x, tt, c).eps, model(x, tt, torch.full_like(c, C)).eps, atol=1e-12)


@pytest.mark.parametrize("w", [1.0, 2.5])
def test_classifier_guidance_with_exact_classifier(w):
    # grad log p_t(x) + w grad log p_t(c|x); at w = 1 exactly the conditional score grad log p_t(x|c) (Bayes, monograph §8.1)
    mix, sch, model, x, c = _setup()
    tt = torch.full((len(x),), 0.35, dtype=x.dtype)
    guide = guidance.classifier_guidance(model, lambda z, s: mix.class_log_probs_t(z, s, sch), w)
    got = guide(x, tt, c).score
    cond, uncond = mix.score_t(x, tt, sch, cond=c), mix.score_t(x, tt, sch)
    assert torch.allclose(got, uncond + w * (cond - uncond), atol=1e-9, rtol=1e-7)


def test_dps_gradient_matches_closed_form_for_a_gaussian():
    mu, s, sy, zeta = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.8, 0.3, 0.7
    sch = schedules.VPLinear()
    model = toy.gaussian(mu, s**2 * torch.eye(2)).denoiser(sch)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tt = torch.full((16,), 0.4, dtype=torch.float64)
    a, sg = sch.alpha(tt)[:, None], sch.sigma(tt)[:, None]
    k = a * s**2 / (a**2 * s**2 + sg**2)  # d x0_hat / d x_t for N(mu, s^2 I) data
    x0_hat = mu + k * (x - a * mu)
    score = -(x - a * mu) / (a**2 * s**2 + sg**2) + zeta * k * (y - x0_hat) / sy**2
    got = guidance.DPSGuidance(model, lambda z: z, y, sy, zeta)(x, tt).score
    assert torch.allclose(got, score, atol=1e-10)


def test_guides_keep_the_model_contract_in_every_sampler():
    mix, sch, model, x, c = _setup(32)
    guide = guidance.cfg(model, 2.0, mix.num_classes)
    ts = ode.grid_power(8, 2.0)
    for name, (fn, kw) in ode.SOLVERS.items():
        out = fn(guide, x, ts, cond=c, **kw)
        assert out.shape == x.shape and torch.isfinite(out).all(), name
    # guided samples land nearer their own class than unguided conditional ones
    x1 = torch.randn(400, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    c1 = torch.zeros(400, dtype=torch.long)
    ts = ode.grid_power(30, 2.0)
    plain = ode.sample_dpm_solver_pp_3m(model, x1, ts, cond=c1)
    strong = ode.sample_dpm_solver_pp_3m(guidance.cfg(model, 4.0, mix.num_classes), x1, ts, cond=c1)
    lp = lambda z: mix.class_log_probs_t(z, torch.zeros(len(z), dtype=z.dtype), sch)[:, 0].mean()  # noqa: E731
    assert lp(strong) > lp(plain)


def test_drop_labels_and_errors():
    lab = torch.zeros(20000, dtype=torch.long)
    out = guidance.drop_labels(lab, 0.2, 7, generator=torch.Generator().manual_seed(0))
    frac = (out == 7).double().mean().item()
    assert abs(frac - 0.2) < 0.02 and set(out.unique().tolist()) == {0, 7}
    mix, sch, model, x, c = _setup(4)
    tt = torch.full((4,), 0.5, dtype=x.dtype)
    with pytest.raises(ValueError, match="cond"):
        guidance.cfg(model, 1.0, 3)(x, tt)
    with pytest.raises(ValueError, match="cond"):
        guidance.cfg(model, 1.0, 3)(x, tt, c.double())
    with pytest.raises(TypeError, match="w"):
        guidance.cfg(model, "big", 3)
    with pytest.raises(TypeError, match="model"):
        guidance.cfg(object(), 1.0, 3)
    with pytest.raises(ValueError, match="p"):
        guidance.drop_labels(lab, 1.5, 3)
