"""Traces of Jacobians, exactly and by Hutchinson's estimator: one copy each (monograph §3.2, §4.5, §5.2).

Three places in the book need tr(d v / d x) for a vector field v = fn(x): implicit score
matching (the trace of the score's Jacobian, monograph §3.2), SURE (the divergence of a
denoiser, §3.3) and likelihood by the instantaneous change of variables
d log p_t(x_t) / dt = -div v (§4.5, §5.2). All of them call the functions here:

* :func:`jacobian_trace` — exact, one backward pass per data dimension D (the 2D toys);
* :func:`hutchinson_trace` — unbiased, E_z[z^T J z] = tr J whenever E[z z^T] = I, one
  vector-Jacobian product per probe whatever D (images);
* :func:`quadratic_form` — z^T J z for a field already evaluated (what sliced score matching
  needs, and what Hutchinson averages);
* :func:`random_probe` — Rademacher (+-1, the lower-variance choice) or Gaussian probes.

Every function returns ``(value, trace)``: v = fn(x) shaped like x and the per-example trace
of shape (B,). ``create_graph=True`` keeps the graph so the trace can be differentiated again
(training losses); the default ``False`` is for evaluation (likelihood, SURE). Each assumes that
examples do not interact inside ``fn`` (true for every network of the package).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from diffedu._checks import check_data, check_generator, check_kind, check_like

__all__ = ["jacobian_trace", "hutchinson_trace", "quadratic_form", "random_probe", "PROBES"]

PROBES = ("rademacher", "gaussian")


def _flat(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1)


def _evaluate(fn, x: torch.Tensor):
    """x with requires_grad, and fn(x) checked to be shaped like x."""
    check_data(x, "x")
    if not callable(fn):
        raise TypeError(f"fn: expected a callable fn(x) -> tensor shaped like x, got {type(fn).__name__}")
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    out = fn(x)
    check_like(out, x, "fn(x)")
    return x, out


def quadratic_form(out: torch.Tensor, x: torch.Tensor, probe: torch.Tensor, *,
                   create_graph: bool = False) -> torch.Tensor:
    """z^T (d out / d x) z per example, shape (B,), for ``out = fn(x)`` already computed (monograph §3.2).

    One vector-Jacobian product: grad_x (out . z) = J^T z, then its inner product with z. ``x``
    must require grad and ``out`` must depend on it; ``probe`` z is shaped like x.
    """
    check_like(probe, x, "probe")
    (g,) = torch.autograd.grad((out * probe).sum(), x, create_graph=create_graph, retain_graph=True)
    return _flat(g * probe).sum(1)


def random_probe(x: torch.Tensor, kind: str = "rademacher", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A probe z shaped like x with E[z z^T] = I: Rademacher (+-1) or standard Gaussian (monograph §4.5)."""
    check_data(x, "x")
    check_kind(kind, PROBES, "kind")
    check_generator(generator)
    gdev = generator.device if generator is not None else x.device
    if kind == "rademacher":
        z = torch.randint(0, 2, x.shape, generator=generator, device=gdev).to(x.dtype) * 2 - 1
    else:
        z = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype)
    return z.to(x.device)


def jacobian_trace(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                   create_graph: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(v, tr(dv/dx)) with the exact per-example divergence sum_i d v_i / d x_i of v = fn(x) (monograph §3.2, §5.2).

    One backward pass per data dimension D: use it in low dimension. Returns v shaped like x
    (detached unless ``create_graph``) and the trace of shape (B,).
    """
    with torch.enable_grad():
        x, out = _evaluate(fn, x)
        flat = _flat(out)
        tr = torch.zeros(x.shape[0], device=x.device, dtype=out.dtype)
        for i in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
            tr = tr + _flat(g)[:, i]
    return (out if create_graph else out.detach()), tr


def hutchinson_trace(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                     probe: Optional[torch.Tensor] = None, n_probes: int = 1, kind: str = "rademacher",
                     generator: Optional[torch.Generator] = None,
                     create_graph: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(v, mean_k z_k^T (dv/dx) z_k): Hutchinson's unbiased trace estimate (Hutchinson 1989; monograph §4.5).

    With a given ``probe`` (shaped like x) it is used alone — the likelihood ODE keeps one probe
    per example for the whole solve. Otherwise ``n_probes`` probes of ``kind`` (``"rademacher"``
    or ``"gaussian"``) are drawn from ``generator`` and averaged; the estimator's variance per
    probe is 2 sum_{i != j} J_ij^2 for Rademacher and 2 ||J||_F^2 for Gaussian probes (symmetric J).
    """
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes: expected a positive int, got {n_probes!r}")
    check_kind(kind, PROBES, "kind")
    check_generator(generator)
    with torch.enable_grad():
        x, out = _evaluate(fn, x)
        if probe is not None:
            est = quadratic_form(out, x, probe, create_graph=create_graph)
        else:
            est = sum(quadratic_form(out, x, random_probe(x, kind, generator), create_graph=create_graph)
                      for _ in range(n_probes)) / n_probes
    return (out if create_graph else out.detach()), est
