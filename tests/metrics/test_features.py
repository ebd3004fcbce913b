"""The feature network: trained once, cached atomically, reloaded; always in eval mode (the pitfall)."""
import os

import pytest
import torch

from diffedu import metrics
from diffedu.nets import DigitClassifier


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    """A quickly trained digits feature net (8x8 digits, 60 steps) in a temporary cache."""
    d = tmp_path_factory.mktemp("cache")
    torch.set_num_threads(1)
    return metrics.feature_network("digits", steps=60, width=8, feature_dim=16, directory=str(d)), d


def test_trained_once_then_reloaded(small_net):
    net, d = small_net
    files = os.listdir(d)
    assert len(files) == 1 and files[0].startswith("featnet_digits") and not files[0].endswith(".tmp")
    again = metrics.feature_network("digits", steps=60, width=8, feature_dim=16, directory=str(d))
    x = torch.randn(7, 1, 8, 8).clamp(-1, 1)
    assert torch.equal(net(x), again(x)) and again.accuracy == net.accuracy
    assert net.accuracy > 0.5  # 60 steps already beat chance (0.1) by far


def test_stale_cache_cannot_lie_about_accuracy(small_net):
    # a cached file whose weights were replaced (a stale or foreign net under the same name) and whose stored
    # accuracy says 0.99: the accuracy reported is measured again on the held-out split, never read from the file
    from diffedu.engine import save_checkpoint

    net, d = small_net
    (name,) = os.listdir(d)
    torch.manual_seed(123)
    save_checkpoint(os.path.join(d, name), DigitClassifier(1, 10, width=8, feature_dim=16), step=60, accuracy=0.99)
    stale = metrics.feature_network("digits", steps=60, width=8, feature_dim=16, directory=str(d))
    assert stale.accuracy < 0.5 < net.accuracy  # an untrained net is measured as such


def test_cache_name_carries_the_recipe_hash(small_net, monkeypatch):
    # a changed network or training function is another file: the old one is not reused
    from diffedu.metrics import features

    _, d = small_net
    (name,) = os.listdir(d)
    assert name.endswith(f"_{features._recipe_hash()}.pt")
    monkeypatch.setattr(features, "_recipe_hash", lambda: "0" * 8)  # as if DigitClassifier's code had changed
    metrics.feature_network("digits", steps=60, width=8, feature_dim=16, directory=str(d))
    assert sorted(os.listdir(d)) == sorted([name, name[:-11] + "00000000.pt"])  # trained anew, the old file untouched


def test_features_shape_probs_and_no_grad(small_net):
    net, _ = small_net
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    f = net(x)
    assert f.shape == (5, 16) and not f.requires_grad
    p = net.probs(x)
    assert p.shape == (5, 10) and torch.allclose(p.sum(-1), torch.ones(5))


def test_feature_net_stays_in_eval_mode_and_train_mode_changes_features(small_net):
    net, _ = small_net
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    before = net(x)
    net.train()  # what a parent module (or a metric) might do
    assert not net.training and not net.net.training
    assert torch.equal(net(x), before)
    raw = net.net.train()  # the pitfall: the bare classifier in train mode
    with torch.no_grad():
        in_train = raw.features(x)
    raw.eval()
    assert not torch.allclose(in_train, before, atol=1e-3)  # BatchNorm batch statistics: other features
    with torch.no_grad():
        assert not torch.allclose(raw.train().features(x[:8]), raw.train().features(x[:16])[:8], atol=1e-4)  # depend on the batch
    raw.eval()


def test_bad_arguments():
    with pytest.raises(ValueError, match="dataset"):
        metrics.feature_network("cifar")
    with pytest.raises(TypeError, match="net"):
        metrics.FeatureNet(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="labels"):
        metrics.train_classifier(torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))


def test_classifier_shapes():
    net = DigitClassifier(1, 10, width=4, feature_dim=8)
    for size in (8, 28):
        x = torch.randn(3, 1, size, size)
        assert net(x).shape == (3, 10) and net.features(x).shape == (3, 8)
    with pytest.raises(ValueError, match="channels"):
        net(torch.randn(2, 3, 8, 8))
