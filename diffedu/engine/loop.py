"""The training loop: minimise a loss by Adam, keep an EMA of the weights, checkpoint.  (monograph §2.2, §6.1)

Every diffusion, score or flow model in this package is trained the same way: draw a
minibatch x_0, let the *loss* draw t and the noise and regress the network on its target
(monograph §6.1: the loss is the only thing that changes between DDPM, NCSN, score SDE and
flow matching), take an optimiser step. :func:`fit` is that loop, written once::

    from diffedu import data, engine, nets
    net = nets.MLP()
    result = engine.fit(net, my_loss, data.batches(x0, 512, generator=0), steps=5000, seed=0)
    result.ema_model      # the exponential moving average of the weights; sample with this

``loss_fn(model, batch, generator)`` returns a per-example loss (B,) or a scalar; the loop
takes its mean. ``generator`` is a torch.Generator on the training device, seeded from
``seed``, for the loss's own randomness (times t, noise eps) — so two runs with the same seed,
the same initial weights and the same data stream end with identical weights.

:func:`fit` only composes the pieces: :class:`~diffedu.engine.TrainState` (what a run
changes), :func:`~diffedu.engine.train_step` (one step), :func:`~diffedu.engine.save_state` /
:func:`~diffedu.engine.load_state` (checkpoints), :class:`~diffedu.engine.EMA`.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from diffedu._checks import check_int, check_positive
from diffedu.engine.checkpoint import load_state, save_state
from diffedu.engine.device import DeviceLike, make_generator, resolve_device, to_device
from diffedu.engine.ema import EMA
from diffedu.engine.state import TrainState
from diffedu.engine.step import train_step

__all__ = ["FitResult", "fit"]


@dataclass
class FitResult:
    """What :func:`fit` returns (monograph §6.1).

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


def _check_fit_args(model, loss_fn, data_iter, steps, lr, weight_decay, ema_decay, grad_clip, seed,
                    checkpoint, checkpoint_every, log_every, callback) -> None:
    """Validate :func:`fit`'s arguments before anything is moved or trained; errors name the argument."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(model, batch, generator), got {type(loss_fn).__name__}")
    if isinstance(data_iter, (torch.Tensor, np.ndarray, str, bytes)) or not hasattr(data_iter, "__iter__"):
        raise TypeError(f"data_iter: expected an iterator or re-iterable of batches (e.g. diffedu.data.batches(x, ...)), "
                        f"got {type(data_iter).__name__}")
    check_int(steps, "steps", 0)
    check_positive(lr, "lr")
    check_positive(weight_decay, "weight_decay", strict=False)
    check_positive(ema_decay, "ema_decay", strict=False, upper=1.0, allow_none=True)
    check_positive(grad_clip, "grad_clip", allow_none=True)
    check_int(seed, "seed", 0, allow_none=True)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint: expected a file path or None, got {type(checkpoint).__name__}")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every: given without a checkpoint path; pass checkpoint='run.pt' too")
    check_int(checkpoint_every, "checkpoint_every", 1, allow_none=True)
    check_int(log_every, "log_every", 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable callback(step, loss, model), got {type(callback).__name__}")


def _make_optimizer(optimizer, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimiser for ``params``: a name ('adam', 'adamw', 'sgd'), an instance, or a factory."""
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


def _new_state(model, optimizer, lr, weight_decay, ema_decay, seed, device: torch.device) -> TrainState:
    """Move ``model`` to ``device``, seed, and build optimiser, EMA and generator into a fresh state."""
    model.to(device)
    if seed is not None:
        torch.manual_seed(seed)  # the global RNG: dropout and the like
    generator = make_generator(seed, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters")
    opt = _make_optimizer(optimizer, params, float(lr), float(weight_decay))
    ema = None if ema_decay is None else EMA(model, decay=ema_decay)
    return TrainState(model=model, optimizer=opt, ema=ema, generator=generator)


def _batches(data_iter: Iterable, device: torch.device) -> Iterator:
    """Endless stream of batches on ``device``: an iterator is used once, a re-iterable is cycled."""
    cycle = not hasattr(data_iter, "__next__")
    it, used = iter(data_iter), 0
    while True:
        used_before = used
        for batch in it:
            used += 1
            yield to_device(batch, device)
        if not cycle:
            raise RuntimeError(
                f"data_iter: ran out of batches after {used} steps; pass an endless iterator "
                "such as diffedu.data.batches(x, batch_size, generator) or a re-iterable (e.g. a list)"
            )
        if used == used_before:
            raise ValueError("data_iter: is empty")
        it = iter(data_iter)


def _run(state: TrainState, loss_fn, batches: Iterator, steps: int, *, grad_clip, log_every, callback,
         checkpoint, checkpoint_every, bar) -> None:
    """Step ``state`` up to ``steps``: log and check the loss, call back, checkpoint (monograph §6.1)."""
    while state.step < steps:
        loss = train_step(state, loss_fn, next(batches), grad_clip=grad_clip)
        step = state.step
        bar.update(1)
        if step % log_every == 0 or step == steps:
            recent = state.losses.recent_mean(log_every)
            if not math.isfinite(recent):
                raise RuntimeError(f"loss became non-finite ({recent}) by step {step}; try a smaller lr or grad_clip")
            bar.set_postfix(loss=f"{recent:.4g}", refresh=False)
        if callback is not None:
            callback(step, float(loss), state.model)
        if checkpoint_every is not None and step % checkpoint_every == 0:
            save_state(checkpoint, state)


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
        ema_decay: decay of the weight average (with warm-up), or None for no EMA.
        grad_clip: maximum global gradient norm, or None.
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
    _check_fit_args(model, loss_fn, data_iter, steps, lr, weight_decay, ema_decay, grad_clip, seed,
                    checkpoint, checkpoint_every, log_every, callback)
    device = resolve_device(device)
    state = _new_state(model, optimizer, lr, weight_decay, ema_decay, seed, device)
    if checkpoint is not None and resume and os.path.isfile(checkpoint):
        load_state(checkpoint, state, map_location=device)
    start = state.step
    batches = _batches(data_iter, device)
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=min(start, steps), disable=not progress, desc="fit", dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    try:
        _run(state, loss_fn, batches, steps, grad_clip=grad_clip, log_every=log_every, callback=callback,
             checkpoint=checkpoint, checkpoint_every=checkpoint_every, bar=bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if checkpoint is not None and state.step > start and not (checkpoint_every and state.step % checkpoint_every == 0):
        save_state(checkpoint, state)
    model.eval()
    ema_model = None if state.ema is None else state.ema.model
    return FitResult(model=model, ema_model=ema_model, losses=state.losses.numpy(), steps=state.step, seconds=seconds)
