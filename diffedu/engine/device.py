"""Where training runs and where its randomness comes from: devices, seeded generators, batches.

Nothing in diffedu holds a global device: each function takes ``device`` and each random draw
takes an explicit ``torch.Generator`` (monograph §2.2: the forward process, and with it every
training loss, is a random draw of a time t and a noise eps, which a generator makes repeatable).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = ["DeviceLike", "resolve_device", "make_generator", "to_device"]

DeviceLike = Union[str, torch.device]


def resolve_device(device: Optional[DeviceLike] = "auto") -> torch.device:
    """Turn ``"auto"`` (or None) into the best available device: CUDA, then Apple MPS, then CPU.

    Any other string or torch.device is returned as a torch.device unchanged. Used by
    :func:`diffedu.engine.fit` to place the model of monograph §6.1's training loop.
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

    Pass it wherever diffedu draws random numbers (the t and eps of a loss, monograph §2.2,
    §6.1; samplers; :func:`diffedu.data.batches`) to make a computation reproducible without
    touching torch's global RNG.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    g = torch.Generator(device=resolve_device(device))
    if seed is None:
        g.seed()
        return g
    return g.manual_seed(int(seed))


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch — a tensor, or tuples, lists and dicts of them — to ``device``.

    Tensors already there are returned as they are; anything that is not a tensor (labels as
    ints, strings) passes through. This is the "draw a minibatch x_0" of monograph §6.1's loop.
    """
    if torch.is_tensor(batch):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, tuple):
        return tuple(to_device(b, device) for b in batch)
    if isinstance(batch, list):
        return [to_device(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
