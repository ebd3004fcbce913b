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
