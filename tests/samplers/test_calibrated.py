"""Grids and multistep solvers calibrated on the model's own fine solve (diffedu.samplers.calibrated), checked against
closed forms for a Gaussian and against the exact Gaussian-mixture oracle (monograph §9.4-9.5)."""
import math

import pytest
import torch

from diffedu import schedules, toy
from diffedu.samplers import ode, unipc
from diffedu.samplers.calibrated import (FineTrajectory, calibrate_multistep, fine_solve, grid_calibrated, grid_loss,
                                         sample_calibrated)
from diffedu.samplers.grids import Grid, grid_power, grid_uniform

pytestmark = pytest.mark.usefixtures("one_thread")

SCH = schedules.DiscreteSchedule.linear()


def _mixture_model():
    mix = toy.GaussianMixture([[-2.5, 0.5], [1.5, 2.0], [0.5, -2.0], [3.0, -0.5]], stds=[0.2, 0.6, 0.35, 0.8],
                              weights=[0.15, 0.35, 0.3, 0.2])
    return mix.denoiser(SCH)


def _noise(n, seed):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _gaussian_flow(mu, s, x_start):
    """Exact PF-ODE map of N(mu, s^2 I) from t = 1 to t = 0: x_bar - mu scales like sqrt(s^2 + sigma_bar^2) (monograph §9.2)."""
    sb0 = float(SCH.sigma_bar(torch.tensor(1.0, dtype=torch.float64)))
    a0 = float(SCH.alpha(torch.tensor(1.0, dtype=torch.float64)))
    return mu + (x_start / a0 - mu) * s / math.sqrt(s * s + sb0 * sb0), sb0


def test_fine_trajectory_is_the_model_solved_finely_and_interpolates_between_its_points():
    # on a Gaussian the fine trajectory is the exact flow map, at the end and (Hermite in sigma_bar) at any time between
    mu, s = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.5
    model = toy.gaussian(mu, s * s * torch.eye(2, dtype=torch.float64)).denoiser(SCH)
    x = _noise(64, 1)
    exact, _ = _gaussian_flow(mu, s, x)
    assert float((fine_solve(model, x) - exact).abs().max()) < 3e-5  # measured 1.2e-5 (400 steps; 200: 5.9e-5)
    ft = FineTrajectory(model, x, steps=300)
    assert float((ft.at(0.0) - exact).abs().max()) < 1e-4
    for t in (0.93, 0.4, 0.05, 0.003):
        direct = ode.solve_pf_ode_reference(model, x, 1.0, t, rtol=1e-11, atol=1e-11)
        assert float((ft.at(t) - direct).abs().max()) < 1e-4, t


def test_calibrated_two_step_ddim_on_a_gaussian_puts_its_middle_point_at_the_closed_form_optimum():
    # 2-step DDIM (Euler in sigma_bar) on N(mu, s^2 I): x_bar - mu is multiplied by
    #   f(sb1) = (s^2 + sb1 sb0) / (s^2 + sb0^2) * s^2 / (s^2 + sb1^2)  < exact s / sqrt(s^2 + sb0^2),
    # so the best middle point maximises f: sb1* = s (sqrt(s^2 + sb0^2) - s) / sb0 (about s, the data's scale).
    mu, s = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.5
    model = toy.gaussian(mu, s * s * torch.eye(2, dtype=torch.float64)).denoiser(SCH)
    x_cal = _noise(128, 2)
    _, sb0 = _gaussian_flow(mu, s, x_cal)
    best = s * (math.sqrt(s * s + sb0 * sb0) - s) / sb0
    init = torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64)  # middle point sigma_bar ~ 2.4, far from sb1*
    ts = grid_calibrated(model, ode.sample_ddim, 2, x_cal, init=init, max_evals=60)
    sb1 = float(SCH.sigma_bar(ts[1]))
    assert abs(sb1 / best - 1) < 0.02, (sb1, best)
    assert float(SCH.sigma_bar(init[1])) / best > 3  # it had to move there


def test_calibrated_grid_is_never_worse_than_its_start_and_generalises_to_disjoint_noise():
    model = _mixture_model()
    x_cal, x_eval = _noise(256, 10), _noise(512, 11)  # disjoint draws: calibration never sees the evaluation noise
    init = grid_power(5, 2.0)
    fine_cal = fine_solve(model, x_cal)
    ts = grid_calibrated(model, unipc.sample_unipc, 5, x_cal, init=init, target=fine_cal, max_evals=80)
    assert len(ts) == 6 and ts[0] == 1.0 and ts[-1] == 0.0 and bool((ts[1:] < ts[:-1]).all())
    before, after = (grid_loss(model, unipc.sample_unipc, g, x_cal, fine_cal) for g in (init, ts))
    assert after <= before
    fine_eval = fine_solve(model, x_eval)
    b, a = (grid_loss(model, unipc.sample_unipc, g, x_eval, fine_eval) for g in (init, ts))
    assert a < 0.8 * b, (b, a)  # measured: 0.29 -> 0.17 on the disjoint evaluation noise
    # and against the exact answer (the oracle), which the calibration never saw
    ref = ode.solve_pf_ode_reference(model, x_eval, 1.0, 0.0, rtol=1e-10, atol=1e-10)
    err = [float((unipc.sample_unipc(model, x_eval, g) - ref).norm(dim=1).mean()) for g in (init, ts)]
    assert err[1] < 0.8 * err[0], err


