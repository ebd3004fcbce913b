"""Normalising flows: coupling layers and continuous normalising flows (monograph §5.1-5.2).

A normalising flow is an invertible map z = F(x) onto a standard normal latent; by the change
of variables

    log p(x) = log N(F(x); 0, I) + log |det dF/dx|                                  (monograph §5.1)

so it is trained by maximum likelihood. *Coupling layers* (RealNVP) keep the Jacobian
triangular and the log-determinant a sum. A *continuous* normalising flow (neural ODE) makes F
the time-1 map of dx/dt = v_theta(x, t); its log-determinant is the integral of div v
(instantaneous change of variables, monograph §5.2) — exact, but each likelihood evaluation is
an ODE solve with a divergence at every step, which is the cost flow matching avoids (§5.3).

Direction: like every diffusion in diffedu, the flow runs from data (t = 0) to noise (t = 1).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from diffedu._checks import check_data
from diffedu.autodiff import hutchinson_trace, jacobian_trace
from diffedu.gaussian import gaussian_prior_log_prob

__all__ = ["AffineCoupling", "CouplingFlow", "CNFResult", "cnf_log_prob", "cnf_sample"]


class AffineCoupling(nn.Module):
    """RealNVP affine coupling: y = m x + (1 - m)(x exp(s(m x)) + b(m x)) (monograph §5.1).

    ``mask`` m (a 0/1 vector of length D) marks the untouched coordinates; s and b come from an
    MLP of the masked input, s bounded by tanh. log |det dy/dx| = sum over the changed coordinates of s.
    The last layer starts at zero, so every coupling starts as the identity.
    """

    def __init__(self, mask: torch.Tensor, hidden: int = 64):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.get_default_dtype())
        if mask.ndim != 1 or not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask: expected a 1-D 0/1 vector")
        self.register_buffer("mask", mask)
        D = mask.numel()
        self.net = nn.Sequential(nn.Linear(D, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * D))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _sb(self, xm):
        s, b = self.net(xm).chunk(2, dim=1)
        keep = 1 - self.mask
        return torch.tanh(s) * keep, b * keep

    def forward(self, x: torch.Tensor):
        """(y, log |det dy/dx|) of shape ((B, D), (B,))."""
        xm = x * self.mask
        s, b = self._sb(xm)
        y = xm + (1 - self.mask) * (x * torch.exp(s) + b)
        return y, s.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """x with forward(x)[0] = y (the masked part passes through, so s, b are known)."""
        ym = y * self.mask
        s, b = self._sb(ym)
        return ym + (1 - self.mask) * (y - b) * torch.exp(-s)


class CouplingFlow(nn.Module):
    """A stack of affine couplings with alternating masks: x (data) -> z ~ N(0, I) (monograph §5.1).

    ``log_prob(x)`` is the exact log-density; ``sample(n)`` inverts the stack on N(0, I) draws.
    Works for any flat dimension D >= 2 (reshape images to (B, D) first).
    """

    def __init__(self, dim: int = 2, num_layers: int = 8, hidden: int = 64):
        super().__init__()
        if not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim: expected an int >= 2 (a coupling needs two groups of coordinates), got {dim!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected a positive int, got {num_layers!r}")
        self.dim = dim
        base = (torch.arange(dim) % 2).float()
        self.layers = nn.ModuleList([AffineCoupling(base if k % 2 == 0 else 1 - base, hidden) for k in range(num_layers)])

    def _check(self, x, name):
        check_data(x, name)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name}: expected shape (B, {self.dim}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor):
        """(z, sum of log-determinants) for data x of shape (B, D)."""
        self._check(x, "x")
        logdet = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(F(x); 0, I) + log |det dF/dx| (monograph §5.1), shape (B,)."""
        z, logdet = self(x)
        return gaussian_prior_log_prob(z) + logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """x = F^{-1}(z)."""
        self._check(z, "z")
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n samples x = F^{-1}(z), z ~ N(0, I)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        p = next(self.parameters())
        gdev = generator.device if generator is not None else p.device
        z = torch.randn(n, self.dim, generator=generator, device=gdev, dtype=p.dtype).to(p.device)
        return self.inverse(z)


class CNFResult(NamedTuple):
    """log p(x) (B,), the latent z = x_1 and the number of velocity evaluations (with their divergences)."""

    log_prob: torch.Tensor
    z: torch.Tensor
    nfe: int


def _vel(net, x, t):
    return net(x, torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device))


def cnf_log_prob(net: nn.Module, x: torch.Tensor, *, n_steps: int = 16, divergence: str = "exact",
                 generator: Optional[torch.Generator] = None) -> CNFResult:
    """Differentiable log-likelihood of a continuous normalising flow dx/dt = net(x, t) (monograph §5.2).

    Integrates the augmented ODE d/dt [x, ell] = [v, div v] from the data (t = 0) to the latent
    (t = 1) with ``n_steps`` fixed RK4 steps, keeping the autograd graph so that
    ``-cnf_log_prob(net, x).log_prob.mean()`` can be minimised directly (maximum likelihood);
    log p(x) = log N(x_1; 0, I) + ell_1. ``divergence``: ``"exact"`` (D passes, low dimension) or
    ``"hutchinson"`` (one Gaussian probe per solve). Costs 4 ``n_steps`` velocity+divergence evaluations.
    """
    check_data(x, "x")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence: expected 'exact' or 'hutchinson', got {divergence!r}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive int, got {n_steps!r}")
    probe = None
    if divergence == "hutchinson":
        gdev = generator.device if generator is not None else x.device
        probe = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)
    train = torch.is_grad_enabled()

    def f(z, t):
        fn = lambda y: _vel(net, y, t)  # noqa: E731
        if probe is None:
            return jacobian_trace(fn, z, create_graph=train)
        return hutchinson_trace(fn, z, probe=probe, create_graph=train)

    h = 1.0 / n_steps
    z, ell = x, torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for k in range(n_steps):
        t = k * h
        v1, d1 = f(z, t)
        v2, d2 = f(z + 0.5 * h * v1, t + 0.5 * h)
        v3, d3 = f(z + 0.5 * h * v2, t + 0.5 * h)
        v4, d4 = f(z + h * v3, t + h)
        z = z + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
        ell = ell + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return CNFResult(log_prob=gaussian_prior_log_prob(z) + ell, z=z, nfe=4 * n_steps)


@torch.no_grad()
def cnf_sample(net: nn.Module, z: torch.Tensor, *, n_steps: int = 16) -> torch.Tensor:
    """Samples of a CNF: integrate dx/dt = net(x, t) backwards from z ~ N(0, I) at t = 1 to t = 0 with RK4."""
    check_data(z, "z")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps: expected a positive int, got {n_steps!r}")
    h = -1.0 / n_steps
    x = z
    for k in range(n_steps):
        t = 1.0 + k * h
        v1 = _vel(net, x, t)
        v2 = _vel(net, x + 0.5 * h * v1, t + 0.5 * h)
        v3 = _vel(net, x + 0.5 * h * v2, t + 0.5 * h)
        v4 = _vel(net, x + h * v3, max(t + h, 0.0))
        x = x + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
    return x

