"""Plots the chapters draw: samples, densities, vector fields, trajectories, image grids, losses.

Every function draws on an ``ax`` you pass (or on a new figure's) and returns the Axes — or
the animation — so a notebook can compose panels freely::

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    viz.density(mixture.log_prob, extent=(-5, 5, -5, 5), ax=axes[0])
    viz.scatter(samples, ax=axes[1])
    viz.trajectories(path, ax=axes[2])

matplotlib is imported only when a function here is called, so ``import diffedu`` (and
``import diffedu.viz``) never imports it. Inputs may be torch tensors (any device) or arrays.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "scatter",
    "density",
    "vector_field",
    "trajectories",
    "make_grid",
    "image_grid",
    "animate_trajectories",
    "loss_curve",
]

Extent = Tuple[float, float, float, float]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _axes(ax):
    if ax is None:
        _, ax = _plt().subplots()
    return ax


def _numpy(x, name: str) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a tensor or array of numbers, got {type(x).__name__}") from None


def _points(x, name: str = "x") -> np.ndarray:
    a = _numpy(x, name)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name}: expected 2D points of shape (N, 2), got shape {a.shape}")
    return a


def _extent(extent) -> Extent:
    try:
        x0, x1, y0, y1 = (float(v) for v in extent)
    except (TypeError, ValueError):
        raise TypeError(f"extent: expected four numbers (xmin, xmax, ymin, ymax), got {extent!r}") from None
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"extent: expected xmin < xmax and ymin < ymax, got {extent!r}")
    return x0, x1, y0, y1


def _grid(extent: Extent, n: int) -> Tuple[np.ndarray, np.ndarray, torch.Tensor]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n: expected an int >= 2 grid points per axis, got {n!r}")
    xs = np.linspace(extent[0], extent[1], n)
    ys = np.linspace(extent[2], extent[3], n)
    gx, gy = np.meshgrid(xs, ys)  # (n, n), row i is y = ys[i]
    pts = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
    return gx, gy, pts


def _evaluate(fn, pts: torch.Tensor, name: str, shape) -> np.ndarray:
    with torch.no_grad():
        out = fn(pts)
    out = _numpy(out, f"{name}(points)")
    if out.shape != shape:
        raise ValueError(f"{name}: must map an (N, 2) tensor to shape {shape}, returned shape {out.shape}")
    return out


def scatter(x, ax=None, *, s: float = 2.0, alpha: float = 0.5, equal: bool = True, **kwargs):
    """Scatter-plot 2D points ``x`` of shape (N, 2); extra keywords go to ``ax.scatter``. Returns the Axes."""
    pts = _points(x)
    ax = _axes(ax)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, **kwargs)
    if equal:
        ax.set_aspect("equal", adjustable="datalim")
    return ax


def density(log_prob_fn: Callable[[torch.Tensor], torch.Tensor], extent, ax=None, *, n: int = 200, cmap: str = "viridis", log: bool = False, **kwargs):
    """Draw a 2D density p(x) = exp(log_prob_fn(x)) on an n x n grid over ``extent``.

    ``log_prob_fn`` maps an (N, 2) float32 tensor to (N,) log-densities (e.g. a Gaussian
    mixture's ``log_prob``, or the exact ``log p_t`` of monograph §3.3). With ``log=True`` the
    log-density itself is shown. Drawn with ``imshow``; returns the Axes (the image is
    ``ax.images[-1]``, its array of shape (n, n) with row 0 at ``ymin``).
    """
    if not callable(log_prob_fn):
        raise TypeError(f"log_prob_fn: expected a callable (N, 2) tensor -> (N,), got {type(log_prob_fn).__name__}")
    extent = _extent(extent)
    gx, _, pts = _grid(extent, n)
    logp = _evaluate(log_prob_fn, pts, "log_prob_fn", (pts.shape[0],)).reshape(gx.shape)
    img = logp if log else np.exp(logp)
    ax = _axes(ax)
    ax.imshow(img, extent=extent, origin="lower", cmap=cmap, aspect="auto", **kwargs)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    return ax


def vector_field(field_fn: Callable[[torch.Tensor], torch.Tensor], extent, ax=None, *, n: int = 20, normalize: bool = False, **kwargs):
    """Draw a 2D vector field (a score, a velocity, a drift) as arrows on an n x n grid (quiver).

    ``field_fn`` maps an (N, 2) float32 tensor to (N, 2) vectors — e.g.
    ``lambda x: mixture.score_t(x, t, schedule)`` (monograph §3, §5). With ``normalize=True``
    every arrow has unit length (direction only). Returns the Axes.
    """
    if not callable(field_fn):
        raise TypeError(f"field_fn: expected a callable (N, 2) tensor -> (N, 2), got {type(field_fn).__name__}")
    extent = _extent(extent)
    gx, gy, pts = _grid(extent, n)
    v = _evaluate(field_fn, pts, "field_fn", (pts.shape[0], 2))
    if normalize:
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    ax = _axes(ax)
    ax.quiver(gx.ravel(), gy.ravel(), v[:, 0], v[:, 1], **kwargs)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal", adjustable="box")
    return ax


def _paths(xs, name: str = "xs") -> np.ndarray:
    a = _numpy(xs, name)
    if a.ndim != 3 or a.shape[2] != 2 or a.shape[0] < 1:
        raise ValueError(f"{name}: expected trajectories of shape (T, B, 2) (time first), got shape {a.shape}")
    return a


def trajectories(xs, ax=None, *, max_paths: int = 200, color="k", lw: float = 0.5, alpha: float = 0.4, endpoints: bool = True):
    """Draw sample paths ``xs`` of shape (T, B, 2) (time first, e.g. a sampler's saved states).

    One line per path (the first ``max_paths``), plus the start points (``xs[0]``) and end points
    (``xs[-1]``) as scatter markers when ``endpoints=True``. Returns the Axes.
    """
    a = _paths(xs)
    if isinstance(max_paths, bool) or not isinstance(max_paths, int) or max_paths < 1:
        raise ValueError(f"max_paths: expected a positive int, got {max_paths!r}")
    a = a[:, :max_paths]
    ax = _axes(ax)
    ax.plot(a[:, :, 0], a[:, :, 1], color=color, lw=lw, alpha=alpha)
    if endpoints:
        ax.scatter(a[0, :, 0], a[0, :, 1], s=6, c="tab:blue", label="start", zorder=3)
        ax.scatter(a[-1, :, 0], a[-1, :, 1], s=6, c="tab:red", label="end", zorder=3)
    ax.set_aspect("equal", adjustable="datalim")
    return ax


def make_grid(x, nrow: int = 8, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images ``x`` (B, C, H, W) in [-1, 1] into one array in [0, 1].

    Images fill rows of ``nrow`` left to right, separated by ``padding`` pixels of ``pad_value``.
    Returns shape (rows*(H+p)+p, nrow*(W+p)+p) for C = 1 and (..., ..., C) for C = 3.
    """
    a = _numpy(x, "x")
    if a.ndim != 4 or a.shape[1] not in (1, 3) or a.shape[0] < 1:
        raise ValueError(f"x: expected images of shape (B, C, H, W) with C in (1, 3), got shape {a.shape}")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow: expected a positive int, got {nrow!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding: expected a non-negative int, got {padding!r}")
    a = np.clip((a + 1.0) / 2.0, 0.0, 1.0)
    b, c, h, w = a.shape
    ncol = min(nrow, b)
    nrows = -(-b // ncol)
    p = padding
    grid = np.full((nrows * (h + p) + p, ncol * (w + p) + p, c), float(pad_value))
    for i in range(b):
        r, k = divmod(i, ncol)
        grid[p + r * (h + p): p + r * (h + p) + h, p + k * (w + p): p + k * (w + p) + w] = a[i].transpose(1, 2, 0)
    return grid[:, :, 0] if c == 1 else grid


def image_grid(x, nrow: int = 8, ax=None, *, padding: int = 1, title: Optional[str] = None):
    """Show images ``x`` (B, C, H, W) in [-1, 1] as one grid (see :func:`make_grid`); returns the Axes.

    Gray-scale (C = 1) images use the ``gray`` colour map with fixed limits [0, 1].
    """
    grid = make_grid(x, nrow=nrow, padding=padding)
    ax = _axes(ax)
    if grid.ndim == 2:
        ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def animate_trajectories(
    xs,
    ax=None,
    *,
    max_frames: int = 40,
    interval: int = 80,
    s: float = 4.0,
    extent: Optional[Sequence[float]] = None,
    times: Optional[Sequence[float]] = None,
):
    """Animate particles moving along ``xs`` (T, B, 2): a matplotlib FuncAnimation.

    At most ``max_frames`` evenly spaced frames (first and last included) are kept so that
    ``anim.to_jshtml()`` stays small enough for a notebook. ``times`` (length T) labels each frame
    with its t. The figure is closed after the animation is built (so a notebook shows only the
    animation); display it with ``IPython.display.HTML(anim.to_jshtml())``.
    """
    from matplotlib import animation

    a = _paths(xs)
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames: expected a positive int, got {max_frames!r}")
    if times is not None and len(times) != a.shape[0]:
        raise ValueError(f"times: expected {a.shape[0]} values (one per frame of xs), got {len(times)}")
    frames = np.unique(np.linspace(0, a.shape[0] - 1, min(max_frames, a.shape[0])).round().astype(int))
    ax = _axes(ax)
    fig = ax.figure
    if extent is None:
        lo, hi = a.reshape(-1, 2).min(0), a.reshape(-1, 2).max(0)
        pad = 0.05 * np.maximum(hi - lo, 1e-6)
        extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    extent = _extent(extent)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal", adjustable="box")
    points = ax.scatter(a[frames[0], :, 0], a[frames[0], :, 1], s=s)
    label = ax.set_title("")

    def draw(i):
        k = frames[i]
        points.set_offsets(a[k])
        label.set_text(f"t = {float(times[k]):.3f}" if times is not None else f"step {k}")
        return points, label

    anim = animation.FuncAnimation(fig, draw, frames=len(frames), interval=interval, blit=False)
    _plt().close(fig)
    return anim


def loss_curve(losses, ax=None, *, smooth: int = 50, logy: bool = True, label: Optional[str] = None):
    """Plot a training-loss history (e.g. ``FitResult.losses``): raw values faintly, plus a moving
    average over ``smooth`` steps (``smooth=1``: none). Log y-axis by default. Returns the Axes."""
    a = _numpy(losses, "losses").ravel()
    if a.size == 0:
        raise ValueError("losses: is empty")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth: expected a positive int window, got {smooth!r}")
    ax = _axes(ax)
    steps = np.arange(1, a.size + 1)
    if smooth > 1 and a.size >= smooth:
        ax.plot(steps, a, alpha=0.25, lw=0.5)
        avg = np.convolve(a, np.ones(smooth) / smooth, mode="valid")
        ax.plot(steps[smooth - 1:], avg, lw=1.5, label=label)
    else:
        ax.plot(steps, a, lw=1.0, label=label)
    if logy and np.all(a > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if label is not None:
        ax.legend()
    return ax
