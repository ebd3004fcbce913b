"""The feature network of the image metrics: a classifier trained on the data set itself, cached on disk.

FID compares Inception-v3 features of ImageNet photographs; offline there are no Inception
weights, and 28x28 digits are not photographs. So diffedu trains a small
:class:`~diffedu.nets.DigitClassifier` on the training split of the data set (seeded, about 40 s
on one CPU core), saves it atomically under the user cache directory and reloads it
afterwards. Distances computed with it are called **FD_DigitCNN**, never "FID": Fréchet
distances under two different feature networks are different quantities and cannot be compared.

Decision (weights): trained at first use rather than shipped, because a shipped file would need
package-data configuration and would go stale whenever the network changes; the cache file name
encodes every setting (data set, widths, steps, seed) and a hash of the recipe's source code
(the network class and the training function), so a changed setting or a changed recipe trains a
new net. The held-out accuracy is measured again at every load, never read from the file.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from diffedu.data.images import load_digits
from diffedu.data.mnist import load_mnist, stratified_split
from diffedu.data.streams import batches
from diffedu.engine.checkpoint import load_checkpoint, save_checkpoint
from diffedu.engine.loop import fit
from diffedu.nets.classifier import DigitClassifier

__all__ = ["FeatureNet", "train_classifier", "classifier_accuracy", "feature_network", "cache_dir", "FEATURE_DATASETS"]

FEATURE_DATASETS = ("mnist", "digits")


def cache_dir() -> str:
    """Where trained feature networks are kept: ``$DIFFEDU_CACHE`` or ``~/.cache/diffedu``."""
    return os.environ.get("DIFFEDU_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "diffedu")


class FeatureNet(nn.Module):
    """A classifier used as a fixed feature extractor: always in eval mode, never tracking gradients.

    ``FeatureNet(net)(x)`` returns ``net.features(x)`` (B, D) for images in [-1, 1], computed in
    eval mode under ``torch.no_grad`` and in batches of ``batch_size``; :meth:`train` is a no-op,
    so wrapping it in a torchmetrics metric (or calling ``.train()`` on a parent module) cannot
    switch BatchNorm to batch statistics or turn dropout on — the pitfall that makes features, and
    every distance computed from them, depend on the batch. ``name`` labels the distance: ``FD_<name>``.
    """

    def __init__(self, net: DigitClassifier, name: str = "DigitCNN", batch_size: int = 500):
        super().__init__()
        if not isinstance(net, DigitClassifier):
            raise TypeError(f"net: expected a diffedu.nets.DigitClassifier, got {type(net).__name__}")
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.name = str(name)
        self.batch_size = int(batch_size)
        self.num_features = net.num_features

    def train(self, mode: bool = True) -> "FeatureNet":
        """Stay in eval mode whatever is asked (see the class docstring)."""
        return super().train(False)

    def _batched(self, fn, x: torch.Tensor) -> torch.Tensor:
        dev = next(self.net.parameters()).device
        with torch.no_grad():
            outs = [fn(x[i:i + self.batch_size].to(dev, torch.float32)) for i in range(0, len(x), self.batch_size)]
        return torch.cat(outs).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, D) of images x (B, C, H, W) in [-1, 1] (values are clamped to [-1, 1] first)."""
        return self._batched(lambda b: self.net.features(b.clamp(-1.0, 1.0)), x)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K) of images in [-1, 1] (clamped), for the classifier-based checks."""
        return self._batched(lambda b: self.net.probs(b.clamp(-1.0, 1.0)), x)


def _classification_loss(model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
    """Per-example cross-entropy of the logits against the labels."""
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def train_classifier(x: torch.Tensor, labels: torch.Tensor, *, steps: int = 800, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, width: int = 16, feature_dim: int = 64,
                     device="cpu", progress: bool = False) -> DigitClassifier:
    """Train a :class:`~diffedu.nets.DigitClassifier` on images x (N, C, H, W) in [-1, 1] with labels (N,).

    Adam with cross-entropy through :func:`diffedu.engine.fit` (seeded; no EMA). Returns the network in eval mode, on the CPU.
    """
    if not torch.is_tensor(labels) or labels.dtype != torch.long or labels.shape != (x.shape[0],):
        raise ValueError(f"labels: expected a LongTensor of shape ({x.shape[0]},), got {getattr(labels, 'shape', labels)!r}")
    torch.manual_seed(seed)
    net = DigitClassifier(x.shape[1], int(labels.max()) + 1, width=width, feature_dim=feature_dim)
    stream = batches(x, batch_size, generator=seed, labels=labels)
    result = fit(net, _classification_loss, stream, steps=steps, lr=lr, seed=seed, ema_decay=None,
                 device=device, progress=progress, log_every=50)
    return result.model.cpu().eval()


def classifier_accuracy(net: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose most probable class is the label (computed in eval mode)."""
    fn = net if isinstance(net, FeatureNet) else FeatureNet(net)
    return float((fn.probs(x).argmax(-1) == labels.to(x.device)).double().mean())


def _recipe_hash() -> str:
    """8 hex digits of the source of the network class and of :func:`train_classifier`: part of the cache file name."""
    h = hashlib.sha256()
    for obj in (DigitClassifier, train_classifier, _classification_loss):
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:8]


def _data(dataset: str) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """(train, held-out) images and labels of a feature data set."""
    if dataset == "mnist":
        return load_mnist("train", return_labels=True), load_mnist("test", return_labels=True)
    x, y = load_digits(return_labels=True)
    tr, te = stratified_split(y, 300, seed=0)
    return (x[tr], y[tr]), (x[te], y[te])


def feature_network(dataset: str = "mnist", *, steps: int = 800, seed: int = 0, width: int = 16, feature_dim: int = 64,
                    directory: Optional[str] = None, retrain: bool = False, progress: bool = False) -> FeatureNet:
    """The feature network of ``dataset`` ("mnist": :func:`~diffedu.data.load_mnist`; "digits": 8x8 digits).

    Loaded from ``directory`` (default :func:`cache_dir`) if trained before with the same
    settings; otherwise trained on the training split with :func:`train_classifier` (about 40 s on
    one CPU core for MNIST), saved atomically (:func:`diffedu.engine.save_checkpoint`) and
    returned. ``.accuracy`` holds its held-out accuracy, measured on the held-out split at every call
    (0.969 on MNIST with the defaults, trained on one thread).
    """
    if dataset not in FEATURE_DATASETS:
        raise ValueError(f"dataset: expected one of {FEATURE_DATASETS}, got {dataset!r}")
    name = f"featnet_{dataset}_w{width}_f{feature_dim}_steps{steps}_seed{seed}_{_recipe_hash()}.pt"
    path = os.path.join(directory or cache_dir(), name)
    (x, y), (xt, yt) = _data(dataset)
    net = DigitClassifier(x.shape[1], 10, width=width, feature_dim=feature_dim)
    if os.path.exists(path) and not retrain:
        load_checkpoint(path, net, map_location="cpu")
    else:
        net = train_classifier(x, y, steps=steps, seed=seed, width=width, feature_dim=feature_dim, progress=progress)
        save_checkpoint(path, net, step=steps, accuracy=classifier_accuracy(net, xt, yt), dataset=dataset)
    out = FeatureNet(net.eval(), name="DigitCNN")
    out.accuracy = classifier_accuracy(out, xt, yt)  # measured, not trusted from the file
    return out
