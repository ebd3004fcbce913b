"""The training loop: minimise a loss by Adam, keep an EMA of the weights, checkpoint.  (monograph §2.2, §6.1)

Every diffusion, score or flow model in this package is trained the same way: draw a
minibatch x_0, let the *loss* draw t and the noise and regress the network on its target
(monograph §6.1: the loss is the only thing that changes between DDPM, NCSN, score SDE and
flow matching), take an optimiser step. :func:`fit` is that loop, written once::

    from diffedu import data, nets, train
    net = nets.MLP()
    result = train.fit(net, my_loss, data.batches(x0, 512, generator=0), steps=5000, seed=0)
    result.ema_model      # the exponential moving average of the weights; sample with this

``loss_fn(model, batch, generator)`` returns a per-example loss (B,) or a scalar; the loop
takes its mean. ``generator`` is a torch.Generator on the training device, seeded from
``seed``, for the loss's own randomness (times t, noise eps) — so two runs with the same seed,
the same initial weights and the same data stream end with identical weights.

Also here: :class:`EMA` (usable on its own), :func:`save_checkpoint` (atomic) and
:func:`load_checkpoint`, :func:`resolve_device` and :func:`make_generator`.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "FitResult",
    "EMA",
    "fit",
    "resolve_device",
    "make_generator",
    "save_checkpoint",
    "load_checkpoint",
]

DeviceLike = Union[str, torch.device]


def resolve_device(device: Optional[DeviceLike] = "auto") -> torch.device:
    """Turn ``"auto"`` (or None) into the best available device: CUDA, then Apple MPS, then CPU.

    Any other string or torch.device is returned as a torch.device unchanged.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, (str, torch.device)):
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"device: could not parse {device!r} ({err}); expected 'auto', 'cpu', 'cuda', 'mps', ...") from None
    raise TypeError(f"device: expected 'auto', a device string or a torch.device, got {type(device).__name__}")


