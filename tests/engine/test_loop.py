"""diffedu.engine.fit: it learns, seeded runs are bit-identical, checkpoints resume exactly, errors are clear."""
import math
import os

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


def new_model():
    torch.manual_seed(0)
    return MLP(hidden=16, depth=2)


def test_fit_keeps_the_signature_the_notebooks_call():
    import inspect

    params = inspect.signature(engine.fit).parameters
    assert list(params)[:3] == ["model", "loss_fn", "data_iter"]
    keywords = ["steps", "lr", "optimizer", "weight_decay", "ema_decay", "grad_clip", "seed", "device", "checkpoint",
                "checkpoint_every", "resume", "progress", "log_every", "callback"]
    assert list(params)[3:] == keywords and all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in keywords)
    assert [f for f in engine.FitResult.__dataclass_fields__] == ["model", "ema_model", "losses", "steps", "seconds"]


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


def test_fit_equals_train_step_by_hand():
    """fit is only the composition: the same steps taken by train_step give the same weights."""
    batch = toy_data(64)
    res = engine.fit(new_model(), eps_mse, [batch], steps=25, seed=4, device="cpu", progress=False)
    model = new_model()
    state = engine.TrainState(model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True),
                              ema=engine.EMA(model, decay=0.999), generator=engine.make_generator(4))
    model.train()
    for _ in range(25):
        engine.train_step(state, eps_mse, batch, grad_clip=1.0)
    assert torch.equal(params_of(model), params_of(res.model))
    assert torch.equal(params_of(state.ema.model), params_of(res.ema_model))
    np.testing.assert_array_equal(state.losses.numpy(), res.losses)


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
                         device="cpu", progress=False, callback=lambda s, l, m: seen.append((s, l, m)))
        assert res.ema_model is None
    assert [s for s, _, _ in seen] == [1, 2, 3] * 4
    assert all(isinstance(l, float) and m is model for _, l, m in seen)


def test_fit_progress_bar_runs(capsys):
    res = engine.fit(MLP(hidden=8, depth=1), eps_mse, data.batches(toy_data(), 16, generator=0), steps=5, log_every=2,
                     device="cpu", progress=True)
    assert res.steps == 5
    assert "fit" in capsys.readouterr().err


def test_fit_batches_of_tuples_and_dicts():
    x = toy_data(32)
    seen = []
    loss = lambda m, b, g: seen.append(type(b)) or eps_mse(m, b["x"] if isinstance(b, dict) else b[0], g)  # noqa: E731
    engine.fit(MLP(hidden=8, depth=1), loss, [(x, torch.zeros(32))], steps=2, device="cpu", progress=False)
    engine.fit(MLP(hidden=8, depth=1), loss, [{"x": x}], steps=2, device="cpu", progress=False)
    assert seen == [tuple, tuple, dict, dict]


def test_fit_errors():
    model = MLP(hidden=8, depth=1)
    stream = data.batches(toy_data(), 16, generator=0)
    kw = dict(device="cpu", progress=False)
    for bad, name in [(dict(steps=-1), "steps"), (dict(steps=1.5), "steps"), (dict(lr=0), "lr"),
                      (dict(lr=float("nan")), "lr"), (dict(weight_decay=-1.0), "weight_decay"),
                      (dict(ema_decay=1.0), "ema_decay"), (dict(grad_clip=0), "grad_clip"), (dict(seed=-1), "seed"),
                      (dict(seed=0.5), "seed"), (dict(log_every=0), "log_every"), (dict(optimizer="lbfgs2"), "optimizer"),
                      (dict(checkpoint_every=5), "checkpoint_every"),
                      (dict(checkpoint="run.pt", checkpoint_every=0), "checkpoint_every")]:
        args = dict(steps=1, **kw)
        args.update(bad)
        wrong_type = bad in (dict(steps=1.5), dict(seed=0.5))  # not an int at all; the rest are out of range
        with pytest.raises(TypeError if wrong_type else ValueError, match=name):
            engine.fit(model, eps_mse, stream, **args)
    with pytest.raises(TypeError, match="model"):
        engine.fit("net", eps_mse, stream, steps=1, **kw)
    with pytest.raises(TypeError, match="loss_fn"):
        engine.fit(model, "eps", stream, steps=1, **kw)
    with pytest.raises(TypeError, match="loss_fn"):
        engine.fit(model, lambda m, b, g: 1.0, stream, steps=1, **kw)
    with pytest.raises(TypeError, match="checkpoint"):
        engine.fit(model, eps_mse, stream, steps=1, checkpoint=3, **kw)
    with pytest.raises(TypeError, match="callback"):
        engine.fit(model, eps_mse, stream, steps=1, callback="print", **kw)
    with pytest.raises(TypeError, match="optimizer"):
        engine.fit(model, eps_mse, stream, steps=1, optimizer=lambda ps: "adam", **kw)
    for not_a_stream in (toy_data(), toy_data().numpy(), "batches", 3):
        with pytest.raises(TypeError, match="data_iter"):
            engine.fit(model, eps_mse, not_a_stream, steps=1, **kw)
    with pytest.raises(RuntimeError, match="data_iter: ran out of batches after 1 steps"):
        engine.fit(model, eps_mse, iter([toy_data()[:4]]), steps=2, **kw)
    with pytest.raises(ValueError, match="data_iter: is empty"):
        engine.fit(model, eps_mse, [], steps=2, **kw)
    with pytest.raises(RuntimeError, match="non-finite"):
        engine.fit(model, lambda m, b, g: m(b, 0.5).sum() * float("nan"), stream, steps=3, log_every=1, **kw)
    with pytest.raises(ValueError, match="no trainable parameters"):
        engine.fit(nn.Linear(2, 2).requires_grad_(False), eps_mse, stream, steps=1, **kw)


# ------------------------------------------------------------------ checkpoints and resuming
def test_fit_checkpoint_round_trip(tmp_path):
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
    fewer = engine.fit(new_model(), eps_mse, batch, steps=10, checkpoint=path, device="cpu", progress=False)
    assert fewer.steps == 30 and fewer.losses.shape == (30,)


def test_resume_after_a_crash_from_the_last_periodic_checkpoint(tmp_path):
    batch = [toy_data(64)]
    full = engine.fit(new_model(), eps_mse, batch, steps=30, seed=5, device="cpu", progress=False)
    path = tmp_path / "run.pt"

    def crash(step, loss, model):
        if step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.fit(new_model(), eps_mse, batch, steps=30, seed=5, checkpoint=path, checkpoint_every=10,
                   callback=crash, device="cpu", progress=False)
    assert engine.load_checkpoint(path, new_model())["step"] == 10
    resumed = engine.fit(new_model(), eps_mse, batch, steps=30, seed=5, checkpoint=path, checkpoint_every=10,
                         device="cpu", progress=False)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    assert torch.equal(params_of(resumed.model), params_of(full.model))
    assert torch.equal(params_of(resumed.ema_model), params_of(full.ema_model))


def test_fit_refuses_to_resume_from_a_corrupt_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(engine.CheckpointError, match="run.pt.*not a diffedu checkpoint"):
        engine.fit(new_model(), eps_mse, [toy_data(16)], steps=2, checkpoint=path, device="cpu", progress=False)
    assert path.read_bytes() == b"\x00garbage"  # left for the user to inspect
    res = engine.fit(new_model(), eps_mse, [toy_data(16)], steps=2, checkpoint=path, resume=False, device="cpu",
                     progress=False)
    assert engine.load_checkpoint(path, new_model())["step"] == res.steps == 2
