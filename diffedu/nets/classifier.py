"""A small convolutional classifier: the feature network of the image metrics (beyond the monograph).

Fréchet distance, KID and precision/recall compare two sample sets in the feature space of a
network. The usual one, Inception-v3 trained on ImageNet (FID), needs weights from the network
and suits 299x299 photographs, not 28x28 digits; here a small classifier is trained on the data
set itself (:func:`diffedu.metrics.feature_network`), and its penultimate layer gives the
features. Its BatchNorm and dropout layers make train mode and eval mode differ — on purpose:
a feature network left in train mode is a classic evaluation pitfall, shown in the chapter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffedu.nets.embedding import _check_int, _check_x

__all__ = ["DigitClassifier"]


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DigitClassifier(nn.Module):
    """CNN classifier for small gray-scale images (B, C, H, W): logits (B, K) and features (B, feature_dim).

    Five 3x3 conv-BatchNorm-ReLU layers (two of stride 2), global average pooling, a fully
    connected layer of ``feature_dim`` units (the features: :meth:`features`), dropout, and the
    linear output layer. Any H, W >= 4 works (8x8 digits, 28x28 MNIST).

    Args:
        in_channels: image channels C.
        num_classes: K.
        width: channels of the first conv layers (then 2x and 4x).
        feature_dim: size of the feature vector.
        dropout: dropout rate before the output layer (active in train mode only).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, feature_dim: int = 64,
                 dropout: float = 0.3):
        super().__init__()
        self.in_channels = _check_int(in_channels, "in_channels")
        self.num_classes = _check_int(num_classes, "num_classes", minimum=2)
        w = _check_int(width, "width")
        self.num_features = _check_int(feature_dim, "feature_dim")
        if not (isinstance(dropout, (int, float)) and 0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.body = nn.Sequential(_conv(self.in_channels, w), _conv(w, w, 2), _conv(w, 2 * w), _conv(2 * w, 2 * w, 2),
                                  _conv(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4 * w, self.num_features), nn.ReLU())
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(self.num_features, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (B, feature_dim): what FD, KID and precision/recall compare."""
        x = _check_x(x, 4, f"of shape (B, {self.in_channels}, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels, got shape {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K)."""
        return self.head(self.dropout(self.features(x)))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities p(y | x), (B, K)."""
        return F.softmax(self(x), dim=-1)
