"""UniPC (unified predictor-corrector) and iPNDM: multistep solvers that are strong at 5-10 evaluations (monograph §9.4-9.5).

**UniPC** (Zhao et al. 2023) works on the data form (9.4) of the PF-ODE,
x_s = (sigma_s/sigma_t) x_t + sigma_s int e^{lambda} x0 d lambda. With h = lambda_s - lambda_t,
the last K stored predictions x0_k at lambda_t + r_k h (r_k < 0) and D_k = (x0_k - x0_t) / r_k,

    predictor UniP-(K+1):  x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) x0_t - alpha_s B(h) sum_k a_k D_k
    corrector UniC:        the same with one more node, r = 1, D = x0(x_s, s) - x0_t, weights c_k

where the weights solve the small Vandermonde system sum_k a_k r_k^(m-1) = m! phi_{m+1}(-h) (-h) / B(h)
(phi the exponential phi-functions) and B(h) = O(h) is free: ``variant="bh1"`` is B(h) = h and
``"bh2"`` B(h) = e^h - 1, both evaluated at the data form's step -h (so B = -h or e^{-h} - 1). The corrector
reuses the model evaluation at the *predicted* point for the next step, so it adds no evaluation and
raises the order by one: UniPC with predictor order p converges with order p + 1.

**UniC after any solver** (:func:`sample_unic`): the corrector only needs x0 at the start, at the
predicted point and at earlier grid points, so it can follow any one-step predictor -- DDIM,
DPM-Solver-2/3, Heun -- which is called on each step's two-point grid; the predictor's first
evaluation is served from the corrector's (no extra cost).

**iPNDM** (Zhang & Chen 2023, the "improved pseudo-numerical" method): classical Adams-Bashforth
with the fixed coefficients of a uniform step (orders 1-4, lower while warming up) on the DDIM
ODE (9.2), d(x/alpha)/d sigma_bar = eps: no exponential weights, no step-size ratios.

The last step onto sigma = 0 (infinitely long in lambda) is, as for every multistep solver of
:mod:`diffedu.samplers.ode`, an Adams-Bashforth step in sigma_bar of the solver's order on the
stored eps (monograph §9.5).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from diffedu.param import Prediction

from .ode import Times, _ab_sigma_bar_step, _check_alpha_start, _check_order, _lin, _predict, _setup

__all__ = ["unipc_weights", "sample_unipc", "sample_unic", "sample_ipndm"]

_VARIANTS = ("bh1", "bh2")


def unipc_weights(rs, h: float, variant: str = "bh2"):
    """(B(h), the K weights on D_k) of UniPC's update for nodes at relative positions ``rs`` (monograph §9.4).

    Solves sum_k w_k r_k^(m-1) = m! phi_{m+1} / B(h) (m = 1..K) in the data form, hh = -h:
    phi_2 = (e^{hh} - 1)/hh - 1, phi_{m+1} = phi_m / hh - 1/m!. ``rs`` are the nodes' offsets in
    units of the step, r_k = (lambda_k - lambda_t) / h (negative for earlier points, 1 for the
    corrector's new point). With one node the weight is 1/2, as in the paper (it matches the
    exact solution to O(h), which keeps the order); with more nodes the square system is solved,
    and B(h) w then does not depend on B. Pure float64 arithmetic: a few microseconds per step.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"variant: expected 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1), got {variant!r}")
    hh = -h
    bh = hh if variant == "bh1" else math.expm1(hh)
    K = len(rs)
    if K == 0:
        return bh, []
    phi, fact, b = math.expm1(hh) / hh - 1, 1.0, []
    for m in range(1, K + 1):
        b.append(phi * fact / bh)
        fact *= m + 1
        phi = phi / hh - 1 / fact
    R = np.array([[r ** (m - 1) for r in rs] for m in range(1, K + 1)], dtype=np.float64)
    if K == 1:  # the paper's choice a_1 = 1/2 (= b_1 + O(h)); this is where B(h) matters, a solved system cancels it
        return bh, [0.5]
    return bh, np.linalg.solve(R, np.array(b)).tolist()


