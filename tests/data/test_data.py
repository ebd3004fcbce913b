"""Tests for diffedu.data: digits scaling, the offline fallback message, seeded minibatches."""
import sys
import types

import numpy as np
import pytest
import torch

from diffedu import data


# ------------------------------------------------------------------ digits
def test_load_digits_closed_form_scaling():
    from sklearn.datasets import load_digits as sk

    bunch = sk()
    x, y = data.load_digits(return_labels=True)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], torch.as_tensor(bunch.images, dtype=torch.float32) / 8 - 1)
    assert x.min() == -1 and x.max() == 1
    assert y.dtype == torch.long and y.shape == (1797,)
    assert set(y.tolist()) == set(range(10))
    np.testing.assert_array_equal(y.numpy(), bunch.target)


def test_load_digits_flatten_and_dtype():
    x = data.load_digits(flatten=True, dtype=torch.float64)
    assert x.shape == (1797, 64) and x.dtype == torch.float64


@pytest.mark.parametrize("size", [16, 32])
def test_load_digits_resize(size):
    x8 = data.load_digits()
    x = data.load_digits(size=size)
    assert x.shape == (1797, 1, size, size)
    assert x.min() >= -1 and x.max() <= 1
    # bilinear upsampling by an integer factor keeps the per-image mean up to edge effects
    torch.testing.assert_close(x.mean(dim=(1, 2, 3)), x8.mean(dim=(1, 2, 3)), atol=0.05, rtol=0)


def test_load_digits_bad_input():
    with pytest.raises(ValueError, match="size"):
        data.load_digits(size=0)
    with pytest.raises(TypeError, match="dtype"):
        data.load_digits(dtype=torch.int64)


# ------------------------------------------------------------------ torchvision
def test_load_torchvision_unknown_name():
    with pytest.raises(ValueError, match="name"):
        data.load_torchvision("imagenet")


def test_load_torchvision_without_torchvision(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(RuntimeError, match=r"diffedu\.data\.load_digits"):
        data.load_torchvision("mnist", root=tmp_path)


def _fake_torchvision(monkeypatch, cls_name, make):
    tv = types.ModuleType("torchvision")
    ds = types.ModuleType("torchvision.datasets")
    setattr(ds, cls_name, make)
    tv.datasets = ds
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", ds)


def test_load_torchvision_missing_files_offline(monkeypatch, tmp_path):
    def mnist(root, train, download):
        raise RuntimeError("Dataset not found. You can use download=True to download it")

    _fake_torchvision(monkeypatch, "MNIST", mnist)
    with pytest.raises(RuntimeError, match=r"download=False.*diffedu\.data\.load_digits"):
        data.load_torchvision("mnist", root=tmp_path, download=False)


def test_load_torchvision_download_failure(monkeypatch, tmp_path):
    def cifar(root, train, download):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    _fake_torchvision(monkeypatch, "CIFAR10", cifar)
    with pytest.raises(RuntimeError, match="could not download.*load_digits"):
        data.load_torchvision("cifar10", root=tmp_path)


@pytest.mark.parametrize("name,cls_name,raw_shape,expected", [
    ("fashion_mnist", "FashionMNIST", (5, 28, 28), (5, 1, 28, 28)),
    ("cifar10", "CIFAR10", (5, 32, 32, 3), (5, 3, 32, 32)),
])
def test_load_torchvision_conversion(monkeypatch, tmp_path, name, cls_name, raw_shape, expected):
    raw = np.random.default_rng(0).integers(0, 256, size=raw_shape, dtype=np.uint8)
    raw.flat[0], raw.flat[1] = 0, 255

    def make(root, train, download):
        return types.SimpleNamespace(data=torch.as_tensor(raw) if len(raw_shape) == 3 else raw, targets=list(range(5)))

    _fake_torchvision(monkeypatch, cls_name, make)
    x, y = data.load_torchvision(name, root=tmp_path, return_labels=True)
    assert x.shape == expected and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    chw = raw if len(raw_shape) == 3 else raw.transpose(0, 3, 1, 2)
    torch.testing.assert_close(x.reshape(expected), torch.as_tensor(chw.reshape(expected), dtype=torch.float32) / 127.5 - 1)
    assert y.tolist() == list(range(5))


# ------------------------------------------------------------------ batches
def test_batches_epoch_is_a_permutation():
    x = torch.arange(12.0)[:, None]
    it = data.batches(x, 4, generator=0)
    epoch = torch.cat([next(it) for _ in range(3)])
    assert sorted(epoch[:, 0].tolist()) == list(range(12))
    epoch2 = torch.cat([next(it) for _ in range(3)])  # the stream is endless
    assert sorted(epoch2[:, 0].tolist()) == list(range(12))
    assert not torch.equal(epoch, epoch2)


def test_batches_seeded_and_labels_aligned():
    x = torch.arange(10.0)[:, None].repeat(1, 2)
    labels = torch.arange(10) * 10
    a = data.batches(x, 3, generator=torch.Generator().manual_seed(5), labels=labels)
    b = data.batches(x, 3, generator=5, labels=labels)
    for _ in range(7):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (3, 2)
        assert torch.equal(ya, xa[:, 0].long() * 10)
    c = data.batches(x, 3, generator=6)
    assert any(not torch.equal(next(c), next(data.batches(x, 3, generator=5))) for _ in range(3))


def test_batches_drop_last():
    x = torch.arange(10.0)[:, None]
    sizes = [next(it).shape[0] for it in [data.batches(x, 4, generator=0)] for _ in range(4)]
    assert sizes == [4, 4, 4, 4]
    it = data.batches(x, 4, generator=0, drop_last=False)
    assert [next(it).shape[0] for _ in range(6)] == [4, 4, 2, 4, 4, 2]
    it = data.batches(x, 32, drop_last=False)
    assert next(it).shape[0] == 10


def test_batches_bad_input():
    with pytest.raises(TypeError, match="x"):
        data.batches([1, 2, 3], 2)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(torch.zeros(4, 2), 0)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(torch.zeros(4, 2), 5)
    with pytest.raises(ValueError, match="labels"):
        data.batches(torch.zeros(4, 2), 2, labels=torch.zeros(3))
    with pytest.raises(TypeError, match="generator"):
        data.batches(torch.zeros(4, 2), 2, generator="seed")


# ------------------------------------------------------------------ to_image
def test_to_image():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    torch.testing.assert_close(data.to_image(x), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))
    with pytest.raises(TypeError, match="x"):
        data.to_image(torch.tensor([1, 2]))
