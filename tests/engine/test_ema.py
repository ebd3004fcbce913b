"""diffedu.engine.EMA: the closed form of the average, the warm-up schedule, buffers, state, errors."""
import pytest
import torch
from torch import nn

from diffedu import engine
from diffedu.engine.ema import EMA


def params_of(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_ema_is_exported():
    assert engine.EMA is EMA


def test_ema_closed_form_without_warmup():
    model = nn.Linear(3, 2)
    theta0 = params_of(model).clone()
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    theta = params_of(model)
    for k in range(1, 6):
        ema.update(model)
        # constant target: theta_ema_k = theta + decay^k (theta_0 - theta)
        torch.testing.assert_close(params_of(ema.model), theta + 0.9 ** k * (theta0 - theta))
    assert ema.num_updates == 5


def test_ema_warmup_schedule():
    ema = EMA(nn.Linear(2, 2), decay=0.999)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(nn.Linear(2, 2))
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.num_updates = 10 ** 6
    assert ema.current_decay() == 0.999


def test_ema_decay_zero_copies_the_weights():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0, warmup=False)
    with torch.no_grad():
        model.weight.mul_(-2.0)
    ema.update(model)
    assert torch.equal(params_of(ema.model), params_of(model))


def test_ema_copy_to_state_dict_and_buffers():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.5, warmup=False)
    model.train()
    model(torch.randn(8, 2))  # changes BatchNorm running statistics (buffers)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    ema.update(model)
    torch.testing.assert_close(ema.model[1].running_mean, model[1].running_mean)  # buffers are copied
    fresh = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    assert ema.copy_to(fresh) is fresh
    torch.testing.assert_close(params_of(fresh), params_of(ema.model))
    other = EMA(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4)), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1 and other.warmup is False
    torch.testing.assert_close(params_of(other.model), params_of(ema.model))
    assert all(not p.requires_grad for p in ema.model.parameters())
    assert not ema.model.training


def test_ema_to_moves_the_average_and_keeps_updating():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5, warmup=False).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ema.model.parameters())
    model.double()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert ema.num_updates == 1
    torch.testing.assert_close(params_of(ema.model), params_of(model) - 0.5 * torch.cat([torch.ones(4), torch.zeros(2)]).double())


def test_ema_bad_input():
    for decay, error in ((1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (True, TypeError),
                         ("0.9", TypeError)):
        with pytest.raises(error, match="decay"):
            EMA(nn.Linear(2, 2), decay=decay)
    with pytest.raises(TypeError, match="model"):
        EMA("net")
    ema = EMA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="model"):
        ema.update(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="model: parameter 0 has shape"):
        ema.update(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="model"):
        ema.update("net")
    with pytest.raises(TypeError, match="model"):
        ema.copy_to(None)
    with pytest.raises(TypeError, match="state"):
        ema.load_state_dict({"decay": 0.5})
