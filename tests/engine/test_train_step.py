"""diffedu.engine.train_step and TrainState: one step against a hand computation, and its seams.

The seams are what a distributed / mixed-precision run will plug into without touching the
mathematics: ``autocast`` (bf16 on the CPU here), a ``torch.amp.GradScaler`` in the state, and
``forward_model`` (the module the loss calls, e.g. a DDP wrapper) kept apart from ``model``.
"""
import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from diffedu import engine
from diffedu.engine.checkpoint import load_state, save_state
from diffedu.engine.ema import EMA
from diffedu.engine.state import LossHistory, TrainState
from diffedu.engine.step import train_step

W0, B0 = np.array([0.5, -1.0]), 0.25
X = np.array([[1.0, 2.0], [-0.5, 0.3], [0.2, -1.5], [2.0, 0.0]])
Y = np.array([0.7, -0.2, 1.1, 0.4])


def linear(dtype=torch.float64):
    """y = w . x + b with w = W0, b = B0."""
    model = nn.Linear(2, 1).to(dtype)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W0)[None])
        model.bias.fill_(B0)
    return model


def batch(dtype=torch.float64):
    return torch.tensor(X, dtype=dtype), torch.tensor(Y, dtype=dtype)[:, None]


def mse(model, b, generator):
    x, y = b
    return (model(x) - y).square().mean(dim=1)  # per example, (B,)


def loss_and_grad(w, b):
    """L = mean_i (w . x_i + b - y_i)^2 and its gradient (dL/dw, dL/db), by hand."""
    r = X @ w + b - Y
    return np.mean(r ** 2), np.concatenate([2 * (r[:, None] * X).mean(0), [2 * r.mean()]])


def flat(model):
    return torch.cat([model.weight.detach().flatten(), model.bias.detach()]).numpy()


def state_for(model, opt, **kw):
    return TrainState(model=model, optimizer=opt, **kw)


def test_sgd_momentum_steps_match_the_hand_computation():
    model = linear()
    state = state_for(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    theta, buf = np.concatenate([W0, [B0]]), None
    for k in range(1, 3):
        value, g = loss_and_grad(theta[:2], theta[2])
        loss = train_step(state, mse, batch())
        buf = g if buf is None else 0.9 * buf + g
        theta = theta - 0.1 * buf
        np.testing.assert_allclose(loss.item(), value, rtol=1e-12)
        np.testing.assert_allclose(flat(model), theta, rtol=1e-12, atol=1e-14)
        assert state.step == k and len(state.losses) == k
    assert not loss.requires_grad and loss.ndim == 0


def test_adam_steps_match_the_hand_computation():
    model = linear()
    state = state_for(model, torch.optim.Adam(model.parameters(), lr=0.01))
    theta = np.concatenate([W0, [B0]])
    m = v = np.zeros(3)
    values = []
    for t in range(1, 4):
        value, g = loss_and_grad(theta[:2], theta[2])
        values.append(value)
        train_step(state, mse, batch())
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g ** 2
        m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.999 ** t)
        theta = theta - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
        np.testing.assert_allclose(flat(model), theta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state.losses.tolist(), values, rtol=1e-7)  # the history is kept in float32


def test_gradient_clipping_and_ema_match_the_hand_computation():
    model = linear()
    ema = EMA(model, decay=0.5, warmup=False)
    state = state_for(model, torch.optim.SGD(model.parameters(), lr=0.1), ema=ema)
    theta = np.concatenate([W0, [B0]])
    average = theta.copy()
    for _ in range(2):
        _, g = loss_and_grad(theta[:2], theta[2])
        norm = np.linalg.norm(g)
        assert norm > 0.5  # the clip is active
        train_step(state, mse, batch(), grad_clip=0.5)
        theta = theta - 0.1 * g * (0.5 / (norm + 1e-6))
        average = 0.5 * average + 0.5 * theta
        np.testing.assert_allclose(flat(model), theta, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(flat(ema.model), average, rtol=1e-12, atol=1e-14)
    assert ema.num_updates == 2


def test_a_scalar_loss_and_the_generator_reach_loss_fn():
    model = linear()
    gen = torch.Generator().manual_seed(0)
    seen = []

    def loss_fn(m, b, g):
        seen.append((m, g))
        return mse(m, b, g).sum()  # a scalar is fine too

    state = state_for(model, torch.optim.SGD(model.parameters(), lr=0.1), generator=gen)
    loss = train_step(state, loss_fn, batch())
    assert seen == [(model, gen)]
    np.testing.assert_allclose(loss.item(), 4 * loss_and_grad(W0, B0)[0], rtol=1e-12)


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: holds the model as ``module`` and forwards to it."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        return self.module(*args)


def test_the_loss_calls_forward_model_while_ema_and_checkpoints_see_model(tmp_path):
    model = linear()
    wrapper = Wrapper(model)
    state = state_for(model, torch.optim.SGD(model.parameters(), lr=0.1), ema=EMA(model, decay=0.5, warmup=False),
                      forward_model=wrapper)
    reference = linear()
    ref_state = state_for(reference, torch.optim.SGD(reference.parameters(), lr=0.1))
    assert state_for(reference, ref_state.optimizer).forward_model is reference  # the default
    seen = []
    for _ in range(2):
        train_step(state, lambda m, b, g: seen.append(m) or mse(m, b, g), batch())
        train_step(ref_state, mse, batch())
    assert seen == [wrapper, wrapper] and wrapper.calls == 2
    np.testing.assert_array_equal(flat(model), flat(reference))  # same mathematics through the wrapper
    path = tmp_path / "wrapped.pt"
    save_state(path, state)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt["model"]) == {"weight", "bias"} and set(ckpt["ema"]["model"]) == {"weight", "bias"}  # no "module."
    plain = linear()
    load_state(path, state_for(plain, torch.optim.SGD(plain.parameters(), lr=0.1), ema=EMA(plain)))
    np.testing.assert_array_equal(flat(plain), flat(model))


