"""Minibatch couplings for flow matching and the OT-CFM / SB-CFM losses (monograph §7.5)."""
from __future__ import annotations

import pytest
import torch

from diffedu import nets, schedules
from diffedu import transport as T
from diffedu.param import Denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * 0.5 + torch.tensor([3.0, 0.0]), torch.randn(n, 2, generator=g)


def test_ot_coupling_lowers_the_pairing_cost_and_entropic_interpolates():
    x0, x1 = _batch()
    cost = lambda a, b: (a - b).pow(2).sum(1).mean().item()  # noqa: E731
    ind = cost(*T.couple(x0, x1, "independent"))
    ot_ = cost(*T.couple(x0, x1, "ot"))
    g = torch.Generator().manual_seed(1)
    small = cost(*T.couple(x0, x1, "entropic", eps=0.3, generator=g))
    large = cost(*T.couple(x0, x1, "entropic", eps=100.0, generator=g))
    assert ot_ < small < large and ot_ < ind
    assert abs(small - ot_) < 0.2 * (ind - ot_)
    a, b = T.couple(x0, x1, "ot")
    assert torch.equal(a, x0) and torch.equal(torch.sort(b[:, 0]).values, torch.sort(x1[:, 0]).values)  # a permutation
    a, b = T.couple(x0, x1, "sb", sigma=0.5, generator=g)
    assert a.shape == x0.shape and b.shape == x1.shape


def test_entropic_pairs_are_distributed_as_the_plan():
    x0, x1 = _batch(8, seed=2)
    plan = T.entropic_ot(x0, x1, 1.0).plan
    g = torch.Generator().manual_seed(3)
    counts = torch.zeros(8, 8, dtype=torch.float64)
    index = {tuple(v.tolist()): i for i, v in enumerate(x0)}, {tuple(v.tolist()): j for j, v in enumerate(x1)}
    for _ in range(500):
        a, b = T.entropic_pairs(x0, x1, 1.0, generator=g)
        for u, v in zip(a, b):
            counts[index[0][tuple(u.tolist())], index[1][tuple(v.tolist())]] += 1
    assert (counts / counts.sum() - plan).abs().max() < 0.01


def test_losses_run_reduce_and_train_the_right_target():
    rf = schedules.RectifiedFlow()
    torch.manual_seed(0)
    model = Denoiser(nets.MLP(2, 32, 2), rf, "velocity")
    x0, x1 = _batch(32, seed=4)
    g = torch.Generator().manual_seed(5)
    for kind in ("independent", "ot"):
        loss = T.ot_cfm_loss(model, x0, coupling=kind, generator=g)
        assert loss.shape == (32,) and torch.isfinite(loss).all()
    loss = T.ot_cfm_loss(model, x0, coupling="entropic", eps=0.5, generator=g)
    assert loss.shape == (32,)
    # at t = 1/2 the SB-CFM target is x1 - x0: a null model's loss is the SB plan's transport cost / D
    x0, x1 = _batch(512, seed=6)
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    loss = T.sb_cfm_loss(zero, x0, 1.0, t=torch.full((512,), 0.5), x1=x1, generator=torch.Generator().manual_seed(7))
    plan_cost = float(T.entropic_ot(x0, x1, 2.0).cost) / 2
    assert abs(loss.mean().item() - plan_cost) < 0.1 * plan_cost
    assert torch.isfinite(T.sb_cfm_loss(model, x0[:64], 0.5, generator=g)).all()


@pytest.mark.parametrize("call, words", [
    (lambda x0, x1: T.couple(x0, x1, "sinkhorn"), "kind: unknown value"),
    (lambda x0, x1: T.couple(x0, x1, "entropic"), "eps"),
    (lambda x0, x1: T.couple(x0, x1, "sb"), "sigma"),
    (lambda x0, x1: T.couple(x0, x1[:5], "ot"), "x1: expected shape"),
    (lambda x0, x1: T.entropic_pairs(x0, x1, -1.0), "eps"),
    (lambda x0, x1: T.ot_cfm_loss(None, x0, coupling="sb"), "coupling: for 'sb' use sb_cfm_loss"),
    (lambda x0, x1: T.sb_cfm_loss(None, x0, 0.0), "sigma"),
    (lambda x0, x1: T.sb_cfm_loss(None, x0, 1.0, t_min=0.6), "t_min"),
])
def test_bad_inputs_name_the_argument(call, words):
    x0, x1 = _batch(8)
    with pytest.raises((ValueError, TypeError), match=words):
        call(x0, x1)
