"""Bad input gets a clear error that names the argument: a generated probe of the public API.

Every entry of ``API`` is a public callable with one valid call and the category of each argument
worth probing. For every (callable, argument, bad value of that argument's category) the call is
made with that one argument replaced; it must raise TypeError or ValueError whose message names
the argument -- not torch's "The size of tensor a ...", not an AttributeError from deep inside,
and never a silent NaN. The count per module is printed by ``python tests/test_fuzz.py``.
"""
from __future__ import annotations

import collections
import math

import pytest
import torch
from torch import nn

from diffedu import autodiff, data, distill, engine, forward, gaussian, guidance, nets, param, processes, samplers, sde, toy
from diffedu import schedules as S
from diffedu.metrics import samples as metrics
from diffedu.nets import MLP
from diffedu.objectives import denoising, elbo, flow_matching, score_matching

X = torch.randn(4, 2, dtype=torch.float64)
T = torch.full((4,), 0.5, dtype=torch.float64)
VP = S.VPLinear()
MIX = toy.eight_gaussians()
LAB = toy.labelled_mixture()
MODEL = MIX.denoiser(VP)
DW = torch.zeros(3, 4, 2, dtype=torch.float64)
XP = X.abs() + 0.1


def _sde_a(x, t):
    return -x


def _sde_b(x, t):
    return 0.5 * torch.ones_like(x)
CMODEL = LAB.denoiser(VP)


def _nan_like(x):
    y = x.clone()
    y.view(-1)[0] = float("nan")
    return y


# bad values per category: (label, value)
BAD = {
    "data": [("a string", "x"), ("a list", [[0.0, 1.0]]), ("no batch dim", torch.randn(2, dtype=torch.float64)),
             ("integer dtype", torch.ones(4, 2, dtype=torch.long)),
             ("NaN", _nan_like(X)), ("empty batch", torch.zeros(0, 2, dtype=torch.float64))],
    "like": [("a string", "x"), ("wrong shape", torch.randn(4, 3, dtype=torch.float64)),
             ("wrong batch", torch.randn(3, 2, dtype=torch.float64)), ("NaN", _nan_like(X))],
    "time": [("NaN", torch.tensor([0.5, float("nan"), 0.5, 0.5], dtype=torch.float64)), ("above 1", 1.5),
             ("below 0", -0.1), ("a string", "half"), ("wrong batch", torch.full((3,), 0.5, dtype=torch.float64)),
             ("integer steps", torch.tensor([1, 2, 3, 4]))],
    # a time on its own (no batch to match): every bad time but a wrong batch size
    "time1": [("NaN", torch.tensor([0.5, float("nan")], dtype=torch.float64)), ("above 1", 1.5), ("below 0", -0.1),
              ("a string", "half"), ("integer steps", torch.tensor([1, 2]))],
    "schedule": [("a string", "vp"), ("None", None), ("a number", 1.0)],
    "schedule_or_none": [("a string", "vp"), ("a number", 1.0)],
    "label": [("negative", -1), ("a float", 0.5), ("a string", "a"), ("out of range", 99)],
    "model": [("a string", "model"), ("a net without a schedule", nn.Linear(2, 2))],
    "kind": [("unknown", "nonsense"), ("None", None)],
    "positive": [("negative", -1.0), ("zero", 0.0), ("NaN", float("nan")), ("inf", float("inf")), ("a string", "a")],
    "nonneg": [("negative", -1.0), ("NaN", float("nan")), ("inf", float("inf")), ("a string", "a")],
    "count": [("zero", 0), ("negative", -3), ("a float", 2.5), ("a string", "a"), ("a bool", True)],
    "real": [("NaN", float("nan")), ("inf", float("inf")), ("a string", "a"), ("None", None)],
    "callable": [("a string", "f"), ("None", None)],
    "mixture": [("a string", "mix"), ("a tensor", X)],
    "labels": [("floats", torch.zeros(4)), ("wrong batch", torch.zeros(3, dtype=torch.long)),
               ("out of range", torch.full((4,), 99, dtype=torch.long)), ("negative", torch.full((4,), -1, dtype=torch.long))],
    "generator": [("a string", "seed"), ("a float", 0.5)],
    # a sampling grid: decreasing times in [0, 1]
    "grid": [("a string", "fast"), ("increasing", torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)),
             ("above 1", torch.tensor([1.5, 0.5, 0.0], dtype=torch.float64)),
             ("NaN", torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64)),
             ("integer steps", torch.tensor([999, 500, 0]))],
}
BAD["model_module"] = [("a string", "net"), ("None", None), ("a tensor", X)]
BAD["fraction"] = [("negative", -0.1), ("above 1", 1.5), ("NaN", float("nan")), ("a string", "a")]
BAD["seed"] = [("negative", -1), ("a float", 0.5), ("a string", "a")]
GRID = torch.tensor([1.0, 0.6, 0.3, 0.0], dtype=torch.float64)
RF = S.RectifiedFlow()


