"""Tests for diffedu.engine: EMA closed forms, clipping, seeded reproducibility, atomic checkpoints, resume."""
import math
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from diffedu import data, engine
from diffedu.nets import MLP


pytestmark = pytest.mark.usefixtures("one_thread")


def eps_mse(model, x0, generator):
    """A small eps-prediction loss (VP cosine path) drawing all its randomness from ``generator``."""
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    a, s = torch.cos(0.5 * math.pi * t)[:, None], torch.sin(0.5 * math.pi * t)[:, None]
    return (model(a * x0 + s * eps, t) - eps).square().mean(dim=1)


def toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * 0.3 + torch.tensor([1.0, -1.0])


def params_of(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ------------------------------------------------------------------ devices, generators
def test_resolve_device(monkeypatch):
    assert engine.resolve_device("cpu") == torch.device("cpu")
    assert engine.resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert engine.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert engine.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine.resolve_device(None) == torch.device("cuda")
    with pytest.raises(ValueError, match="device"):
        engine.resolve_device("not-a-device")
    with pytest.raises(TypeError, match="device"):
        engine.resolve_device(3)


def test_make_generator():
    a = torch.rand(5, generator=engine.make_generator(3))
    b = torch.rand(5, generator=engine.make_generator(3, "cpu"))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(5, generator=engine.make_generator(4)))
    assert isinstance(engine.make_generator(None), torch.Generator)
    with pytest.raises(TypeError, match="seed"):
        engine.make_generator(1.5)
    with pytest.raises(ValueError, match="seed"):
        engine.make_generator(-1)


# ------------------------------------------------------------------ EMA
def test_ema_closed_form_without_warmup():
    model = nn.Linear(3, 2)
    theta0 = params_of(model).clone()
    ema = engine.EMA(model, decay=0.9, warmup=False)
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
    ema = engine.EMA(nn.Linear(2, 2), decay=0.999)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(nn.Linear(2, 2))
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.num_updates = 10 ** 6
    assert ema.current_decay() == 0.999


def test_ema_copy_to_state_dict_and_buffers():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    ema = engine.EMA(model, decay=0.5, warmup=False)
    model.train()
    model(torch.randn(8, 2))  # changes BatchNorm running statistics (buffers)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    ema.update(model)
    torch.testing.assert_close(ema.model[1].running_mean, model[1].running_mean)  # buffers are copied
    fresh = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    ema.copy_to(fresh)
    torch.testing.assert_close(params_of(fresh), params_of(ema.model))
    other = engine.EMA(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4)), decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1 and other.warmup is False
    torch.testing.assert_close(params_of(other.model), params_of(ema.model))
    assert all(not p.requires_grad for p in ema.model.parameters())


def test_ema_bad_input():
    with pytest.raises(ValueError, match="decay"):
        engine.EMA(nn.Linear(2, 2), decay=1.0)
    with pytest.raises(TypeError, match="model"):
        engine.EMA("net")
    ema = engine.EMA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="model"):
        ema.update(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


# ------------------------------------------------------------------ fit
def test_fit_learns_and_returns_result():
    torch.manual_seed(0)
    model = MLP(hidden=32, depth=2)
    res = engine.fit(model, eps_mse, data.batches(toy_data(), 64, generator=1), steps=150, lr=3e-3, seed=0, device="cpu", progress=False)
    assert isinstance(res, engine.FitResult)
    assert res.model is model and res.steps == 150 and res.seconds > 0
    assert isinstance(res.losses, np.ndarray) and res.losses.shape == (150,) and res.losses.dtype == np.float32
    assert res.losses[-30:].mean() < 0.8 * res.losses[:10].mean()
    assert res.ema_model is not None and res.ema_model is not model
    assert not torch.equal(params_of(res.ema_model), params_of(model))
    assert not model.training


def test_fit_seeded_runs_are_identical():
    def run(seed):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.2), nn.Linear(16, 2))  # dropout uses the global RNG
        net = lambda x, t: model(x)  # noqa: E731
        loss = lambda m, b, g: eps_mse(net, b, g)  # noqa: E731
        res = engine.fit(model, loss, data.batches(toy_data(), 32, generator=7), steps=40, seed=seed, device="cpu", progress=False)
        return params_of(res.model), params_of(res.ema_model), res.losses

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    assert not torch.equal(a[0], c[0])


def test_fit_clips_the_gradient_norm():
    # loss = 1000 w has gradient 1000; clipped to norm 1, one SGD step of lr 0.1 moves w by exactly 0.1
    w = nn.Linear(1, 1, bias=False)
    nn.init.constant_(w.weight, 0.0)
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    loss = lambda m, b, g: 1000.0 * m.weight.sum()  # noqa: E731
    engine.fit(w, loss, [torch.zeros(1)], steps=1, optimizer=opt, ema_decay=None, grad_clip=1.0, device="cpu", progress=False)
    assert w.weight.item() == pytest.approx(-0.1)
    engine.fit(w, loss, [torch.zeros(1)], steps=1, optimizer=opt, ema_decay=None, grad_clip=None, device="cpu", progress=False)
    assert w.weight.item() == pytest.approx(-0.1 - 100.0)