def test_candidate_starts_the_best_one_on_the_calibration_batch_is_taken():
    model = _mixture_model()
    x_cal = _noise(128, 12)
    fine = fine_solve(model, x_cal)
    cands = [grid_uniform(5), grid_power(5, 2.0), grid_power(5, 3.0)]
    start = [grid_loss(model, ode.sample_dpm_solver_pp_2m, g, x_cal, fine) for g in cands]
    one = grid_calibrated(model, ode.sample_dpm_solver_pp_2m, 5, x_cal, init=cands, target=fine, max_evals=1)
    assert torch.equal(one, cands[start.index(min(start))])  # no search step taken: the best start itself
    ts = grid_calibrated(model, ode.sample_dpm_solver_pp_2m, 5, x_cal, init=cands, target=fine, max_evals=40)
    assert grid_loss(model, ode.sample_dpm_solver_pp_2m, ts, x_cal, fine) < min(start)
    with pytest.raises(ValueError, match="init"):
        grid_calibrated(model, ode.sample_dpm_solver_pp_2m, 5, x_cal, init=[grid_uniform(5), grid_uniform(5, 0.9)])


def test_one_calibrated_step_is_exact_on_a_gaussian():
    # the flow map of a Gaussian is affine, and x0_hat is affine in x_t: one step x_1 = c x_0 + w x0_hat(x_0) can be
    # exact, and least squares finds it (up to the fine solve's accuracy); DDIM's one step is far off
    mu, s = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.5
    model = toy.gaussian(mu, s * s * torch.eye(2, dtype=torch.float64)).denoiser(SCH)
    ts, weights = calibrate_multistep(model, 1, _noise(64, 3), history=1)
    x = _noise(256, 4)
    exact, _ = _gaussian_flow(mu, s, x)
    assert float((sample_calibrated(model, x, ts, weights) - exact).abs().max()) < 1e-5
    assert float((ode.sample_ddim(model, x, ts) - exact).abs().max()) > 0.1


def test_calibrated_multistep_beats_the_taylor_solvers_on_disjoint_noise():
    model = _mixture_model()
    x_cal, x_eval = _noise(256, 20), _noise(512, 21)
    ts, weights = calibrate_multistep(model, 5, x_cal, max_evals=60)
    assert len(weights) == 5 and all(len(w) == 1 + min(i + 1, 4) for i, w in enumerate(weights))
    ref = ode.solve_pf_ode_reference(model, x_eval, 1.0, 0.0, rtol=1e-10, atol=1e-10)
    ours = float((sample_calibrated(model, x_eval, ts, weights) - ref).norm(dim=1).mean())
    theirs = min(float((fn(model, x_eval, g, **kw) - ref).norm(dim=1).mean())
                 for fn, kw in ((ode.sample_dpm_solver_pp_2m, {}), (unipc.sample_unipc, {"order": 3}))
                 for g in (grid_power(5, 1.5), grid_power(5, 2.0), ts))
    assert ours < 0.6 * theirs, (ours, theirs)


def test_sample_calibrated_with_taylor_weights_is_dpm_solver_pp_2m():
    # x_{i+1} = (sigma_{i+1}/sigma_i) x_i + c (1 + k) x0_i - c k x0_{i-1}, c = alpha_{i+1} (1 - e^{-h}), k = h / (2 h_prev)
    model = _mixture_model()
    ts = grid_power(8, 1.5, 1.0, 0.01)  # stops short of the data: no sigma_bar final step
    g = Grid(SCH, ts)
    weights = []
    for i in range(g.n_steps):
        h = g.lam[i + 1] - g.lam[i]
        c, r = -g.alpha[i + 1] * math.expm1(-h), g.sigma[i + 1] / g.sigma[i]
        if i == 0:
            weights.append((r, c))
        else:
            k = 0.5 * h / (g.lam[i] - g.lam[i - 1])
            weights.append((r, c * (1 + k), -c * k))
    x = _noise(32, 5)
    steps = []
    out = sample_calibrated(model, x, ts, weights, callback=steps.append)
    assert float((out - ode.sample_dpm_solver_pp_2m(model, x, ts)).abs().max()) < 1e-12
    assert len(steps) == 8 and torch.equal(steps[-1].x, out) and steps[-1].t == 0.01


def test_bad_arguments_are_named():
    model = _mixture_model()
    x = _noise(8, 0)
    with pytest.raises(ValueError, match="init"):
        grid_calibrated(model, ode.sample_ddim, 3, x, init=grid_power(4))
    with pytest.raises(ValueError, match="target"):
        grid_calibrated(model, ode.sample_ddim, 3, x, target=x[:4])
    with pytest.raises(TypeError, match="solver"):
        grid_calibrated(model, "ddim", 3, x)
    with pytest.raises(ValueError, match="weights"):
        sample_calibrated(model, x, grid_power(2), [(1.0, 0.5)])
    with pytest.raises(ValueError, match="weights"):
        sample_calibrated(model, x, grid_power(2), [(1.0, 0.5, 0.1), (1.0, 0.5)])
