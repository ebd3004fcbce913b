"""Samples per second of the image trainer on 1 and 2 CPU processes (gloo, DistributedDataParallel).

The command-line trainer's default model (v-prediction U-Net, base width 32, two levels) on the 8x8
digits with a global batch of 128, timed three ways on this machine:

* one process, one thread;  * two processes (gloo DDP), one thread each (as torchrun sets it);
* with ``--threads``: also one process with two threads (on a loaded machine, OpenMP's busy waiting
  makes this one very slow).

Each configuration runs ``--warmup`` steps, then ``--steps`` timed steps, ``--repeats`` times (fresh
processes each time); the median wall time between two barriers gives samples per second and
seconds per 1000 steps. Both processes share the machine's cores (two here), so two processes
cannot beat one process using both cores by much: the point is that the DDP path costs little.

    python benchmarks/distributed_speed.py [--steps 100] [--warmup 10] [--repeats 3] [--batch 128]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffedu import train_images as T  # noqa: E402
from diffedu.engine import distributed as D  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, threads, args, out):
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    info = D.init_distributed("cpu", timeout=120)
    cfg = T.TrainConfig(batch_size=args.batch, steps=args.warmup + args.steps, progress=False, log_every=10**6)
    x, _, _ = T.load_data(cfg, info)
    model = T.build_model(cfg, x.shape[1:])
    from diffedu.engine import EMA, TrainState

    state = TrainState(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), ema=EMA(model, cfg.ema_decay),
                       generator=D.rank_generator(0, info))
    state.forward_model = D.wrap_model(model, info)
    batches, loss = D.ShardedBatches(x, cfg.batch_size, info, seed=0), T.make_loss(cfg, model)
    D.fit_distributed(state, loss, batches, args.warmup, info, progress=False, log_every=10**6)
    D.barrier(info)
    t0 = time.perf_counter()
    D.fit_distributed(state, loss, batches, args.warmup + args.steps, info, progress=False, log_every=10**6)
    D.barrier(info)
    if info.is_main:
        out.put(time.perf_counter() - t0)
    D.teardown(info)


def _time(world: int, threads: int, args) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mp.start_processes(_worker, args=(world, _free_port(), threads, args, q), nprocs=world, join=True,
                       start_method="spawn")
    return q.get(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--threads", action="store_true", help="also time one process with two threads")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (before)")
    print(f"v-prediction U-Net (width 32, 2 levels) on 8x8 digits, global batch {args.batch}, "
          f"{args.steps} timed steps, median of {args.repeats}")
    results = {}
    configs = ((1, 1), (2, 1), (1, 2)) if args.threads else ((1, 1), (2, 1))
    for world, threads in configs:
        times = [_time(world, threads, args) for _ in range(args.repeats)]
        med = statistics.median(times)
        results[(world, threads)] = args.steps * args.batch / med
        print(f"{world} process(es) x {threads} thread(s): {results[(world, threads)]:8.0f} samples/s, "
              f"{1000 * med / args.steps:6.1f} s per 1000 steps  (runs: {', '.join(f'{t:.2f}' for t in times)} s)")
    print(f"ratio samples/s, 2 processes / 1 process: {results[(2, 1)] / results[(1, 1)]:.2f}")
    if args.threads:
        print(f"ratio samples/s, 2 processes / 1 process x 2 threads: {results[(2, 1)] / results[(1, 2)]:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} (after)")


if __name__ == "__main__":
    main()
