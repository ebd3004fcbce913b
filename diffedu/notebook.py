"""Small helpers every chapter notebook starts with: one switch for CI mode, a device, a seed.

A chapter runs in one of two modes and the same code paths serve both:

* **reader mode** (the default) uses the budgets the text talks about (training steps, sample
  sizes) and takes minutes on a laptop CPU;
* **CI mode** (environment variable ``DIFFEDU_FAST=1``) shrinks those budgets so that the test
  suite and the book build stay fast, while the notebook still asserts the quality it claims.

Nothing here holds a global device: :func:`pick_device` returns one, and the notebook passes it
on explicitly.
"""
from __future__ import annotations

import os
import random
import re
from typing import TypeVar

import torch

__all__ = ["FAST_ENV", "fast_mode", "budget", "pick_device", "seed_everything", "animation_html"]

#: The one switch: ``DIFFEDU_FAST=1`` selects CI mode.
FAST_ENV = "DIFFEDU_FAST"

T = TypeVar("T")

_FALSE = {"", "0", "false", "no", "off"}


def fast_mode() -> bool:
    """True when the environment variable ``DIFFEDU_FAST`` is set to a true value (``1``, ``yes``...).

    Reader mode is the default; ``DIFFEDU_FAST=0`` (or unset) keeps it.
    """
    return os.environ.get(FAST_ENV, "").strip().lower() not in _FALSE


def budget(fast: T, reader: T) -> T:
    """Pick a budget: ``fast`` in CI mode (``DIFFEDU_FAST=1``), ``reader`` otherwise.

    >>> steps = budget(fast=300, reader=3000)
    """
    return fast if fast_mode() else reader


def pick_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (or the environment variable ``DIFFEDU_DEVICE``) overrides the choice, e.g. to
    force ``"cpu"`` on a machine with a GPU. The result is returned, never stored globally.
    """
    from diffedu.engine.loop import resolve_device

    return resolve_device(prefer or os.environ.get("DIFFEDU_DEVICE") or "auto")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) and return a CPU ``torch.Generator`` seeded alike.

    Pass the returned generator explicitly wherever reproducibility matters (sampling data,
    drawing noise); the global seeds only make the rest (weight initialisation) repeatable.
    """
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# matplotlib's JavaScript player styles its buttons with Font Awesome 4 from a CDN; the book is
# read offline, so the stylesheet link is dropped and each icon becomes a plain character.
_FA_ICONS = {
    "fa-minus": "\u2212", "fa-fast-backward": "|\u25c0", "fa-step-backward": "\u25c0|",
    "fa-play fa-flip-horizontal": "\u25c0", "fa-pause": "||", "fa-play": "\u25b6",
    "fa-step-forward": "|\u25b6", "fa-fast-forward": "\u25b6|", "fa-plus": "+",
}


def animation_html(anim, *, close: bool = True):
    """An ``IPython.display.HTML`` player for a matplotlib animation that works offline.

    Wraps ``anim.to_jshtml()`` (frames embedded as images, controls in plain JavaScript) and
    removes its only network dependency, the Font Awesome stylesheet, so the rendered book
    needs nothing from a CDN. ``close`` closes the figure so it is not drawn a second time.
    """
    from IPython.display import HTML

    text = anim.to_jshtml()
    text = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">', "", text)
    for cls, char in _FA_ICONS.items():
        text = text.replace(f'<i class="fa {cls}"></i>', f'<span aria-hidden="true">{char}</span>')
    if close:
        import matplotlib.pyplot as plt

        plt.close(anim._fig)
    return HTML(text)
