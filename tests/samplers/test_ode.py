"""Deterministic PF-ODE solvers (diffedu.samplers.ode, grids) against closed forms and the exact ODE solution (monograph §9)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from diffedu import schedules, toy
from diffedu.param import Prediction
from diffedu.samplers import ode
from diffedu.samplers.grids import Grid, grid_ddpm, grid_karras, grid_log_snr, grid_power, grid_uniform


pytestmark = pytest.mark.usefixtures("one_thread")  # the conftest fixture: tiny oracles run fastest on one thread


def _problem():
    mix = toy.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], stds=[1.0, 0.8])
    sch = schedules.VPLinear()
    x1 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mix.denoiser(sch), sch, x1


# ---------------------------------------------------------------------------------------- reference
def test_reference_matches_closed_form_gaussian_flow():
    # For data N(mu, s^2 I) the PF-ODE in (x_bar, sigma_bar) is d x_bar / d sigma_bar = sigma_bar (x_bar - mu) / (s^2 + sigma_bar^2),
    # solved by x_bar - mu  proportional to  sqrt(s^2 + sigma_bar^2)  (monograph §9.2).
    mu, s = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.6
    sch = schedules.VPLinear()  # (VPCosine's t_from_log_snr goes through arccos and loses ~1e-8 near t = 0)
    model = toy.gaussian(mu, s**2 * torch.eye(2)).denoiser(sch)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t0, t1 = 0.9, 0.0
    sb0 = float(sch.sigma(torch.tensor(t0)) / sch.alpha(torch.tensor(t0)))
    exact = mu + (x / float(sch.alpha(torch.tensor(t0))) - mu) * s / math.sqrt(s**2 + sb0**2)
    out = ode.solve_pf_ode_reference(model, x, t0, t1, rtol=1e-11, atol=1e-11)
    assert (out - exact).abs().max() < 1e-6  # x/alpha starts at ~60 here; DOP853's rtol is relative to that
    out_t = ode.solve_pf_ode_reference(model, x, t0, 0.3, rtol=1e-10, atol=1e-10, variable="t")
    sb = float(sch.sigma(torch.tensor(0.3)) / sch.alpha(torch.tensor(0.3)))
    exact_t = float(sch.alpha(torch.tensor(0.3))) * (mu + (x / float(sch.alpha(torch.tensor(t0))) - mu)
                                                      * math.sqrt(s**2 + sb**2) / math.sqrt(s**2 + sb0**2))
    assert (out_t - exact_t).abs().max() < 1e-6


# ---------------------------------------------------------------------------------------- identities
def test_ddim_equals_dpm_solver_1_and_exponential_euler():
    model, sch, x1 = _problem()
    ts = grid_log_snr(sch, 12, 1.0, 1e-3)
    a = ode.sample_ddim(model, x1, ts)
    b = ode.sample_dpm_solver(model, x1, ts, order=1)
    c = ode.sample_deis(model, x1, ts, order=1)
    # exponential Euler of (9.3) by hand: x_s = (alpha_s/alpha_t) x_t - sigma_s (e^h - 1) eps_t
    x = x1
    for t, s in zip(ts[:-1], ts[1:]):
        eps = model(x, t.expand(len(x))).eps
        h = sch.half_log_snr(s) - sch.half_log_snr(t)
        x = sch.alpha(s) / sch.alpha(t) * x - sch.sigma(s) * torch.expm1(h) * eps
    for y in (b, c, x):
        assert (a - y).abs().max() < 1e-12


def test_ddim_to_data_is_euler_of_ddim_ode_and_jump_to_x0():
    model, sch, x1 = _problem()
    ts = grid_power(6, 2.0)
    out = ode.sample_ddim(model, x1, ts)
    x = x1
    for i in range(len(ts) - 1):  # Euler of d(x/alpha)/d sigma_bar = eps (9.2)
        t, s = ts[i], ts[i + 1]
        eps = model(x, t.expand(len(x))).eps
        xbar = x / sch.alpha(t) + (sch.sigma(s) / sch.alpha(s) - sch.sigma(t) / sch.alpha(t)) * eps
        x = sch.alpha(s) * xbar
    assert (out - x).abs().max() < 1e-12


def test_ddim_eta_one_samples_the_data_and_is_seeded():
    mix = toy.eight_gaussians()
    sch = schedules.VPLinear()
    model = mix.denoiser(sch)
    x1 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ts = grid_uniform(100, 1.0, 0.0)
    a = ode.sample_ddim(model, x1, ts, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = ode.sample_ddim(model, x1, ts, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    from diffedu.metrics import sliced_wasserstein
    data = mix.sample(1000, torch.Generator().manual_seed(4), dtype=torch.float64)
    data2 = mix.sample(1000, torch.Generator().manual_seed(5), dtype=torch.float64)
    floor = float(sliced_wasserstein(data2, data, generator=torch.Generator().manual_seed(0)))
    sw = float(sliced_wasserstein(a, data, generator=torch.Generator().manual_seed(0)))
    assert sw < 2 * floor + 0.05, (sw, floor)
    # eta = 0 is deterministic and differs from eta = 1
    assert not torch.allclose(a, ode.sample_ddim(model, x1, ts))


# ---------------------------------------------------------------------------------------- orders
NFES = [20, 30, 50, 70, 100]
ORDERS = {  # name: (evaluations per step, minimum (and maximum) fitted order): the thresholds
    "euler": (1, 0.9, 1.1),
    "ddim": (1, 0.9, 1.1),
    "heun": (2, 1.9, None),  # Heun on the DDIM ODE (9.2) in sigma_bar, as EDM
    "dpm_solver_2": (2, 1.9, None),
    "dpm_solver_pp_2s": (2, 1.9, None),
    "dpm_solver_pp_2m": (1, 1.9, None),
    "deis_2": (1, 1.9, None),
    "dpm_solver_3": (3, 2.8, None),
    "dpm_solver_pp_3m": (1, 2.8, None),
    "deis_3": (1, 2.8, None),
}
# Known defect, NOT hidden by a looser bound: DEIS (exponential Adams-Bashforth on the noise form) is still
# pre-asymptotic at NFE 20-100 on this grid (fitted 1.89 / 2.70; the rhoAB variant 1.84 / 2.58). Restarting the
# exact solver from each grid point shows the error is made at sigma_bar > 1, where t = (1 - u)^2 takes long,
# uneven steps in lambda -- not on the last steps. On a grid uniform in lambda it has its order on this problem
# (test_deis_order_on_a_log_snr_grid) but not on eight narrow Gaussians (1.76 / 2.46, where DPM-Solver++(3M) fits 3.07):
# extrapolating eps is the harder problem. Its local slopes reach the order here (test_deis_asymptotic_order).
_PRE_ASYMPTOTIC = {"deis_2", "deis_3"}


@pytest.fixture(scope="module")
def reference():
    model, sch, x1 = _problem()
    return ode.solve_pf_ode_reference(model, x1, 1.0, 0.0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(
    strict=True, reason="DEIS pre-asymptotic at NFE 20-100 on t = (1 - u)^2 (see _PRE_ASYMPTOTIC)")) if n in _PRE_ASYMPTOTIC else n
    for n in ORDERS])
def test_order_of_convergence_to_the_data(name, reference):
    # The grid (t = (1 - u)^2) ends at sigma = 0, so this also checks that the last step keeps the order.
    model, sch, x1 = _problem()
    fn, kw = ode.SOLVERS[name]
    per, lo, hi = ORDERS[name]
    errs = []
    for nfe in NFES:
        steps = (nfe + 1) // 2 if name == "heun" else max(nfe // per, 1)
        out = fn(model, x1, grid_power(steps, 2.0), **kw)
        errs.append(float((out - reference).norm(dim=1).mean()))
    p = -np.polyfit(np.log(NFES), np.log(errs), 1)[0]
    assert p >= lo, (name, p, errs)
    if hi is not None:
        assert p <= hi, (name, p, errs)


@pytest.mark.parametrize("variable", ["lambda", "rho"])
@pytest.mark.parametrize("order, lo", [(2, 1.9), (3, 2.8)])
def test_deis_asymptotic_order(order, lo, variable, reference):
    # Local slope of the error between NFE 200 and 400 (errors ~1e-4 and ~1e-5, far above the reference's ~1e-10).
    model, sch, x1 = _problem()
    e = [float((ode.sample_deis(model, x1, grid_power(n, 2.0), order=order, variable=variable) - reference)
               .norm(dim=1).mean()) for n in (200, 400)]
    p = math.log(e[0] / e[1]) / math.log(2)
    assert p >= lo, (order, variable, p, e)


@pytest.mark.parametrize("order, lo, hi", [(1, 0.9, 1.1), (2, 1.9, None), (3, 2.8, None)])
def test_deis_order_on_a_log_snr_grid(order, lo, hi):
    # The exponential Adams-Bashforth method on steps uniform in lambda, fitted on NFE 20-100 against the exact
    # solution at the grid's own end point t = 1e-3 (measured 0.98 / 1.94 / 3.59): checks the exponential weights
    # to third order. (On eight narrow Gaussians the same fit gives 1.76 / 2.46: pre-asymptotic, see _PRE_ASYMPTOTIC.)
    model, sch, x1 = _problem()
    ref = ode.solve_pf_ode_reference(model, x1, 1.0, 1e-3, rtol=1e-12, atol=1e-12)
    errs = [float((ode.sample_deis(model, x1, grid_log_snr(sch, n, 1.0, 1e-3), order=order) - ref).norm(dim=1).mean())
            for n in NFES]
    p = -np.polyfit(np.log(NFES), np.log(errs), 1)[0]
    assert p >= lo and (hi is None or p <= hi), (order, p, errs)


def test_heun_in_sigma_bar_beats_heun_in_t_order(reference):
    # The variable matters: the same trapezoid in t is stiff at the data (sigma'_t ~ 1/sqrt(t)) and loses order.
    model, sch, x1 = _problem()
    fit = {}
    for fn in (ode.sample_heun, ode.sample_heun_t):
        errs = [float((fn(model, x1, grid_power(k, 1.5)) - reference).norm(dim=1).mean()) for k in (15, 25, 50)]
        fit[fn.__name__] = -np.polyfit(np.log([29, 49, 99]), np.log(errs), 1)[0]
    assert fit["sample_heun"] >= 1.9 and fit["sample_heun_t"] < 1.6, fit


def test_usual_jump_to_x0_is_first_order_in_the_last_step(reference):
    # The peer-library last step x = x0_hat(x_{t_min}) from a fixed sigma_min leaves an error that does not shrink with NFE.
    model, sch, x1 = _problem()
    ref = reference
    errs = []
    for k in (20, 40):
        ts = grid_log_snr(sch, k, 1.0, 0.05)
        x = ode.sample_dpm_solver_pp_3m(model, x1, ts)
        x = model(x, torch.full((len(x),), 0.05, dtype=x.dtype)).x0
        errs.append(float((x - ref).norm(dim=1).mean()))
    assert errs[1] > 0.7 * errs[0]  # stalls
    ours = ode.sample_dpm_solver_pp_3m(model, x1, grid_power(40, 2.0))
    assert float((ours - ref).norm(dim=1).mean()) < 0.5 * errs[1]


# ---------------------------------------------------------------------------------------- shapes, grids, errors
class _FlatModel(torch.nn.Module):
    """Gaussian-mixture oracle seen through image-shaped data (B, 1, 2, 2)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.schedule = inner, inner.schedule

    def forward(self, x, t, cond=None):
        p = self.inner(x.reshape(len(x), -1), t, cond)
        return Prediction(x0=p.x0.reshape(x.shape), eps=p.eps.reshape(x.shape), x_t=x, t=t, schedule=self.schedule)


