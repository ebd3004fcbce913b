"""ParaDiGMS (diffedu.samplers.parallel): Picard sweeps over a sliding window reproduce the sequential sampler (monograph §9.8)."""
import pytest
import torch

from diffedu import schedules, toy
from diffedu.samplers import CountingModel, ode, sample_paradigms, trajectory
from diffedu.samplers.grids import grid_power, grid_uniform

pytestmark = pytest.mark.usefixtures("one_thread")

SEQUENTIAL = {"ddim": ode.sample_ddim, "euler": ode.sample_euler}


def _problem(n=64):
    mix = toy.GaussianMixture([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], stds=[0.3, 0.6, 0.45], weights=[0.2, 0.5, 0.3])
    sch = schedules.DiscreteSchedule.linear()
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return mix.denoiser(sch), x


@pytest.mark.parametrize("step", ["ddim", "euler"])
def test_window_one_is_the_sequential_sampler_bit_for_bit(step):
    model, x = _problem()
    ts = grid_power(25, 2.0)
    assert torch.equal(sample_paradigms(model, x, ts, step=step, window=1), SEQUENTIAL[step](model, x, ts))


@pytest.mark.parametrize("step", ["ddim", "euler"])
@pytest.mark.parametrize("tol", [1e-2, 1e-4])
def test_result_equals_the_sequential_sampler_to_the_tolerance(step, tol):
    # the fixed point of the Picard sweeps is the sequential chain; the sweeps stop when each point moves by less
    # than tol x its step's noise scale (<= 1 on a VP schedule), so the output is within a small multiple of tol
    model, x = _problem()
    ts = grid_power(60, 2.0)
    seq = SEQUENTIAL[step](model, x, ts)
    par = sample_paradigms(model, x, ts, step=step, window=16, tol=tol)
    dev = float((par - seq).abs().max())
    assert dev <= 5 * tol, dev
    assert dev > 0 or tol == 0  # it is an approximation: a test that could not tell would be no test
    tighter = float((sample_paradigms(model, x, ts, step=step, window=16, tol=tol / 100) - seq).abs().max())
    assert tighter < dev / 10, (dev, tighter)


def test_tolerance_zero_is_exact_in_at_most_n_rounds():
    model, x = _problem(8)
    ts = grid_uniform(12, 1.0, 0.0)
    seq = ode.sample_ddim(model, x, ts)
    rounds = []
    par = sample_paradigms(model, x, ts, window=5, tol=0.0, callback=rounds.append)
    assert len(rounds) <= 12 and float((par - seq).abs().max()) < 1e-12


def test_fewer_rounds_than_steps_with_one_batched_call_per_round():
    model, x = _problem()
    counting = CountingModel(model)
    n, window = 100, 20
    ts = grid_power(n, 2.0)
    records = []
    out = sample_paradigms(counting, x, ts, window=window, tol=1e-3, callback=records.append)
    rounds = len(records)
    assert rounds == len(counting.batch_sizes)  # one model call per round ...
    assert all(b % len(x) == 0 and b // len(x) <= window for b in counting.batch_sizes)  # ... on the whole window at once
    assert max(counting.batch_sizes) == window * len(x)
    assert rounds < n / 3, rounds  # measured: 16 rounds for 100 steps (window 20, tol 1e-3)
    # the record: rounds numbered 0.., times decreasing to the end of the grid, the last state is the output
    assert [r.i for r in records] == list(range(rounds))
    assert all(a.t > b.t for a, b in zip(records, records[1:])) and records[-1].t == 0.0
    assert torch.equal(records[-1].x, out)
    assert records[0].prediction.x0.shape == x.shape and torch.equal(records[0].prediction.x_t, x)
    assert torch.equal(trajectory(sample_paradigms, model, x, ts, window=window, tol=1e-3)[-1], out)


def test_max_iters_caps_the_sweeps_per_point():
    # one sweep per point accepts every window after a single Picard iteration: few rounds, a cruder answer
    model, x = _problem()
    ts = grid_power(40, 2.0)
    seq = ode.sample_ddim(model, x, ts)
    one, full = [], []
    a = sample_paradigms(model, x, ts, window=8, tol=1e-6, max_iters=1, callback=one.append)
    b = sample_paradigms(model, x, ts, window=8, tol=1e-6, callback=full.append)
    assert len(one) == 5 and len(full) > len(one)  # 40 steps / window 8
    assert float((a - seq).abs().max()) > 10 * float((b - seq).abs().max())


def test_images_and_conditioning_shapes():
    # (B, C, H, W) data and a class label per example go through the batched window call
    lab = toy.labelled_mixture()
    sch = schedules.VPLinear()
    model = lab.denoiser(sch)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    ts = grid_uniform(16, 1.0, 1e-3)
    seq = ode.sample_ddim(model, x, ts, cond=c)
    assert float((sample_paradigms(model, x, ts, window=4, tol=1e-8, cond=c) - seq).abs().max()) < 1e-6

    img = toy.GaussianMixture(torch.zeros(1, 12), stds=[0.5]).denoiser(sch)
    xi = torch.randn(3, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    wrap = type("M", (), {"schedule": sch, "__call__": lambda self, x, t, cond=None: _flat(img, x, t)})()
    out = sample_paradigms(wrap, xi.reshape(3, 1, 3, 4), ts, window=4, tol=1e-8)
    assert out.shape == (3, 1, 3, 4)
    assert float((out.reshape(3, 12) - ode.sample_ddim(img, xi, ts)).abs().max()) < 1e-6


def _flat(model, x, t):
    from diffedu.param import Prediction

    p = model(x.reshape(len(x), -1), t)
    return Prediction(x0=p.x0.reshape(x.shape), eps=p.eps.reshape(x.shape), x_t=x, t=t, schedule=model.schedule)


def test_bad_arguments_are_named():
    model, x = _problem(4)
    ts = grid_uniform(4)
    with pytest.raises(ValueError, match="step"):
        sample_paradigms(model, x, ts, step="heun")
    with pytest.raises((TypeError, ValueError), match="window"):
        sample_paradigms(model, x, ts, window=0)
    with pytest.raises(ValueError, match="tol"):
        sample_paradigms(model, x, ts, tol=-1.0)
    with pytest.raises((TypeError, ValueError), match="max_iters"):
        sample_paradigms(model, x, ts, max_iters=0)


def test_paradigms_benchmark_quick_runs(root):
    # benchmarks/paradigms.py --quick end to end (a smoke run; the measured numbers come from a full run)
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(root / "benchmarks" / "paradigms.py"), "--quick"], cwd=root,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("sequential error") == 2 and "rounds" in out.stdout, out.stdout[-2000:]
