"""Benchmark: diffedu's PF-ODE solvers against diffusers' schedulers on an exact-score problem (monograph §9, Table 9.1).

Problem. Eight Gaussians on a ring of radius 4 (std 0.5) under the standard discrete DDPM
linear schedule (beta 1e-4..0.02, 1000 steps: diffusers' default), with the *exact* noise
prediction of :mod:`diffedu.toy` through :class:`diffedu.schedules.DiscreteSchedule` (DDPM step
n <-> t = (n + 1) / N). Every solver starts from the same noise at the last training step
(t = 1) and ends at the data (t = 0, "alpha = 1"; every diffusers scheduler here also ends there).
The model error is zero, so every error measured is the solver's own.

Reference. The PF-ODE solved with scipy DOP853 at rtol = atol = 1e-10 from the same noise
(:func:`diffedu.samplers.solve_pf_ode_reference`, in float64).

Measured per solver and NFE (5, 10, 20, 50, 100): mean L2 distance of the final samples to the
reference, sliced W2 to fresh data samples, and the order fitted on NFE 20-100. Solver overhead
is measured separately, at 4096 x 2 whatever --n is: the same solver loop driven by a "null"
model that returns a stored prediction at no cost, so the wall time is the solver's own work
(median of 21 runs at NFE 20, divided by the number of evaluations and by the number of steps).
The first two columns pass diffedu's solvers a prebuilt :class:`diffedu.samplers.Grid` (the grid's
schedule table: alpha, sigma, lambda, stages), as when many batches are sampled on one grid; the
last column passes the plain time grid, so every run makes the grid and builds its Grid (a new
grid each time), which is what diffusers' set_timesteps always does.

Grids. Each diffedu solver runs on one fixed time grid, named in its row. The grids were chosen
by ``--sweep``, which runs every solver on five grids (uniform, t^1.5, t^2 and t^3 in t, Karras
rho = 7) from a *different* noise seed (seed + 1), so the choice is not fitted to the noise
scored here. diffusers' schedulers run with their default spacing (DDIM: trailing).

Peers (diffusers, a benchmark-only dependency), driven by the same exact model: a scheduler's
timestep n (fractional for Euler/Heun) is mapped to continuous time through the scheduler's own
noise level sigma_n = sqrt((1 - abar_n)/abar_n), linearly interpolated in n as those
schedulers do, then t = the time with sigma_t/alpha_t = sigma_n.

Run:  python benchmarks/solvers.py            (about 5 minutes on one CPU core)
      python benchmarks/solvers.py --quick    (512 points, NFE 10/20/50: a smoke test)
      python benchmarks/solvers.py --sweep --n 512 --nfe 10 20 50   (the grid sweep behind CHOSEN_GRIDS)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffedu import metrics, schedules, toy
from diffedu.samplers import Grid, ode


class NullModel:
    """Returns one stored Prediction whatever it is asked: a model of zero cost, to time a solver's own work."""

    def __init__(self, model, x):
        self.schedule = model.schedule
        self.out = model(x, torch.full((len(x),), 0.5, dtype=x.dtype))
        self.nfe = 0

    def __call__(self, x, t, cond=None):
        self.nfe += 1
        return self.out


class CountingModel:
    """Wraps a model: counts evaluations and accumulates the time spent inside it."""

    def __init__(self, model):
        self.model, self.schedule = model, model.schedule
        self.nfe, self.seconds = 0, 0.0

    def __call__(self, x, t, cond=None):
        t0 = time.perf_counter()
        out = self.model(x, t, cond)
        self.seconds += time.perf_counter() - t0
        self.nfe += 1
        return out


