"""Checkpoints: write a training run to disk atomically, read it back safely (monograph §6.1).

A checkpoint is a ``torch.save`` dict with at least ``"model"`` (a state dict) and ``"step"``,
plus ``"ema"``, ``"optimizer"`` and, when written by :func:`save_state`, the loss history
(``"losses"``), the loss generator's state (``"generator"``) and a gradient scaler's state
(``"scaler"``). Writing goes through a temporary file and ``os.replace``; reading uses
``torch.load(..., weights_only=True)`` and turns an unreadable file into a :class:`CheckpointError`
that names it.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from typing import Any, Optional, Union

import torch
from torch import nn

from diffedu._checks import check_int
from diffedu.engine.device import DeviceLike
from diffedu.engine.ema import EMA
from diffedu.engine.state import LossHistory, TrainState

__all__ = ["CheckpointError", "UnsafeCheckpointError", "save_checkpoint", "load_checkpoint", "save_state", "load_state"]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A file that is not a (readable) diffedu checkpoint: empty, truncated, corrupt, something else,
    or one whose contents do not fit the model / EMA / optimizer it is loaded into."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A file that ``torch.load(..., weights_only=True)`` refused: it pickles arbitrary objects (or is corrupt)."""


def _check_path(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path (str or os.PathLike), got {type(path).__name__}")
    return os.fspath(path)


def _check_parts(model, ema, optimizer) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if ema is not None and not isinstance(ema, EMA):
        raise TypeError(f"ema: expected a diffedu.engine.EMA or None, got {type(ema).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer or None, got {type(optimizer).__name__}")


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable where the OS allows it (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    ema: Optional[EMA] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    step: int = 0,
    **extra: Any,
) -> None:
    """Write model, EMA, optimizer state and step to ``path`` *atomically* (monograph §6.1).

    The file is first written to a temporary file in the same directory and then moved over
    ``path`` with ``os.replace``, so an interrupted or failing save never leaves a half-written
    checkpoint (the previous one survives, and the temporary file is removed). ``extra`` entries
    (tensors, numbers, strings, dicts of them) are stored too.
    """
    path = _check_path(path)
    _check_parts(model, ema, optimizer)
    state = {
        "model": model.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": check_int(step, "step", 0),
        **extra,
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
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
    _fsync_directory(directory)


def _read(path: str, map_location) -> dict:
    """``torch.load(path, weights_only=True)``, with every way of failing turned into an error naming ``path``."""
    hint = "it is not a diffedu checkpoint (or it was truncated or corrupted); write one with diffedu.engine.save_checkpoint"
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"path: {path!r} is empty: {hint}")
    try:
        is_zip = zipfile.is_zipfile(path)  # torch.save has written zip archives since torch 1.6
    except (OSError, zipfile.BadZipFile):
        is_zip = False
    if not is_zip:
        raise CheckpointError(f"path: {path!r} is not a torch.save archive: {hint}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"path: {path!r} is not a diffedu checkpoint that loads safely: torch.load(weights_only=True) refused it. "
            f"It holds objects other than tensors, numbers, strings and containers of them (arbitrary pickled code is "
            f"never run), or it is corrupt. torch said: {str(err)[:300]}"
        ) from err
    except Exception as err:  # zip reader errors, EOFError, KeyError, ... from a damaged archive
        raise CheckpointError(f"path: {path!r} could not be read ({type(err).__name__}: {str(err)[:200]}): {hint}") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        got = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"path: {path!r} is not a diffedu checkpoint (expected keys 'model' and 'step', got {got})")
    return ckpt


def _load_part(name: str, path: str, target, state) -> None:
    """``target.load_state_dict(state)``, with a mismatch reported as a :class:`CheckpointError` naming ``name`` and ``path``."""
    if state is None:
        raise ValueError(f"{name}: the checkpoint {path!r} holds no {name} state")
    try:
        target.load_state_dict(state)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{name}: the {name} state in {path!r} does not fit this {name}: {str(err)[:300]}") from err


def load_checkpoint(
    path: PathLike,
    model: nn.Module,
    ema: Optional[EMA] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    map_location: Optional[DeviceLike] = None,
) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``ema``, ``optimizer``).

    Uses ``torch.load(..., weights_only=True)``, which refuses to run arbitrary pickled code.
    Tensors go to ``map_location`` (default: the device of ``model``'s parameters). Returns the
    whole checkpoint dict; ``ckpt["step"]`` is the number of optimiser steps it had taken
    (monograph §6.1). An empty, truncated, corrupt or foreign file raises :class:`CheckpointError`
    naming it (:class:`UnsafeCheckpointError`, also a ``pickle.UnpicklingError``, when
    ``weights_only`` loading refuses it); so does a state that does not fit ``model``, ``ema``
    or ``optimizer``.
    """
    path = _check_path(path)
    _check_parts(model, ema, optimizer)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint file at {path!r}")
    if map_location is None:
        first = next(iter(model.parameters()), None)
        map_location = first.device if first is not None else torch.device("cpu")
    ckpt = _read(path, map_location)
    _load_part("model", path, model, ckpt["model"])
    if ema is not None:
        _load_part("ema", path, ema, ckpt.get("ema"))
    if optimizer is not None:
        _load_part("optimizer", path, optimizer, ckpt.get("optimizer"))
    return ckpt


def save_state(path: PathLike, state: TrainState, **extra: Any) -> None:
    """Write a whole :class:`TrainState` to ``path`` atomically (see :func:`save_checkpoint`; monograph §6.1).

    Stores model, EMA, optimizer, step, the loss history, the generator's state and the
    gradient scaler's state, so that :func:`load_state` followed by more steps reproduces an
    uninterrupted run bit for bit.
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state: expected a diffedu.engine.TrainState, got {type(state).__name__}")
    if state.generator is not None:
        extra["generator"] = state.generator.get_state()
    if state.scaler is not None:
        extra["scaler"] = state.scaler.state_dict()
    save_checkpoint(path, state.model, state.ema, state.optimizer, state.step, losses=state.losses.as_tensor(), **extra)


def load_state(path: PathLike, state: TrainState, map_location: Optional[DeviceLike] = None) -> dict:
    """Restore a :class:`TrainState` in place from a checkpoint written by :func:`save_state` (monograph §6.1).

    Loads model, EMA and optimizer (see :func:`load_checkpoint`), then step, loss history,
    generator state and scaler state where the checkpoint has them. Returns the checkpoint dict.
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state: expected a diffedu.engine.TrainState, got {type(state).__name__}")
    ckpt = load_checkpoint(path, state.model, ema=state.ema, optimizer=state.optimizer, map_location=map_location)
    state.step = check_int(ckpt["step"], "step", 0)
    losses = ckpt.get("losses")
    state.losses = LossHistory(losses.tolist() if torch.is_tensor(losses) else ())
    if state.generator is not None and torch.is_tensor(ckpt.get("generator")):
        try:
            state.generator.set_state(ckpt["generator"].cpu())
        except RuntimeError as err:  # e.g. a CUDA generator's state restored into a CPU one
            warnings.warn(f"generator: could not restore the state saved in {os.fspath(path)!r} ({err}); "
                          "continuing with a freshly seeded generator, so the resumed run is not bit-identical")
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    return ckpt
