"""Argument checks shared by the engine modules: every error names the argument it is about."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ["check_int", "check_real"]


def check_int(value, name: str, *, minimum: int = 0, allow_none: bool = False) -> Optional[int]:
    """Return ``value`` as an int after checking it is an integer (not a bool) ``>= minimum``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a non-negative int" if minimum == 0 else ("a positive int" if minimum == 1 else f"an int >= {minimum}")
        raise ValueError(f"{name}: expected {kind}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_real(value, name: str, *, strict: bool = True, upper: Optional[float] = None,
               allow_none: bool = False) -> Optional[float]:
    """Return ``value`` as a float after checking it is a finite number > 0 (``strict``) or >= 0, below ``upper``."""
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    v = float(value) if ok else math.nan
    if not (ok and math.isfinite(v) and (v > 0 if strict else v >= 0) and (upper is None or v < upper)):
        kind = "a positive number" if strict else "a non-negative number"
        if upper is not None:
            kind += f" below {upper}"
        raise ValueError(f"{name}: expected {kind}{' or None' if allow_none else ''}, got {value!r}")
    return v