@pytest.mark.parametrize("name", list(ode.SOLVERS))
def test_image_shapes_and_float32(name):
    mix = toy.GaussianMixture(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), stds=0.5)
    sch = schedules.DiscreteSchedule.linear()
    flat = mix.denoiser(sch)
    img = _FlatModel(flat)
    x = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    fn, kw = ode.SOLVERS[name]
    ts = grid_uniform(6)
    a = fn(img, x, ts, **kw)
    b = fn(flat, x.reshape(5, 4), ts, **kw)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.allclose(a.reshape(5, 4), b, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ode.SOLVERS) + ["heun_t"])
def test_every_solver_reports_one_step_record(name):
    # callback(step) after every step: step.i, step.t = ts[i + 1], step.x the state there, step.prediction at
    # (x_i, ts[i]); trajectory() stacks the states and ends at the solver's answer
    from diffedu.samplers import Step, trajectory

    fn, kw = ode.SOLVERS[name] if name != "heun_t" else (ode.sample_heun_t, {})
    model, sch, x1 = _problem()
    ts = grid_power(5, 2.0, 0.99)
    seen = []
    out = fn(model, x1, ts, callback=seen.append, **kw)
    assert all(isinstance(s, Step) for s in seen) and [s.i for s in seen] == list(range(5))
    assert [s.t for s in seen] == ts[1:].tolist() and torch.equal(seen[-1].x, out)
    states = [x1] + [s.x for s in seen]
    for s, x_before in zip(seen, states):
        assert isinstance(s.prediction, Prediction) and torch.equal(s.prediction.x_t, x_before)
        assert torch.all(s.prediction.t == ts[s.i].to(x1.dtype))
    traj = trajectory(fn, model, x1, ts, **kw)
    assert traj.shape == (6, *x1.shape) and torch.equal(traj[0], x1) and torch.equal(traj[-1], out)
    assert torch.equal(ode.trajectory(fn, model, x1, Grid(sch, ts), **kw), traj)  # ode.trajectory is the same function
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].i = 3


