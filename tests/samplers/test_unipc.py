"""UniPC, UniC after any solver, iPNDM (diffedu.samplers.unipc) and the adaptive grids (diffedu.samplers.adaptive),
against the exact Gaussian-mixture oracle and the PF-ODE solved to tolerance (monograph §9.4-9.5)."""
import math

import numpy as np
import pytest
import torch

from diffedu import schedules, toy
from diffedu.param import Prediction
from diffedu.samplers import ode, unipc
from diffedu.samplers.adaptive import error_density, grid_adaptive, grid_from_density
from diffedu.samplers.grids import Grid, grid_karras, grid_log_snr, grid_power, grid_uniform
from test_ode import _problem  # the same two-Gaussian problem as the other solvers' order tests


pytestmark = pytest.mark.usefixtures("one_thread")  # the conftest fixture: tiny oracles run fastest on one thread


@pytest.fixture(scope="module")
def reference():
    model, sch, x1 = _problem()
    return ode.solve_pf_ode_reference(model, x1, 1.0, 0.0, rtol=1e-12, atol=1e-12)


NFES = [20, 30, 50, 70, 100]


def _fit(fn, grid, ref, nfes=NFES, **kw):
    model, sch, x1 = _problem()
    errs = [float((fn(model, x1, grid(n), **kw) - ref).norm(dim=1).mean()) for n in nfes]
    return -np.polyfit(np.log(nfes), np.log(errs), 1)[0], errs


# ---------------------------------------------------------------------------------------- measured orders
@pytest.mark.parametrize("order, variant, corrector, lo, hi", [
    (1, "bh2", True, 1.9, 2.1),   # UniC lifts the first-order predictor (DDIM) to order 2: measured 1.97
    (2, "bh2", True, 2.8, 3.2),   # measured 2.93
    (2, "bh1", True, 2.8, 3.2),   # measured 3.03
    (2, "bh2", False, 1.9, 2.4),  # the predictor alone: order 2 (measured 2.15), so the corrector is what adds one
    (3, "bh2", False, 2.8, None),  # measured 3.10
])
def test_unipc_measured_order(order, variant, corrector, lo, hi, reference):
    # on t = (1 - u)^2, a grid that ends at sigma = 0: the last (Adams-Bashforth in sigma_bar) step keeps the order
    p, errs = _fit(unipc.sample_unipc, lambda n: grid_power(n, 2.0), reference, order=order, variant=variant, corrector=corrector)
    assert p >= lo and (hi is None or p <= hi), (order, variant, corrector, p, errs)


def test_unipc_3_local_order_is_four(reference):
    # UniPC-3 with the corrector is fourth order; the fit over NFE 20-100 is pre-asymptotic on t^2 (3.61), so the
    # local slope is taken on a Karras grid between NFE 50 and 100 (errors ~1e-3 .. 1e-4, far above the reference)
    model, sch, x1 = _problem()
    e = [float((unipc.sample_unipc(model, x1, grid_karras(sch, n), order=3) - reference).norm(dim=1).mean()) for n in (50, 100)]
    p = math.log(e[0] / e[1]) / math.log(2)
    assert 3.7 <= p <= 5.0, (p, e)


@pytest.mark.parametrize("predictor, kw, lo, hi", [(ode.sample_ddim, {}, 1.9, 2.1), (ode.sample_dpm_solver, {"order": 2}, 2.7, 3.2)])
def test_unic_after_any_one_step_solver_adds_an_order(predictor, kw, lo, hi, reference):
    # DDIM (order 1) + UniC -> 1.98; DPM-Solver-2 (order 2) + UniC -> 2.85 (local slope rising); no extra evaluation
    p, errs = _fit(unipc.sample_unic, lambda n: grid_power(n, 2.0), reference, predictor=predictor,
                   predictor_kwargs=kw, order=2)
    assert lo <= p <= hi, (predictor.__name__, p, errs)
    model, sch, x1 = _problem()
    calls = []
    counting = type("M", (), {"schedule": sch, "__call__": lambda self, x, t, c=None: calls.append(1) or model(x, t, c)})()
    unipc.sample_unic(counting, x1, grid_power(10, 2.0), predictor, predictor_kwargs=kw)
    per_step = 1 if predictor is ode.sample_ddim else 2
    assert len(calls) == 10 * per_step  # the corrector's evaluation is the next step's first


