"""Fokker-Planck and continuity equations, checked numerically (monograph §4.2-4.4, §5.3, appendix B).

The marginals p_t of the forward SDE dx = f(t) x dt + g(t) dw solve the Fokker-Planck equation

    d p_t / dt = -div( f(t) x p_t ) + (g(t)^2 / 2) Laplacian p_t                  (monograph §4.2)

and, written as a continuity equation d p_t/dt + div(p_t v_t) = 0 with the PF-ODE velocity
v_t = f x - (g^2/2) grad log p_t, it says that the deterministic flow moves mass exactly as the
noise does (monograph §4.4; flow matching's correctness criterion, §5.3). Dividing by p_t gives
the log-form used for pointwise checks:

    d log p_t/dt = -D f - f x . grad log p + (g^2/2)(Laplacian log p + |grad log p|^2)
    d log p_t/dt = -div v - v . grad log p.

This module provides (i) exact pointwise residuals by autograd, (ii) the finite-difference
residual of a density on a grid (-> 0 as the grid refines), and (iii) a conservative
finite-volume solver of the Fokker-Planck PDE on a grid, to compare with the exact p_t and
with histograms of forward-SDE particles. Everything on grids is float64 numpy.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from diffedu._checks import check_data, check_positive, check_schedule, check_time
from diffedu.schedules import Schedule
from diffedu.sde import diffusion_sq, drift_coef

__all__ = ["fokker_planck_residual", "continuity_residual", "Grid", "make_grid", "fokker_planck_residual_grid",
           "solve_fokker_planck", "histogram_density", "l1_distance"]


def _grad_lap(log_p, x, t):
    """(d_t log p, grad log p, Laplacian log p) at (x, t) by autograd; x (B, D), t (B,)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        t = t.detach().requires_grad_(True)
        lp = log_p(x, t)
        gx, gt = torch.autograd.grad(lp.sum(), (x, t), create_graph=True)
        lap = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for i in range(x.shape[1]):
            (h,) = torch.autograd.grad(gx[:, i].sum(), x, retain_graph=True)
            lap = lap + h[:, i]
    return gt.detach(), gx.detach(), lap


