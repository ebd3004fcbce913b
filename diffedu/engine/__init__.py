"""How do we train? Device and seeds, EMA, checkpoints, one step and the training loop (monograph §2.2, §6.1).

* :mod:`diffedu.engine.device` — :func:`resolve_device`, :func:`make_generator`, :func:`to_device`
* :mod:`diffedu.engine.ema` — :class:`EMA`, the weight average models sample with
* :mod:`diffedu.engine.state` — :class:`TrainState` (what a run changes), :class:`LossHistory`
* :mod:`diffedu.engine.step` — :func:`train_step`, one optimisation step
* :mod:`diffedu.engine.checkpoint` — :func:`save_checkpoint` / :func:`load_checkpoint`,
  :func:`save_state` / :func:`load_state`, :class:`CheckpointError` (:class:`UnsafeCheckpointError`)
* :mod:`diffedu.engine.loop` — :func:`fit` and its :class:`FitResult`
"""
from diffedu.engine.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_state,
    save_checkpoint,
    save_state,
)
from diffedu.engine.device import make_generator, resolve_device, to_device
from diffedu.engine.ema import EMA
from diffedu.engine.loop import FitResult, fit
from diffedu.engine.state import LossHistory, TrainState
from diffedu.engine.step import train_step

__all__ = [
    "CheckpointError",
    "EMA",
    "FitResult",
    "LossHistory",
    "TrainState",
    "UnsafeCheckpointError",
    "fit",
    "load_checkpoint",
    "load_state",
    "make_generator",
    "resolve_device",
    "save_checkpoint",
    "save_state",
    "to_device",
    "train_step",
]