def test_callback_and_progress_are_checked():
    model, sch, x1 = _problem()
    ts = grid_uniform(3)
    with pytest.raises(TypeError, match="callback"):
        ode.sample_heun(model, x1, ts, callback=3)
    with pytest.raises(TypeError, match="callback: expected callback\\(step\\)"):
        ode.sample_ddim(model, x1, ts, callback=lambda i, t, x: None)  # the old (i, t, x) form
    with pytest.raises(TypeError, match="progress"):
        ode.sample_euler(model, x1, ts, progress="yes")
    assert torch.equal(ode.sample_dpm_solver(model, x1, ts, progress=True), ode.sample_dpm_solver(model, x1, ts))


def test_grids():
    sch = schedules.DiscreteSchedule.linear()
    g = grid_log_snr(sch, 10, 1.0, 1e-3)
    lam = sch.half_log_snr(g)
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(10), atol=1e-9)
    k = grid_karras(sch, 8, rho=7.0)
    sb = sch.sigma_bar(k) ** (1 / 7)
    assert k[-1] == 0 and torch.allclose(sb[1:] - sb[:-1], (sb[1] - sb[0]).expand(8), atol=1e-9)
    assert torch.allclose(sch.t_from_sigma_bar(sch.sigma_bar(k)), k, atol=1e-12)
    tr = grid_ddpm(sch, 10, "trailing")
    assert tr[0] == 1.0 and tr[-1] == 0.0 and torch.allclose(tr[:-1], torch.arange(10, 0, -1, dtype=torch.float64) / 10)
    le = grid_ddpm(sch, 10, "leading")
    assert torch.allclose(le[:-1], (torch.arange(9, -1, -1, dtype=torch.float64) * 100 + 1) / 1000)
    assert grid_power(4, 1.0).tolist() == grid_uniform(4).tolist()


