"""How good are distilled students? Progressive distillation and DMD on eight Gaussians (monograph §10.2-10.3).

On the 8-Gaussians oracle (VP-linear schedule) the teacher can be exact, so every error is the
student's own. The script prints one table:

* progressive distillation (Salimans & Ho 2022) from a uniform grid of 2^K steps down to 1 step,
  once with the **exact** teacher and once with a **trained** teacher (an MLP fitted by the
  denoising loss, which is also the first student's initialisation in both cases): for the
  students at 8 / 4 / 2 / 1 steps and the teacher's DDIM at the same NFE, the mean L2 distance to
  the exact PF-ODE map of the same noise, and the sliced W2 to fresh data against the data-vs-data floor
  (``metrics.sliced_wasserstein_to_target``: 8 independent pairs of fresh model / exact sets against
  a fresh reference set, the mean and the paired standard error -- a floor measured once is a random
  number, and the exact PF-ODE sampler scored 2.1x one such single draw);
* the one-step DMD generator (Yin et al. 2024) with and without the regression term: sliced W2 and
  exact W2 (POT ``ot.emd2`` on 2000 points) with their floors, and the largest deviation of a mode's
  share from 1/8;
* the goals of the issue (reader budgets): the 4-step student's error <= the exact teacher's DDIM at
  16 NFE; DMD's sliced W2 <= 1.5 x floor with every mode share within 0.05 of 1/8.

One run per configuration (fixed seeds); the exact teacher's 128-step DDIM is scored like every
student, as a check that the floor is reachable.

    python benchmarks/distillation.py [--quick] [--threads 1]

``--quick`` uses the chapter's CI budgets (a smoke test, not the measured numbers).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffedu import data, distill, objectives, toy  # noqa: E402
from diffedu.engine import fit  # noqa: E402
from diffedu.metrics import sliced_wasserstein_to_target  # noqa: E402
from diffedu.nets import MLP  # noqa: E402
from diffedu.param import Denoiser  # noqa: E402
from diffedu.samplers import grid_uniform, sample_ddim, solve_pf_ode_reference  # noqa: E402
from diffedu.schedules import VPLinear  # noqa: E402

BUDGETS = {  # quick = the chapter's CI mode, full = reader mode and above
    "quick": dict(pretrain=2000, K=4, pd_steps=[400, 300, 300, 400], dmd_steps=700, n_eval=2048),
    "full": dict(pretrain=6000, K=6, pd_steps=[300, 300, 400, 600, 800, 1200], dmd_steps=3000, n_eval=4096),
}


def w2_exact(x, y, n=2000):
    import ot

    return ot.emd2([], [], ot.dist(x[:n].double().numpy(), y[:n].double().numpy())) ** 0.5


class Problem:
    """Eight Gaussians, the exact teacher, fixed evaluation noise, its exact PF-ODE map and two fresh data sets."""

    def __init__(self, n_eval):
        self.sched, self.mix = VPLinear(), toy.eight_gaussians()
        self.exact = self.mix.denoiser(self.sched)
        g = torch.Generator().manual_seed(123)
        self.z = torch.randn(n_eval, 2, generator=g)
        self.ref = solve_pf_ode_reference(self.exact, self.z.double(), 1.0, 0.0, rtol=1e-9, atol=1e-9).float()
        self.d1, self.d2 = self.mix.sample(n_eval, generator=g), self.mix.sample(n_eval, generator=g)
        self.floor_w2 = w2_exact(self.d2, self.d1)  # one draw, like the exact W2 of a model set below

    def sliced(self, sampler):
        """SW2 to the data against the floor, over 8 independent pairs; ``sampler(z)`` maps noise to samples."""
        def generate(n, gen):
            with torch.no_grad():
                return sampler(torch.randn(n, 2, generator=gen))
        return sliced_wasserstein_to_target(generate, lambda n, gen: self.mix.sample(n, gen), len(self.z), n_ref=8,
                                            generator=torch.Generator().manual_seed(11))

    def scores(self, sampler):
        """(mean L2 to the exact PF-ODE map of the evaluation noise, the sliced score) of ``sampler(z)``."""
        with torch.no_grad():
            x = sampler(self.z)
        return (x - self.ref).norm(dim=1).mean().item(), self.sliced(sampler)

    def shares_dev(self, x):
        shares = torch.bincount(torch.cdist(x.double(), self.mix.means).argmin(1), minlength=8).double() / len(x)
        return (shares - 1 / 8).abs().max().item()


def pd_rows(p, teacher, init, b, label):
    rounds = distill.progressive_distillation(teacher, data.sample_stream(p.mix, 512, generator=2), grid_uniform(2 ** b["K"]),
                                              rounds=b["K"], steps=b["pd_steps"], student=init, lr=1e-3)
    rows = {}
    with torch.no_grad():
        for r in rounds:
            if r.n_steps <= 8:
                rows[r.n_steps] = (p.scores(lambda z, r=r: sample_ddim(r.student, z, r.ts)),
                                   p.scores(lambda z, r=r: sample_ddim(teacher, z, r.ts)))
    floor = next(iter(rows.values()))[0][1].floor
    print(f"\nprogressive distillation, {label} teacher, from {2 ** b['K']} steps (sliced W2 floor {floor:.3f})")
    print(f"{'NFE':>4} | {'student L2':>10} {'teacher L2':>10} {'ratio':>6} | {'student SW2':>11} {'teacher SW2':>11}")
    for n, ((e_s, sw_s), (e_t, sw_t)) in sorted(rows.items(), reverse=True):
        print(f"{n:>4} | {e_s:10.3f} {e_t:10.3f} {e_s / e_t:6.3f} | {sw_s.score:11.3f} {sw_t.score:11.3f}")
    return rows


def dmd_row(p, reg_weight, steps, label):
    g = torch.Generator().manual_seed(0)
    zs, ys = distill.regression_pairs(p.exact, torch.randn(8192, 2, generator=g), grid_uniform(128))
    torch.manual_seed(5)
    pair = distill.DMDPair(Denoiser(MLP(2, 128, 3), p.sched, "x0"), Denoiser(MLP(2, 128, 3), p.sched, "v"))
    res = distill.train_dmd(pair, p.exact, data.batches(zs, 512, generator=5, labels=ys), steps=steps, lr=1e-3,
                            reg_weight=reg_weight, ema_decay=0.99, seed=5)
    with torch.no_grad():
        x = distill.one_step(res.generator, p.z)
    sw, w2, dev = p.sliced(lambda z: distill.one_step(res.generator, z)), w2_exact(x, p.d1), p.shares_dev(x)
    print(f"{label:24s} | SW2 {sw.score:.3f} (floor {sw.floor:.3f}, x{sw.ratio:.2f}, excess {sw.excess:+.3f} +- "
          f"{sw.excess_se:.3f}) | W2 {w2:.3f} (floor {p.floor_w2:.3f}, x{w2 / p.floor_w2:.2f}) | max |share - 1/8| {dev:.3f}")
    return sw, dev


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the chapter's CI budgets")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = BUDGETS["quick" if args.quick else "full"]
    t0 = time.perf_counter()
    print(f"distillation benchmark ({'quick' if args.quick else 'full'}), {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    p = Problem(b["n_eval"])
    net = Denoiser(MLP(2, 128, 3), p.sched, "v")
    trained = fit(net, lambda m, x, gen: objectives.denoising_loss(m, x, generator=gen), data.sample_stream(p.mix, 512, generator=1),
                  steps=b["pretrain"], lr=2e-3, seed=0, progress=False).ema_model.eval()
    exact_rows = pd_rows(p, p.exact, trained, b, "exact")
    pd_rows(p, trained, trained, b, "trained")
    print("\none-step DMD generator (exact real score, learned fake score), "
          f"{b['dmd_steps']} steps")
    exact = p.sliced(lambda z: sample_ddim(p.exact, z, grid_uniform(128)))
    print(f"{'exact teacher, DDIM 128':24s} | SW2 {exact.score:.3f} (floor {exact.floor:.3f}, x{exact.ratio:.2f}, "
          f"excess {exact.excess:+.3f} +- {exact.excess_se:.3f})")
    sw_reg, dev_reg = dmd_row(p, 1.0, b["dmd_steps"], "DMD + regression (1.0)")
    dmd_row(p, 0.0, b["dmd_steps"], "DMD alone")
    e4, e16 = exact_rows[4][0][0], p.scores(lambda z: sample_ddim(p.exact, z, grid_uniform(16)))[0]
    goals = [("4-step student L2 <= exact DDIM at 16 NFE", f"{e4:.3f} vs {e16:.3f}", e4 <= e16),
             ("DMD SW2 <= 1.5 x floor", f"{sw_reg.score:.3f} vs {1.5 * sw_reg.floor:.3f}", sw_reg.ratio <= 1.5),
             ("DMD mode shares within 0.05 of 1/8", f"max dev {dev_reg:.3f}", dev_reg <= 0.05)]
    print("\ngoals" + (" (quick budgets: not the reader-mode goals' budget)" if args.quick else ""))
    for name, value, ok in goals:
        print(f"  {'met   ' if ok else 'MISSED'} {name}: {value}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
