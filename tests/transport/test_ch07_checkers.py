"""The Chapter 7 exercise checkers pass on their references and diagnose typical mistakes (monograph §7.2-§7.3)."""
from __future__ import annotations

import pytest
import torch

from diffedu.exercises import ch07
from diffedu.exercises.core import ExerciseFailed


def test_typical_mistakes():
    # Sinkhorn without the weights b, or in the linear domain (underflows for small eps)
    with pytest.raises(ExerciseFailed):
        ch07.check_sinkhorn_f_update(lambda g, C, log_b, eps: -eps * torch.logsumexp((g[None] - C) / eps, 1))
    with pytest.raises(ExerciseFailed):
        ch07.check_sinkhorn_f_update(lambda g, C, log_b, eps: -eps * torch.log((log_b.exp()[None] * torch.exp((g[None] - C) / eps)).sum(1)))
    # Bures without the factor 2 in front of the cross term
    def no_two(A, B):
        w, V = torch.linalg.eigh(A)
        rA = (V * w.sqrt()) @ V.T
        return torch.trace(A) + torch.trace(B) - torch.linalg.eigvalsh(rA @ B @ rA).sqrt().sum()
    with pytest.raises(ExerciseFailed):
        ch07.check_bures_distance_sq(no_two)
    # the SB velocity with 1/(t(1-t)) instead of 1/(2t(1-t)): wrong for t != 1/2 only
    def wrong(x, x0, x1, t, sigma):
        tt = t.reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - 2 * tt) / (tt * (1 - tt)) * (x - (1 - tt) * x0 - tt * x1) + x1 - x0
    with pytest.raises(ExerciseFailed, match="t=0.1, 0.8"):
        ch07.check_sb_cfm_velocity(wrong)
