"""Benchmark: ParaDiGMS (Picard sweeps over a sliding window) against the sequential sampler, wall-clock at equal error (monograph §9.8).

Both run the same step rule (deterministic DDIM, or Euler) on the same grid (t^2, ``--steps`` steps, from t = 1 to
the data) of the discrete DDPM linear schedule, from the same noise. ParaDiGMS evaluates the model on its whole
window in one batched call per round, so it makes fewer *sequential* calls but more evaluations in total; it wins
wall-clock only where a batch of W x B points costs much less than W batches of B (a GPU; on a CPU, small B).

Models: the exact Gaussian-mixture oracle of the 8-Gaussian ring (diffedu.toy), and a small MLP (3 x 128, SiLU,
eps-prediction) trained for ``--train-steps`` Adam steps on samples of that ring. Errors are the mean L2 distance to
the PF-ODE of the same model solved with scipy DOP853 (rtol = atol = 1e-10 for the oracle, 1e-8 for the MLP).

Printed per model, batch size B and (window, tol): rounds (sequential model calls), evaluations (points x calls),
error to the reference, deviation from the sequential sampler, median wall-clock of ``--repeats`` runs, and the
ratio ParaDiGMS / sequential; "equal error" marks runs whose error is within 5 % of the sequential sampler's.

    python benchmarks/paradigms.py            (about 3 minutes on one CPU core)
    python benchmarks/paradigms.py --quick    (a smoke run)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffedu import nets, param, schedules, toy  # noqa: E402
from diffedu.objectives import denoising_loss  # noqa: E402
from diffedu.samplers import CountingModel, Grid, ode, sample_paradigms  # noqa: E402


def train_mlp(mix, sch, steps, seed=0):
    """A 3 x 128 MLP predicting eps, trained with L_simple on fresh samples of ``mix`` (float32), then cast to float64."""
    torch.manual_seed(seed)
    model = param.Denoiser(nets.MLP(dim=mix.dim, hidden=128, depth=3), sch, "eps")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = denoising_loss(model, mix.sample(512, generator=g), generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = model.double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def timed(fn, repeats):
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
    return out, float(np.median(walls))


def compare(name, model, x, ts, windows, tols, repeats, step, rtol):
    """Print one block: the sequential sampler, then ParaDiGMS for every (window, tol)."""
    seq_fn = ode.sample_ddim if step == "ddim" else ode.sample_euler
    ref = ode.solve_pf_ode_reference(model, x, 1.0, 0.0, rtol=rtol, atol=rtol)
    g = Grid(model.schedule, ts)
    with torch.no_grad():
        seq, wall_seq = timed(lambda: seq_fn(model, x, g), repeats)
        e_seq = float((seq - ref).norm(dim=1).mean())
        n = len(ts) - 1
        print(f"\n== {name}, B = {len(x)}, {step}, {n} steps: sequential error {e_seq:.3e}, {n} calls, "
              f"{n * len(x)} evaluations, {1e3 * wall_seq:.1f} ms")
        print(f"{'window':>7s}{'tol':>8s}{'rounds':>8s}{'evals':>9s}{'error':>11s}{'|par-seq|':>11s}{'ms':>9s}{'ratio':>8s}")
        for w in windows:
            for tol in tols:
                c = CountingModel(model)
                sample_paradigms(c, x, g, step=step, window=w, tol=tol)
                par, wall = timed(lambda: sample_paradigms(model, x, g, step=step, window=w, tol=tol), repeats)
                e = float((par - ref).norm(dim=1).mean())
                same = abs(e - e_seq) <= 0.05 * e_seq
                print(f"{w:7d}{tol:8.0e}{c.nfe:8d}{c.evals:9d}{e:11.3e}{float((par - seq).abs().max()):11.2e}"
                      f"{1e3 * wall:9.1f}{wall / wall_seq:8.2f}{'   equal error' if same else ''}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 1024])
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-3])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--step", choices=["ddim", "euler"], default="ddim")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.windows, args.tols, args.repeats, args.train_steps = 20, [16], [8], [1e-2], 1, 20
    torch.set_num_threads(args.threads)
    sch = schedules.DiscreteSchedule.linear()
    mix = toy.eight_gaussians()
    ts = ode.grid_power(args.steps, 2.0)
    t0 = time.perf_counter()
    mlp = train_mlp(mix, sch, args.train_steps)
    print(f"MLP trained for {args.train_steps} steps in {time.perf_counter() - t0:.0f}s; torch threads {torch.get_num_threads()}")
    for b in args.batch:
        x = torch.randn(b, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        compare("exact oracle (8-Gaussian ring)", mix.denoiser(sch), x, ts, args.windows, args.tols, args.repeats,
                args.step, 1e-10)
        compare("MLP 3 x 128 (trained on the ring)", mlp, x, ts, args.windows, args.tols, args.repeats, args.step, 1e-8)


if __name__ == "__main__":
    main()