def make_generator(seed: Optional[int] = None, device: DeviceLike = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed`` (a fresh random seed when None).

    Pass it wherever diffedu draws random numbers (losses, samplers, :func:`diffedu.data.batches`)
    to make a computation reproducible without touching torch's global RNG.
    """
    device = resolve_device(device)
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
        return g
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    return g.manual_seed(int(seed))


# ----------------------------------------------------------------------------------------------
# exponential moving average of the weights


class EMA:
    """Exponential moving average of a model's weights (the weights diffusion models sample with).

    Keeps a frozen copy ``self.model`` of the network whose parameters follow
    ``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every :meth:`update`
    (done in one fused ``torch._foreach_lerp_``). Averaging the noisy late iterates of
    SGD/Adam gives markedly better samples than the last iterate — DDPM used decay 0.9999.

    With ``warmup=True`` the decay used at the n-th update is ``min(decay, (1 + n) / (10 + n))``,
    so that the random initial weights are forgotten quickly in short runs (the toy chapters
    train for only a few thousand steps). Buffers (e.g. BatchNorm statistics) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay: expected a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._refresh()

    def _refresh(self) -> None:
        self._params = [p for p in self.model.parameters()]
        self._float_params = [p for p in self._params if p.is_floating_point()]
        self._buffers = list(self.model.buffers())
        self._source = None  # (model, its float parameters, its buffers), cached by update()

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use (smaller during warm-up)."""
        if self.warmup:
            n = self.num_updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        if self._source is None or self._source[0] is not model:  # walking the module tree costs; do it once
            params = list(model.parameters())
            if len(params) != len(self._params):
                raise ValueError(
                    f"model: has {len(params)} parameter tensors but the EMA tracks {len(self._params)}; "
                    "pass the same architecture the EMA was built from"
                )
            self._source = (model, [p for p in params if p.is_floating_point()], list(model.buffers()))
        _, src, buffers = self._source
        if self._float_params:
            torch._foreach_lerp_(self._float_params, src, 1.0 - self.current_decay())
        for b_ema, b in zip(self._buffers, buffers):
            b_ema.copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Overwrite ``model``'s parameters and buffers with the averaged ones; returns ``model``."""
        model.load_state_dict(self.model.state_dict())
        return model

    def to(self, *args, **kwargs) -> "EMA":
        """Move the averaged copy, like ``nn.Module.to``; returns self."""
        self.model.to(*args, **kwargs)
        self._refresh()
        return self

    def state_dict(self) -> dict:
        """Everything needed to resume: decay, warm-up flag, number of updates, averaged weights."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or "model" not in state:
            raise TypeError("state: expected a dict produced by EMA.state_dict()")
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))
        self.num_updates = int(state.get("num_updates", 0))
        self.model.load_state_dict(state["model"])


# ----------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(
    path: Union[str, os.PathLike],
    model: nn.Module,
    ema: Optional[EMA] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    step: int = 0,
    **extra: Any,
) -> None:
    """Write model, EMA, optimizer state and step to ``path`` *atomically*.

    The file is first written to a temporary file in the same directory and then moved over
    ``path`` with ``os.replace``, so an interrupted save never leaves a half-written checkpoint
    (the previous one survives). ``extra`` entries (tensors, numbers, strings) are stored too.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": int(step),
        **extra,
    }
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(
    path: Union[str, os.PathLike],
    model: nn.Module,
    ema: Optional[EMA] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    map_location: Optional[DeviceLike] = None,
) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``ema``, ``optimizer``).

    Uses ``torch.load(..., weights_only=True)``, which refuses to run arbitrary pickled code.
    Tensors go to ``map_location`` (default: the device of ``model``'s parameters). Returns the
    whole checkpoint dict; ``ckpt["step"]`` is the number of optimiser steps it had taken.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint file at {path!r}")
    if map_location is None:
        first = next(iter(model.parameters()), None)
        map_location = first.device if first is not None else torch.device("cpu")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise ValueError(f"path: {path!r} is not a diffedu checkpoint (expected keys 'model' and 'step')")
    model.load_state_dict(ckpt["model"])
    if ema is not None:
        if ckpt.get("ema") is None:
            raise ValueError(f"ema: the checkpoint {path!r} holds no EMA state")
        ema.load_state_dict(ckpt["ema"])
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise ValueError(f"optimizer: the checkpoint {path!r} holds no optimizer state")
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained network (last iterate, in eval mode).
        ema_model: the EMA copy of the network (use it to sample), or None if ``ema_decay=None``.
        losses: float32 array of the mean minibatch loss at every step (including steps done
            before a resume).
        steps: total number of optimiser steps taken (including those before a resume).
        seconds: wall-clock time spent in this call's training loop.
    """

    model: nn.Module
    ema_model: Optional[nn.Module]
    losses: np.ndarray
    steps: int
    seconds: float


def _make_optimizer(optimizer, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer) and not isinstance(optimizer, str):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer: the factory returned {type(opt).__name__}, expected a torch.optim.Optimizer")
        return opt
    # the fused kernels (one call for all parameters) exist for float tensors on CPU and CUDA
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(
        f"optimizer: expected 'adam', 'adamw', 'sgd', a torch.optim.Optimizer or a factory params -> Optimizer, got {optimizer!r}"
    )


def _to_device(batch, device: torch.device):
    if torch.is_tensor(batch):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, tuple):
        return tuple(_to_device(b, device) for b in batch)
    if isinstance(batch, list):
        return [_to_device(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any, torch.Generator], torch.Tensor],
    data_iter: Iterable,
    *,
    steps: int,
    lr: float = 1e-3,
    optimizer: Union[str, torch.optim.Optimizer, Callable] = "adam",
    weight_decay: float = 0.0,
    ema_decay: Optional[float] = 0.999,
    grad_clip: Optional[float] = 1.0,
    seed: Optional[int] = None,
    device: Optional[DeviceLike] = "auto",
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    checkpoint_every: Optional[int] = None,
    resume: bool = True,
    progress: bool = True,
    log_every: int = 100,
    callback: Optional[Callable[[int, float, nn.Module], None]] = None,
) -> FitResult:
    """Train ``model`` for ``steps`` optimiser steps on minibatches from ``data_iter`` (monograph §2.2, §6.1).

    Each step: ``batch = next(data_iter)`` (moved to ``device``), ``loss = loss_fn(model, batch,
    generator).mean()``, backward, clip the global gradient norm to ``grad_clip`` (None: no
    clipping), optimiser step, EMA update (``ema_decay=None``: no EMA; see :class:`EMA`).

    Args:
        model: the network; moved to ``device`` and left in eval mode at the end.
        loss_fn: ``loss_fn(model, batch, generator)`` -> per-example loss (B,) or a scalar.
        data_iter: an endless iterator of batches (e.g. :func:`diffedu.data.batches`), or a
            re-iterable such as a list, which is cycled.
        steps: total number of steps. When resuming from ``checkpoint`` the count continues:
            a checkpoint at step 600 and ``steps=1000`` runs 400 more.
        lr, optimizer, weight_decay: ``"adam"`` (default), ``"adamw"``, ``"sgd"`` (momentum 0.9),
            an Optimizer instance (its own lr applies), or a factory ``params -> Optimizer``.
        seed: seeds torch's global RNG (dropout) and the loss's ``generator``. None: random.
        device: ``"auto"`` picks CUDA, then MPS, then CPU (see :func:`resolve_device`).
        checkpoint: file to save to (atomically) every ``checkpoint_every`` steps and at the end.
        resume: if ``checkpoint`` already exists, load it and continue from its step.
        progress: show a tqdm progress bar with the running mean loss (every ``log_every`` steps).
        log_every: how often the running loss is read back from the device (a sync) to update
            the bar and check that it is finite.
        callback: ``callback(step, loss, model)`` after every step (step counts from 1, loss is a
            float — reading it synchronises with the device).

    Returns:
        :class:`FitResult` ``(model, ema_model, losses, steps, seconds)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(model, batch, generator), got {type(loss_fn).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or not grad_clip > 0):
        raise ValueError(f"grad_clip: expected a positive number or None, got {grad_clip!r}")
    if checkpoint_every is not None:
        if checkpoint is None:
            raise ValueError("checkpoint_every: given without a checkpoint path; pass checkpoint='run.pt' too")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: expected a positive int, got {checkpoint_every!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every: expected a positive int, got {log_every!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable callback(step, loss, model), got {type(callback).__name__}")

    device = resolve_device(device)
    model.to(device)
    if seed is not None:
        torch.manual_seed(seed)
    generator = make_generator(seed, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters")
    opt = _make_optimizer(optimizer, params, float(lr), float(weight_decay))
    ema = None if ema_decay is None else EMA(model, decay=ema_decay)

    start = 0
    history: list = []
    if checkpoint is not None and resume and os.path.isfile(checkpoint):
        ckpt = load_checkpoint(checkpoint, model, ema=ema, optimizer=opt, map_location=device)
        start = int(ckpt["step"])
        if torch.is_tensor(ckpt.get("losses")):
            history = ckpt["losses"].tolist()
        if torch.is_tensor(ckpt.get("generator")):
            generator.set_state(ckpt["generator"].cpu())

    if isinstance(data_iter, (torch.Tensor, str, bytes)):
        raise TypeError(f"data_iter: expected an iterator of batches (e.g. diffedu.data.batches(x, ...)), got {type(data_iter).__name__}")
    cycle = not hasattr(data_iter, "__next__")
    try:
        it = iter(data_iter)
    except TypeError:
        raise TypeError(f"data_iter: expected an iterator or iterable of batches, got {type(data_iter).__name__}") from None

    pending: list = []  # this call's losses as detached 0-d tensors, read back (one sync) at log points
    done: list = []  # ... and as floats once read back

    def flush() -> None:
        if pending:
            done.extend(torch.stack(pending).float().cpu().tolist())
            pending.clear()

    def all_losses() -> list:
        flush()
        return history + done

    def save(step: int) -> None:
        losses = torch.tensor(all_losses(), dtype=torch.float32)
        save_checkpoint(checkpoint, model, ema, opt, step, losses=losses, generator=generator.get_state())

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=min(start, steps), disable=not progress, desc="fit", dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    try:
        for step in range(start + 1, steps + 1):
            try:
                batch = next(it)
            except StopIteration:
                if not cycle:
                    raise RuntimeError(
                        f"data_iter: ran out of batches after {step - 1 - start} steps; pass an endless iterator "
                        "such as diffedu.data.batches(x, batch_size, generator) or a re-iterable (e.g. a list)"
                    ) from None
                it = iter(data_iter)
                try:
                    batch = next(it)
                except StopIteration:
                    raise ValueError("data_iter: is empty") from None
            batch = _to_device(batch, device)
            loss = loss_fn(model, batch, generator)
            if not torch.is_tensor(loss):
                raise TypeError(f"loss_fn: must return a tensor (per-example (B,) or scalar), got {type(loss).__name__}")
            loss = loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, float(grad_clip), foreach=True)
            opt.step()
            if ema is not None:
                ema.update(model)
            loss = loss.detach()
            pending.append(loss)
            bar.update(1)
            if step % log_every == 0 or step == steps:
                flush()
                recent = float(np.mean(done[-log_every:]))
                if not math.isfinite(recent):
                    raise RuntimeError(f"loss became non-finite ({recent}) by step {step}; try a smaller lr or grad_clip")
                bar.set_postfix(loss=f"{recent:.4g}", refresh=False)
            if callback is not None:
                callback(step, float(loss), model)
            if checkpoint_every is not None and step % checkpoint_every == 0:
                save(step)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    total = max(start, steps)
    if checkpoint is not None and done and not (checkpoint_every is not None and total % checkpoint_every == 0):
        save(total)
    model.eval()
    losses = np.asarray(all_losses(), dtype=np.float32)
    return FitResult(model=model, ema_model=None if ema is None else ema.model, losses=losses, steps=total, seconds=seconds)
