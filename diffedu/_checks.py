"""Input checks and the one broadcast helper shared by the whole package.

Every public function validates its inputs here, so that a reader who passes a wrong shape
or a time outside [0, 1] gets an error that names the argument, not a shape error from deep
inside torch.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

__all__ = ["append_dims", "check_data", "check_time", "check_like", "check_kind", "check_positive", "check_finite",
           "check_int", "check_generator", "check_callable", "check_schedule", "check_model"]


def append_dims(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example quantity ``v`` of shape (B,) (or a scalar) to (B, 1, ..., 1).

    The result broadcasts against ``x`` of shape (B, ...), so the same line serves 2D toys
    (B, 2) and images (B, C, H, W). This is the package's only broadcast helper.
    """
    if not torch.is_tensor(v):
        v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    if v.ndim != 1:
        raise ValueError(f"append_dims: expected a per-example tensor of shape (B,), got shape {tuple(v.shape)}")
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def check_data(x, name: str = "x", *, min_ndim: int = 2, allow_nonfinite: bool = False) -> torch.Tensor:
    """Check that ``x`` is a floating tensor of shape (B, ...) with B >= 1 and finite entries."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected shape (B, ...) with at least {min_ndim} dimensions "
            f"(e.g. (B, 2) for 2D data, (B, C, H, W) for images), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (B = 0); pass at least one example")
    if not allow_nonfinite and not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def check_time(t, x: Optional[torch.Tensor] = None, name: str = "t", *, allow_scalar: bool = True) -> torch.Tensor:
    """Validate a continuous time ``t`` in [0, 1] (t = 0 data, t = 1 noise).

    Accepts a float or 0-d tensor (broadcast to the batch of ``x`` when ``x`` is given) or a
    tensor of shape (B,). Returns a floating tensor on ``x``'s device (if given).
    """
    if isinstance(t, bool):
        raise TypeError(f"{name}: expected a float time in [0, 1], got bool")
    if not torch.is_tensor(t):
        if isinstance(t, (int, float)):
            t = torch.tensor(float(t), dtype=x.dtype if x is not None else torch.get_default_dtype())
        else:
            raise TypeError(f"{name}: expected a float or a tensor of shape (B,), got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name}: expected continuous time as a floating tensor in [0, 1], got dtype {t.dtype} "
            "(integer DDPM steps live only in schedules.DiscreteSchedule; convert with timestep_to_t)"
        )
    if x is not None:
        t = t.to(device=x.device)
        if t.ndim == 0:
            if not allow_scalar:
                raise ValueError(f"{name}: expected shape (B,), got a scalar")
            t = t.expand(x.shape[0])
        elif t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: expected shape ({x.shape[0]},) to match the batch of x, got {tuple(t.shape)}")
    elif t.ndim > 1:
        raise ValueError(f"{name}: expected a scalar or shape (B,), got shape {tuple(t.shape)}")
    if torch.isnan(t).any():
        raise ValueError(f"{name}: contains NaN")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError(
            f"{name}: must lie in [0, 1] (t = 0 data, t = 1 noise), got range "
            f"[{t.min().item():.4g}, {t.max().item():.4g}]"
        )
    return t


def check_like(y, x: torch.Tensor, name: str, ref: str = "x", *, allow_nonfinite: bool = False) -> torch.Tensor:
    """Check that ``y`` is a floating tensor with exactly the shape of ``x`` and finite entries."""
    if not torch.is_tensor(y):
        raise TypeError(f"{name}: expected a torch.Tensor shaped like {ref} {tuple(x.shape)}, got {type(y).__name__}")
    if y.shape != x.shape:
        raise ValueError(f"{name}: expected shape {tuple(x.shape)} (same as {ref}), got {tuple(y.shape)}")
    if not y.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {y.dtype}")
    if not allow_nonfinite and not torch.isfinite(y).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return y


def check_kind(kind: str, allowed, name: str = "kind") -> str:
    """Check that ``kind`` is one of ``allowed`` strings."""
    if not isinstance(kind, str) or kind not in allowed:
        raise ValueError(f"{name}: unknown value {kind!r}; expected one of {sorted(allowed)}")
    return kind


def check_positive(value, name: str, *, strict: bool = True, upper=None, allow_none: bool = False) -> Optional[float]:
    """Check a real parameter is finite and positive (or non-negative), optionally below ``upper``; None with ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, str)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {value!r}") from None
    if not math.isfinite(v) or (v <= 0 if strict else v < 0):
        raise ValueError(f"{name}: expected a finite {'positive' if strict else 'non-negative'} number, got {value!r}")
    if upper is not None and v >= upper:
        raise ValueError(f"{name}: expected a value below {upper}, got {value!r}")
    return v


def check_int(value, name: str, minimum: int = 1, *, allow_none: bool = False) -> Optional[int]:
    """An int (not a bool; numpy integers too) of at least ``minimum``, as an int; None too with ``allow_none``."""
    if value is None and allow_none:
        return None
    what = f"an int >= {minimum}{' or None' if allow_none else ''}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected {what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected {what}, got {value}")
    return int(value)


def check_generator(generator, name: str = "generator"):
    """None (torch's global RNG) or a torch.Generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_callable(fn, name: str, what: str = "a function"):
    """A callable (``what`` says which one, for the message)."""
    if not callable(fn):
        raise TypeError(f"{name}: expected {what}, got {type(fn).__name__}")
    return fn


def check_finite(value, name: str) -> float:
    """A real, finite number (not a bool, not NaN or +-inf; a one-element real tensor is accepted), as a float."""
    if torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point():
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def check_schedule(schedule, name: str = "schedule"):
    """The one schedule check: ``schedule`` must be a :class:`diffedu.schedules.Schedule` (monograph §2.2, §6.1)."""
    from diffedu.schedules import Schedule  # schedules imports this module

    if not isinstance(schedule, Schedule):
        raise TypeError(f"{name}: expected a diffedu.schedules.Schedule (e.g. VPLinear()), got {type(schedule).__name__}")
    return schedule


def check_model(model, name: str = "model"):
    """The one model-contract check: ``model(x_t, t, cond) -> Prediction`` with a Schedule at ``model.schedule`` (monograph §6.1).

    A trained :class:`diffedu.param.Denoiser`, the exact ``toy.GaussianMixture(...).denoiser(schedule)``
    and every guidance or distillation wrapper satisfy it.
    """
    from diffedu.schedules import Schedule

    if not callable(model) or not isinstance(getattr(model, "schedule", None), Schedule):
        raise TypeError(f"{name}: expected the model contract model(x_t, t, cond) -> Prediction with a diffedu "
                        f"Schedule at {name}.schedule (e.g. param.Denoiser(net, schedule, 'eps')), "
                        f"got {type(model).__name__}")
    return model