def _unipc_update(g, i, x, hist, rs_new, variant):
    """x at grid point i+1 from x at i and the stored predictions: hist = [(lambda_j, x0_j)], newest (the start) first;
    ``rs_new`` is None (predictor) or the corrector's new x0 at the end point."""
    lt, h = g.lam[i], g.lam[i + 1] - g.lam[i]
    x0_t = hist[0][1]
    nodes = [((lj - lt) / h, x0j) for lj, x0j in hist[1:]]
    if rs_new is not None:
        nodes.append((1.0, rs_new))
    bh, w = unipc_weights([r for r, _ in nodes], h, variant)
    a_s = g.alpha[i + 1]
    c0, terms = -a_s * math.expm1(-h), []  # (sigma_s/sigma_t) x + alpha_s (1 - e^{-h}) x0_t - alpha_s B sum w_k (x0_k - x0_t)/r_k
    for wk, (r, x0k) in zip(w, nodes):
        c = -a_s * bh * wk / r
        c0 -= c
        terms += [c, x0k]
    return _lin(g.sigma[i + 1] / g.sigma[i], x, c0, x0_t, *terms)


def _check_variant(variant):
    if variant not in _VARIANTS:
        raise ValueError(f"variant: expected 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h - 1), got {variant!r}")


def sample_unipc(model, x: torch.Tensor, ts: Times, *, order: int = 2, variant: str = "bh2", corrector: bool = True,
                 cond=None, callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """UniPC (Zhao et al. 2023; monograph §9.4): multistep predictor UniP-``order`` and corrector UniC in the data form (9.4).

    ``order`` (1-3) is the predictor's order (the last ``order`` stored x0, fewer while warming
    up); with ``corrector=True`` every step but the last is corrected with the model evaluation
    the next step needs anyway, so the method converges with order ``order + 1`` at one
    evaluation per step. ``variant``: "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1). The step onto
    sigma = 0 is an Adams-Bashforth step in sigma_bar of order ``order + corrector`` on the stored eps.
    """
    _check_order(order, (1, 2, 3))
    _check_variant(variant)
    if not isinstance(corrector, bool):
        raise TypeError(f"corrector: expected True or False, got {corrector!r}")
    g, loop = _setup(model, x, ts, callback, progress, f"UniPC-{order} ({variant})")
    _check_alpha_start(g)
    final_order = order + int(corrector)
    p = _predict(model, x, g.t[0], cond)
    hist, eps_hist = [], []
    for i in loop:
        hist = [(g.lam[i], p.x0)] + hist[: order - 1]
        eps_hist = [(g.sigma_bar[i], p.eps)] + eps_hist[: final_order - 1]
        p_i = p
        if g.sigma[i + 1] == 0:
            x = loop.report(i, g.t[i + 1], _ab_sigma_bar_step(x, g, i, eps_hist, final_order), p_i)
            continue
        x_pred = _unipc_update(g, i, x, hist, None, variant)
        if i + 1 < g.n_steps:
            p = _predict(model, x_pred, g.t[i + 1], cond)  # at the predicted point; reused by the next step
            if corrector:
                x_pred = _unipc_update(g, i, x, hist, p.x0, variant)
        x = loop.report(i, g.t[i + 1], x_pred, p_i)
    return x


class _Served:
    """A model whose first call returns the corrector's stored x0 at the corrected state (eps made consistent with it), then calls the model."""

    __slots__ = ("model", "schedule", "stored")

    def __init__(self, model, stored):
        self.model, self.schedule, self.stored = model, model.schedule, stored

    def __call__(self, x, t, cond=None):
        if self.stored is None:
            return self.model(x, t, cond)
        if isinstance(self.stored, Prediction):  # the model's own prediction at this very x
            out, self.stored = self.stored, None
            return out
        (a, s), x0, self.stored = self.stored[0], self.stored[1], None
        # UniPC keeps the model's x0 from the predicted point as the value at the corrected x: eps = (x - a x0) / s
        return Prediction(x0=x0, eps=_lin(1 / s, x, -a / s, x0), x_t=x, t=t, schedule=self.schedule)


def sample_unic(model, x: torch.Tensor, ts: Times, predictor: Callable, *, order: int = 2, variant: str = "bh2",
                predictor_kwargs: Optional[dict] = None, cond=None, callback: Optional[Callable] = None,
                progress: bool = False) -> torch.Tensor:
    """Any one-step solver ``predictor(model, x, ts, **predictor_kwargs)`` followed by the corrector UniC (Zhao et al. 2023; monograph §9.4).

    On every step the predictor is called on the two-point grid (t_i, t_{i+1}) from the corrected
    state; its first evaluation is the one the corrector made at the end of the previous step
    (served to it, not recomputed). Then x0 is evaluated at the predicted point and UniC of
    ``order`` (the new point and ``order - 1`` earlier grid points) corrects it; a predictor of
    order p gains one order (up to ``order + 1``) at no extra evaluation. Multistep predictors
    see one step at a time (DPM-Solver++(2M) degenerates to DDIM): use one-step ones (DDIM,
    DPM-Solver-2/3, DPM-Solver++(2S), Heun). The last step is the predictor's alone.
    """
    _check_order(order, (1, 2, 3))
    _check_variant(variant)
    if not callable(predictor):
        raise TypeError(f"predictor: expected a sampler predictor(model, x, ts, ...), got {type(predictor).__name__}")
    kw = dict(predictor_kwargs or {})
    g, loop = _setup(model, x, ts, callback, progress, "UniC")
    _check_alpha_start(g)
    p = _predict(model, x, g.t[0], cond)
    hist = []
    for i in loop:
        hist = [(g.lam[i], p.x0)] + hist[: order - 1]
        p_i = p
        served = ((g.alpha[i], g.sigma[i]), p_i.x0) if i > 0 else p_i
        x_pred = predictor(_Served(model, served), x, g.ts[i:i + 2], cond=cond, **kw)
        if i + 1 < g.n_steps:
            p = _predict(model, x_pred, g.t[i + 1], cond)
            x_pred = _unipc_update(g, i, x, hist, p.x0, variant)
        x = loop.report(i, g.t[i + 1], x_pred, p_i)
    return x


#: Adams-Bashforth coefficients of a uniform step, newest first: iPNDM's fixed weights (orders 1-4)
_AB = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def sample_ipndm(model, x: torch.Tensor, ts: Times, *, order: int = 4, cond=None,
                 callback: Optional[Callable] = None, progress: bool = False) -> torch.Tensor:
    """iPNDM (Zhang & Chen 2023; Liu et al. 2022's PNDM without its Runge-Kutta warm-up; monograph §9.4).

    x_bar_{i+1} = x_bar_i + (sigma_bar_{i+1} - sigma_bar_i) sum_j c_j eps_{i-j}, x_bar = x / alpha:
    Adams-Bashforth of the DDIM ODE (9.2) with the *fixed* weights c of a uniform step (order
    ``order`` <= 4, lower on the first steps). Order ``order`` on steps uniform in sigma_bar; on a
    non-uniform grid the fixed weights cost order (they ignore the step ratios), which at 5-10
    steps is often a price worth paying for their stability. One evaluation per step.
    """
    _check_order(order, (1, 2, 3, 4))
    g, loop = _setup(model, x, ts, callback, progress, f"iPNDM-{order}")
    _check_alpha_start(g)
    eps = []
    for i in loop:
        p = _predict(model, x, g.t[i], cond)
        eps = [p.eps] + eps[: order - 1]
        c = _AB[len(eps) - 1]
        k = g.alpha[i + 1] * (g.sigma_bar[i + 1] - g.sigma_bar[i])
        terms = [v for cj, e in zip(c, eps) for v in (k * cj, e)]
        x = loop.report(i, g.t[i + 1], _lin(g.alpha[i + 1] / g.alpha[i], x, *terms), p)
    return x