def test_a_grad_scaler_with_a_power_of_two_scale_gives_the_same_step():
    # scaling the loss by 2^k and the gradients back by 2^-k is exact in floating point
    plain, scaled = linear(torch.float32), linear(torch.float32)
    a = state_for(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    b = state_for(scaled, torch.optim.SGD(scaled.parameters(), lr=0.1, momentum=0.9), scaler=scaler)
    for _ in range(3):
        la = train_step(a, mse, batch(torch.float32), grad_clip=0.5)
        lb = train_step(b, mse, batch(torch.float32), grad_clip=0.5)
        assert torch.equal(la, lb)
        np.testing.assert_array_equal(flat(plain), flat(scaled))
    assert scaler.get_scale() == 2.0 ** 12


def test_a_grad_scaler_skips_a_step_with_inf_gradients():
    model = linear(torch.float32)
    before = flat(model).copy()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    state = state_for(model, torch.optim.SGD(model.parameters(), lr=0.1), scaler=scaler,
                      ema=EMA(model, decay=0.5, warmup=False))
    train_step(state, lambda m, b, g: m.weight.sum() * float("inf"), batch(torch.float32), grad_clip=1.0)
    np.testing.assert_array_equal(flat(model), before)  # step skipped
    np.testing.assert_array_equal(flat(state.ema.model), before)
    assert scaler.get_scale() == 2.0 ** 9 and state.step == 1


@pytest.mark.parametrize("autocast", [torch.bfloat16, "context"])
def test_bf16_autocast_on_the_cpu(autocast):
    if autocast == "context":
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)  # a reusable context manager
    model = linear(torch.float32)
    reference = linear(torch.float32)
    state = state_for(model, torch.optim.SGD(model.parameters(), lr=0.1))
    ref_state = state_for(reference, torch.optim.SGD(reference.parameters(), lr=0.1))
    dtypes = []

    def loss_fn(m, b, g):
        out = m(b[0])
        dtypes.append(out.dtype)
        return (out - b[1]).square().mean(dim=1)

    for _ in range(2):
        loss = train_step(state, loss_fn, batch(torch.float32), autocast=autocast)
        ref = train_step(ref_state, mse, batch(torch.float32))
        assert loss.dtype == torch.float32  # the mean is taken in float32
        torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert not torch.is_autocast_enabled("cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    np.testing.assert_allclose(flat(model), flat(reference), rtol=5e-2, atol=5e-2)
    assert not np.array_equal(flat(model), np.concatenate([W0, [B0]]).astype(np.float32))


def test_train_step_errors_name_the_argument():
    model = linear()
    state = state_for(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="state"):
        train_step(model, mse, batch())
    with pytest.raises(TypeError, match="loss_fn"):
        train_step(state, "mse", batch())
    with pytest.raises(TypeError, match="loss_fn: must return a tensor"):
        train_step(state, lambda m, b, g: 1.0, batch())
    for clip, error in ((0, ValueError), (-1.0, ValueError), (float("inf"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="grad_clip"):
            train_step(state, mse, batch(), grad_clip=clip)
    with pytest.raises(ValueError, match="autocast"):
        train_step(state, mse, batch(), autocast=torch.float32)
    with pytest.raises(TypeError, match="autocast"):
        train_step(state, mse, batch(), autocast="bf16")
    assert state.step == 0
    train_step(state, mse, batch(), autocast=contextlib.nullcontext())
    assert state.step == 1


def test_train_state_checks_its_fields():
    model = linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model, opt, losses=[1.0, 2.0], step=2)
    assert isinstance(state.losses, LossHistory) and state.losses.tolist() == [1.0, 2.0]
    assert engine.TrainState is TrainState and engine.train_step is train_step
    for kw, name in [(dict(model="net"), "model"), (dict(optimizer="adam"), "optimizer"), (dict(ema=model), "ema"),
                     (dict(generator=0), "generator"), (dict(step=-1), "step"), (dict(step=1.5), "step"),
                     (dict(scaler=object()), "scaler"), (dict(forward_model=lambda x: x), "forward_model")]:
        args = dict(model=model, optimizer=opt)
        args.update(kw)
        with pytest.raises(ValueError if kw == dict(step=-1) else TypeError, match=name):
            TrainState(**args)


def test_loss_history_reads_back_in_one_go():
    history = LossHistory([0.5])
    for v in (1.0, 2.0, 4.0):
        history.append(torch.tensor(v))
    assert len(history) == 4
    assert history.recent_mean(2) == 3.0 and history.recent_mean(10) == pytest.approx(7.5 / 4)
    assert history.numpy().dtype == np.float32 and history.numpy().shape == (4,)
    assert history.as_tensor().dtype == torch.float32 and history.tolist() == [0.5, 1.0, 2.0, 4.0]
    assert np.isnan(LossHistory().recent_mean(3))
    with pytest.raises(ValueError, match="n"):
        history.recent_mean(0)
