"""Benchmark: diffedu's PF-ODE solvers against diffusers' schedulers on exact-score problems they were never tuned on (monograph §9).

Problems. Gaussian mixtures under the standard discrete DDPM linear schedule (beta 1e-4..0.02,
1000 steps: diffusers' default), with the *exact* noise prediction of :mod:`diffedu.toy` through
:class:`diffedu.schedules.DiscreteSchedule` (DDPM step n <-> t = (n + 1) / N). Every solver starts
from the same noise at the last training step (t = 1) and ends at the data (t = 0, "alpha = 1"),
so every error measured is the solver's own. Mixtures are drawn at random (4-8 components, means
uniform in [-4, 4]^d, widths 0.15-1.0, random weights; the seed of each is printed):

* *training* mixtures (seeds 1000 + k): the only problems on which anything is chosen;
* *held-out* mixtures (seeds 2000 + k) and the 8-Gaussian ring: only evaluated.

Grids, chosen without the answer. For each diffedu solver and NFE the grid *construction* is
selected on the training mixtures (least mean log error against their references) among
fixed families (t^p, Karras rho = 7) and :func:`diffedu.samplers.adaptive.grid_from_density`
(steps at equal quantiles of a local-error density measured from model evaluations on a pilot run;
gamma is the construction's hyperparameter). On a held-out mixture the adaptive grid is rebuilt
from *that* model's own pilot evaluations (256 pilot points, 48 evaluations, no reference).

Calibrated constructions (only the model, never the answer). ``calibrated`` grids
(:func:`diffedu.samplers.calibrated.grid_calibrated`, LD3 / Align-Your-Steps style) start from the fixed
construction above that fits the calibration batch best and move its interior points to minimise the
distance of the solver's output to the *model's own* fine solve (DPM-Solver++(3M), 400 steps) on a
calibration batch; ``calibrated-ms`` (S4S style,
:func:`~diffedu.samplers.calibrated.calibrate_multistep`) also fits the weights of a linear multistep
solver x_{i+1} = c_i x_i + sum_j w_ij x0_hat_j to the model's fine trajectory, step by step by least
squares. The calibration noise (512 points, seed 10000 + the evaluation noise seed, printed) is disjoint
from the evaluation noise; the history h of calibrated-ms and whether a calibrated grid is used at all
are selected on the training mixtures like every other construction. Calibration is a one-off per model,
solver and NFE: its cost (seconds, model evaluations on the calibration batch) is printed separately
and not counted in the NFE of the solver.

Reference. The PF-ODE solved with scipy DOP853 at rtol = atol = 1e-10 from the same noise.

Peers (diffusers, a benchmark-only dependency), driven by the same exact model: a scheduler's
timestep n (fractional for Euler/Heun) is mapped to continuous time through the scheduler's own
noise level sigma_n = sqrt((1 - abar_n)/abar_n), linearly interpolated in n. UniPC runs as bh1 and
bh2, with final_sigmas_type "zero" (the default: the last step lands on the data) and
"sigma_min" (bh1 only runs with the latter: with "zero" its B(h) = h is infinite on the last step
and diffusers returns NaN). k-diffusion (LMS, DPM++ 2M, DPM++ 3M SDE with eta = 0, each on
k-diffusion's discrete-timestep sigmas and on Karras sigmas) is driven in its VE parameterisation:
x_k = x_t / alpha_t at sigma = sigma_t / alpha_t, with the denoiser D(x_k, sigma) = x0_hat(alpha x_k, t(sigma))
of the same exact model (exact at any sigma, so no timestep interpolation enters), from the same noise
to sigma = 0 (alpha = 1, the same end point). k-diffusion is not a dependency: ``pip install k-diffusion``
would replace torch (it pulls torch 2.14 and CUDA wheels through accelerate, clean-fid, torchvision, ...),
so install it with ``pip install --no-deps k-diffusion``; only its ``sampling.py`` is loaded (by file,
under a private package name, with ``utils.append_dims`` and the unused ``torchdiffeq`` / ``torchsde``
imports stubbed). If it is absent the benchmark says so in its first line and in every table.

Measured per problem and NFE (5, 10, 20, 50): mean L2 distance of the final samples to the
reference; the ratio best diffedu / best peer, with the solvers and grids; the DDIM identity
with diffusers' DDIMScheduler (trailing), stock and with its float32 alphas_cumprod table replaced
by the float64 one (the whole gap is diffusers' float32 table and coefficient arithmetic). Solver
overhead (ring, 4096 x 2 whatever --n is): the solver loop driven by a zero-cost model, median of
21 runs at NFE 20, per evaluation, per step, and per step when the grid is made in every run.

Run:  python benchmarks/solvers.py              (about 10 CPU-minutes on one core, most of it calibrating)
      python benchmarks/solvers.py --dim 64 --n 512 --train 2 --cal-evals 100 --calibrate "unipc-3 bh2" \
          --fits 4 --solvers "dpm-solver++2m,dpm-solver++3m,unipc-2 bh2,unipc-3 bh2,ipndm-4,calibrated-ms" --no-overhead
                                                (64 dimensions, a lighter field: the oracle costs ~10x more there)
      python benchmarks/solvers.py --quick      (a smoke test: 128 points, NFE 10 20, 1 training mixture, the ring, 3 solvers)
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
import types

import numpy as np
import torch

from diffedu import schedules, toy
from diffedu.samplers import CountingModel, Grid, calibrated, ode, unipc
from diffedu.samplers.adaptive import error_density, grid_from_density


class NullModel:
    """Returns one stored Prediction whatever it is asked: a model of zero cost, to time a solver's own work."""

    def __init__(self, model, x):
        self.schedule = model.schedule
        self.out = model(x, torch.full((len(x),), 0.5, dtype=x.dtype))
        self.nfe = 0

    def __call__(self, x, t, cond=None):
        self.nfe += 1
        return self.out


