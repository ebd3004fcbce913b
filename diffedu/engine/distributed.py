"""Training beyond one process: PyTorch's own ``torch.distributed`` and DistributedDataParallel (monograph §6.1).

The loop of monograph §6.1 does not change when it runs on W processes: every process (a
*rank*) holds a copy of the network, draws its share of the minibatch x_0 and its own times t
and noises eps, computes the loss on its share, and DistributedDataParallel (DDP) averages the
gradients over the ranks before the optimiser step. With equal shares of a global batch B, the
average of the W shard-mean gradients *is* the gradient of the mean loss over all B examples,
so one step on W processes equals one step on one process with batch B. This module holds the
pieces, each small:

* :func:`init_distributed` / :func:`teardown` (:func:`distributed`, the context manager) — a
  process group from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``; NCCL on CUDA, gloo on CPU) with a timeout on every
  collective, or a plain single process when there is no such environment;
* :class:`DistInfo` — who am I (rank, world size, device), passed explicitly, never global;
* :func:`wrap_model` — the DDP (and ``torch.compile``) wrapper the loss calls;
* :func:`rank_generator`, :class:`ShardedBatches` — per-rank seeded randomness and the sharded
  sampler (the global batch of step s is a pure function of s, so resuming needs no data state);
* :func:`barrier`, :func:`agree`, :func:`broadcast_object`, :func:`all_mean` — collectives
  with timeouts, and the one place where a rank's error becomes every rank's error;
* :func:`save_distributed` / :func:`load_distributed` — rank 0 writes atomically (through
  :func:`diffedu.engine.save_checkpoint`) and reads with ``weights_only=True``; every rank's
  random state travels along, so a resumed run equals an uninterrupted one;
* :func:`fit_distributed` — the loop itself, :func:`gather_samples` — evaluation on all ranks,
  :func:`progress_bar`, :func:`log` — output from rank 0 only.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from diffedu._checks import check_int, check_positive
from diffedu.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from diffedu.engine.device import DeviceLike, resolve_device, to_device
from diffedu.engine.state import LossHistory, TrainState
from diffedu.engine.step import Autocast, train_step

__all__ = [
    "DistInfo", "DistributedError", "env_world", "init_distributed", "teardown", "distributed", "barrier",
    "agree", "broadcast_object", "all_mean", "wrap_model", "rank_generator", "derive_seed", "ShardedBatches",
    "shard_bounds", "gather_samples", "save_distributed", "load_distributed", "fit_distributed",
    "progress_bar", "log",
]

DEFAULT_TIMEOUT = 300.0


class DistributedError(RuntimeError):
    """Raised on *every* rank when one rank found a problem (see :func:`agree`) or a collective timed out."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run: ``rank`` of ``world_size``, its ``device``, the ``backend``.

    ``backend`` is None for a plain single process (no process group: every collective here is then
    the identity). ``timeout`` (seconds) bounds every collective, so no rank waits forever for one
    that died or never arrived.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints, writes checkpoints and computes metrics."""
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        """True when a process group exists (more than one process, or torchrun with one)."""
        return self.backend is not None


def env_world(env: Optional[Mapping[str, str]] = None) -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) from the ``torchrun`` variables, (0, 1, 0) without them; errors name the variable."""
    env = os.environ if env is None else env
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", None)):
        raw = env.get(name)
        if raw is None:
            values.append(default)
            continue
        try:
            values.append(int(raw))
        except ValueError:
            raise ValueError(f"{name}: expected an integer in the environment (as torchrun sets it), got {raw!r}") from None
    rank, world, local = values
    local = rank if local is None else local
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK: inconsistent values {rank} / {world} / {local} in the environment")
    return rank, world, local