def test_unic_after_ddim_is_unipc_1():
    # DDIM from the served x0 (eps made consistent with the corrected state) is UniP-1, the data-form exponential Euler;
    # on a grid that stops short of the data the two agree to rounding (onto sigma = 0 UniPC takes an AB2 step in sigma_bar)
    model, sch, x1 = _problem()
    ts = grid_power(12, 2.0, 1.0, 0.01)
    a = unipc.sample_unic(model, x1, ts, ode.sample_ddim, order=1)
    b = unipc.sample_unipc(model, x1, ts, order=1)
    assert (a - b).abs().max() < 1e-10


@pytest.mark.parametrize("order, lo, hi", [(1, 0.9, 1.1), (2, 1.9, 2.1), (3, 2.8, None), (4, 2.8, None)])
def test_ipndm_measured_order_on_steps_uniform_in_sigma_bar(order, lo, hi):
    # iPNDM's fixed Adams-Bashforth weights are those of a uniform step: on a grid uniform in sigma_bar (Karras rho = 1,
    # from t = 0.6) orders 1 / 2 fit 0.98 / 1.97; order 3 fits 3.98 and order 4 only 3.01: the low-order warm-up steps
    # (AB1, AB2, AB3 on the first three steps) cap it. On non-uniform grids (t^2, Karras 7) every order fits ~2.
    model, sch, x1 = _problem()
    ref = ode.solve_pf_ode_reference(model, x1, 0.6, 0.0, rtol=1e-12, atol=1e-12)
    p, errs = _fit(unipc.sample_ipndm, lambda n: grid_karras(sch, n, 0.6, 0.0, rho=1.0), ref, order=order)
    assert p >= lo and (hi is None or p <= hi), (order, p, errs)


# ---------------------------------------------------------------------------------------- weights, identities
def test_unipc_weights():
    # one node: the paper's a_1 = 1/2, so B(h) changes the step; two or more: the square system is solved and B(h) w
    # does not depend on B (the order conditions fix it)
    for variant, bh in (("bh1", -0.7), ("bh2", math.expm1(-0.7))):
        b, w = unipc.unipc_weights([-0.8], 0.7, variant)
        assert b == pytest.approx(bh) and w == [0.5]
    b1, w1 = unipc.unipc_weights([-1.2, 1.0], 0.7, "bh1")
    b2, w2 = unipc.unipc_weights([-1.2, 1.0], 0.7, "bh2")
    assert np.allclose(b1 * np.array(w1), b2 * np.array(w2), rtol=1e-12)
    # the weights integrate polynomials exactly: sum_k (B w_k) r_k^(m-1) = m! phi_{m+1}(-h) (-h)
    h, rs = 0.7, [-1.2, -2.5, 1.0]
    b, w = unipc.unipc_weights(rs, h, "bh2")
    phi2 = math.expm1(-h) / -h - 1
    assert sum(b * wk for wk in w) == pytest.approx(phi2, rel=1e-12)
    with pytest.raises(ValueError, match="variant"):
        unipc.unipc_weights([0.5], 0.1, "bh3")


def test_first_unipc_step_is_ddim_and_no_corrector_on_one_step():
    model, sch, x1 = _problem()
    ts = grid_log_snr(sch, 1, 1.0, 0.1)
    assert (unipc.sample_unipc(model, x1, ts, order=3) - ode.sample_ddim(model, x1, ts)).abs().max() < 1e-12


# ---------------------------------------------------------------------------------------- record, shapes, errors
SAMPLERS = {
    "unipc": (unipc.sample_unipc, {}),
    "unipc_3_bh1": (unipc.sample_unipc, {"order": 3, "variant": "bh1"}),
    "unic_dpm2": (unipc.sample_unic, {"predictor": ode.sample_dpm_solver, "predictor_kwargs": {"order": 2}}),
    "ipndm": (unipc.sample_ipndm, {}),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_new_solvers_report_one_step_record_and_take_a_grid(name):
    from diffedu.samplers import Step, trajectory

    fn, kw = SAMPLERS[name]
    model, sch, x1 = _problem()
    ts = grid_power(5, 2.0, 0.99)
    seen = []
    out = fn(model, x1, ts, callback=seen.append, **kw)
    assert all(isinstance(s, Step) for s in seen) and [s.i for s in seen] == list(range(5))
    assert [s.t for s in seen] == ts[1:].tolist() and torch.equal(seen[-1].x, out)
    assert all(isinstance(s.prediction, Prediction) for s in seen)
    assert torch.equal(trajectory(fn, model, x1, ts, **kw)[-1], out)
    assert torch.equal(fn(model, x1, Grid(sch, ts), **kw), out)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_new_solvers_on_images_in_float32(name):
    from test_ode import _FlatModel

    mix = toy.GaussianMixture(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), stds=0.5)
    flat = mix.denoiser(schedules.DiscreteSchedule.linear())
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    fn, kw = SAMPLERS[name]
    a = fn(_FlatModel(flat), x, grid_uniform(6), **kw)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.allclose(a.reshape(5, 4), fn(flat, x.reshape(5, 4), grid_uniform(6), **kw), atol=1e-5)


