"""Minibatch OT-CFM, SB-CFM and independent CFM with the same budget on 2D toys (monograph §7.5; Tong et al. 2024).

For each data set (8 Gaussians, two moons) and each coupling the same MLP is trained for the same
number of steps with the same batch; we report the straightness of the learned paths, the exact
W_2^2 (POT ``emd2``) between Euler samples and fresh data at 1, 2, 4, 8 steps with the
data-vs-data floor, and the training time; then a sweep of OT-CFM's batch size (64 ... 1024).
Prints medians over seeds and ratios to independent CFM. Goal: OT-CFM's W_2^2 at 2 Euler steps
at most half of independent CFM's.

    python benchmarks/transport.py            # full run: 1000 steps, batch 256, 2 seeds (about 10 minutes)
    python benchmarks/transport.py --quick    # a smoke run: 400 steps, batch 128, 1 seed (about 2 minutes)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffedu import engine, nets, schedules, toy, transport
from diffedu.objectives.flow_matching import straightness
from diffedu.param import Denoiser

RF = schedules.RectifiedFlow()
EULER_STEPS = (1, 2, 4, 8)


def datasets():
    eight = toy.eight_gaussians(radius=2.0, std=0.3)
    return {"8 Gaussians": lambda n, g: eight.sample(n, g).float(),
            "two moons": lambda n, g: toy.two_moons(n, g).float()}


def euler(model, x, n_steps, keep=False):
    """n_steps Euler steps of the learned velocity from t = 1 to 0 (all positions with keep=True)."""
    ts = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
    xs = [x]
    with torch.no_grad():
        for i in range(n_steps):
            x = x + float(ts[i + 1] - ts[i]) * model(x, torch.full((len(x),), float(ts[i]))).velocity
            xs.append(x)
    return (torch.stack(xs), ts) if keep else x


def train(sample, kind, batch, steps, seed, sigma):
    torch.manual_seed(seed)
    model = Denoiser(nets.MLP(2, 128, 3), RF, "velocity")
    if kind == "sb":
        loss = lambda m, x, gen: transport.sb_cfm_loss(m, x, sigma, generator=gen)  # noqa: E731
    else:
        loss = lambda m, x, gen: transport.ot_cfm_loss(m, x, coupling=kind, generator=gen)  # noqa: E731
    gen = torch.Generator().manual_seed(seed + 1)
    fit = engine.fit(model, loss, (sample(batch, gen) for _ in iter(int, 1)), steps=steps, lr=2e-3, seed=seed,
                     device="cpu", progress=False)
    return fit.ema_model.eval(), fit.seconds


def evaluate(model, sample, n_eval, seed):
    g = torch.Generator().manual_seed(10_000 + seed)
    x1, truth = torch.randn(n_eval, 2, generator=g), sample(n_eval, g)
    path, ts = euler(model, x1, 32, keep=True)
    w2 = {k: float(transport.exact_ot(euler(model, x1, k), truth).cost) for k in EULER_STEPS}
    return straightness(path, ts).mean().item(), w2


def floor(sample, n_eval, seed):
    g = torch.Generator().manual_seed(20_000 + seed)
    return float(transport.exact_ot(sample(n_eval, g), sample(n_eval, g)).cost)


def compare(args):
    kinds = {"independent CFM": "independent", "OT-CFM": "ot", f"SB-CFM (sigma {args.sigma})": "sb"}
    for name, sample in datasets().items():
        print(f"\n== {name}: {args.steps} steps, batch {args.batch}, {len(args.seeds)} seed(s); medians ==")
        fl = statistics.median(floor(sample, args.n_eval, s) for s in args.seeds)
        rows = {}
        for label, kind in kinds.items():
            runs = []
            for seed in args.seeds:
                model, secs = train(sample, kind, args.batch, args.steps, seed, args.sigma)
                S, w2 = evaluate(model, sample, args.n_eval, seed)
                runs.append((S, w2, secs))
            rows[label] = (statistics.median(r[0] for r in runs),
                           {k: statistics.median(r[1][k] for r in runs) for k in EULER_STEPS},
                           statistics.median(r[2] for r in runs))
        print(f"{'coupling':22s} {'straightness':>12s} " + " ".join(f"{'W2^2@' + str(k):>9s}" for k in EULER_STEPS) + f" {'train s':>8s}")
        for label, (S, w2, secs) in rows.items():
            print(f"{label:22s} {S:12.4f} " + " ".join(f"{w2[k]:9.4f}" for k in EULER_STEPS) + f" {secs:8.1f}")
        print(f"{'data-vs-data floor':22s} {'':12s} " + " ".join(f"{fl:9.4f}" for _ in EULER_STEPS))
        base = rows["independent CFM"]
        for label, (S, w2, secs) in rows.items():
            if label == "independent CFM":
                continue
            print(f"ratio {label} / independent: straightness {S / base[0]:.3f}; W2^2@2 {w2[2] / base[1][2]:.3f}; "
                  f"W2^2@1 {w2[1] / base[1][1]:.3f}; time {secs / base[2]:.2f}")
        ratio = rows["OT-CFM"][1][2] / base[1][2]
        print(f"goal OT-CFM W2^2 at 2 Euler steps <= 0.5 x independent: {ratio:.3f} -> {'met' if ratio <= 0.5 else 'MISSED'}")


def sweep(args):
    sample = datasets()["8 Gaussians"]
    print(f"\n== OT-CFM batch-size sweep on 8 Gaussians ({args.sweep_steps} steps, seed {args.seeds[0]}) ==")
    print(f"{'batch':>6s} {'straightness':>12s} {'W2^2@2':>9s} {'train s':>8s}")
    for batch in args.sweep:
        model, secs = train(sample, "ot", batch, args.sweep_steps, args.seeds[0], args.sigma)
        S, w2 = evaluate(model, sample, args.n_eval, args.seeds[0])
        print(f"{batch:6d} {S:12.4f} {w2[2]:9.4f} {secs:8.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer steps, one seed, a short sweep")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sweep", type=int, nargs="+", default=None,
                   help="batch sizes of the OT-CFM sweep (default 64 128 256 512; 1024 costs ~1 s per step for the "
                        "Hungarian algorithm on this machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sweep_sizes = args.sweep
    args.sigma = 0.5
    if args.quick:
        args.steps, args.batch, args.seeds, args.n_eval, args.sweep, args.sweep_steps = 400, 128, [0], 1000, [64, 256], 400
    else:  # sized to about 10 minutes on the shared 2-core machine
        args.steps, args.batch, args.seeds, args.n_eval = 1000, 256, [0, 1], 2000
        args.sweep, args.sweep_steps = [64, 128, 256, 512], 300
    if sweep_sizes:
        args.sweep = sweep_sizes
    t0 = time.time()
    compare(args)
    sweep(args)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
