"""Endless, seeded minibatch streams drawn from a tensor, on its own device (no DataLoader)."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import torch

__all__ = ["batches"]


def batches(
    x: torch.Tensor,
    batch_size: int,
    generator: Optional[Union[torch.Generator, int]] = None,
    labels: Optional[torch.Tensor] = None,
    drop_last: bool = True,
) -> Iterator[Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]:
    """An endless stream of shuffled minibatches of ``x`` (and ``labels``).

    Each pass ("epoch") draws a fresh random permutation of the N examples from ``generator``
    (a torch.Generator, or an int seed; None uses torch's global RNG) and yields consecutive
    slices of it, so every example is seen once per epoch. Batches are ``x[idx]`` on x's own
    device — no DataLoader, no worker processes, no copies beyond the batch itself. With
    ``labels`` (shape (N,)) each item is the pair ``(x[idx], labels[idx])``.

    With ``drop_last=True`` every batch has exactly ``batch_size`` rows (the last, incomplete
    slice of an epoch is skipped); with ``drop_last=False`` it is yielded too.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"x: expected a torch.Tensor of shape (N, ...), got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x: expected a non-empty tensor of shape (N, ...), got shape {tuple(x.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    n = x.shape[0]
    if drop_last and batch_size > n:
        raise ValueError(f"batch_size: {batch_size} exceeds the number of examples N={n} with drop_last=True")
    if labels is not None:
        if not torch.is_tensor(labels):
            raise TypeError(f"labels: expected a torch.Tensor of shape ({n},), got {type(labels).__name__}")
        if labels.shape[:1] != (n,):
            raise ValueError(f"labels: expected a first dimension of {n} (as x), got shape {tuple(labels.shape)}")
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return _batch_stream(x, batch_size, generator, labels, drop_last)


def _batch_stream(x, batch_size, generator, labels, drop_last):
    n = x.shape[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    stop = n - batch_size + 1 if drop_last else n
    while True:
        perm = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
        for start in range(0, stop, batch_size):
            idx = perm[start:start + batch_size]
            if labels is None:
                yield x[idx]
            else:
                yield x[idx], labels[idx.to(labels.device)]