def test_fit_callback_optimizers_and_no_ema():
    seen = []
    model = MLP(hidden=8, depth=1)
    for opt in ["adam", "adamw", "sgd", lambda ps: torch.optim.SGD(ps, lr=1e-2)]:
        res = engine.fit(model, eps_mse, data.batches(toy_data(), 16, generator=0), steps=3, optimizer=opt, ema_decay=None,
                        device="cpu", progress=False, callback=lambda s, l, m: seen.append((s, l)))
        assert res.ema_model is None
    assert [s for s, _ in seen] == [1, 2, 3] * 4
    assert all(isinstance(l, float) for _, l in seen)


def test_fit_progress_bar_runs(capsys):
    res = engine.fit(MLP(hidden=8, depth=1), eps_mse, data.batches(toy_data(), 16, generator=0), steps=5, log_every=2,
                    device="cpu", progress=True)
    assert res.steps == 5
    assert "fit" in capsys.readouterr().err


def test_fit_errors():
    model = MLP(hidden=8, depth=1)
    stream = data.batches(toy_data(), 16, generator=0)
    kw = dict(device="cpu", progress=False)
    with pytest.raises(ValueError, match="steps"):
        engine.fit(model, eps_mse, stream, steps=-1, **kw)
    with pytest.raises(ValueError, match="lr"):
        engine.fit(model, eps_mse, stream, steps=1, lr=0, **kw)
    with pytest.raises(ValueError, match="optimizer"):
        engine.fit(model, eps_mse, stream, steps=1, optimizer="lbfgs2", **kw)
    with pytest.raises(ValueError, match="checkpoint_every"):
        engine.fit(model, eps_mse, stream, steps=1, checkpoint_every=5, **kw)
    with pytest.raises(TypeError, match="loss_fn"):
        engine.fit(model, lambda m, b, g: 1.0, stream, steps=1, **kw)
    with pytest.raises(TypeError, match="data_iter"):
        engine.fit(model, eps_mse, toy_data(), steps=1, **kw)
    with pytest.raises(RuntimeError, match="data_iter"):
        engine.fit(model, eps_mse, iter([toy_data()[:4]]), steps=2, **kw)
    with pytest.raises(RuntimeError, match="non-finite"):
        engine.fit(model, lambda m, b, g: m(b, 0.5).sum() * float("nan"), stream, steps=3, log_every=1, **kw)


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MLP(hidden=16, depth=2)
    path = tmp_path / "ckpt" / "run.pt"
    res = engine.fit(model, eps_mse, data.batches(toy_data(), 32, generator=0), steps=12, checkpoint=path,
                    checkpoint_every=5, seed=0, device="cpu", progress=False)
    assert path.is_file()
    assert os.listdir(path.parent) == ["run.pt"]  # no temp files left behind
    fresh, fresh_ema = MLP(hidden=16, depth=2), engine.EMA(MLP(hidden=16, depth=2))
    opt = torch.optim.Adam(fresh.parameters())
    ckpt = engine.load_checkpoint(path, fresh, ema=fresh_ema, optimizer=opt)
    assert ckpt["step"] == 12
    assert torch.equal(params_of(fresh), params_of(res.model))
    assert torch.equal(params_of(fresh_ema.model), params_of(res.ema_model))
    assert fresh_ema.num_updates == 12
    assert len(opt.state) == len(list(fresh.parameters()))
    np.testing.assert_array_equal(ckpt["losses"].numpy(), res.losses)


def test_resume_continues_and_matches_uninterrupted_run(tmp_path):
    batch = [toy_data(64)]  # a re-iterable is cycled: the same data stream before and after resuming

    def new_model():
        torch.manual_seed(0)
        return MLP(hidden=16, depth=2)

    full = engine.fit(new_model(), eps_mse, batch, steps=30, seed=3, device="cpu", progress=False)
    path = tmp_path / "run.pt"
    first = engine.fit(new_model(), eps_mse, batch, steps=20, seed=3, checkpoint=path, device="cpu", progress=False)
    assert first.steps == 20
    resumed = engine.fit(new_model(), eps_mse, batch, steps=30, seed=3, checkpoint=path, device="cpu", progress=False)
    assert resumed.steps == 30 and resumed.losses.shape == (30,)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    assert torch.equal(params_of(resumed.model), params_of(full.model))
    assert torch.equal(params_of(resumed.ema_model), params_of(full.ema_model))
    assert engine.load_checkpoint(path, new_model())["step"] == 30
    # nothing left to do: the step count is already reached
    again = engine.fit(new_model(), eps_mse, batch, steps=30, checkpoint=path, device="cpu", progress=False)
    assert again.steps == 30 and torch.equal(params_of(again.model), params_of(full.model))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    path = tmp_path / "model.pt"
    engine.save_checkpoint(path, model, step=1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        engine.save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


class Payload:
    """An arbitrary Python object: weights_only loading must refuse to unpickle it."""


def test_load_checkpoint_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "step": 0, "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        engine.load_checkpoint(path, nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="path"):
        engine.load_checkpoint(tmp_path / "missing.pt", nn.Linear(2, 2))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="checkpoint"):
        engine.load_checkpoint(tmp_path / "other.pt", nn.Linear(2, 2))
    engine.save_checkpoint(tmp_path / "noema.pt", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="ema"):
        engine.load_checkpoint(tmp_path / "noema.pt", nn.Linear(2, 2), ema=engine.EMA(nn.Linear(2, 2)))
