"""Time and class inputs of every network: the sinusoidal time embedding and the argument checks
shared by :class:`~diffedu.nets.MLP` and :class:`~diffedu.nets.UNet` (monograph §2.2, §8.2)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sinusoidal_embedding", "TIME_SCALE"]

TIME_SCALE = 1000.0  # t in [0, 1] is stretched to [0, 1000] before the sinusoids (DDPM's step range)


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, scale: float = TIME_SCALE, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous time, shape (B,) -> (B, dim).

    Computes ``[cos(s t w_0), ..., cos(s t w_{h-1}), sin(s t w_0), ..., sin(s t w_{h-1})]`` with
    ``h = dim // 2``, ``s = scale`` and frequencies ``w_k = max_period ** (-k / h)`` spaced
    geometrically from 1 down to about 1/max_period — the Transformer position code, used by
    DDPM to tell its network the noise level (monograph §2.2). t in [0, 1] is multiplied by
    ``scale`` (1000 by default) so that the slow and fast frequencies both vary across [0, 1].
    An odd ``dim`` is padded with one zero column.
    """
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim: expected an int >= 2, got {type(dim).__name__}")
    if dim < 2:
        raise ValueError(f"dim: expected an int >= 2, got {dim}")
    if not torch.is_tensor(t):
        raise TypeError(f"t: expected a floating tensor of shape (B,), got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"t: expected continuous time as a floating tensor in [0, 1], got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"t: expected shape (B,), got {tuple(t.shape)}")
    return _embed(t, _frequencies(dim, scale, max_period, t.device), dim)


def _frequencies(dim: int, scale: float, max_period: float, device=None) -> torch.Tensor:
    """``scale * w_k`` for k = 0..dim//2 - 1, the (scaled) angular frequencies of the embedding."""
    half = dim // 2
    k = torch.arange(half, device=device, dtype=torch.float32)
    return scale * torch.exp(-math.log(max_period) * k / half)


def _embed(t: torch.Tensor, scaled_freqs: torch.Tensor, dim: int) -> torch.Tensor:
    dtype = torch.promote_types(scaled_freqs.dtype, torch.float32)  # never form 1000 t in half precision
    args = t.to(dtype)[:, None] * scaled_freqs.to(dtype)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(t.dtype)


class _TimeEmbedding(nn.Module):
    """:func:`sinusoidal_embedding` with its frequencies computed once (a non-persistent buffer)."""

    def __init__(self, dim: int, scale: float = TIME_SCALE, max_period: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.register_buffer("freqs", _frequencies(dim, scale, max_period), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return _embed(t, self.freqs, self.dim)


# ----------------------------------------------------------------------------------------------
# input checks shared by both networks (cheap: shapes and dtypes, one range check on labels)


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _check_num_classes(num_classes) -> Optional[int]:
    if num_classes is None:
        return None
    return _check_int(num_classes, "num_classes", 1)


def _time_for(t, x: torch.Tensor) -> torch.Tensor:
    """Return ``t`` as a (B,) tensor on x's device and dtype; a float or 0-d tensor is broadcast."""
    if isinstance(t, bool):
        raise TypeError("t: expected a float time in [0, 1], got bool")
    if isinstance(t, (int, float)):
        t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    elif not torch.is_tensor(t):
        raise TypeError(f"t: expected a float or a floating tensor of shape (B,), got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"t: expected continuous time as a floating tensor in [0, 1] (t = 0 data, t = 1 noise), got dtype {t.dtype}"
        )
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    elif t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t: expected shape ({x.shape[0]},) to match the batch of x, got {tuple(t.shape)}")
    return t.to(device=x.device, dtype=x.dtype)


def _labels_for(cond, x: torch.Tensor, num_classes: Optional[int]) -> Optional[torch.Tensor]:
    """Validate class labels; ``None`` becomes the null label ``num_classes`` (monograph §8.2)."""
    if num_classes is None:
        if cond is not None:
            raise ValueError("cond: this network was built with num_classes=None, so it takes no labels; pass cond=None")
        return None
    if cond is None:
        return torch.full((x.shape[0],), num_classes, dtype=torch.long, device=x.device)
    if not torch.is_tensor(cond):
        raise TypeError(f"cond: expected a LongTensor of class labels of shape (B,), got {type(cond).__name__}")
    if cond.dtype.is_floating_point or cond.dtype.is_complex or cond.dtype == torch.bool:
        raise TypeError(f"cond: expected integer class labels (torch.long), got dtype {cond.dtype}")
    if cond.ndim != 1 or cond.shape[0] != x.shape[0]:
        raise ValueError(f"cond: expected shape ({x.shape[0]},) to match the batch of x, got {tuple(cond.shape)}")
    if bool(((cond < 0) | (cond > num_classes)).any()):
        raise ValueError(
            f"cond: labels must lie in {{0, ..., {num_classes - 1}}} or be the null label {num_classes}, "
            f"got range [{int(cond.min())}, {int(cond.max())}]"
        )
    return cond.to(device=x.device, dtype=torch.long)


def _check_x(x, ndim: int, what: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"x: expected a torch.Tensor {what}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"x: expected a tensor {what}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x: empty batch (B = 0)")
    return x


# ----------------------------------------------------------------------------------------------