def _vel(x):
    return x * 2.0


# (name, callable, valid kwargs, {argument: category})
API = [
    ("forward.add_noise", forward.add_noise, dict(schedule=VP, x0=X, t=T), {"schedule": "schedule", "x0": "data", "t": "time"}),
    ("forward.add_noise", forward.add_noise, dict(schedule=VP, x0=X, t=T, eps=X), {"eps": "like"}),
    ("forward.sample_times", forward.sample_times, dict(n=8), {"n": "count"}),
    ("forward.sample_times", forward.sample_times, dict(n=8, kind="logit_normal"), {"kind": "kind", "loc": "real", "scale": "positive"}),
    ("forward.transition", forward.transition, dict(schedule=VP, t=0.5, s=0.2), {"schedule": "schedule", "t": "time1", "s": "time1"}),
    ("forward.posterior_coefficients", forward.posterior_coefficients, dict(schedule=VP, t=0.5, s=0.2),
     {"schedule": "schedule", "t": "time1", "s": "time1"}),
    ("forward.posterior", forward.posterior, dict(schedule=VP, x_t=X, x0=X, t=0.5, s=0.2),
     {"schedule": "schedule", "x_t": "data", "x0": "like", "t": "time", "s": "time"}),
    ("processes.brownian_increments", processes.brownian_increments, dict(shape=(4, 2), n_steps=3, dt=0.1),
     {"n_steps": "count", "dt": "positive", "generator": "generator"}),
    ("processes.girsanov_log_weight", processes.girsanov_log_weight, dict(u=DW, dw=DW, dt=0.1),
     {"u": "data", "dw": "like", "dt": "positive"}),
    ("processes.coarsen", processes.coarsen, dict(dw=DW, factor=3), {"factor": "count"}),
    ("processes.euler_maruyama", processes.euler_maruyama, dict(drift=_sde_a, diffusion=_sde_b, x0=X, dt=0.1, dw=DW),
     {"drift": "callable", "diffusion": "callable", "x0": "data", "dt": "positive", "t0": "real"}),
    ("processes.milstein", processes.milstein, dict(drift=_sde_a, diffusion=_sde_b, d_diffusion=_sde_a, x0=X, dt=0.1, dw=DW),
     {"drift": "callable", "diffusion": "callable", "d_diffusion": "callable", "x0": "data", "dt": "positive", "t0": "real"}),
    ("processes.gbm_solution", processes.gbm_solution, dict(x0=XP, w=X, t=1.0, mu=0.1, sigma=0.2),
     {"x0": "data", "w": "like", "t": "nonneg", "mu": "real", "sigma": "nonneg"}),
    ("processes.gbm_moments", processes.gbm_moments, dict(x0=XP, t=T, mu=0.1, sigma=0.2),
     {"x0": "data", "t": "nonneg", "mu": "real", "sigma": "nonneg"}),
    ("processes.gbm_log_prob", processes.gbm_log_prob, dict(x=XP, x0=XP, t=1.0, mu=0.1, sigma=0.2),
     {"x": "data", "x0": "like", "t": "positive", "mu": "real", "sigma": "positive"}),
    ("processes.ou_moments", processes.ou_moments, dict(x0=X, t=T, theta=1.0, sigma=0.5),
     {"x0": "data", "t": "nonneg", "theta": "positive", "sigma": "nonneg", "var0": "nonneg"}),
    ("processes.ou_log_prob", processes.ou_log_prob, dict(x=X, x0=X, t=T, theta=1.0, sigma=0.5),
     {"x": "data", "x0": "like", "t": "positive", "theta": "positive", "sigma": "positive", "var0": "nonneg"}),
    ("processes.ou_noise", processes.ou_noise, dict(shape=(4, 2), n_steps=3, dt=0.1, theta=1.0),
     {"n_steps": "count", "dt": "positive", "theta": "positive", "generator": "generator"}),
    ("processes.ou_solution", processes.ou_solution, dict(x0=X, integrals=DW, dt=0.1, theta=1.0, sigma=0.5),
     {"x0": "data", "dt": "positive", "theta": "positive", "sigma": "nonneg"}),
    ("distill.consistency_grid", distill.consistency_grid, dict(schedule=VP, n=4), {"schedule": "schedule", "n": "count", "t_min": "real"}),
    ("forward.ddim_posterior_coefficients", forward.ddim_posterior_coefficients, dict(schedule=VP, t=0.5, s=0.2, eta=0.5),
     {"schedule": "schedule", "t": "time1", "s": "time1", "eta": "nonneg"}),
    ("forward.ddim_posterior", forward.ddim_posterior, dict(schedule=VP, x_t=X, x0=X, t=0.5, s=0.2, eta=0.5),
     {"schedule": "schedule", "x_t": "data", "x0": "like", "t": "time", "s": "time", "eta": "nonneg"}),
    ("forward.reverse_kernel", forward.reverse_kernel, dict(model=MODEL, x_t=X, t=0.5, s=0.2),
     {"model": "model", "x_t": "data", "t": "time", "s": "time", "variance": "kind"}),
    ("forward.reverse_log_variance", forward.reverse_log_variance, dict(schedule=VP, t=0.5, s=0.2),
     {"schedule": "schedule", "kind": "kind"}),
    ("forward.independent_coupling", forward.independent_coupling, dict(x0=X, x1=X), {"x0": "data", "x1": "like"}),
    ("forward.ot_coupling", forward.ot_coupling, dict(x0=X, x1=X), {"x0": "data", "x1": "like"}),
    ("param.convert", param.convert, dict(out=X, src="eps", dst="x0", x_t=X, t=T, schedule=VP),
     {"out": "like", "src": "kind", "dst": "kind", "x_t": "data", "t": "time", "schedule": "schedule"}),
    ("param.to_x0", param.to_x0, dict(out=X, kind="eps", x_t=X, t=T, schedule=VP),
     {"out": "like", "kind": "kind", "x_t": "data", "t": "time", "schedule": "schedule"}),
    ("param.to_eps", param.to_eps, dict(out=X, kind="x0", x_t=X, t=T, schedule=VP),
     {"out": "like", "kind": "kind", "x_t": "data", "t": "time", "schedule": "schedule"}),
    ("param.from_x0_eps", param.from_x0_eps, dict(x0=X, eps=X, kind="v", t=T, schedule=VP),
     {"x0": "data", "eps": "like", "kind": "kind", "t": "time", "schedule": "schedule"}),
    ("param.target_coefficients", param.target_coefficients, dict(kind="v", t=T, schedule=VP),
     {"kind": "kind", "t": "time1", "schedule": "schedule"}),
    ("param.Denoiser", param.Denoiser, dict(net=MLP(), schedule=VP, prediction="eps"),
     {"net": "callable", "schedule": "schedule", "prediction": "kind"}),
    ("sde.drift_coef", sde.drift_coef, dict(schedule=VP, t=T), {"schedule": "schedule", "t": "time1"}),
    ("sde.diffusion_sq", sde.diffusion_sq, dict(schedule=VP, t=T), {"schedule": "schedule", "t": "time1"}),
    ("sde.forward_drift", sde.forward_drift, dict(schedule=VP, x=X, t=T), {"schedule": "schedule", "x": "data", "t": "time"}),
    ("sde.reverse_sde_drift", sde.reverse_sde_drift, dict(schedule=VP, x=X, t=T, score=X),
     {"schedule": "schedule", "x": "data", "t": "time", "score": "like"}),
    ("sde.pf_ode_velocity", sde.pf_ode_velocity, dict(schedule=VP, x=X, t=T, score=X),
     {"schedule": "schedule", "x": "data", "t": "time", "score": "like"}),
    ("gaussian.gaussian_log_prob", gaussian.gaussian_log_prob, dict(x=X, mean=X, var=1.0), {"x": "data", "mean": "like", "var": "positive"}),
    ("gaussian.gaussian_kl", gaussian.gaussian_kl, dict(mean_q=X, var_q=1.0, mean_p=X, var_p=2.0),
     {"mean_q": "data", "mean_p": "like", "var_p": "positive"}),
    ("gaussian.gaussian_prior_log_prob", gaussian.gaussian_prior_log_prob, dict(x=X, std=1.0), {"x": "data", "std": "positive"}),
    ("autodiff.jacobian_trace", autodiff.jacobian_trace, dict(fn=_vel, x=X), {"fn": "callable", "x": "data"}),
    ("autodiff.hutchinson_trace", autodiff.hutchinson_trace, dict(fn=_vel, x=X),
     {"fn": "callable", "x": "data", "n_probes": "count", "kind": "kind", "probe": "like", "generator": "generator"}),
    ("autodiff.random_probe", autodiff.random_probe, dict(x=X), {"x": "data", "kind": "kind", "generator": "generator"}),
    ("toy.GaussianMixture.score_t", MIX.score_t, dict(x=X, t=T, schedule=VP), {"x": "data", "t": "time", "schedule": "schedule_or_none"}),
    ("toy.GaussianMixture.log_prob_t", MIX.log_prob_t, dict(x=X, t=T, schedule=VP), {"x": "data", "t": "time", "schedule": "schedule_or_none"}),
    ("toy.GaussianMixture.predict", LAB.predict, dict(x=X, t=T, schedule=VP, cond=torch.zeros(4, dtype=torch.long)),
     {"x": "data", "t": "time", "schedule": "schedule_or_none", "cond": "labels"}),
    ("toy.GaussianMixture.sample", MIX.sample, dict(n=5), {"n": "count", "generator": "generator"}),
    ("toy.GaussianMixture.denoiser", MIX.denoiser, dict(schedule=VP), {"schedule": "schedule"}),
    ("toy.GaussianMixture.conditional", LAB.conditional, dict(c=0), {"c": "label"}),
    ("toy.tilted_log_prob", toy.tilted_log_prob, dict(mix=LAB, x=X, t=T, schedule=VP, c=torch.zeros(4, dtype=torch.long), w=1.0),
     {"mix": "mixture", "x": "data", "t": "time", "schedule": "schedule_or_none", "c": "labels", "w": "real"}),
    ("toy.sample_tilted", toy.sample_tilted, dict(mix=LAB, c=0, w=1.0, n=10), {"mix": "mixture", "w": "real", "n": "count"}),
    ("toy.linear_gaussian_posterior", toy.linear_gaussian_posterior,
     dict(prior=MIX, A=torch.eye(2, dtype=torch.float64), y=torch.zeros(2, dtype=torch.float64), noise_std=0.5),
     {"prior": "mixture", "noise_std": "positive"}),
    ("toy.eight_gaussians", toy.eight_gaussians, dict(), {"radius": "positive", "std": "positive"}),
    ("toy.two_moons", toy.two_moons, dict(n=10), {"n": "count", "generator": "generator", "noise": "nonneg", "scale": "positive"}),
    ("toy.checkerboard", toy.checkerboard, dict(n=10), {"n": "count", "size": "positive"}),
    ("toy.sample_dataset", toy.sample_dataset, dict(name="moons", n=10) if "moons" in toy.DATASETS else dict(name=next(iter(toy.DATASETS)), n=10),
     {"name": "kind", "n": "count"}),
    ("toy.empirical_mixture", toy.empirical_mixture, dict(x=X, std=0.1), {"x": "data", "std": "nonneg"}),
    ("metrics.sliced_wasserstein", metrics.sliced_wasserstein, dict(x=X, y=X), {"x": "data", "y": "like", "n_projections": "count"}),
    ("metrics.sliced_wasserstein_to_target", metrics.sliced_wasserstein_to_target,
     dict(generate=lambda n, g: torch.randn(n, 2, generator=g), sample=lambda n, g: torch.randn(n, 2, generator=g), n=8, n_ref=2),
     {"generate": "callable", "sample": "callable", "n": "count", "n_ref": "count", "n_projections": "count", "generator": "generator"}),
    ("metrics.moment_errors", metrics.moment_errors, dict(x=X, mean=torch.zeros(2), cov=torch.eye(2)), {"x": "data"}),
    ("metrics.kl_monte_carlo", metrics.kl_monte_carlo, dict(log_p=lambda z: z[:, 0], log_q=lambda z: z[:, 1], samples_p=X),
     {"log_p": "callable", "log_q": "callable", "samples_p": "data"}),
    ("objectives.denoising_loss", denoising.denoising_loss, dict(model=param.Denoiser(MLP().double(), VP), x0=X),
     {"model": "model", "x0": "data", "t": "time", "target": "kind", "generator": "generator"}),
    ("objectives.loss_weight", denoising.loss_weight, dict(weighting="min_snr", t=T, schedule=VP),
     { "t": "time1", "schedule": "schedule", "gamma": "positive"}),
    ("objectives.regression_target", denoising.regression_target, dict(kind="v", x0=X, eps=X, t=T, schedule=VP),
     {"kind": "kind", "x0": "data", "eps": "like", "t": "time", "schedule": "schedule"}),
    ("score_matching.explicit_score_matching", score_matching.explicit_score_matching,
     dict(score_fn=_vel, x=X, true_score=X), {"score_fn": "callable", "x": "data", "true_score": "like"}),
    ("score_matching.implicit_score_matching", score_matching.implicit_score_matching, dict(score_fn=_vel, x=X),
     {"score_fn": "callable", "x": "data", "estimator": "kind"}),
    ("score_matching.sliced_score_matching", score_matching.sliced_score_matching, dict(score_fn=_vel, x=X),
     {"score_fn": "callable", "x": "data", "n_projections": "count"}),
    ("score_matching.dsm_target", score_matching.dsm_target, dict(schedule=VP, x_t=X, x0=X, t=T),
     {"schedule": "schedule", "x_t": "data", "x0": "like", "t": "time"}),
    ("score_matching.tweedie_x0", score_matching.tweedie_x0, dict(x_t=X, score=X, t=T, schedule=VP),
     {"x_t": "data", "score": "like", "t": "time", "schedule": "schedule"}),
    ("score_matching.sure", score_matching.sure, dict(denoise_fn=_vel, y=X, sigma=0.5),
     {"denoise_fn": "callable", "y": "data", "sigma": "positive", "estimator": "kind"}),
    ("flow_matching.conditional_velocity", flow_matching.conditional_velocity, dict(x0=X, x1=X, t=T, schedule=S.RectifiedFlow()),
     {"x0": "data", "x1": "like", "t": "time", "schedule": "schedule"}),
    ("flow_matching.match_time", flow_matching.match_time, dict(src=VP, dst=S.RectifiedFlow(), t=T), {"src": "schedule", "dst": "schedule", "t": "time1"}),
    ("elbo.elbo_eps_weights", elbo.elbo_eps_weights, dict(schedule=VP, ts=torch.linspace(0, 1, 5, dtype=torch.float64)),
     {"schedule": "schedule"}),
    ("elbo.ddpm_posterior", elbo.ddpm_posterior, dict(dsched=S.DiscreteSchedule.linear(10), x_n=X, x0=X, n=3),
     {"dsched": "schedule", "x_n": "data", "x0": "like"}),
    ("guidance.cfg", guidance.cfg, dict(model=CMODEL, w=1.0, null_label=LAB.num_classes), {"model": "model", "w": "real", "null_label": "count"}),
    ("guidance.classifier_guidance", guidance.classifier_guidance,
     dict(model=CMODEL, classifier=lambda x, t: LAB.class_log_probs_t(x, t, VP), w=1.0),
     {"model": "model", "classifier": "callable", "w": "real"}),
    ("guidance.drop_labels", guidance.drop_labels, dict(labels=torch.zeros(4, dtype=torch.long), p=0.1, null_label=3),
     {"labels": "labels", "p": "positive", "null_label": "count"}),
    ("guidance.ClassifierFreeGuidance()", lambda x_t, t, cond: guidance.cfg(CMODEL, 1.0, LAB.num_classes)(x_t, t, cond),
     dict(x_t=X, t=T, cond=torch.zeros(4, dtype=torch.long)), {"x_t": "data", "t": "time", "cond": "labels"}),
    ("param.Denoiser()", lambda x_t, t: param.Denoiser(MLP().double(), VP)(x_t, t), dict(x_t=X, t=T), {"x_t": "data", "t": "time"}),
    # samplers (monograph §9) and chapter 11
    *[(f"samplers.{fn.__name__}", fn, dict(model=MODEL, x=X, ts=GRID), {"model": "model", "x": "data", "ts": "grid"})
      for fn in (samplers.sample_euler, samplers.sample_heun, samplers.sample_ddim, samplers.sample_dpm_solver_pp_2m,
                 samplers.sample_unipc, samplers.sample_ipndm)],
    *[(f"samplers.{fn.__name__}", fn, dict(model=MODEL, x=X, ts=GRID, generator=torch.Generator()),
       {"model": "model", "x": "data", "ts": "grid", "generator": "generator"})
      for fn in (samplers.sample_ancestral, samplers.sample_euler_maruyama)],
    # ParaDiGMS and the calibrated grids / multistep solver (monograph §9.4-9.5, §9.8)
    ("samplers.CountingModel", samplers.CountingModel, dict(model=MODEL), {"model": "model"}),
    ("samplers.sample_paradigms", samplers.sample_paradigms, dict(model=MODEL, x=X, ts=GRID, window=2, tol=1e-3),
     {"model": "model", "x": "data", "ts": "grid", "window": "count", "tol": "nonneg"}),
    ("samplers.fine_solve", samplers.fine_solve, dict(model=MODEL, x=X, steps=4), {"model": "model", "x": "data", "steps": "count"}),
    ("samplers.FineTrajectory", samplers.FineTrajectory, dict(model=MODEL, x=X, steps=4),
     {"model": "model", "x": "data", "steps": "count"}),
    ("samplers.grid_loss", samplers.grid_loss, dict(model=MODEL, solver=samplers.sample_ddim, ts=GRID, x=X, target=X),
     {"solver": "callable", "x": "data", "target": "like"}),
    ("samplers.grid_calibrated", samplers.grid_calibrated,
     dict(model=MODEL, solver=samplers.sample_ddim, n_steps=2, x_cal=X, fine_steps=4, max_evals=3),
     {"model": "model", "solver": "callable", "n_steps": "count", "x_cal": "data", "knots": "count", "max_evals": "count",
      "fine_steps": "count"}),
    ("samplers.calibrate_multistep", samplers.calibrate_multistep,
     dict(model=MODEL, n_steps=2, x_cal=X, fine_steps=4, max_evals=3),
     {"model": "model", "n_steps": "count", "x_cal": "data", "history": "count", "knots": "count", "max_evals": "count",
      "fine_steps": "count"}),
    ("samplers.sample_calibrated", samplers.sample_calibrated,
     dict(model=MODEL, x=X, ts=GRID, weights=[(0.5, 0.5), (0.5, 0.4, 0.1), (0.0, 1.0, 0.0)]),
     {"model": "model", "x": "data", "ts": "grid"}),
    ("toy.flow_map", toy.flow_map, dict(mixture=MIX, schedule=VP, x=X, s=1.0, t=0.5, rtol=1e-6, atol=1e-6),
     {"mixture": "mixture", "schedule": "schedule", "x": "data", "s": "time", "t": "time", "rtol": "positive"}),
    ("toy.average_velocity", toy.average_velocity, dict(mixture=MIX, schedule=RF, x=X, r=0.2, t=0.6, rtol=1e-6, atol=1e-6),
     {"x": "data", "r": "time", "t": "time"}),
    ("distill.boundary_coefficients", distill.boundary_coefficients, dict(schedule=VP, t=T, sigma_data=0.5),
     {"schedule": "schedule", "t": "time1", "sigma_data": "positive"}),
    ("distill.sample_consistency", distill.sample_consistency, dict(model=MODEL, x=X, ts=[1.0, 0.5], generator=torch.Generator()),
     {"model": "model", "x": "data", "generator": "generator"}),
    ("distill.sample_meanflow", distill.sample_meanflow,
     dict(model=distill.MeanFlow(distill.TwoTimeNet(MLP(2 + 4, 8, 1, out_dim=2).double(), 4), RF), x=X, ts=[1.0, 0.0]),
     {"model": "model", "x": "data"}),
    ("distill.meanflow_target", distill.meanflow_target, dict(v=X, dudt=X, t=T, r=T * 0.5), {"v": "data", "dudt": "like"}),
    ("distill.pseudo_huber", distill.pseudo_huber, dict(diff=X), {"diff": "data", "c": "positive"}),
    # networks, data and the engine
    # (a raw network takes any real t -- EDM feeds it log(sigma) / 4 -- and checks no NaN in its hot path: the model
    # contract's param.Denoiser above does)
    ("nets.sinusoidal_embedding", nets.sinusoidal_embedding, dict(t=T, dim=8), {"dim": "count"}),
    ("nets.MLP", nets.MLP, dict(dim=2, hidden=8, depth=1), {"dim": "count", "hidden": "count", "depth": "count"}),
    ("nets.UNet", nets.UNet, dict(in_channels=1, base=8), {"in_channels": "count", "base": "count"}),
    ("data.load_digits", data.load_digits, dict(size=8), {"size": "count"}),
    ("data.batches", lambda x, batch_size: next(data.batches(x, batch_size, generator=0)), dict(x=X, batch_size=2),
     {"x": "data", "batch_size": "count"}),
    ("data.stratified_split", data.stratified_split, dict(labels=torch.tensor([0, 1, 0, 1, 0, 1]), n_held_out=2, seed=0),
     {"n_held_out": "count"}),
    ("engine.EMA", engine.EMA, dict(model=nn.Linear(2, 2), decay=0.9), {"model": "model_module", "decay": "fraction"}),
    ("engine.make_generator", engine.make_generator, dict(seed=0), {"seed": "seed"}),
    ("engine.fit", lambda steps, lr: engine.fit(nn.Linear(2, 2), lambda m, x, g: m(x).pow(2).mean(1),
                                                 data.batches(X.float(), 2, generator=0), steps=steps, lr=lr, progress=False),
     dict(steps=2, lr=1e-3), {"steps": "count", "lr": "positive"}),
]

