"""Few-step generators from scratch, one budget for all: CM (CT, CD), sCM, CTM, MeanFlow vs flow matching (monograph §11).

Two data sets whose exact flow map is known, because each *is* a Gaussian mixture (diffedu.toy):

* **two moons**: the two half circles of ``toy.two_moons`` (scale 2, noise 0.05 x 2) written as a mixture
  of 2 x 100 Gaussians (std 0.1) on the arcs, so the exact teacher of CD / CTM is
  :func:`diffedu.toy.flow_map` and fresh data are exact samples;
* **8 Gaussians**: ``toy.eight_gaussians()`` (radius 4, std 0.5).

Every method trains the same network — a 4 x 256 SiLU MLP with a 32-dim sinusoidal embedding of each
time it takes (``nets.MLP``; ``distill.PairMLP`` for CTM's two times; ``distill.TwoTimeNet`` over an MLP
for MeanFlow's) — for the same number of Adam steps at the same batch and lr, through
:func:`diffedu.engine.fit` (EMA 0.999), on the rectified-flow path (sCM: TrigFlow with sigma_d the data's
std). Samples from the EMA network at 1, 2 and 5 evaluations (grid 1 -> 0 with uniform intermediate
times; CM / sCM: multistep consistency sampling; CTM: gamma = 0 jumps; MeanFlow: average-velocity
jumps), and the flow-matching model's Euler at 1, 2, 5, 50. Reported: sliced W2 (256 projections,
4096 points, median of 5 projection seeds) and exact W2 (POT ``ot.emd2``, 2048 points) to fresh data,
each with its data-vs-data floor, and training seconds per 1000 steps; mean +- std over seeds.

Methods (``--methods``, all by default): FM (the flow-matching teacher, Euler), CT and CD (discrete-time
consistency, :mod:`diffedu.distill.consistency`; CD's teacher is one DDIM step of the exact denoiser), sCT and
sCD (continuous-time consistency, :mod:`diffedu.distill.scm`; sCD with the exact PF-ODE velocity), CTM
(:mod:`diffedu.distill.ctm`, exact teacher), MeanFlow (:mod:`diffedu.distill.meanflow`, 25 % of pairs r != t,
adaptive weight p = 1). After the two-moons table the issue's goals are printed as met / MISSED.

    python benchmarks/few_step.py [--steps 3000] [--seeds 3] [--batch 512] [--dataset two_moons] [--methods CT,MeanFlow]
    python benchmarks/few_step.py --quick     # a smoke run (10 steps, one seed), not the measured numbers

One process per data set (``--dataset``) runs the two in parallel; each uses ``--threads`` (default 1).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffedu import data, distill, nets, objectives, toy  # noqa: E402
from diffedu.engine import fit  # noqa: E402
from diffedu.metrics import sliced_wasserstein  # noqa: E402
from diffedu.param import Denoiser  # noqa: E402
from diffedu.samplers import sample_euler  # noqa: E402
from diffedu.schedules import RectifiedFlow  # noqa: E402

RF = RectifiedFlow()
T_MAX = 1.0 - 1e-3  # CM / CTM on rectified flow start just below t = 1, where sigma_bar is finite
METHODS = ("FM", "CT", "CD", "sCT", "sCD", "CTM", "MeanFlow")
NFES = (1, 2, 5)


def moons_mixture(per_moon: int = 100, noise: float = 0.05, scale: float = 2.0) -> toy.GaussianMixture:
    """toy.two_moons as a mixture: equal Gaussians of std scale * noise at per_moon points of each arc."""
    th = math.pi * (torch.arange(per_moon, dtype=torch.float64) + 0.5) / per_moon
    upper = torch.stack([th.cos(), th.sin()], -1)
    lower = torch.stack([1 - th.cos(), 0.5 - th.sin()], -1)
    means = scale * (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64))
    return toy.GaussianMixture(means, stds=scale * noise)


def mixtures():
    return {"two_moons": moons_mixture(), "eight_gaussians": toy.eight_gaussians()}


def sw2(x, y):
    return statistics.median(sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(s)).item() for s in range(5))


def w2_exact(x, y, n=2048):
    import ot

    return float(ot.emd2([], [], ot.dist(x[:n].double().numpy(), y[:n].double().numpy()), numItermax=10_000_000)) ** 0.5


def mlp():
    return nets.MLP(2, 256, 4, time_dim=32)


def times(n, t_max=1.0):
    """The sampling times of n evaluations: t_max, then (n-1)/n, ..., 1/n (then 0 for the jump methods)."""
    return [t_max] + [k / n for k in range(n - 1, 0, -1)]


# ------------------------------------------------------------------------------------- training
def _fit(model, loss_fn, mix, b, seed):
    res = fit(model, loss_fn, data.sample_stream(mix, b["batch"], generator=seed + 100), steps=b["steps"], lr=b["lr"],
              seed=seed, progress=False, ema_decay=0.999)
    return res.ema_model.eval(), 1000 * res.seconds / b["steps"]


def train(method, mix, b, seed):
    """(model, seconds per 1000 steps) for one method; the network is built after seeding, the same for all."""
    torch.manual_seed(seed)
    sd = float(mix.covariance().diagonal().mean().sqrt())
    exact = mix.denoiser(RF)
    if method == "FM":
        return _fit(Denoiser(mlp(), RF, "velocity"), lambda m, x, g: objectives.conditional_fm_loss(m, x, generator=g), mix, b, seed)
    if method in ("CT", "CD"):
        model = distill.ConsistencyModel(mlp(), RF, sigma_data=sd)
        teacher = exact if method == "CD" else None
        res = distill.train_consistency(model, data.sample_stream(mix, b["batch"], generator=seed + 100), steps=b["steps"],
                                        teacher=teacher, lr=b["lr"], seed=seed, progress=False, ema_decay=0.999,
                                        curriculum=(10, 160) if method == "CT" else (18, 18))
        return res.ema_model.eval(), 1000 * res.seconds / b["steps"]
    if method in ("sCT", "sCD"):
        model = distill.SCM(mlp(), sigma_data=sd)
        teacher = mix.denoiser(model.schedule) if method == "sCD" else None
        res = distill.train_scm(model, data.sample_stream(mix, b["batch"], generator=seed + 100), steps=b["steps"],
                                teacher=teacher, warmup_steps=b["steps"] // 10, lr=b["lr"], seed=seed, progress=False,
                                ema_decay=0.999)
        return res.ema_model.eval(), 1000 * res.seconds / b["steps"]
    if method == "CTM":
        model = distill.CTM(distill.PairMLP(2, 256, 4, 32), RF, sigma_data=sd)
        grid = distill.consistency_grid(RF, 18)
        return _fit(model, lambda m, x, g: distill.ctm_loss(m, x, grid, teacher=distill.teacher_step(exact, substeps=4), generator=g), mix, b, seed)
    if method == "MeanFlow":
        model = distill.MeanFlow(distill.TwoTimeNet(nets.MLP(2 + 32, 256, 4, time_dim=32, out_dim=2), emb_dim=32), RF)
        return _fit(model, lambda m, x, g: distill.meanflow_loss(m, x, ratio=0.25, generator=g), mix, b, seed)
    raise ValueError(f"method: unknown {method!r}")


@torch.no_grad()
def sample(method, model, z, nfe, seed):
    """Samples with nfe network evaluations from the noise z."""
    g = torch.Generator().manual_seed(seed + 7)
    if method == "FM":
        return sample_euler(model, z, torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64))
    if method in ("CT", "CD"):
        return distill.sample_consistency(model, T_MAX * z, times(nfe, T_MAX), generator=g)
    if method in ("sCT", "sCD"):
        return distill.sample_consistency(model, model.sigma_data * z, times(nfe, 1.0), generator=g)
    if method == "CTM":
        return distill.sample_gamma(model, T_MAX * z, torch.tensor(times(nfe, T_MAX) + [0.0], dtype=torch.float64), gamma=0.0)
    return distill.sample_meanflow(model, z, times(nfe) + [0.0])


# ------------------------------------------------------------------------------------- the run
def _ms(v):
    return f"{statistics.mean(v):.3f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"


def run_dataset(name, mix, b, methods, seeds):
    g = torch.Generator().manual_seed(2024)
    fresh, fresh2 = mix.sample(b["n_eval"], g).float(), mix.sample(b["n_eval"], g).float()
    floor_sw, floor_w2 = sw2(fresh2, fresh), w2_exact(fresh2, fresh)
    z = torch.randn(b["n_eval"], 2, generator=g)
    rows = {}
    for method in methods:
        nfes = NFES + ((50,) if method == "FM" else ())
        res = {n: ([], []) for n in nfes}
        secs = []
        for seed in range(seeds):
            model, sec = train(method, mix, b, seed)
            secs.append(sec)
            for n in nfes:
                x = sample(method, model, z, n, seed)
                res[n][0].append(sw2(x, fresh))
                res[n][1].append(w2_exact(x, fresh))
        rows[method] = (res, secs)
        print(f"  [{name}] {method} done ({statistics.mean(secs):.1f} s / 1000 steps)", flush=True)
    print(f"\n{name}: {b['steps']} steps, batch {b['batch']}, lr {b['lr']}, {seeds} seed(s); "
          f"floors: sliced W2 {floor_sw:.3f}, exact W2 {floor_w2:.3f} (data vs data)")
    print(f"{'method':9s} {'NFE':>3s} | {'sliced W2':>15s} {'x floor':>7s} | {'exact W2':>15s} {'x floor':>7s} | {'s/1000 steps':>12s}")
    for method, (res, secs) in rows.items():
        for n, (sws, w2s) in res.items():
            print(f"{method:9s} {n:3d} | {_ms(sws):>15s} {statistics.mean(sws) / floor_sw:7.2f} | {_ms(w2s):>15s} "
                  f"{statistics.mean(w2s) / floor_w2:7.2f} | {_ms(secs):>12s}")
    return rows, floor_w2


def goals(rows, floor_w2):
    """The issue's goals on two moons: best one-step exact W2 <= 0.20, best two-step <= 0.16, multistep improving."""
    best = {n: min((statistics.mean(res[n][1]), m) for m, (res, _) in rows.items() if n in res) for n in NFES}
    fm5 = statistics.mean(rows["FM"][0][5][1]) if "FM" in rows else float("inf")
    worst1 = max((statistics.mean(res[1][1]), m) for m, (res, _) in rows.items() if m != "FM")
    print("\ngoals (two moons, exact W2, means over seeds)")
    for ok, text in [
        (best[1][0] <= 0.20, f"best one-step <= 0.20: {best[1][1]} {best[1][0]:.3f} (floor {floor_w2:.3f})"),
        (best[2][0] <= 0.16, f"best two-step <= 0.16: {best[2][1]} {best[2][0]:.3f}"),
        (best[5][0] <= best[2][0] <= best[1][0], f"best multistep improves with steps: {best[1][0]:.3f} / {best[2][0]:.3f} / {best[5][0]:.3f} at 1 / 2 / 5"),
        (worst1[0] <= fm5, f"no method's one-step worse than FM at NFE 5 ({fm5:.3f}): worst {worst1[1]} {worst1[0]:.3f}"),
    ]:
        print(f"  {'met   ' if ok else 'MISSED'} {text}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dataset", choices=("two_moons", "eight_gaussians", "both"), default="both")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 10 steps, batch 64, 1 seed, 256 evaluation points")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    b = dict(steps=args.steps, batch=args.batch, lr=args.lr, n_eval=4096)
    seeds = args.seeds
    if args.quick:
        b.update(steps=10, batch=64, n_eval=256)
        seeds = 1
    t0 = time.perf_counter()
    print(f"few-step benchmark{' (quick)' if args.quick else ''}: {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    for name, mix in mixtures().items():
        if args.dataset in (name, "both"):
            rows, floor_w2 = run_dataset(name, mix, b, methods, seeds)
            if name == "two_moons" and "FM" in methods and len(methods) > 1:
                goals(rows, floor_w2)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
