"""The state of a training run, as one object: what a step changes and a checkpoint stores.

:class:`TrainState` bundles the model, its optimiser, the EMA, the step count, the loss's
random generator, the loss history and (for mixed precision) a gradient scaler. The step
(:func:`diffedu.engine.train_step`) advances it, and :func:`diffedu.engine.save_state` /
:func:`diffedu.engine.load_state` write and read it whole — so resuming a run equals never
having stopped it (monograph §6.1's loop, interrupted and continued).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import nn

from diffedu._checks import check_int
from diffedu.engine.ema import EMA

__all__ = ["LossHistory", "TrainState"]


class LossHistory:
    """The mean minibatch loss of every step, kept on the device until read (monograph §6.1).

    :meth:`append` stores the detached 0-d loss tensor without synchronising with the device;
    reading (:meth:`tolist`, :meth:`numpy`, :meth:`recent_mean`, :meth:`as_tensor`) copies the
    pending ones to the host in one transfer.
    """

    def __init__(self, values: Iterable[float] = ()):
        self._values = [float(v) for v in values]
        self._pending: list = []

    def __len__(self) -> int:
        return len(self._values) + len(self._pending)

    def append(self, loss: torch.Tensor) -> None:
        """Record one step's loss, a 0-d tensor (not read back yet)."""
        self._pending.append(loss)

    def _flush(self) -> None:
        if self._pending:
            self._values.extend(torch.stack(self._pending).float().cpu().tolist())
            self._pending.clear()

    def tolist(self) -> list:
        """All losses as Python floats (a copy)."""
        self._flush()
        return list(self._values)

    def numpy(self) -> np.ndarray:
        """All losses as a float32 array of shape (steps,)."""
        self._flush()
        return np.asarray(self._values, dtype=np.float32)

    def as_tensor(self) -> torch.Tensor:
        """All losses as a float32 CPU tensor of shape (steps,), as checkpoints store them."""
        self._flush()
        return torch.tensor(self._values, dtype=torch.float32)

    def recent_mean(self, n: int) -> float:
        """The mean of the last ``n`` losses (nan when there are none)."""
        n = check_int(n, "n", 1)
        self._flush()
        return float(np.mean(self._values[-n:])) if self._values else float("nan")


@dataclass
class TrainState:
    """Everything a training run changes, in one place (monograph §2.2, §6.1).

    Attributes:
        model: the network as the EMA, checkpoints and callbacks see it — always the
            *unwrapped* module, so a checkpoint loads into a plain model.
        optimizer: its optimiser (its param groups are what a step clips and updates).
        ema: the :class:`~diffedu.engine.EMA` of ``model``'s weights, or None.
        generator: the torch.Generator the loss draws t and eps from (None: torch's global RNG).
        step: number of optimiser steps taken so far.
        losses: the :class:`LossHistory` (a list of floats is converted).
        scaler: an optional ``torch.amp.GradScaler`` for float16 mixed precision; its scale is
            part of the state and checkpointed with it.
        forward_model: the module the loss calls; None means ``model``. The seam for a
            ``DistributedDataParallel(model)`` or ``torch.compile(model)`` wrapper: the loss
            calls the wrapper, everything else sees ``model``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: Optional[EMA] = None
    generator: Optional[torch.Generator] = None
    step: int = 0
    losses: LossHistory = field(default_factory=LossHistory)
    scaler: Optional[Any] = None
    forward_model: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(self.optimizer).__name__}")
        if self.ema is not None and not isinstance(self.ema, EMA):
            raise TypeError(f"ema: expected a diffedu.engine.EMA or None, got {type(self.ema).__name__}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(self.generator).__name__}")
        self.step = check_int(self.step, "step", 0)
        if not isinstance(self.losses, LossHistory):
            self.losses = LossHistory(self.losses)
        if self.scaler is not None and not all(hasattr(self.scaler, a) for a in ("scale", "unscale_", "step", "update")):
            raise TypeError(f"scaler: expected a torch.amp.GradScaler or None, got {type(self.scaler).__name__}")
        if self.forward_model is None:
            self.forward_model = self.model
        elif not isinstance(self.forward_model, nn.Module):
            raise TypeError(f"forward_model: expected a torch.nn.Module or None, got {type(self.forward_model).__name__}")
