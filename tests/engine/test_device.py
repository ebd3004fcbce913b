"""diffedu.engine.device: "auto" device resolution, seeded generators, moving batches."""
import numpy as np
import pytest
import torch

from diffedu import engine
from diffedu.engine.device import make_generator, resolve_device, to_device


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
    assert torch.equal(a, torch.rand(5, generator=engine.make_generator(np.int64(3))))
    assert not torch.equal(a, torch.rand(5, generator=engine.make_generator(4)))
    assert isinstance(engine.make_generator(None), torch.Generator)
    with pytest.raises(TypeError, match="seed"):
        engine.make_generator(1.5)
    with pytest.raises(TypeError, match="seed"):
        engine.make_generator(True)
    with pytest.raises(ValueError, match="seed"):
        engine.make_generator(-1)
    with pytest.raises(ValueError, match="device"):
        engine.make_generator(0, "not-a-device")


def test_to_device_walks_containers_and_keeps_what_is_there():
    x, y = torch.zeros(2), torch.ones(3)
    cpu = torch.device("cpu")
    assert to_device(x, cpu) is x
    out = to_device({"x": x, "pair": (x, [y, 7]), "name": "digits"}, cpu)
    assert out["x"] is x and out["pair"][0] is x and out["pair"][1][0] is y
    assert isinstance(out["pair"], tuple) and isinstance(out["pair"][1], list)
    assert out["pair"][1][1] == 7 and out["name"] == "digits"


def test_engine_reexports_the_device_helpers():
    assert engine.resolve_device is resolve_device and engine.make_generator is make_generator
    assert engine.to_device is to_device
