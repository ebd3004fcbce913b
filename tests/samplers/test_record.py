"""One step record for every sampler: callback(step), progress=, and trajectory() (diffedu.samplers.record)."""
import dataclasses

import pytest
import torch

from diffedu import schedules as S, toy
from diffedu.param import Prediction
from diffedu.samplers import (SOLVERS, Step, grid_uniform, sample_ancestral, sample_annealed_langevin,
                              sample_euler_maruyama, sample_langevin, sample_pc, trajectory)

MIX = toy.eight_gaussians()
VP = S.VPLinear()
TS = grid_uniform(4, 1.0, 0.05)  # ends at t > 0: every sampler here accepts it


def _x(n=6):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _gen():
    return torch.Generator().manual_seed(7)


#: name -> (sampler, first argument, ts, kwargs, [(i, t)] it must report, has a prediction)
CASES = {
    "ancestral": (sample_ancestral, MIX.denoiser(VP), TS, {}, list(enumerate(TS[1:].tolist())), True),
    "euler_maruyama": (sample_euler_maruyama, MIX.denoiser(VP), TS, {}, list(enumerate(TS[1:].tolist())), True),
    "euler_maruyama+denoise": (sample_euler_maruyama, MIX.denoiser(VP), TS, {"denoise": True},
                               list(enumerate(TS[1:].tolist())) + [(4, 0.0)], True),
    "pc+denoise": (sample_pc, MIX.denoiser(VP), TS, {"n_corrector": 2, "denoise": True},
                   list(enumerate(TS[1:].tolist())) + [(4, 0.0)], True),
    "langevin (score fn)": (sample_langevin, lambda y: MIX.score_t(y, 0.0, None), None,
                            {"step_size": 0.01, "n_steps": 5}, [(k, None) for k in range(5)], False),
    "langevin (model)": (sample_langevin, MIX.denoiser(VP), None, {"step_size": 0.01, "n_steps": 3, "t": 0.3},
                         [(k, 0.3) for k in range(3)], False),
    "annealed_langevin": (sample_annealed_langevin, MIX.denoiser(S.VEGeometric(0.05, 10.0)), TS,
                          {"n_steps_each": 3, "step_scale": 1e-4, "denoise_last": True},
                          [(3 * j + k, t) for j, t in enumerate(TS.tolist()) for k in range(3)] + [(15, 0.0)], True),
}


def _run(fn, first, ts, **kw):
    args = (first, _x()) if ts is None else (first, _x(), ts)
    return fn(*args, generator=_gen(), **kw)


@pytest.mark.parametrize("name", CASES)
def test_every_stochastic_sampler_reports_steps_and_trajectory_collects_them(name):
    fn, first, ts, kw, expect, has_pred = CASES[name]
    seen = []
    out = _run(fn, first, ts, callback=seen.append, **kw)
    assert all(isinstance(s, Step) for s in seen)
    assert [(s.i, s.t) for s in seen] == expect  # t: the grid's own float64 times (0.0 for a final denoising)
    assert torch.equal(seen[-1].x, out)  # the last step is what the sampler returns (final denoising included)
    assert all(isinstance(s.prediction, Prediction) if has_pred else s.prediction is None for s in seen)
    # trajectory works the same way for every sampler: the start, then every step's state
    got = trajectory(fn, first, _x(), ts, generator=_gen(), **kw)
    assert got.shape == (1 + len(expect), *out.shape) and torch.equal(got[0], _x()) and torch.equal(got[-1], out)
    # a callback given to trajectory still sees every step; progress=True changes nothing but the display
    more = []
    trajectory(fn, first, _x(), ts, generator=_gen(), callback=more.append, **kw)
    assert [s.i for s in more] == [s.i for s in seen]
    assert torch.equal(_run(fn, first, ts, progress=True, **kw), out)


def test_trajectory_covers_the_ode_solvers_too():
    model = MIX.denoiser(VP)
    for name, (fn, kw) in SOLVERS.items():
        got = trajectory(fn, model, _x(), grid_uniform(5, 0.99, 0.0), **kw)
        assert got.shape == (6, 6, 2) and torch.equal(got[-1], fn(model, _x(), grid_uniform(5, 0.99, 0.0), **kw)), name


def test_step_is_immutable_and_bad_callbacks_name_the_argument():
    s = Step(0, 0.5, torch.zeros(2, 2))
    assert s.prediction is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.x = torch.ones(2, 2)
    model = MIX.denoiser(VP)
    old_forms = {"ancestral": lambda i, x, p: None, "langevin": lambda k, x: None, "annealed": lambda i, k, x: None}
    calls = {
        "ancestral": lambda cb: sample_ancestral(model, _x(), TS, callback=cb),
        "langevin": lambda cb: sample_langevin(lambda y: -y, _x(), step_size=0.1, n_steps=2, callback=cb),
        "annealed": lambda cb: sample_annealed_langevin(model, _x(), TS, n_steps_each=1, callback=cb),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=r"callback: expected callback\(step\)"):
            call(old_forms[name])
        with pytest.raises(TypeError, match="callback"):
            call("print")
    with pytest.raises(TypeError, match="progress"):
        sample_pc(model, _x(), TS, progress=1)
    with pytest.raises(TypeError, match="callback"):
        trajectory(sample_ancestral, model, _x(), TS, callback=lambda i, x, p: None)
