"""Helpers for the distillation tests: students that can represent the exact answer, and Gaussian closed forms.

For Gaussian data N(mu, Sigma) the exact denoiser is affine in x_t,
E[x0 | x_t] = mu + alpha_t Sigma C_t^{-1} (x_t - alpha_t mu), C_t = alpha_t^2 Sigma + sigma_t^2 I,
so every DDIM step, the two-step teacher map and the optimal one-step student of progressive
distillation are affine too (monograph §10.3), and an affine student can reach the optimum exactly.
"""
from __future__ import annotations

import torch
from torch import nn

from diffedu.param import Prediction


class GridAffine(nn.Module):
    """x0 = W_i x + c_i at the grid time t_i nearest to t: a student that can represent the Gaussian optimum exactly."""

    def __init__(self, ts, dim=2):
        super().__init__()
        self.register_buffer("ts", torch.as_tensor(ts, dtype=torch.float64).clone())
        self.W = nn.Parameter(torch.eye(dim, dtype=torch.float64).repeat(len(ts), 1, 1))
        self.c = nn.Parameter(torch.zeros(len(ts), dim, dtype=torch.float64))

    def forward(self, x, t, cond=None):
        i = (t.double()[:, None] - self.ts[None]).abs().argmin(1)
        return torch.einsum("bij,bj->bi", self.W[i], x) + self.c[i]


class FixedX0(nn.Module):
    """A model whose clean-data prediction is a given tensor x0 (eps follows from x_t): one DDIM step with it is
    alpha_s x0 + (sigma_s / sigma_t)(x_t - alpha_t x0)."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0, self.schedule = x0, schedule

    def forward(self, x_t, t, cond=None):
        a = self.schedule.alpha(t).reshape(-1, *([1] * (x_t.ndim - 1)))
        s = self.schedule.sigma(t).reshape(-1, *([1] * (x_t.ndim - 1)))
        return Prediction(x0=self.x0, eps=(x_t - a * self.x0) / s, x_t=x_t, t=t, schedule=self.schedule)


def gaussian_denoiser_affine(mu, Sigma, schedule, t):
    """(P, q) with E[x0 | x_t = x] = P x + q for N(mu, Sigma) data at scalar time t."""
    tt = torch.tensor([float(t)], dtype=torch.float64)
    a, s = float(schedule.alpha(tt)), float(schedule.sigma(tt))
    C = a**2 * Sigma + s**2 * torch.eye(len(mu), dtype=torch.float64)
    P = a * Sigma @ torch.linalg.inv(C)
    return P, mu - a * P @ mu


def ddim_affine(mu, Sigma, schedule, t, s):
    """(A, b) with DDIM(t -> s)(x) = A x + b under the exact Gaussian teacher."""
    tt = torch.tensor([float(t), float(s)], dtype=torch.float64)
    (a_t, a_s), (s_t, s_s) = schedule.alpha(tt).tolist(), schedule.sigma(tt).tolist()
    P, q = gaussian_denoiser_affine(mu, Sigma, schedule, t)
    eye = torch.eye(len(mu), dtype=torch.float64)
    k = a_s - s_s * a_t / s_t
    return (s_s / s_t) * eye + k * P, k * q


def gaussian_kl(m1, S1, m2, S2):
    """KL(N(m1, S1) || N(m2, S2)), differentiable."""
    d = len(m1)
    S2i = torch.linalg.inv(S2)
    diff = m2 - m1
    return 0.5 * (torch.trace(S2i @ S1) + diff @ S2i @ diff - d + torch.logdet(S2) - torch.logdet(S1))
