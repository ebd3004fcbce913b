"""Endless, seeded minibatch streams (no DataLoader): reshuffled from a tensor, or drawn fresh from a distribution."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import torch

__all__ = ["batches", "sample_stream"]


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
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("x: the data contain NaN or infinite values (they would poison every batch they land in)")
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


def sample_stream(
    dist,
    batch_size: int,
    generator: Optional[Union[torch.Generator, int]] = None,
    *,
    labels: bool = False,
) -> Iterator[Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]:
    """An endless, seeded stream of fresh samples from a distribution: the "infinite data" regime.

    Where :func:`batches` reshuffles a fixed data set, this draws every batch anew from ``dist``,
    the situation the population losses of the monograph describe (an expectation over p_data,
    monograph §1.1): no example is ever seen twice. ``dist`` is anything with a
    ``dist.sample(n, generator=...)`` method (e.g. a :class:`diffedu.toy.GaussianMixture`) or a
    function ``dist(n, generator=...)`` (e.g. :func:`diffedu.toy.two_moons`).

    ``generator`` is a torch.Generator or an int seed (None: torch's global RNG); the same seed
    gives the same stream. With ``labels=True`` each item is the pair ``(x, c)`` from
    ``dist.sample(n, generator=..., return_labels=True)`` (class-conditional training, §8.2).
    Batches are drawn on the generator's device; :func:`diffedu.engine.fit` moves them.
    """
    sample = getattr(dist, "sample", None)
    if not callable(sample):
        if not callable(dist):
            raise TypeError(f"dist: expected an object with .sample(n, generator=...) or a function "
                            f"dist(n, generator=...), got {type(dist).__name__}")
        if labels:
            raise ValueError("labels: True needs dist.sample(n, generator=..., return_labels=True); "
                             f"got a plain function {getattr(dist, '__name__', dist)!r}")
        sample = dist
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if not isinstance(labels, bool):
        raise TypeError(f"labels: expected a bool, got {type(labels).__name__}")
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, an int seed or None, got {type(generator).__name__}")
    kwargs = {"return_labels": True} if labels else {}
    return _sample_stream(sample, batch_size, generator, kwargs)


def _sample_stream(sample, batch_size, generator, kwargs):
    while True:
        yield sample(batch_size, generator=generator, **kwargs)