def test_errors_name_the_argument():
    model, sch, x1 = _problem()
    with pytest.raises(ValueError, match="ts"):
        ode.sample_ddim(model, x1, torch.linspace(0, 1, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="ts"):
        ode.sample_heun(model, x1, torch.arange(5, 0, -1))
    with pytest.raises(TypeError, match="model"):
        ode.sample_euler(lambda x, t, c=None: x, x1, grid_uniform(3))
    with pytest.raises(ValueError, match="order"):
        ode.sample_deis(model, x1, grid_uniform(3), order=4)
    with pytest.raises(ValueError, match="variable"):
        ode.sample_deis(model, x1, grid_uniform(3), variable="t")
    with pytest.raises(ValueError, match="eta"):
        ode.sample_ddim(model, x1, grid_uniform(3), eta=-1.0)
    with pytest.raises(ValueError, match="n_steps"):
        grid_uniform(0)
    with pytest.raises(ValueError, match="t_start"):
        grid_log_snr(sch, 4, 1.0, 0.0)
    with pytest.raises(ValueError, match="t_start"):
        grid_karras(schedules.RectifiedFlow(), 4, t_start=1.0)
    with pytest.raises(ValueError, match="spacing"):
        grid_ddpm(schedules.DiscreteSchedule.linear(), 4, "odd")
    # solvers that divide by alpha refuse a start where alpha ~ 0 (cosine: 6e-17 at t = 1; rectified flow: 0) ...
    cos_model = toy.eight_gaussians().denoiser(schedules.VPCosine())
    rf_model = toy.eight_gaussians().denoiser(schedules.RectifiedFlow())
    for m in (cos_model, rf_model):
        for fn, kw in ((ode.sample_heun, {}), (ode.sample_deis, {}), (ode.sample_dpm_solver, {"order": 1}),
                       (ode.sample_dpm_solver_pp_2s, {})):
            with pytest.raises(ValueError, match="ts: alpha_t"):
                fn(m, x1, grid_uniform(4), **kw)
    # ... and start fine just below it; DDIM and Euler work from alpha = 0 itself
    assert torch.isfinite(ode.sample_dpm_solver(cos_model, x1, grid_uniform(4, 0.999, 0.0))).all()
    for fn in (ode.sample_ddim, ode.sample_euler):
        assert torch.isfinite(fn(rf_model, x1, grid_uniform(4))).all()


def test_benchmark_quick_runs():
    # benchmarks/solvers.py --quick (about 15 s of CPU on one idle core, 8 s of it importing torch and diffusers): grids selected on one training mixture, evaluated on the
    # ring; diffedu's DDIM equals diffusers' DDIM to 1e-6 with diffusers' float32 table and to rounding with the float64
    # one (tests/samplers/test_ddim_diffusers.py shows the float32 table is the whole gap).
    # diffusers is in the test extra (pyproject), so this runs in CI: no skip.
    import diffusers  # noqa: F401
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "solvers.py"), "--quick"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    gaps = [re.findall(r"= ([0-9.e+-]+)", line) for line in out.stdout.splitlines() if line.startswith("DDIM ")]
    assert len(gaps) == 2 and all(len(g) == 2 for g in gaps), out.stdout[-2000:]
    assert max(float(g[0]) for g in gaps) <= 1e-6 and max(float(g[1]) for g in gaps) <= 1e-12, out.stdout[-2000:]
    ratios = [line for line in out.stdout.splitlines() if line.startswith("NFE ") and "best peer" in line]
    assert len(ratios) == 2, out.stdout[-2000:]