def fokker_planck_residual(log_p: Callable, schedule: Schedule, x: torch.Tensor, t) -> torch.Tensor:
    """Pointwise residual of the Fokker-Planck equation in log form, by autograd (monograph §4.2).

    Returns d_t log p - [-D f - f x.grad log p + (g^2/2)(Lap log p + |grad log p|^2)], shape (B,),
    for ``log_p(x, t)`` (x (B, D), t (B,) -> (B,)), e.g. ``lambda x, t: mix.log_prob_t(x, t, schedule)``.
    Zero (to rounding) for the exact diffused density; use float64.
    """
    check_schedule(schedule)
    check_data(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x: expected shape (B, D), got {tuple(x.shape)}")
    t = check_time(t, x).to(x.dtype)
    dt_lp, g, lap = _grad_lap(log_p, x, t)
    f, g2 = drift_coef(schedule, t), diffusion_sq(schedule, t)
    rhs = -x.shape[1] * f - f * (x * g).sum(1) + 0.5 * g2 * (lap + g.pow(2).sum(1))
    return dt_lp - rhs


def continuity_residual(log_p: Callable, velocity: Callable, x: torch.Tensor, t) -> torch.Tensor:
    """Pointwise residual d_t log p + div v + v . grad log p of the continuity equation (monograph §5.3).

    ``velocity(x, t)`` -> (B, D). Zero for a velocity that transports p_t, e.g. the oracle's
    marginal flow-matching / PF-ODE velocity ``mix.velocity_t``. Shape (B,); use float64.
    """
    check_data(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x: expected shape (B, D), got {tuple(x.shape)}")
    t = check_time(t, x).to(x.dtype)
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        tt = t.detach().requires_grad_(True)
        lp = log_p(xx, tt)
        gx, gt = torch.autograd.grad(lp.sum(), (xx, tt))
        xv = x.detach().requires_grad_(True)
        v = velocity(xv, t.detach())
        div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for i in range(x.shape[1]):
            (h,) = torch.autograd.grad(v[:, i].sum(), xv, retain_graph=True)
            div = div + h[:, i]
    return gt + div + (v.detach() * gx).sum(1)


# -------------------------------------------------------------------------------- grids
class Grid(NamedTuple):
    """A uniform grid of n^D cells on [-lim, lim]^D: 1-D cell centres, all centres (n^D, D), spacing h."""

    centres: np.ndarray
    points: torch.Tensor
    h: float
    dim: int

    @property
    def shape(self):
        return (len(self.centres),) * self.dim


def make_grid(lim: float, n: int, dim: int = 2) -> Grid:
    """Cell-centred grid of ``n`` cells per axis on [-lim, lim]^dim (points in 'ij' order, float64)."""
    lim = check_positive(lim, "lim")
    if not isinstance(n, int) or n < 3:
        raise ValueError(f"n: expected an int >= 3 cells per axis, got {n!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: expected a positive int, got {dim!r}")
    h = 2 * lim / n
    c = -lim + h * (np.arange(n) + 0.5)
    mesh = np.meshgrid(*([c] * dim), indexing="ij")
    pts = torch.from_numpy(np.stack([m.reshape(-1) for m in mesh], -1))
    return Grid(centres=c, points=pts, h=h, dim=dim)


def _density_on(p_fn, grid: Grid, t: float) -> np.ndarray:
    return p_fn(grid.points, t).reshape(grid.shape).detach().cpu().numpy()


def fokker_planck_residual_grid(p_fn: Callable, schedule: Schedule, t: float, grid: Grid, dt: float = 1e-3):
    """Finite-difference Fokker-Planck residual of a density on a grid (monograph §4.2).

    ``p_fn(points (M, D) float64, t float) -> (M,)`` densities. Central differences in space
    (second order in h) and time (second order in ``dt``) on the interior cells. Returns
    (max |residual|, max |d_t p|): their ratio -> 0 as h, dt -> 0 for the true p_t.
    """
    check_schedule(schedule)
    if not (dt < t < 1 - dt):
        raise ValueError(f"t: expected dt < t < 1 - dt for the central time difference, got t={t}, dt={dt}")
    h, D = grid.h, grid.dim
    p = _density_on(p_fn, grid, t)
    dpdt = (_density_on(p_fn, grid, t + dt) - _density_on(p_fn, grid, t - dt)) / (2 * dt)
    tt = torch.tensor(float(t), dtype=torch.float64)
    f, g2 = float(drift_coef(schedule, tt)), float(diffusion_sq(schedule, tt))
    inner = (slice(1, -1),) * D
    rhs = np.zeros_like(p[inner])
    for a in range(D):
        xa = grid.centres.reshape([-1 if i == a else 1 for i in range(D)])
        flux = xa * p  # f x_a p
        up = [slice(1, -1)] * D
        dn = [slice(1, -1)] * D
        up[a], dn[a] = slice(2, None), slice(0, -2)
        rhs += -f * (flux[tuple(up)] - flux[tuple(dn)]) / (2 * h)
        rhs += 0.5 * g2 * (p[tuple(up)] - 2 * p[inner] + p[tuple(dn)]) / h**2
    res = dpdt[inner] - rhs
    return float(np.abs(res).max()), float(np.abs(dpdt[inner]).max())


def solve_fokker_planck(p0: np.ndarray, schedule: Schedule, grid: Grid, t0: float, times: Sequence[float], *,
                        safety: float = 0.4) -> list:
    """Solve d p/dt = -div(f x p) + (g^2/2) Lap p on ``grid`` from p(t0) = ``p0`` (monograph §4.2).

    Conservative finite volumes: the flux through each face is f x_face p_face - (g^2/2) dp/dn
    (central), zero through the boundary, so total mass sum p h^D is conserved exactly; explicit
    Euler in time with the step chosen below the diffusive and advective stability limits
    (``safety`` times the limit). Returns the densities at each of the increasing ``times``.
    """
    check_schedule(schedule)
    p = np.array(p0, dtype=np.float64)
    if p.shape != grid.shape:
        raise ValueError(f"p0: expected shape {grid.shape} (the grid's), got {p.shape}")
    times = [float(s) for s in times]
    if not times or any(b <= a for a, b in zip([t0] + times[:-1], times)) or times[-1] > 1:
        raise ValueError(f"times: expected increasing times in ({t0}, 1], got {times}")
    h, D = grid.h, grid.dim
    lim = float(np.abs(grid.centres).max() + h / 2)
    faces = [(grid.centres[:-1] + h / 2).reshape([-1 if i == a else 1 for i in range(D)]) for a in range(D)]
    out, t = [], float(t0)
    for t_end in times:
        # step size from the largest coefficients on this stretch (coefficients on a fine lattice)
        probe = torch.linspace(t, t_end, 65, dtype=torch.float64)
        g2max = float(diffusion_sq(schedule, probe).abs().max())
        fmax = float(drift_coef(schedule, probe).abs().max())
        limit = min(h * h / (D * g2max) if g2max > 0 else math.inf, h / (fmax * lim) if fmax > 0 else math.inf)
        n_steps = max(1, math.ceil((t_end - t) / (safety * limit)))
        grid_t = torch.linspace(t, t_end, n_steps + 1, dtype=torch.float64)
        mids = 0.5 * (grid_t[1:] + grid_t[:-1])
        fs, g2s = drift_coef(schedule, mids).numpy(), diffusion_sq(schedule, mids).numpy()
        dts = (grid_t[1:] - grid_t[:-1]).numpy()
        for k in range(n_steps):
            dp = np.zeros_like(p)
            for a in range(D):
                pl = np.take(p, range(0, p.shape[a] - 1), axis=a)
                pr = np.take(p, range(1, p.shape[a]), axis=a)
                flux = fs[k] * faces[a] * 0.5 * (pl + pr) - 0.5 * g2s[k] * (pr - pl) / h
                pad = [(0, 0)] * D
                pad[a] = (1, 1)
                flux = np.pad(flux, pad)  # zero flux through the boundary
                dp -= np.diff(flux, axis=a) / h
            p = p + dts[k] * dp
        t = t_end
        out.append(p.copy())
    return out


def histogram_density(x: torch.Tensor, grid: Grid) -> np.ndarray:
    """Histogram of samples x (N, D) on the cells of ``grid``, normalised to a density (mass outside is lost)."""
    check_data(x, "x")
    if x.ndim != 2 or x.shape[1] != grid.dim:
        raise ValueError(f"x: expected shape (N, {grid.dim}), got {tuple(x.shape)}")
    lim = float(grid.centres[-1] + grid.h / 2)
    edges = [np.linspace(-lim, lim, len(grid.centres) + 1)] * grid.dim
    hist, _ = np.histogramdd(x.detach().cpu().double().numpy(), bins=edges)
    return hist / (len(x) * grid.h**grid.dim)


def l1_distance(p: np.ndarray, q: np.ndarray, grid: Grid) -> float:
    """Total-variation-type distance int |p - q| dx ~= sum |p - q| h^D between two grid densities (in [0, 2])."""
    p, q = np.asarray(p), np.asarray(q)
    if p.shape != q.shape:
        raise ValueError(f"q: expected shape {p.shape} (same as p), got {q.shape}")
    return float(np.abs(p - q).sum() * grid.h**grid.dim)
