"""Chapter 11's exercise checkers: the references agree with the package, and typical mistakes are caught."""
from __future__ import annotations

import pytest
import torch

from diffedu import distill
from diffedu.exercises import ExerciseFailed, ch11
from diffedu.schedules import RectifiedFlow, VPCosine, VPLinear

D64 = torch.float64


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), RectifiedFlow()])
def test_boundary_reference_is_the_package_parameterisation(schedule):
    t = torch.linspace(0.0, 0.99, 7, dtype=D64)
    c_skip, c_out, _ = distill.boundary_coefficients(schedule, t, 0.5)
    assert torch.allclose(ch11.boundary_coefficients(t, schedule, 0.5), torch.stack([c_skip, c_out]), atol=1e-12)


def test_meanflow_and_multistep_references_are_the_package():
    g = torch.Generator().manual_seed(0)
    v, u, dudt = (torch.randn(5, 2, generator=g, dtype=D64) for _ in range(3))
    t = torch.rand(5, generator=g, dtype=D64)
    r = 0.5 * t
    assert torch.allclose(ch11.meanflow_target(v, u, dudt, t, r), distill.meanflow_target(v, dudt, t, r))
    sch = VPCosine()
    model = distill.ConsistencyModel(lambda x, tt: torch.tanh(x) * tt[:, None], sch)
    x = torch.randn(5, 2, generator=g, dtype=D64)
    ts = torch.tensor([1.0, 0.6, 0.3], dtype=D64)
    ours = distill.sample_consistency(model, x, ts, generator=torch.Generator().manual_seed(7))
    noise_gen = torch.Generator().manual_seed(7)
    noises = torch.stack([torch.randn(x.shape, generator=noise_gen).to(x) for _ in range(2)])
    assert torch.allclose(ch11.multistep_consistency(model.consistency, x, ts, noises, sch), ours, atol=1e-12)


def test_typical_mistakes_are_caught():
    # c_skip = alpha_t, c_out = sigma_t: right at t = 0, wrong elsewhere
    with pytest.raises(ExerciseFailed, match="t=0.3, 0.9"):
        ch11.check_boundary_coefficients(lambda t, sch, sd: torch.stack([sch.alpha(t), sch.sigma(t)]))
    # a tuple is named as such (the sandboxed grader ships tensors only, so the exercise asks for one stacked tensor)
    ref = ch11.boundary_coefficients
    with pytest.raises(ExerciseFailed, match="returned tuple"):
        ch11.check_boundary_coefficients(lambda t, sch, sd: tuple(ref(t, sch, sd)))
    # MeanFlow: the wrong sign of the correction, or (t - r) u in place of (t - r) du/dt
    with pytest.raises(ExerciseFailed):
        ch11.check_meanflow_target(lambda v, u, dudt, t, r: v + (t - r)[:, None] * dudt)
    with pytest.raises(ExerciseFailed):
        ch11.check_meanflow_target(lambda v, u, dudt, t, r: v - (t - r).reshape(-1, *[1] * (v.ndim - 1)) * u)
    # multistep: no re-noising (one-step only), or re-noising the current x instead of the estimate x0
    with pytest.raises(ExerciseFailed, match="wrong"):
        ch11.check_multistep_consistency(lambda f, x, ts, noises, sch: f(x, float(ts[0])))

    def renoise_x(f, x, ts, noises, sch):
        x0 = f(x, float(ts[0]))
        for i in range(1, len(ts)):
            x = float(sch.alpha(float(ts[i]))) * x + float(sch.sigma(float(ts[i]))) * noises[i - 1]
            x0 = f(x, float(ts[i]))
        return x0
    with pytest.raises(ExerciseFailed):
        ch11.check_multistep_consistency(renoise_x)