# ---------------------------------------------------------------------------------------- chapter 9 exercises
def test_ch09_checkers_accept_reference_and_reject_mistakes():
    from diffedu.exercises import ExerciseFailed, ch09

    for checker, reference in ch09.EXERCISES.values():
        assert checker(reference).passed
    with pytest.raises(ExerciseFailed, match="sign"):
        ch09.check_ddim_step(lambda x, e, t, s, sc: -ch09.ddim_step(x, e, t, s, sc))
    with pytest.raises(ExerciseFailed):  # a grid uniform in t instead of in the log-SNR
        ch09.check_log_snr_grid(lambda sc, n, a, b: grid_uniform(n, a, b))
    with pytest.raises(ExerciseFailed):  # forgot the extrapolation: that is DDIM in the data form
        ch09.check_dpm_pp_2m_step(lambda x, a, b, tp, t, s, sc: ch09.dpm_pp_2m_step(x, a, a, tp, t, s, sc))


def test_ch09_references_match_the_package():
    from diffedu.exercises import ch09

    sch = schedules.DiscreteSchedule.linear()
    assert torch.allclose(ch09.log_snr_grid(sch, 10, 1.0, 1e-3), grid_log_snr(sch, 10, 1.0, 1e-3), atol=1e-12)
    model = toy.eight_gaussians().denoiser(sch)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = grid_log_snr(sch, 3, 1.0, 0.01)
    B = len(x)
    x1 = ode.sample_ddim(model, x, ts[:2])
    assert torch.allclose(x1, ch09.ddim_step(x, model(x, ts[0].expand(B)).eps, ts[0].expand(B), ts[1].expand(B), sch), atol=1e-12)
    p0, p1 = model(x, ts[0].expand(B)), model(x1, ts[1].expand(B))
    mine = ch09.dpm_pp_2m_step(x1, p1.x0, p0.x0, ts[0].expand(B), ts[1].expand(B), ts[2].expand(B), sch)
    assert torch.allclose(mine, ode.sample_dpm_solver_pp_2m(model, x, ts[:3]), atol=1e-12)


