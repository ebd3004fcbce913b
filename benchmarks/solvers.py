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
reference, sliced W2 to fresh data samples, solver overhead per model evaluation (wall time
minus model time, divided by the NFE), and the order fitted on NFE 20-100.

Peers (diffusers, a benchmark-only dependency), driven by the same exact model: a scheduler's
timestep n (fractional for Euler/Heun) is mapped to continuous time through the scheduler's own
noise level sigma_n = sqrt((1 - abar_n)/abar_n), linearly interpolated in n as those
schedulers do, then t = the time with sigma_t/alpha_t = sigma_n.

Run:  python benchmarks/solvers.py            (about 5 minutes on one CPU core)
      python benchmarks/solvers.py --quick    (512 points, NFE 10/20/50: a smoke test)
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from diffedu import metrics, schedules, toy
from diffedu.samplers import ode
from diffedu.samplers.grids import sigma_bar_to_t


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


def diffedu_solvers(sch):
    """name -> (sampler, kwargs, grid(nfe))."""
    uni = lambda k: ode.grid_uniform(k)  # noqa: E731
    return {
        "ddim (trailing)": (ode.sample_ddim, {}, lambda nfe: ode.grid_ddpm(sch, nfe, "trailing")),
        "euler (uniform t)": (ode.sample_euler, {}, uni),
        "heun (t^1.5)": (ode.sample_heun, {}, lambda nfe: ode.grid_power(_steps_for(nfe, 2, 1), 1.5)),
        "dpm-solver-2 (uniform t)": (ode.sample_dpm_solver, {"order": 2}, lambda nfe: uni(_steps_for(nfe, 2, 2))),
        "dpm-solver-3 (uniform t)": (ode.sample_dpm_solver, {"order": 3}, lambda nfe: uni(_steps_for(nfe, 3, 2))),
        "dpm-solver++2s (uniform t)": (ode.sample_dpm_solver_pp_2s, {}, lambda nfe: uni(_steps_for(nfe, 2, 2))),
        "dpm-solver++2m (t^2)": (ode.sample_dpm_solver_pp_2m, {}, lambda nfe: ode.grid_power(nfe, 2.0)),
        "dpm-solver++3m (uniform t)": (ode.sample_dpm_solver_pp_3m, {}, uni),
        "deis-3 (uniform t)": (ode.sample_deis, {"order": 3}, uni),
    }


def run_diffedu(model, noise, fn, kw, ts):
    m = CountingModel(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn(m, noise.clone(), ts, **kw)
    wall = time.perf_counter() - t0
    return out, m.nfe, (wall - m.seconds) / m.nfe


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
        return float(sigma_bar_to_t(self.sch, torch.tensor(sig, dtype=torch.float64)))


def run_peer(model, noise, make, n_steps, adapter):
    sched = make()
    sched.set_timesteps(n_steps)
    m = CountingModel(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = noise.clone() * float(sched.init_noise_sigma)
        for n in sched.timesteps:
            xin = sched.scale_model_input(x, n)
            t = adapter(float(n))
            eps = m(xin, torch.full((len(x),), t, dtype=xin.dtype)).eps.to(xin.dtype)
            x = sched.step(eps, n, x).prev_sample
    wall = time.perf_counter() - t0
    return x.to(noise.dtype), m.nfe, (wall - m.seconds) / m.nfe


# ------------------------------------------------------------------------------------------ main
def fit_order(nfes, errs):
    sel = [(n, e) for n, e in zip(nfes, errs) if e > 0]
    if len(sel) < 2:
        return float("nan")
    n, e = np.array(sel, dtype=float).T
    return -np.polyfit(np.log(n), np.log(e), 1)[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="number of samples (default 4096)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="512 points, NFE 10 20 50")
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

    results = {}  # name -> {nfe: (err, sw2, overhead_ms, actual_nfe)}
    sw_gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731

    def record(name, nfe, out, used, over):
        err = float((out - ref).norm(dim=1).mean())
        sw = float(metrics.sliced_wasserstein(out, data, generator=sw_gen()))
        results.setdefault(name, {})[nfe] = (err, sw, 1e3 * over, used)

    for name, (fn, kw, grid) in diffedu_solvers(sch).items():
        for nfe in args.nfe:
            out, used, over = run_diffedu(model, noise, fn, kw, grid(nfe))
            record("diffedu " + name, nfe, out, used, over)
        print("done", name, flush=True)
    peers = diffusers_peers()
    adapter = TimestepAdapter(sch)
    for name, (make, steps) in peers.items():
        for nfe in args.nfe:
            out, used, over = run_peer(model, noise, make, steps(nfe), adapter)
            record("diffusers " + name, nfe, out, used, over)
        print("done", name, flush=True)

    # --- table
    print("\nmean L2 to the DOP853 reference [sliced W2 to data] (actual NFE); overhead ms/eval; fitted order (NFE 20-100)")
    head = f"{'solver':44s}" + "".join(f"{'NFE ' + str(n):>22s}" for n in args.nfe) + f"{'ms/eval':>9s}{'order':>7s}"
    print(head)
    for name, row in results.items():
        cells = "".join(f"{row[n][0]:10.2e} [{row[n][1]:.3f}]({row[n][3]:3d})" for n in args.nfe)
        over = np.median([row[n][2] for n in args.nfe])
        order = fit_order([row[n][3] for n in args.nfe if n >= 20], [row[n][0] for n in args.nfe if n >= 20])
        print(f"{name:44s}{cells}{over:9.3f}{order:7.2f}")

    # --- ratios: best deterministic diffedu vs best peer (only runs within the NFE budget)
    print("\nratio best diffedu error / best diffusers error at each NFE")
    for n in args.nfe:
        ours = {k: v[n][0] for k, v in results.items() if k.startswith("diffedu") and v[n][3] <= n}
        peer = {k: v[n][0] for k, v in results.items() if k.startswith("diffusers") and v[n][3] <= n}
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