# ------------------------------------------------------------------------------------------ diffedu
def _steps_for(nfe, per_step, final):
    """Largest number of steps whose evaluation count (per_step each, ``final`` on the last) is <= nfe."""
    return max(1, (nfe - final) // per_step + 1)


#: name -> (sampler, kwargs, evaluations per step, evaluations on a final step to sigma = 0, order for the density)
SOLVER_COSTS = {
    "heun": (ode.sample_heun, {}, 2, 1, 2),
    "dpm-solver-3": (ode.sample_dpm_solver, {"order": 3}, 3, 2, 3),
    "dpm-solver++2m": (ode.sample_dpm_solver_pp_2m, {}, 1, 1, 2),
    "dpm-solver++3m": (ode.sample_dpm_solver_pp_3m, {}, 1, 1, 3),
    "deis-3": (ode.sample_deis, {"order": 3}, 1, 1, 3),
    "unipc-2 bh1": (unipc.sample_unipc, {"order": 2, "variant": "bh1"}, 1, 1, 3),
    "unipc-2 bh2": (unipc.sample_unipc, {"order": 2, "variant": "bh2"}, 1, 1, 3),
    "unipc-3 bh2": (unipc.sample_unipc, {"order": 3, "variant": "bh2"}, 1, 1, 3),
    "ipndm-4": (unipc.sample_ipndm, {"order": 4}, 1, 1, 2),
    "calibrated-ms": (calibrated.sample_calibrated, {}, 1, 1, 2),  # its weights come with its grid (FITS below)
}

#: the solvers that get model-calibrated grids (LD3 / AYS-style) as candidate constructions
CALIBRATED = ["unipc-3 bh2", "ipndm-4", "dpm-solver++3m"]
#: calibrated-ms's constructions: S4S-style fit of grid and weights with history h, selected on the training mixtures
FITS = {f"fit h={h}": h for h in (2, 3, 4)}
CAL = {"n": 512, "evals": 150}  # calibration batch size and Nelder-Mead budget (--cal-n, --cal-evals)

#: grid construction name -> (schedule, n_steps, {order: pilot density}, order) -> float64 grid ending at the data
GRID_CANDIDATES = {
    "uniform t": lambda sch, k, dens, o: ode.grid_uniform(k),
    "t^1.25": lambda sch, k, dens, o: ode.grid_power(k, 1.25),
    "t^1.5": lambda sch, k, dens, o: ode.grid_power(k, 1.5),
    "t^2": lambda sch, k, dens, o: ode.grid_power(k, 2.0),
    "karras 7": lambda sch, k, dens, o: ode.grid_karras(sch, k, rho=7.0),
    **{f"adaptive g={g}": (lambda g: lambda sch, k, dens, o: grid_from_density(sch, *dens[o], k, gamma=g))(g)
       for g in (0.4, 0.6, 0.8)},
}


def run_diffedu(model, noise, fn, kw, ts):
    """(final samples, number of model evaluations, number of solver steps); ``ts`` a grid tensor or a Grid."""
    m = CountingModel(model)
    with torch.no_grad():
        out = fn(m, noise.clone(), ts, **kw)
    return out, m.nfe, (ts.n_steps if isinstance(ts, Grid) else len(ts) - 1)


def solver_grid(prob, name, grid_name, nfe):
    """(sampler, kwargs, grid) of solver ``name`` on construction ``grid_name`` at ``nfe`` on one problem.

    Calibrated constructions are computed once per (problem, solver, construction, NFE) from the
    problem's *model* and calibration noise only, and kept in the problem's own cache with their cost.
    """
    fn, kw, per, final, order = SOLVER_COSTS[name]
    k = _steps_for(nfe, per, final)
    if grid_name in GRID_CANDIDATES:
        return fn, kw, GRID_CANDIDATES[grid_name](prob["sch"], k, prob["density"], order)
    key = (name, grid_name, nfe)
    if key not in prob["cache"]:
        m = CountingModel(prob["model"])
        t0 = time.perf_counter()
        # start from the fixed construction (model-only: families and the pilot density) that fits the calibration best
        inits = [make(prob["sch"], k, prob["density"], order) for make in GRID_CANDIDATES.values()]
        if grid_name in FITS:
            ts, w = calibrated.calibrate_multistep(m, k, prob["x_cal"], init=inits, history=FITS[grid_name],
                                                   max_evals=CAL["evals"])
            out = (ts, {"weights": w})
        else:  # "calibrated": the solver's grid against the model's fine solve of the calibration batch
            ts = calibrated.grid_calibrated(m, fn, k, prob["x_cal"], init=inits, solver_kwargs=kw,
                                            target=prob["fine_cal"], max_evals=CAL["evals"])
            out = (ts, {})
        prob["cache"][key] = out + (time.perf_counter() - t0, m.nfe)
    ts, extra = prob["cache"][key][:2]
    return fn, {**kw, **extra}, ts


def constructions(name):
    """The grid constructions solver ``name`` can use."""
    if name == "calibrated-ms":
        return tuple(FITS)
    return tuple(GRID_CANDIDATES) + (("calibrated",) if name in CALIBRATED else ())


# ------------------------------------------------------------------------------------------ diffusers
def diffusers_peers():
    """name -> (scheduler factory, number of set_timesteps steps for a given NFE) of diffusers' schedulers."""
    import diffusers as D

    base = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon")
    same = lambda nfe: nfe  # noqa: E731
    U = D.UniPCMultistepScheduler
    return {
        "DDIMScheduler (trailing)": (lambda: D.DDIMScheduler(**base, timestep_spacing="trailing", clip_sample=False), same),
        "DPMSolverMultistep 2M": (lambda: D.DPMSolverMultistepScheduler(**base, solver_order=2), same),
        "DPMSolverMultistep 3M": (lambda: D.DPMSolverMultistepScheduler(**base, solver_order=3), same),
        "DPMSolverSinglestep (2)": (lambda: D.DPMSolverSinglestepScheduler(**base, solver_order=2), same),
        "DEISMultistep (3)": (lambda: D.DEISMultistepScheduler(**base, solver_order=3), same),
        "UniPC bh2 2 zero": (lambda: U(**base, solver_order=2, final_sigmas_type="zero"), same),
        "UniPC bh2 3 zero": (lambda: U(**base, solver_order=3, final_sigmas_type="zero"), same),
        "UniPC bh2 2 sigma_min": (lambda: U(**base, solver_order=2, final_sigmas_type="sigma_min"), same),
        "UniPC bh1 2 sigma_min": (lambda: U(**base, solver_type="bh1", solver_order=2, final_sigmas_type="sigma_min"), same),
        "UniPC bh1 3 sigma_min": (lambda: U(**base, solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min"), same),
        "EulerDiscrete": (lambda: D.EulerDiscreteScheduler(**base), same),
        "HeunDiscrete": (lambda: D.HeunDiscreteScheduler(**base), lambda nfe: (nfe + 1) // 2),
    }


_KD = "_kdiffusion_sampling_only"  # the private package name k_diffusion/sampling.py is loaded under


def load_k_diffusion_sampling():
    """(k-diffusion's sampling module, where it was loaded from) or (None, why it is absent).

    Only ``k_diffusion/sampling.py`` is executed: its package ``__init__`` imports accelerate, clean-fid,
    wandb, torchvision, kornia, ... It is loaded as ``_kdiffusion_sampling_only.sampling`` with a stub
    parent package whose ``utils`` has k-diffusion's ``append_dims``; ``torchdiffeq`` and ``torchsde``
    (imported at its top, used only by log_likelihood and the Brownian-tree noise) are stubbed if missing.
    """
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, "k-diffusion ABSENT (not installed; `pip install --no-deps k-diffusion` adds it without touching torch)"
    path = list(spec.submodule_search_locations)[0] + "/sampling.py"
    pkg, utils = types.ModuleType(_KD), types.ModuleType(_KD + ".utils")
    pkg.__path__ = []
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    stubs = {_KD: pkg, _KD + ".utils": utils}
    for name in ("torchdiffeq", "torchsde"):
        if importlib.util.find_spec(name) is None:
            stubs[name] = types.ModuleType(name)
            stubs[name].odeint = stubs[name].BrownianTree = None
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        loader = importlib.util.spec_from_file_location(_KD + ".sampling", path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 -- any failure is reported, never silently skipped
        return None, f"k-diffusion ABSENT (loading {path} failed: {type(e).__name__}: {str(e)[:100]})"
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module, f"k-diffusion: sampling.py loaded alone from {path}"


class KDenoiser:
    """k-diffusion's denoiser D(x_k, sigma) (VE form, x_k = x_t / alpha_t, sigma = sigma_t / alpha_t) from a diffedu model."""

    def __init__(self, model):
        self.model, self.sch = model, model.schedule

    def __call__(self, x, sigma):
        t = self.sch.t_from_sigma_bar(sigma[:1].double().cpu())
        a = float(self.sch.alpha(t))
        return self.model(a * x, torch.full((len(x),), float(t), dtype=x.dtype)).x0


def k_diffusion_sigmas(sch, n, kind):
    """n sigmas and a final 0: ``"discrete"`` is k-diffusion's DiscreteSchedule.get_sigmas(n) (n timesteps
    linspace(N - 1, 0, n), log sigma interpolated between the table's entries), ``"karras"`` its
    get_sigmas_karras(n, sigma_min, sigma_max, rho=7) over the table's range; both in float64."""
    ab = sch.alphas_cumprod
    table = ((1 - ab) / ab).sqrt()
    if kind == "karras":
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        lo, hi = float(table[0]) ** (1 / 7), float(table[-1]) ** (1 / 7)
        sig = (hi + ramp * (lo - hi)) ** 7
    else:
        t = torch.linspace(len(table) - 1, 0, n, dtype=torch.float64)
        low, w = t.floor().long(), t - t.floor()
        high = torch.clamp(low + 1, max=len(table) - 1)
        sig = ((1 - w) * table.log()[low] + w * table.log()[high]).exp()
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def k_diffusion_peers(kd):
    """name -> (k-diffusion sampler, kwargs, sigma kind); eta = 0 for the SDE sampler (no noise is drawn)."""
    quiet = {"noise_sampler": lambda s, s_next: None, "eta": 0.0}
    return {f"k-diffusion {label} ({kind})": (fn, kw, kind)
            for label, fn, kw in (("LMS", kd.sample_lms, {}), ("DPM++ 2M", kd.sample_dpmpp_2m, {}),
                                  ("DPM++ 3M SDE eta=0", kd.sample_dpmpp_3m_sde, quiet))
            for kind in ("discrete", "karras")}


def run_k_diffusion(model, noise, fn, kw, sigmas):
    """(final samples, model evaluations): x_k = noise / alpha at sigma_max, sampled to sigma = 0, where x = x_k."""
    m = CountingModel(model)
    a0 = float(model.schedule.alpha(model.schedule.t_from_sigma_bar(sigmas[:1])))
    with torch.no_grad():
        out = fn(KDenoiser(m), noise / a0, sigmas, disable=True, **kw)
    return out, m.nfe


def all_peers(sch, adapter, kd):
    """name -> run(model, noise, nfe) -> (samples, evaluations): diffusers' schedulers and (if present) k-diffusion's samplers."""
    peers = {f"diffusers {name}": (lambda make, steps: lambda model, noise, nfe:
                                   run_peer(model, noise, make, steps(nfe), adapter)[:2])(make, steps)
             for name, (make, steps) in diffusers_peers().items()}
    if kd is not None:
        for name, (fn, kw, kind) in k_diffusion_peers(kd).items():
            peers[name] = (lambda fn, kw, kind: lambda model, noise, nfe:
                           run_k_diffusion(model, noise, fn, kw, k_diffusion_sigmas(sch, nfe, kind)))(fn, kw, kind)
    return peers


def run_peer(model, noise, make, n_steps, adapter, sched=None):
    """(final samples, number of model evaluations, number of solver steps); ``adapter=None`` (timing runs) passes t = 0.5."""
    sched = make() if sched is None else sched
    sched.set_timesteps(n_steps)
    m = CountingModel(model)
    with torch.no_grad():
        x = noise.clone() * float(sched.init_noise_sigma)
        for n in sched.timesteps:
            xin = sched.scale_model_input(x, n)
            t = adapter(float(n)) if adapter is not None else 0.5
            eps = m(xin, torch.full((len(x),), t, dtype=xin.dtype)).eps.to(xin.dtype)
            x = sched.step(eps, n, x).prev_sample
    return x.to(noise.dtype), m.nfe, n_steps


def ddim_float64_table(make, sch):
    """diffusers' DDIMScheduler with its float32 alphas_cumprod (and final alpha) replaced by diffedu's float64 table."""
    s = make()
    s.alphas_cumprod = sch.alphas_cumprod.clone()
    s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return s


# ------------------------------------------------------------------------------------------ problems
def random_mixture(seed: int, dim: int = 2) -> toy.GaussianMixture:
    """4-8 components, means uniform in [-4, 4]^dim, isotropic widths uniform in [0.15, 1.0], weights uniform then normalised (>= 0.2 / K)."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(4, 9, (1,), generator=g))
    means = 8 * torch.rand(k, dim, generator=g, dtype=torch.float64) - 4
    stds = 0.15 + 0.85 * torch.rand(k, generator=g, dtype=torch.float64)
    w = 0.2 + torch.rand(k, generator=g, dtype=torch.float64)
    return toy.GaussianMixture(means, stds=stds, weights=w / w.sum())


def make_problem(name, mix, sch, n, seed, pilot_n=256):
    """The exact model, the noise (seed), its DOP853 reference, the pilot error densities (orders 2, 3; pilot seed + 7),
    and the calibration batch (seed 10000 + seed, disjoint from the evaluation noise) with the model's fine solve of it."""
    model = mix.denoiser(sch)
    noise = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pilot = torch.randn(pilot_n, mix.dim, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
    x_cal = torch.randn(CAL["n"], mix.dim, generator=torch.Generator().manual_seed(10000 + seed), dtype=torch.float64)
    ref = ode.solve_pf_ode_reference(model, noise, 1.0, 0.0, rtol=1e-10, atol=1e-10)
    density = {o: error_density(model, pilot, o) for o in (2, 3)}
    return {"name": name, "model": model, "sch": sch, "noise": noise, "ref": ref, "density": density, "seed": seed,
            "x_cal": x_cal, "fine_cal": calibrated.fine_solve(model, x_cal), "cache": {}}


def error(prob, out):
    return float((out - prob["ref"]).norm(dim=1).mean())


#: the smoke test's (--quick) field: three solvers, four fixed grid constructions (no calibration)
QUICK = (("unipc-3 bh2", "ipndm-4", "dpm-solver++3m"), ("t^1.5", "t^2", "adaptive g=0.6", "karras 7"))


def select_grids(train, nfes, names=tuple(SOLVER_COSTS), grids=None):
    """(solver, nfe) -> the construction with the least mean log error over the training problems (``grids``: a
    fixed subset for every solver; None: each solver's own :func:`constructions`)."""
    best = {}
    for name in names:
        for nfe in nfes:
            score = {}
            for gname in (grids or constructions(name)):
                errs = []
                for prob in train:
                    fn, kw, ts = solver_grid(prob, name, gname, nfe)
                    errs.append(error(prob, run_diffedu(prob["model"], prob["noise"], fn, kw, ts)[0]))
                score[gname] = float(np.mean(np.log(errs)))
            best[name, nfe] = min(score, key=score.get)
    return best


def evaluate(prob, selection, peers, nfes):
    """{nfe: (ours {solver: err}, peers {name: err})} on one problem, every solver on its selected grid."""
    out = {}
    for nfe in nfes:
        ours, theirs = {}, {}
        for name in dict.fromkeys(k for k, _ in selection):
            fn, kw, ts = solver_grid(prob, name, selection[name, nfe], nfe)
            x, used, _ = run_diffedu(prob["model"], prob["noise"], fn, kw, ts)
            if used <= nfe:
                ours[name] = error(prob, x)
        for name, run in peers.items():
            x, used = run(prob["model"], prob["noise"], nfe)
            e = error(prob, x)
            if used <= nfe and math.isfinite(e):
                theirs[name] = e
        out[nfe] = (ours, theirs)
    return out


def overhead_ms(run, model, n=4096, repeats=21):
    """Solver overhead of ``run(null_model, x, fresh)`` at n x 2, median of ``repeats`` timed runs, in ms:
    (per evaluation, per step) with ``fresh=False`` (diffedu: a prebuilt Grid, a second batch on the same
    grid), and per step with ``fresh=True`` (diffedu: the grid is made and its Grid built inside each run)."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    null = NullModel(model, x)
    run(null, x, False)  # warm-up
    out = {}
    for fresh in (False, True):
        walls = []
        for _ in range(repeats):
            null.nfe = 0
            t0 = time.perf_counter()
            steps = run(null, x, fresh)
            walls.append(time.perf_counter() - t0)
        out[fresh] = (float(np.median(walls)), null.nfe, steps)
    (wall, nfe, steps), (wall_new, _, _) = out[False], out[True]
    return 1e3 * wall / nfe, 1e3 * wall / steps, 1e3 * wall_new / steps


class TimestepAdapter:
    """diffusers timestep n (maybe fractional) -> diffedu time t, through the scheduler's sigma_n interpolated linearly in n."""

    def __init__(self, sch: schedules.DiscreteSchedule):
        ab = sch.alphas_cumprod.numpy()
        self.sch, self.table = sch, np.sqrt((1 - ab) / ab)

    def __call__(self, n: float) -> float:
        if float(n).is_integer():
            return float(self.sch.timestep_to_t(float(n)))
        sig = np.interp(float(n), np.arange(len(self.table)), self.table)
        return float(self.sch.t_from_sigma_bar(torch.tensor(sig, dtype=torch.float64)))


# ------------------------------------------------------------------------------------------ main
def print_problem(prob, res, selection, nfes):
    print(f"\n== {prob['name']}: mean L2 to the DOP853 reference (diffedu rows: solver [grid per NFE])")
    print(f"{'solver':30s}" + "".join(f"{'NFE ' + str(n):>11s}" for n in nfes))
    for name in dict.fromkeys(k for k, _ in selection):
        cells = "".join(f"{res[n][0][name]:11.2e}" if name in res[n][0] else f"{'-':>11s}" for n in nfes)
        print(f"{'diffedu ' + name:30s}{cells}   [" + ", ".join(selection[name, n] for n in nfes) + "]")
    for name in dict.fromkeys(k for n in nfes for k in res[n][1]):
        cells = "".join(f"{res[n][1][name]:11.2e}" if name in res[n][1] else f"{'nan':>11s}" for n in nfes)
        print(f"{name:30s}{cells}")
    ratios = {}
    for n in nfes:
        ours, theirs = res[n]
        bo, bp = min(ours, key=ours.get), min(theirs, key=theirs.get)
        ratios[n] = ours[bo] / theirs[bp]
        print(f"NFE {n:3d}: best diffedu {ours[bo]:.2e} ({bo}, {selection[bo, n]}) / best peer {theirs[bp]:.2e} ({bp}) "
              f"= {ratios[n]:.3f} {'ok' if ratios[n] <= 0.5 else 'MISS (> 0.5)'}")
    return ratios


def ddim_identity(prob, adapter, nfes):
    make = diffusers_peers()["DDIMScheduler (trailing)"][0]
    for n in nfes:
        a, _, _ = run_diffedu(prob["model"], prob["noise"], ode.sample_ddim, {}, ode.grid_ddpm(prob["sch"], n, "trailing"))
        b, _, _ = run_peer(prob["model"], prob["noise"], make, n, adapter)
        c, _, _ = run_peer(prob["model"], prob["noise"], None, n, adapter, sched=ddim_float64_table(make, prob["sch"]))
        print(f"DDIM {prob['name']} NFE {n:3d}: max |diffedu - diffusers| = {float((a - b).abs().max()):.2e}; "
              f"with diffusers' table in float64: max |diffedu - diffusers64| = {float((a - c).abs().max()):.2e}")


def overheads(prob, selection, nfe, sch, kd):
    """ms per evaluation / per step / per step on a new grid, zero-cost model, 4096 x dim."""
    print(f"\nsolver overhead at NFE {nfe} with a zero-cost model, 4096 x {prob['noise'].shape[1]}, median of 21: ms per "
          "evaluation, ms per step, ms per step making the grid in every run (diffedu: the adaptive density is measured "
          "once per model, a calibration is made once per model, solver and NFE; the Grid is rebuilt)")
    for name in dict.fromkeys(k for k, _ in selection):
        fn, kw, ts = solver_grid(prob, name, selection[name, nfe], nfe)
        built = Grid(prob["sch"], ts)
        r = overhead_ms(lambda m, x, fresh: run_diffedu(m, x, fn, kw, solver_grid(prob, name, selection[name, nfe], nfe)[2]
                                                        if fresh else built)[2], prob["model"])
        print(f"  diffedu {name:24s}{r[0]:9.3f}{r[1]:9.3f}{r[2]:9.3f}   {'ok' if r[1] <= 0.2 else 'MISS (> 0.2 ms/step)'}")
    for name, (make, steps) in diffusers_peers().items():
        r = overhead_ms(lambda m, x, fresh: run_peer(m, x, make, steps(nfe), None)[2], prob["model"])
        print(f"  diffusers {name:22s}{r[0]:9.3f}{r[1]:9.3f}{r[2]:9.3f}")
    for name, (fn, kw, kind) in (k_diffusion_peers(kd).items() if kd is not None else ()):
        sig = k_diffusion_sigmas(sch, nfe, kind)
        r = overhead_ms(lambda m, x, fresh: (run_k_diffusion(m, x, fn, kw, k_diffusion_sigmas(sch, nfe, kind) if fresh else sig),
                                             nfe)[1], prob["model"])
        print(f"  {name:32s}{r[0]:9.3f}{r[1]:9.3f}{r[2]:9.3f}")


def calibration_costs(probs):
    """One line per calibrated (solver, construction, NFE): median seconds and model evaluations over the problems."""
    rows = {}
    for prob in probs:
        for (name, gname, nfe), (_, _, secs, evals) in prob["cache"].items():
            rows.setdefault((name, gname, nfe), []).append((secs, evals))
    if not rows:
        return
    print(f"\ncalibration cost (one-off per model, solver and NFE; batch {CAL['n']} x dim, NM budget {CAL['evals']}, plus the fine solve of it, "
          "400 evaluations, shared): median over the held-out problems")
    for (name, gname, nfe), v in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        print(f"  {name:16s} {gname:12s} NFE {nfe:3d}: {np.median([a for a, _ in v]):6.2f} s, "
              f"{int(np.median([b for _, b in v])):6d} evaluations on the calibration batch")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2048, help="number of samples per problem (default 2048)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--seed", type=int, default=0, help="noise seed (problem k uses seed + k)")
    ap.add_argument("--train", type=int, default=3, help="number of training mixtures (seeds 1000 + k)")
    ap.add_argument("--heldout", type=int, default=5, help="number of held-out mixtures (seeds 2000 + k)")
    ap.add_argument("--dim", type=int, default=2, help="data dimension of the random mixtures (the ring is 2-D only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-overhead", action="store_true")
    ap.add_argument("--quick", action="store_true", help="128 points, NFE 10 20, 1 training mixture, the ring, the solvers and grids of QUICK")
    ap.add_argument("--solvers", default=",".join(SOLVER_COSTS), help="comma-separated diffedu solvers (default: all)")
    ap.add_argument("--calibrate", default=",".join(CALIBRATED), help="solvers that get calibrated grids ('' for none)")
    ap.add_argument("--fits", default="2,3,4", help="histories h of calibrated-ms to select among")
    ap.add_argument("--cal-n", type=int, default=512, help="calibration batch size (default 512)")
    ap.add_argument("--cal-evals", type=int, default=150, help="Nelder-Mead budget of a calibration (default 150)")
    args = ap.parse_args(argv)
    CAL.update(n=args.cal_n, evals=args.cal_evals)
    CALIBRATED[:] = [c for c in args.calibrate.split(",") if c]
    FITS.clear()
    FITS.update({f"fit h={h}": int(h) for h in args.fits.split(",") if h})
    names = tuple(n for n in args.solvers.split(",") if n)
    unknown = [n for n in names if n not in SOLVER_COSTS]
    if unknown:
        ap.error(f"--solvers: unknown {unknown}; choose from {list(SOLVER_COSTS)}")
    if args.quick:
        args.n, args.nfe, args.train, args.heldout, args.no_overhead = 128, [10, 20], 1, 0, True
    torch.set_num_threads(args.threads)
    sch = schedules.DiscreteSchedule.linear()
    kd, kd_status = load_k_diffusion_sampling()
    print(kd_status)
    t0 = time.perf_counter()
    train = [make_problem(f"train seed {1000 + k}", random_mixture(1000 + k, args.dim), sch, args.n, args.seed + 100 + k)
             for k in range(args.train)]
    selection = select_grids(train, args.nfe, *(QUICK if args.quick else (names,)))
    print(f"grid constructions selected on {len(train)} training mixtures (seeds "
          f"{[1000 + k for k in range(args.train)]}, dim {args.dim}; calibration noise seeds "
          f"{[10000 + p['seed'] for p in train]}) in {time.perf_counter() - t0:.0f}s:")
    for name in dict.fromkeys(k for k, _ in selection):
        print(f"  {name:18s}" + ", ".join(f"NFE {n}: {selection[name, n]}" for n in args.nfe))
    held = [(f"held-out seed {2000 + k} (dim {args.dim})", random_mixture(2000 + k, args.dim)) for k in range(args.heldout)]
    if args.dim == 2:
        held.append(("ring (8 Gaussians, r 4, std 0.5)", toy.eight_gaussians(radius=4.0, std=0.5)))
    adapter = TimestepAdapter(sch)
    peers = all_peers(sch, adapter, kd)
    summary, probs = {}, []
    for k, (name, mix) in enumerate(held):
        prob = make_problem(name, mix, sch, args.n, args.seed + k)
        probs.append(prob)
        print(f"\n[{name}: evaluation noise seed {prob['seed']}, calibration noise seed {10000 + prob['seed']}]"
              + ("" if kd is not None else f" [{kd_status}]"))
        summary[name] = print_problem(prob, evaluate(prob, selection, peers, args.nfe), selection, args.nfe)
        ddim_identity(prob, adapter, args.nfe)
    print(f"\nsummary: best diffedu / best peer (goal <= 0.5){'' if kd is not None else ' -- ' + kd_status}")
    print(f"{'problem':40s}" + "".join(f"{'NFE ' + str(n):>10s}" for n in args.nfe))
    for name, r in summary.items():
        print(f"{name:40s}" + "".join(f"{r[n]:10.3f}" for n in args.nfe))
    misses = sum(r[n] > 0.5 for r in summary.values() for n in args.nfe)
    print(f"misses: {misses} of {len(summary) * len(args.nfe)}")
    calibration_costs(probs)
    if not args.no_overhead and args.dim == 2:
        overheads(probs[-1], selection, 20 if 20 in args.nfe else args.nfe[0], sch, kd)
    return summary


if __name__ == "__main__":
    main()
