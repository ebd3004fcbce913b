"""diffedu.engine.checkpoint: atomic writes, safe reads, clear errors for files that are not checkpoints."""
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from diffedu import engine
from diffedu.engine.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_state,
    save_checkpoint,
    save_state,
)
from diffedu.engine.ema import EMA
from diffedu.engine.state import TrainState


def params_of(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def trained_parts(seed=0):
    """A small model, its EMA and an Adam state after two steps."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    ema, opt = EMA(model, decay=0.9), torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        ema.update(model)
    return model, ema, opt


def test_save_and_load_round_trip(tmp_path):
    model, ema, opt = trained_parts()
    path = tmp_path / "deep" / "dir" / "run.pt"
    save_checkpoint(path, model, ema, opt, step=7, note="hello", scale=torch.tensor(2.0))
    assert sorted(os.listdir(path.parent)) == ["run.pt"]  # no temp files left behind
    fresh = nn.Linear(3, 2)
    fresh_ema, fresh_opt = EMA(fresh), torch.optim.Adam(fresh.parameters(), lr=0.1)
    ckpt = load_checkpoint(str(path), fresh, ema=fresh_ema, optimizer=fresh_opt)
    assert ckpt["step"] == 7 and ckpt["note"] == "hello" and ckpt["scale"].item() == 2.0
    assert torch.equal(params_of(fresh), params_of(model))
    assert torch.equal(params_of(fresh_ema.model), params_of(ema.model)) and fresh_ema.num_updates == 2
    assert fresh_opt.state_dict()["state"][0]["step"] == 2
    assert engine.save_checkpoint is save_checkpoint and engine.load_checkpoint is load_checkpoint


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failing_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, failure):
    model = nn.Linear(2, 2)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, step=1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise failure

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(type(failure)):
        save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path, nn.Linear(2, 2))["step"] == 1


def test_a_failing_rename_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, nn.Linear(2, 2), step=1)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="cross-device"):
        save_checkpoint(path, nn.Linear(2, 2), step=2)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.pt"]


def _write(path, kind):
    """Files that are not diffedu checkpoints, each broken in its own way."""
    good = path.parent / "good.pt"
    save_checkpoint(good, nn.Linear(2, 2), step=3)
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-tail":
        path.write_bytes(data[:-10])
    elif kind == "garbage":
        path.write_bytes(b"hello world, this is not a checkpoint")
    elif kind == "zeros":
        path.write_bytes(bytes(4096))
    elif kind == "text":
        path.write_text('{"model": {}, "step": 0}\n')
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"model": {}, "step": 0}))
    elif kind == "numpy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    elif kind == "other-zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not a torch archive")
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    elif kind == "foreign-dict":
        torch.save({"weights": 1}, path)


@pytest.mark.parametrize("kind", ["empty", "truncated", "truncated-tail", "garbage", "zeros", "text", "plain-pickle",
                                  "numpy", "other-zip", "tensor", "foreign-dict"])
def test_a_file_that_is_not_a_checkpoint_gives_a_clear_error(tmp_path, kind):
    path = tmp_path / f"broken-{kind}.pt"
    _write(path, kind)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, nn.Linear(2, 2))
    message = str(info.value)
    assert f"broken-{kind}.pt" in message and "not a diffedu checkpoint" in message
    assert isinstance(info.value, ValueError)
    state = TrainState(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    with pytest.raises(CheckpointError, match=f"broken-{kind}"):
        load_state(path, state)


class Payload:
    """An arbitrary Python object: weights_only loading must refuse to unpickle it."""


def test_load_checkpoint_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "step": 0, "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="evil.pt"):
        load_checkpoint(path, nn.Linear(2, 2))
    with pytest.raises(UnsafeCheckpointError, match="not a diffedu checkpoint that loads safely"):
        load_checkpoint(path, nn.Linear(2, 2))


def test_missing_parts_and_mismatches_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="path.*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="path"):
        load_checkpoint(tmp_path, nn.Linear(2, 2))  # a directory
    path = tmp_path / "noema.pt"
    save_checkpoint(path, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="ema: .*noema.pt.*no ema state"):
        load_checkpoint(path, nn.Linear(2, 2), ema=EMA(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="optimizer: .*no optimizer state"):
        load_checkpoint(path, nn.Linear(2, 2), optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0))
    with pytest.raises(CheckpointError, match="model: the model state in .*noema.pt.* does not fit"):
        load_checkpoint(path, nn.Linear(3, 2))
    model, ema, opt = trained_parts()
    save_checkpoint(path, model, ema, opt)
    other = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="optimizer: the optimizer state"):
        load_checkpoint(path, nn.Linear(3, 2), optimizer=torch.optim.Adam(other.parameters()))


def test_bad_arguments_name_themselves(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="path"):
        save_checkpoint(3, model)
    with pytest.raises(TypeError, match="model"):
        save_checkpoint(tmp_path / "a.pt", {"w": 1})
    with pytest.raises(TypeError, match="ema"):
        save_checkpoint(tmp_path / "a.pt", model, ema=model)
    with pytest.raises(TypeError, match="optimizer"):
        save_checkpoint(tmp_path / "a.pt", model, optimizer="adam")
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "a.pt", model, step=-1)
    with pytest.raises(TypeError, match="path"):
        load_checkpoint(None, model)
    with pytest.raises(TypeError, match="state"):
        save_state(tmp_path / "a.pt", model)
    with pytest.raises(TypeError, match="state"):
        load_state(tmp_path / "a.pt", model)
    assert not os.listdir(tmp_path)


def make_state(seed=0, scaler=False):
    torch.manual_seed(seed)
    model = nn.Linear(2, 2)
    return TrainState(model, torch.optim.Adam(model.parameters(), lr=0.1), ema=EMA(model, decay=0.9),
                      generator=torch.Generator().manual_seed(seed),
                      scaler=torch.amp.GradScaler("cpu", init_scale=256.0) if scaler else None)


def test_save_state_and_load_state_round_trip_the_whole_state(tmp_path):
    state = make_state(0, scaler=True)
    for _ in range(3):
        engine.train_step(state, lambda m, b, g: (m(b) - torch.randn(b.shape, generator=g)).square().mean(1),
                          torch.randn(5, 2))
    state.scaler.update(64.0)
    path = tmp_path / "state.pt"
    save_state(path, state)
    fresh = make_state(1, scaler=True)
    ckpt = load_state(path, fresh)
    assert ckpt["step"] == 3 and fresh.step == 3
    assert fresh.losses.tolist() == state.losses.tolist() and len(fresh.losses) == 3
    assert torch.equal(params_of(fresh.model), params_of(state.model))
    assert torch.equal(params_of(fresh.ema.model), params_of(state.ema.model)) and fresh.ema.num_updates == 3
    assert torch.equal(torch.rand(4, generator=fresh.generator), torch.rand(4, generator=state.generator))
    assert fresh.scaler.get_scale() == 64.0
    assert fresh.optimizer.state_dict()["state"][0]["step"] == 3
    assert engine.save_state is save_state and engine.load_state is load_state


def test_load_state_of_a_plain_checkpoint_and_a_foreign_generator(tmp_path):
    saved = make_state(0)
    path = tmp_path / "plain.pt"
    save_checkpoint(path, saved.model, saved.ema, saved.optimizer, step=2,
                    generator=torch.zeros(16, dtype=torch.uint8))  # e.g. a CUDA generator's state
    state = make_state(3)
    draw = torch.Generator().manual_seed(3)
    with pytest.warns(UserWarning, match="generator"):
        load_state(path, state)
    assert state.step == 2 and len(state.losses) == 0 and state.scaler is None
    assert torch.equal(torch.rand(4, generator=state.generator), torch.rand(4, generator=draw))  # left as it was