def init_distributed(device: Optional[DeviceLike] = "auto", *, timeout: float = DEFAULT_TIMEOUT,
                     backend: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, or run as one plain process.

    Without ``WORLD_SIZE`` in the environment (``python -m ...``) no process group is created and
    the returned :class:`DistInfo` has ``backend=None``. Otherwise ``init_process_group`` is called
    with ``init_method="env://"``, the backend (default: NCCL when ``device`` is CUDA, gloo
    otherwise) and ``timeout`` seconds for every collective; on CUDA each rank takes the GPU
    ``cuda:LOCAL_RANK``. The training loop above is monograph §6.1's, run on every rank.
    """
    timeout = check_positive(timeout, "timeout")
    env = os.environ if env is None else env
    rank, world, local = env_world(env)
    device = resolve_device(device)
    if "WORLD_SIZE" not in env:
        return DistInfo(0, 1, 0, device, None, timeout)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK: {local} but only {torch.cuda.device_count()} CUDA devices are visible; "
                             "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of PyTorch")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
    return DistInfo(rank, world, local, device, backend, timeout)


def teardown(info: DistInfo) -> None:
    """Destroy the process group created by :func:`init_distributed` (nothing for a single process)."""
    import torch.distributed as dist

    if info.initialized and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: Optional[DeviceLike] = "auto", *, timeout: float = DEFAULT_TIMEOUT, backend: Optional[str] = None):
    """``with distributed() as info:`` — :func:`init_distributed` on entry, :func:`teardown` on exit (also on errors)."""
    info = init_distributed(device, timeout=timeout, backend=backend)
    try:
        yield info
    finally:
        teardown(info)


def _timed_out(what: str, info: DistInfo, timeout: float, err: Exception) -> DistributedError:
    return DistributedError(
        f"rank {info.rank}: {what} did not complete within {timeout:g} s — another rank died, hangs or never "
        f"reached it ({type(err).__name__}: {str(err)[:300]})")


def barrier(info: DistInfo, timeout: Optional[float] = None) -> None:
    """Wait until every rank arrives here, at most ``timeout`` seconds (default ``info.timeout``), else raise.

    On gloo this is ``monitored_barrier`` (it names the ranks that did not arrive); on NCCL an
    asynchronous ``barrier`` whose ``wait`` is bounded by the timeout. Raises :class:`DistributedError`.
    """
    if not info.initialized:
        return
    import torch.distributed as dist

    timeout = info.timeout if timeout is None else check_positive(timeout, "timeout")
    delta = datetime.timedelta(seconds=timeout)
    try:
        if info.backend == "gloo":
            dist.monitored_barrier(timeout=delta, wait_all_ranks=True)
        else:
            dist.barrier(async_op=True).wait(timeout=delta)
    except RuntimeError as err:
        raise _timed_out("the barrier", info, timeout, err) from err


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small things: configs, checkpoints, errors)."""
    if not info.initialized:
        return obj
    import torch.distributed as dist

    box = [obj]
    try:
        dist.broadcast_object_list(box, src=src, device=info.device if info.backend == "nccl" else None)
    except RuntimeError as err:
        raise _timed_out("broadcast_object", info, info.timeout, err) from err
    return box[0]


def _all_gather_object(obj: Any, info: DistInfo) -> list:
    if not info.initialized:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    try:
        dist.all_gather_object(out, obj)
    except RuntimeError as err:
        raise _timed_out("all_gather_object", info, info.timeout, err) from err
    return out


def agree(error: Optional[str], info: DistInfo, exc: type = DistributedError) -> None:
    """Raise ``exc`` on every rank if any rank passes an error message (None: this rank is fine).

    The way to turn a problem one rank sees (a missing file, a non-finite loss) into the same clear
    error everywhere, instead of one rank exiting while the others wait in the next collective.
    """
    errors = _all_gather_object(error, info)
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if bad:
        if len({e for _, e in bad}) == 1:
            raise exc(bad[0][1] if info.world_size == 1 else f"{bad[0][1]} (reported by rank(s) {[r for r, _ in bad]})")
        raise exc("; ".join(f"rank {r}: {e}" for r, e in bad))


def all_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of tensor ``x`` over ranks (a copy; ``x`` itself on a single process)."""
    if not info.initialized:
        return x
    import torch.distributed as dist

    y = x.detach().clone()
    try:
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
    except RuntimeError as err:
        raise _timed_out("all_reduce", info, info.timeout, err) from err
    return y / info.world_size


def wrap_model(model: nn.Module, info: DistInfo, *, compile: bool = False) -> nn.Module:
    """The module the loss should call: ``model`` with its network wrapped in DDP (and ``torch.compile``).

    DDP synchronises gradients only for forward passes that go through the wrapper. A
    :class:`~diffedu.param.Denoiser`-like model (a ``.net`` submodule that ``raw``/``forward`` call)
    gets a shallow view whose ``.net`` is the wrapped network, so the loss, which calls
    ``model.raw(...)`` -> ``self.net(...)``, runs through DDP, while ``model`` itself — the one the
    optimiser, EMA and checkpoints see — stays plain. Other modules are wrapped whole. Building DDP
    broadcasts rank 0's weights, so every rank starts from the same network. Put it in
    ``TrainState.forward_model`` (monograph §6.1's loop, unchanged).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    inner = model._modules.get("net")
    target = inner if isinstance(inner, nn.Module) else model
    wrapped = target
    if info.initialized:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(target, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if compile:
        wrapped = torch.compile(wrapped)
    if target is model:
        return wrapped
    view = copy.copy(model)  # shares parameters, schedule, prediction; only its .net differs
    view._modules = dict(model._modules)
    view._modules["net"] = wrapped
    return view


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream ``(seed, *keys)`` (e.g. keys = (rank,)), independent across keys (numpy SeedSequence)."""
    seed = check_int(seed, "seed", 0)
    words = np.random.SeedSequence([seed, *[check_int(k, "key", 0) for k in keys]]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1


def rank_generator(seed: int, info: DistInfo, stream: int = 0) -> torch.Generator:
    """A torch.Generator on ``info.device`` for rank ``info.rank``: the ranks draw different t and eps (monograph §2.2)."""
    g = torch.Generator(device=info.device)
    return g.manual_seed(derive_seed(seed, stream, info.rank))


def shard_bounds(n: int, info: DistInfo) -> Tuple[int, int]:
    """This rank's block ``[start, stop)`` of ``range(n)``: the blocks of all ranks partition it, sizes differ by <= 1."""
    n = check_int(n, "n", 0)
    return info.rank * n // info.world_size, (info.rank + 1) * n // info.world_size


class ShardedBatches:
    """The sharded sampler: rank r's slice of the global minibatch of step s, a pure function of s.

    Epoch e = s // (N // B) visits the N examples in the order ``randperm(N)`` seeded by
    ``(seed, e)``, the same on every rank; step s takes the next B of them (the last incomplete
    batch of an epoch is dropped) and rank r keeps the r-th of W equal parts. So the union over
    ranks is the batch one process with batch B would see, and a resumed run at step s continues
    with exactly the batches an uninterrupted one would have drawn (monograph §6.1: "draw a
    minibatch x_0").
    """

    def __init__(self, x: torch.Tensor, batch_size: int, info: DistInfo, *, seed: int = 0,
                 labels: Optional[torch.Tensor] = None, device: Optional[DeviceLike] = None):
        if not torch.is_tensor(x) or x.ndim < 1:
            raise TypeError(f"x: expected a tensor of examples (N, ...), got {type(x).__name__}")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        if self.batch_size % info.world_size:
            raise ValueError(f"batch_size: the global batch {self.batch_size} is not divisible by the world size "
                             f"{info.world_size}; pick a multiple of {info.world_size}")
        if self.batch_size > len(x):
            raise ValueError(f"batch_size: the global batch {self.batch_size} is larger than the data set ({len(x)} examples)")
        if labels is not None and (not torch.is_tensor(labels) or len(labels) != len(x)):
            raise ValueError(f"labels: expected a tensor with one label per example ({len(x)})")
        self.x, self.labels, self.info, self.seed = x, labels, info, check_int(seed, "seed", 0)
        self.device = info.device if device is None else resolve_device(device)
        self.per_rank = self.batch_size // info.world_size
        self.per_epoch = len(x) // self.batch_size
        self._perm: Tuple[int, Optional[torch.Tensor]] = (-1, None)

    def indices(self, step: int) -> torch.Tensor:
        """The example indices (B / W,) this rank uses at ``step``."""
        epoch, pos = divmod(check_int(step, "step", 0), self.per_epoch)
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perm = (epoch, torch.randperm(len(self.x), generator=g))
        start = pos * self.batch_size + self.info.rank * self.per_rank
        return self._perm[1][start:start + self.per_rank]

    def __call__(self, step: int):
        """This rank's batch at ``step`` on the device: ``x`` or ``(x, labels)``."""
        idx = self.indices(step)
        batch = self.x[idx] if self.labels is None else (self.x[idx], self.labels[idx])
        return to_device(batch, self.device)


def gather_samples(sample_fn: Callable[[int, int], torch.Tensor], n: int, info: DistInfo) -> torch.Tensor:
    """Evaluate on all ranks: rank r computes ``sample_fn(start, stop)`` for its block, every rank gets all n rows.

    The blocks of :func:`shard_bounds` partition ``range(n)``, so the result has exactly ``n`` rows,
    each computed by exactly one rank, in rank order — none missing, none twice, whatever the world
    size. (``all_gather`` needs equal shapes: blocks are padded to ``ceil(n / W)`` rows and trimmed.)
    """
    n = check_int(n, "n", 0)
    start, stop = shard_bounds(n, info)
    local = sample_fn(start, stop)
    if not torch.is_tensor(local) or local.ndim < 1 or local.shape[0] != stop - start:
        raise ValueError(f"sample_fn: expected a tensor of {stop - start} rows for the block [{start}, {stop}), "
                         f"got {getattr(local, 'shape', type(local).__name__)}")
    if not info.initialized or n == 0:
        return local
    import torch.distributed as dist

    size = -(-n // info.world_size)
    padded = local.new_zeros((size, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    try:
        dist.all_gather(parts, padded.contiguous())
    except RuntimeError as err:
        raise _timed_out("all_gather of samples", info, info.timeout, err) from err
    bounds = [shard_bounds(n, DistInfo(r, info.world_size)) for r in range(info.world_size)]
    return torch.cat([p[: b - a] for p, (a, b) in zip(parts, bounds)])


def _rng_state(state: TrainState) -> dict:
    """This rank's random state: the loss generator, torch's global CPU RNG (dropout) and, on CUDA, the device RNG."""
    out = {"torch": torch.get_rng_state()}
    if state.generator is not None:
        out["generator"] = state.generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def save_distributed(path, state: TrainState, info: DistInfo, **extra: Any) -> bool:
    """Save a checkpoint of a run on any number of ranks: rank 0 writes it, atomically; returns True there.

    Every rank must call it (it gathers each rank's random state, :func:`all_mean`-s the loss history
    so the file holds the global mean loss per step, and ends with a :func:`barrier`, so no rank
    reads a file that is not there yet). The write is :func:`diffedu.engine.save_checkpoint`'s:
    temporary file + ``os.replace``, so a reader never sees a partial file (monograph §6.1).
    """
    losses = all_mean(state.losses.as_tensor().to(info.device), info).cpu()
    rng = _all_gather_object(_rng_state(state), info)
    wrote = False
    if info.is_main:
        more = {"losses": losses, "rng": rng, "world_size": info.world_size, **extra}
        if state.scaler is not None:
            more["scaler"] = state.scaler.state_dict()
        save_checkpoint(path, state.model, state.ema, state.optimizer, state.step, **more)
        wrote = True
    barrier(info)
    return wrote


def _restore_rng(state: TrainState, ckpt: dict, info: DistInfo, path) -> None:
    rng = ckpt.get("rng")
    if not isinstance(rng, list) or len(rng) != info.world_size:
        saved = len(rng) if isinstance(rng, list) else "no"
        warnings.warn(f"{os.fspath(path)!r} holds the random state of {saved} ranks, this run has {info.world_size}: "
                      "weights, optimizer, EMA and step are restored, but the resumed run is not bit-identical")
        return
    mine = rng[info.rank]
    torch.set_rng_state(mine["torch"].cpu())
    if state.generator is not None and "generator" in mine:
        state.generator.set_state(mine["generator"].cpu())
    if "cuda" in mine and info.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"].cpu(), device=info.device)


def load_distributed(path, state: TrainState, info: DistInfo) -> dict:
    """Resume every rank from the checkpoint at ``path``: rank 0 reads it (``weights_only=True``) and broadcasts it.

    Restores model, EMA, optimizer, step, loss history, the gradient scaler and each rank's random
    state, so the resumed run continues exactly as an uninterrupted one (same world size). Only rank
    0 needs the file (no shared file system is assumed); if it is missing or unreadable, every rank
    raises the same :class:`~diffedu.engine.CheckpointError` / FileNotFoundError naming it.
    """
    payload = None
    if info.is_main:
        try:
            ckpt = load_checkpoint(path, state.model, ema=state.ema, optimizer=state.optimizer, map_location="cpu")
            payload = ("ok", ckpt)
        except FileNotFoundError as err:
            payload = ("missing", f"resume: {err} (nothing to resume from; drop --resume to start a new run)")
        except CheckpointError as err:
            payload = ("bad", f"resume: {err}")
    kind, ckpt = broadcast_object(payload, info)
    if kind != "ok":
        raise (FileNotFoundError if kind == "missing" else CheckpointError)(ckpt)
    if not info.is_main:
        state.model.load_state_dict(ckpt["model"])
        if state.ema is not None and ckpt.get("ema") is not None:
            state.ema.load_state_dict(ckpt["ema"])
        if ckpt.get("optimizer") is not None:
            state.optimizer.load_state_dict(ckpt["optimizer"])
    state.step = check_int(ckpt["step"], "step", 0)
    losses = ckpt.get("losses")
    state.losses = LossHistory(losses.tolist() if torch.is_tensor(losses) else ())
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    _restore_rng(state, ckpt, info, path)
    return ckpt


def progress_bar(info: DistInfo, *, enabled: bool = True, **kwargs):
    """A ``tqdm.auto`` bar shown on rank 0 only (the others get a disabled one, so the code is the same everywhere)."""
    from tqdm.auto import tqdm

    return tqdm(disable=not (enabled and info.is_main), dynamic_ncols=True, **kwargs)


def log(info: DistInfo, *parts: Any, file=None) -> None:
    """``print`` on rank 0 only (flushed), prefixed with the world size when there is more than one rank."""
    if info.is_main:
        prefix = f"[rank 0/{info.world_size}] " if info.world_size > 1 else ""
        print(prefix + " ".join(map(str, parts)), file=file or sys.stdout, flush=True)


def _check_finite(state: TrainState, info: DistInfo, log_every: int) -> float:
    """The global mean loss of the last ``log_every`` steps; raises on every rank if it is not finite."""
    recent = torch.tensor(state.losses.recent_mean(log_every), device=info.device)
    value = float(all_mean(recent, info))
    if not np.isfinite(value):
        raise FloatingPointError(f"loss: the mean loss of steps {state.step - log_every + 1}..{state.step} is {value}; "
                                 "lower the learning rate or enable grad_clip")
    return value


def fit_distributed(state: TrainState, loss_fn: Callable, batch_at: Callable[[int], Any], steps: int, info: DistInfo, *,
                    grad_clip: Optional[float] = 1.0, autocast: Autocast = None, checkpoint=None,
                    checkpoint_every: Optional[int] = None, log_every: int = 100, progress: bool = True,
                    callback: Optional[Callable[[TrainState], None]] = None) -> TrainState:
    """Run monograph §6.1's loop from ``state.step`` to ``steps`` on every rank; returns ``state`` (advanced in place).

    Each step: ``batch = batch_at(step)`` (this rank's shard, e.g. a :class:`ShardedBatches`), one
    :func:`~diffedu.engine.train_step` (the loss calls ``state.forward_model``, the DDP wrapper
    of :func:`wrap_model`, which averages gradients over ranks), ``callback(state)``. Every
    ``log_every`` steps the global mean loss is checked and shown on rank 0's bar; every
    ``checkpoint_every`` steps and at the end the run is saved by :func:`save_distributed`.
    """
    steps = check_int(steps, "steps", 0)
    log_every = check_int(log_every, "log_every", 1)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", 1, allow_none=True)
    bar = progress_bar(info, enabled=progress, total=steps, initial=min(state.step, steps), desc="train")
    state.model.train()
    saved_at = state.step
    try:
        while state.step < steps:
            train_step(state, loss_fn, batch_at(state.step), grad_clip=grad_clip, autocast=autocast)
            bar.update(1)
            if state.step % log_every == 0:
                bar.set_postfix(loss=f"{_check_finite(state, info, log_every):.4f}")
            if checkpoint is not None and checkpoint_every and state.step % checkpoint_every == 0:
                save_distributed(checkpoint, state, info)
                saved_at = state.step
            if callback is not None:
                callback(state)
    finally:
        bar.close()
    if checkpoint is not None and state.step != saved_at:
        save_distributed(checkpoint, state, info)
    state.model.eval()
    return state