# ------------------------------------------------------------------------------------------ diffedu
def _steps_for(nfe, per_step, final):
    """Largest number of steps whose evaluation count (per_step each, ``final`` on the last) is <= nfe."""
    return max(1, (nfe - final) // per_step + 1)


#: name -> (sampler, kwargs, evaluations per step, evaluations on a final step to sigma = 0)
SOLVER_COSTS = {
    "euler": (ode.sample_euler, {}, 1, 1),
    "heun": (ode.sample_heun, {}, 2, 1),
    "heun-in-t": (ode.sample_heun_t, {}, 2, 1),
    "dpm-solver-2": (ode.sample_dpm_solver, {"order": 2}, 2, 2),
    "dpm-solver-3": (ode.sample_dpm_solver, {"order": 3}, 3, 2),
    "dpm-solver++2s": (ode.sample_dpm_solver_pp_2s, {}, 2, 2),
    "dpm-solver++2m": (ode.sample_dpm_solver_pp_2m, {}, 1, 1),
    "dpm-solver++3m": (ode.sample_dpm_solver_pp_3m, {}, 1, 1),
    "deis-3": (ode.sample_deis, {"order": 3}, 1, 1),
}


def sweep_grids(sch):
    """grid name -> n_steps -> float64 grid ending at the data: the grids ``--sweep`` compares."""
    return {
        "uniform t": ode.grid_uniform,
        "t^1.5": lambda k: ode.grid_power(k, 1.5),
        "t^2": lambda k: ode.grid_power(k, 2.0),
        "t^3": lambda k: ode.grid_power(k, 3.0),
        "karras 7": lambda k: ode.grid_karras(sch, k, rho=7.0),
    }


#: each diffedu solver's grid, chosen by --sweep on seed + 1 (see the module docstring)
CHOSEN_GRIDS = {
    "euler": "uniform t",
    "heun": "uniform t",
    "heun-in-t": "t^2",
    "dpm-solver-2": "uniform t",
    "dpm-solver-3": "t^1.5",
    "dpm-solver++2s": "uniform t",
    "dpm-solver++2m": "t^2",
    "dpm-solver++3m": "t^2",
    "deis-3": "t^1.5",
}


def _config(sch, name, grid_name):
    fn, kw, per, final = SOLVER_COSTS[name]
    grid = sweep_grids(sch)[grid_name]
    return fn, kw, lambda nfe: grid(_steps_for(nfe, per, final))


def diffedu_solvers(sch):
    """name -> (sampler, kwargs, grid(nfe)): DDIM on diffusers' trailing grid, then every solver on its chosen grid."""
    out = {"ddim (trailing)": (ode.sample_ddim, {}, lambda nfe: ode.grid_ddpm(sch, nfe, "trailing"))}
    for name, grid_name in CHOSEN_GRIDS.items():
        out[f"{name} ({grid_name})"] = _config(sch, name, grid_name)
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


def run_diffedu(model, noise, fn, kw, ts):
    """(final samples, number of model evaluations, number of solver steps); ``ts`` a grid tensor or a Grid."""
    m = CountingModel(model)
    with torch.no_grad():
        out = fn(m, noise.clone(), ts, **kw)
    return out, m.nfe, (ts.n_steps if isinstance(ts, Grid) else len(ts) - 1)


# ------------------------------------------------------------------------------------------ diffusers
def diffusers_peers():
    """name -> (scheduler factory, number of set_timesteps steps for a given NFE)."""
    import diffusers as D

    base = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                prediction_type="epsilon")
    same = lambda nfe: nfe  # noqa: E731
    return {
        "DDIMScheduler (trailing)": (lambda: D.DDIMScheduler(**base, timestep_spacing="trailing", clip_sample=False), same),
        "DPMSolverMultistep 2M": (lambda: D.DPMSolverMultistepScheduler(**base, solver_order=2), same),
        "DPMSolverMultistep 3M": (lambda: D.DPMSolverMultistepScheduler(**base, solver_order=3), same),
        "DPMSolverSinglestep (2)": (lambda: D.DPMSolverSinglestepScheduler(**base, solver_order=2), same),
        "DEISMultistep (3)": (lambda: D.DEISMultistepScheduler(**base, solver_order=3), same),
        "UniPCMultistep (bh2, 2)": (lambda: D.UniPCMultistepScheduler(**base), same),
        "UniPCMultistep (bh2, 3)": (lambda: D.UniPCMultistepScheduler(**base, solver_order=3), same),
        "EulerDiscrete": (lambda: D.EulerDiscreteScheduler(**base), same),
        "HeunDiscrete": (lambda: D.HeunDiscreteScheduler(**base), lambda nfe: (nfe + 1) // 2),
    }


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


def run_peer(model, noise, make, n_steps, adapter):
    """(final samples, number of model evaluations, number of solver steps); ``adapter=None`` (timing runs) passes t = 0.5."""
    sched = make()
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


# ------------------------------------------------------------------------------------------ main
def fit_order(nfes, errs):
    sel = [(n, e) for n, e in zip(nfes, errs) if e > 0]
    if len(sel) < 2:
        return float("nan")
    n, e = np.array(sel, dtype=float).T
    return -np.polyfit(np.log(n), np.log(e), 1)[0]


def sweep(model, sch, args):
    """Error of every (solver, grid) pair at each NFE, from noise of seed + 1; best grid = least mean log error over NFE >= 10."""
    noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    ref = ode.solve_pf_ode_reference(model, noise, 1.0, 0.0, rtol=1e-10, atol=1e-10)
    nfes = [n for n in args.nfe if n >= 10] or args.nfe
    print(f"grid sweep, seed {args.seed + 1}, {args.n} points: mean L2 to the reference at NFE {nfes}")
    best = {}
    for name in SOLVER_COSTS:
        scores = {}
        for grid_name in sweep_grids(sch):
            fn, kw, grid = _config(sch, name, grid_name)
            errs = [float((run_diffedu(model, noise, fn, kw, grid(n))[0] - ref).norm(dim=1).mean()) for n in nfes]
            scores[grid_name] = float(np.mean(np.log(errs)))
            print(f"  {name:16s} {grid_name:10s}" + "".join(f"{e:11.2e}" for e in errs), flush=True)
        best[name] = min(scores, key=scores.get)
    print("\nbest grid per solver:", best)
    print("CHOSEN_GRIDS in this file:", CHOSEN_GRIDS, "(same)" if best == CHOSEN_GRIDS else "(DIFFERENT)")
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="number of samples (default 4096)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="512 points, NFE 10 20 50")
    ap.add_argument("--sweep", action="store_true",
                    help="run every diffedu solver on every grid of sweep_grids from seed + 1 and print each one's best grid")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.nfe = 512, [10, 20, 50]
    torch.set_num_threads(args.threads)

    mix, sch = toy.eight_gaussians(radius=4.0, std=0.5), schedules.DiscreteSchedule.linear()
    model = mix.denoiser(sch)
    gen = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, 2, generator=gen, dtype=torch.float64)
    data = mix.sample(args.n, gen, dtype=torch.float64)
    t0 = time.perf_counter()
    ref = ode.solve_pf_ode_reference(model, noise, 1.0, 0.0, rtol=1e-10, atol=1e-10)
    print(f"reference: DOP853 rtol=atol=1e-10 in {time.perf_counter() - t0:.1f}s; "
          f"sliced W2(reference, data) = {float(metrics.sliced_wasserstein(ref, data, generator=torch.Generator().manual_seed(1))):.4f}")

    if args.sweep:
        return sweep(model, sch, args)
    results = {}  # name -> {nfe: (err, sw2, actual_nfe)}
    overheads = {}  # name -> ms per evaluation, per step, per step on a new grid: NFE 20, null model, 4096 x 2
    sw_gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731

    def record(name, nfe, out, used):
        err = float((out - ref).norm(dim=1).mean())
        sw = float(metrics.sliced_wasserstein(out, data, generator=sw_gen()))
        results.setdefault(name, {})[nfe] = (err, sw, used)

    for name, (fn, kw, grid) in diffedu_solvers(sch).items():
        for nfe in args.nfe:
            out, used, _ = run_diffedu(model, noise, fn, kw, grid(nfe))
            record("diffedu " + name, nfe, out, used)
        built = Grid(sch, grid(20))  # reused by every fresh=False run
        overheads["diffedu " + name] = overhead_ms(
            lambda m, x, fresh: run_diffedu(m, x, fn, kw, grid(20) if fresh else built)[2], model)
        print("done", name, flush=True)
    peers = diffusers_peers()
    adapter = TimestepAdapter(sch)
    for name, (make, steps) in peers.items():
        for nfe in args.nfe:
            out, used, _ = run_peer(model, noise, make, steps(nfe), adapter)
            record("diffusers " + name, nfe, out, used)
        overheads["diffusers " + name] = overhead_ms(lambda m, x, fresh: run_peer(m, x, make, steps(20), None)[2], model)
        print("done", name, flush=True)

    # --- table
    print("\nmean L2 to the DOP853 reference [sliced W2 to data] (actual NFE); fitted order (NFE 20-100);\n"
          "solver overhead at NFE 20 with a zero-cost model, 4096 x 2, median of 21: ms per evaluation, ms per step,\n"
          "ms per step on a new grid (diffedu: a Grid built once and reused vs. built every run; diffusers rebuilds\n"
          "its table in set_timesteps every run)")
    head = (f"{'solver':44s}" + "".join(f"{'NFE ' + str(n):>22s}" for n in args.nfe)
            + f"{'order':>7s}{'ms/eval':>9s}{'ms/step':>9s}{'new grid':>9s}")
    print(head)
    for name, row in results.items():
        cells = "".join(f"{row[n][0]:10.2e} [{row[n][1]:.3f}]({row[n][2]:3d})" for n in args.nfe)
        order = fit_order([row[n][2] for n in args.nfe if n >= 20], [row[n][0] for n in args.nfe if n >= 20])
        per_eval, per_step, per_step_new = overheads[name]
        print(f"{name:44s}{cells}{order:7.2f}{per_eval:9.3f}{per_step:9.3f}{per_step_new:9.3f}")

    # --- ratios: best deterministic diffedu vs best peer (only runs within the NFE budget)
    print("\nratio best diffedu error / best diffusers error at each NFE")
    for n in args.nfe:
        ours = {k: v[n][0] for k, v in results.items() if k.startswith("diffedu") and v[n][2] <= n}
        peer = {k: v[n][0] for k, v in results.items() if k.startswith("diffusers") and v[n][2] <= n}
        bo, bp = min(ours, key=ours.get), min(peer, key=peer.get)
        print(f"NFE {n:3d}: {ours[bo]:.2e} ({bo}) / {peer[bp]:.2e} ({bp}) = {ours[bo] / peer[bp]:.3f}")

    # --- DDIM identity with diffusers
    print("\nDDIM identity: diffedu sample_ddim on grid_ddpm(trailing) vs diffusers DDIMScheduler(trailing)")
    for n in args.nfe:
        a, _, _ = run_diffedu(model, noise, ode.sample_ddim, {}, ode.grid_ddpm(sch, n, "trailing"))
        b, _, _ = run_peer(model, noise, peers["DDIMScheduler (trailing)"][0], n, adapter)
        print(f"NFE {n:3d}: max |diffedu - diffusers| = {float((a - b).abs().max()):.2e}")
    return results


if __name__ == "__main__":
    main()