# (categories that do not apply to one argument: e.g. zero is a valid drop probability)
SKIP = {
    ("engine.fit", "steps", "zero"),  # fit(steps=0) trains no further: valid (e.g. after loading a checkpoint)
    ("data.batches", "x", "no batch dim"),  # a (N,) tensor is N scalar examples
    ("data.batches", "x", "integer dtype"),  # integer data (tokens, indices) can be batched too
    ("data.stratified_split", "n_held_out", "zero"),  # nothing held out: an empty held-out set, valid
    ("guidance.drop_labels", "p", "zero"),          # p = 0 drops no label: valid
    ("guidance.cfg", "null_label", "zero"),         # any non-negative label can be the null label
    ("guidance.drop_labels", "null_label", "zero"),
    ("objectives.denoising_loss", "weighting", "None"),  # None means no weighting
}


def _cases():
    out = []
    for name, fn, valid, probes in API:
        for arg, cat in probes.items():
            for label, bad in BAD[cat]:
                if (name, arg, label) in SKIP:
                    continue
                if cat == "labels" and label in ("out of range", "wrong batch") and arg == "labels":
                    continue  # drop_labels: any label is fine, and there is no other batch to match
                out.append(pytest.param(name, fn, valid, arg, bad, id=f"{name}-{arg}-{label}"))
    return out