def test_a_grid_is_built_once_and_reused_bit_for_bit():
    # a Grid holds the grid's schedule table (alpha, sigma, lambda, sigma_bar, stages); passing it in place of ts
    # gives exactly the answer of the plain ts, for every solver, and it cannot be changed after construction
    mix = toy.eight_gaussians()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sch = schedules.VPLinear(beta_max=15.0)
    model, ts = mix.denoiser(sch), grid_power(9, 2.0)
    grid = Grid(sch, ts)
    for name, (fn, kw) in ode.SOLVERS.items():
        assert torch.equal(fn(model, x, grid, **kw), fn(model, x, ts, **kw)), name
        assert torch.equal(fn(model, x[:4], grid, **kw), fn(model, x[:4], ts, **kw)), name  # a second batch
    # the table is the schedule's own methods at the grid times
    assert grid.t == tuple(ts.tolist()) and grid.n_steps == 9
    assert grid.lam == tuple(sch.half_log_snr(ts).tolist()) and grid.sigma_bar == tuple(sch.sigma_bar(ts).tolist())
    assert grid.alpha == tuple(sch.alpha(ts).tolist()) and grid.sigma == tuple(sch.sigma(ts).tolist())
    # a stage of a single-step solver sits at lambda_i + r h (the last step: the sigma_bar midpoint)
    t1, a1, s1 = grid.stage(3, 1 / 3)
    assert math.isclose(float(sch.half_log_snr(torch.tensor(t1, dtype=torch.float64))),
                        grid.lam[3] + (grid.lam[4] - grid.lam[3]) / 3, rel_tol=1e-12)
    assert math.isclose(a1, float(sch.alpha(torch.tensor(t1, dtype=torch.float64))), rel_tol=1e-12)
    assert grid.sigma[9] == 0
    for r in (1 / 3, 0.5, 2 / 3):
        t_m = torch.tensor(grid.stage(8, r)[0], dtype=torch.float64)
        assert math.isclose(float(sch.sigma_bar(t_m)), grid.sigma_bar[8] / 2, rel_tol=1e-10)
    with pytest.raises(AttributeError, match="immutable"):
        grid.alpha = (1.0,)
    ts[3] = 0.5  # the Grid owns a copy of its times
    assert grid.ts[3] != 0.5
    with pytest.raises(ValueError, match="r"):
        grid.stage(0, 0.25)


def test_grid_checks_its_schedule_and_its_stages():
    mix = toy.eight_gaussians()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = grid_uniform(6)
    grid = Grid(schedules.VPLinear(), ts)
    # an equal schedule (say, a deep copy inside an EMA model) is accepted; another one is not
    same = ode.sample_dpm_solver_pp_2m(mix.denoiser(schedules.VPLinear()), x, grid)
    assert torch.equal(same, ode.sample_dpm_solver_pp_2m(mix.denoiser(schedules.VPLinear()), x, ts))
    with pytest.raises(ValueError, match="ts: this Grid was built for"):
        ode.sample_euler(mix.denoiser(schedules.VPLinear(beta_max=10.0)), x, grid)
    disc = schedules.DiscreteSchedule.linear()
    with pytest.raises(ValueError, match="ts: this Grid was built for"):
        ode.sample_euler(mix.denoiser(schedules.DiscreteSchedule.cosine()), x, Grid(disc, ts))
    # a Grid without stages serves the multistep solvers, and the single-step ones say what they miss
    lean = Grid(disc, ts, stages=False)
    model = mix.denoiser(disc)
    assert torch.equal(ode.sample_dpm_solver_pp_3m(model, x, lean), ode.sample_dpm_solver_pp_3m(model, x, ts))
    for fn, kw in ((ode.sample_dpm_solver, {"order": 2}), (ode.sample_dpm_solver_pp_2s, {})):
        with pytest.raises(ValueError, match="stages=False"):
            fn(model, x, lean, **kw)
    assert torch.equal(ode.sample_dpm_solver(model, x, lean, order=1), ode.sample_dpm_solver(model, x, ts, order=1))
    # the other samplers take a Grid as their time grid too
    from diffedu.samplers import sample_ancestral
    g0, g1 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(sample_ancestral(model, x, lean, generator=g0), sample_ancestral(model, x, ts, generator=g1))