def test_errors_name_the_argument():
    model, sch, x1 = _problem()
    ts = grid_uniform(4)
    with pytest.raises(ValueError, match="order"):
        unipc.sample_unipc(model, x1, ts, order=4)
    with pytest.raises(ValueError, match="variant"):
        unipc.sample_unipc(model, x1, ts, variant="bh")
    with pytest.raises(TypeError, match="corrector"):
        unipc.sample_unipc(model, x1, ts, corrector=1)
    with pytest.raises(TypeError, match="predictor"):
        unipc.sample_unic(model, x1, ts, predictor=3)
    with pytest.raises(ValueError, match="order"):
        unipc.sample_ipndm(model, x1, ts, order=5)
    with pytest.raises(ValueError, match="ts: alpha_t"):
        unipc.sample_ipndm(toy.eight_gaussians().denoiser(schedules.VPCosine()), x1, ts)
    with pytest.raises(ValueError, match="n_steps"):
        grid_from_density(sch, [0.0, 1.0], [1.0, 1.0], 0)
    with pytest.raises(ValueError, match="lam, f"):
        grid_from_density(sch, [0.0, 1.0], [1.0], 4)


# ---------------------------------------------------------------------------------------- adaptive grids
def test_grid_from_a_constant_density_is_uniform_in_lambda_with_an_exponential_tail():
    sch = schedules.DiscreteSchedule.linear()
    lam0 = float(sch.half_log_snr(torch.tensor(1.0, dtype=torch.float64)))
    lam = [lam0 + 0.5 * k for k in range(1, 21)]  # nodes up to lam0 + 10
    ts = grid_from_density(sch, lam, [2.0] * 20, 11, gamma=0.5, floor=0.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and len(ts) == 12 and (ts[1:] < ts[:-1]).all()
    # mass: 10 rho on [lam0, lam0 + 10] plus rho / (2 gamma) = rho in the tail: 11 equal shares of 1 in lambda
    got = sch.half_log_snr(ts[:-1]).tolist()
    assert np.allclose(np.diff(got), 1.0, atol=1e-6), got


def test_adaptive_grid_uses_model_evaluations_only_and_beats_fixed_grids_on_the_ring():
    mix, sch = toy.eight_gaussians(), schedules.DiscreteSchedule.linear()
    model = mix.denoiser(sch)
    calls = []
    counting = type("M", (), {"schedule": sch, "__call__": lambda self, x, t, c=None: calls.append(1) or model(x, t, c)})()
    pilot = torch.randn(128, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    lam, f = error_density(counting, pilot, 3, pilot_steps=40)
    assert len(calls) == 40 and len(lam) == len(f) == 40 - 3 and all(v >= 0 for v in f)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ode.solve_pf_ode_reference(model, x, 1.0, 0.0, rtol=1e-10, atol=1e-10)
    err = lambda ts: float((unipc.sample_unipc(model, x, ts) - ref).norm(dim=1).mean())  # noqa: E731
    ours = err(grid_from_density(sch, lam, f, 20, gamma=0.6))
    assert torch.equal(grid_adaptive(model, 20, pilot, 3, gamma=0.6, pilot_steps=40), grid_from_density(sch, lam, f, 20, gamma=0.6))
    # measured: 3.0e-3 against Karras rho = 7 (7.4e-2) and uniform in lambda to t = 1e-3, then the data (4e-2)
    assert ours < 0.5 * err(grid_karras(sch, 20))
    assert ours < 0.5 * err(torch.cat([grid_log_snr(sch, 19, 1.0, 1e-3), torch.zeros(1, dtype=torch.float64)]))