CASES = _cases()


def test_the_valid_calls_are_valid():
    for name, fn, valid, _ in API:
        out = fn(**valid)
        if torch.is_tensor(out) and out.is_floating_point():
            assert torch.isfinite(out).all(), name


@pytest.mark.parametrize("name, fn, valid, arg, bad", CASES)
def test_bad_input_is_refused_with_an_error_naming_the_argument(name, fn, valid, arg, bad):
    kwargs = dict(valid, **{arg: bad})
    with pytest.raises((TypeError, ValueError)) as info:
        out = fn(**kwargs)
        # no silent NaN: a result that comes back must be finite
        if torch.is_tensor(out) and out.is_floating_point() and not torch.isfinite(out).all():
            raise AssertionError(f"{name}({arg}=...) returned non-finite values")
    message = str(info.value)
    assert arg in message or arg.replace("_", " ") in message, f"{name}: the error for {arg} does not name it: {message}"
    assert "size of tensor" not in message and "mat1 and mat2" not in message, message


def test_at_least_300_cases_over_the_public_api():
    assert len(CASES) >= 300, len(CASES)


if __name__ == "__main__":  # the count per module, for the notes
    counts = collections.Counter(c.values[0].split(".")[0] for c in CASES)
    for module, n in sorted(counts.items()):
        print(f"{module:16s} {n}")
    print(f"{'total':16s} {len(CASES)}")
