"""One optimisation step of a diffusion (or any) model: the body of monograph §6.1's loop.

    loss = loss_fn(model, batch, generator).mean();  zero_grad;  backward;
    clip the gradient norm;  optimizer step;  EMA update

:func:`train_step` does exactly this to a :class:`~diffedu.engine.TrainState`, and nothing
else — no device moves, no logging. The mathematics lives in ``loss_fn`` (monograph §6.1: the
loss is the only thing that changes between DDPM, NCSN, score SDE and flow matching); the
step only has seams for how it is computed:

* ``autocast``: run the loss's forward pass under ``torch.autocast`` (mixed precision);
* ``state.scaler``: a ``torch.amp.GradScaler`` (float16 needs one; bfloat16 does not);
* ``state.forward_model``: the module the loss calls (e.g. a DistributedDataParallel
  wrapper), while the EMA and checkpoints see the unwrapped ``state.model``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from diffedu._checks import check_positive
from diffedu.engine.state import TrainState

__all__ = ["train_step"]

LossFn = Callable[[nn.Module, Any, Optional[torch.Generator]], torch.Tensor]
Autocast = Union[None, torch.dtype, contextlib.AbstractContextManager]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _autocast_context(autocast: Autocast, model: nn.Module):
    """A context manager for the forward pass: ``torch.autocast`` on ``model``'s device for a dtype."""
    if isinstance(autocast, torch.dtype):
        if autocast not in _LOW_PRECISION:
            raise ValueError(f"autocast: expected torch.float16 or torch.bfloat16, got {autocast}")
        first = next(iter(model.parameters()), None)
        device_type = first.device.type if first is not None else "cpu"
        return torch.autocast(device_type=device_type, dtype=autocast)
    if hasattr(autocast, "__enter__") and hasattr(autocast, "__exit__"):
        return autocast
    raise TypeError(
        f"autocast: expected None, torch.float16, torch.bfloat16 or a reusable context manager such as "
        f"torch.autocast('cuda', dtype=torch.bfloat16), got {type(autocast).__name__}"
    )


def _forward(state: TrainState, loss_fn: LossFn, batch: Any, autocast: Autocast) -> torch.Tensor:
    """The mean minibatch loss, computed (under autocast if asked) by the module the loss should call."""
    if autocast is None:
        loss = loss_fn(state.forward_model, batch, state.generator)
    else:
        with _autocast_context(autocast, state.model):
            loss = loss_fn(state.forward_model, batch, state.generator)
    if not torch.is_tensor(loss):
        raise TypeError(f"loss_fn: must return a tensor (per-example (B,) or scalar), got {type(loss).__name__}")
    if loss.dtype in _LOW_PRECISION:  # average in float32: a half-precision mean of many terms loses digits
        loss = loss.float()
    return loss.mean()


def train_step(
    state: TrainState,
    loss_fn: LossFn,
    batch: Any,
    *,
    grad_clip: Optional[float] = None,
    autocast: Autocast = None,
) -> torch.Tensor:
    """Take one optimiser step on ``batch`` and advance ``state``; returns the detached mean loss (monograph §2.2, §6.1).

    Computes ``loss = loss_fn(state.forward_model, batch, state.generator).mean()`` — the
    Monte Carlo estimate of the training objective on one minibatch — then ``zero_grad``,
    ``backward``, clips the global gradient norm of the optimiser's parameters to ``grad_clip``
    (None: no clipping), ``optimizer.step()`` and updates ``state.ema`` from ``state.model``.
    ``state.step`` grows by one and the loss is appended to ``state.losses`` (not read back:
    no device sync).

    Args:
        state: the :class:`~diffedu.engine.TrainState` to advance (changed in place).
        loss_fn: ``loss_fn(model, batch, generator)`` -> per-example loss (B,) or a scalar.
        batch: the minibatch, already on the model's device.
        grad_clip: maximum global gradient 2-norm, or None.
        autocast: None (full precision), ``torch.bfloat16`` / ``torch.float16`` (the forward
            pass runs under ``torch.autocast`` on the model's device), or a reusable context
            manager. With ``state.scaler`` (a ``torch.amp.GradScaler``) the loss is scaled before
            ``backward``, the gradients unscaled before clipping, and a step with inf/NaN
            gradients is skipped (the EMA and the step count still advance).
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state: expected a diffedu.engine.TrainState, got {type(state).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(model, batch, generator), got {type(loss_fn).__name__}")
    max_norm = check_positive(grad_clip, "grad_clip", allow_none=True)
    opt, scaler = state.optimizer, state.scaler
    loss = _forward(state, loss_fn, batch, autocast)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
    if max_norm is not None:
        if scaler is not None:
            scaler.unscale_(opt)
        params = [p for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()
    if state.ema is not None:
        state.ema.update(state.model)
    loss = loss.detach()
    state.step += 1
    state.losses.append(loss)
    return loss
