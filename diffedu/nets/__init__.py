"""Networks: the function approximators every chapter trains.  (monograph §2.2, §6.1, §8.2)

Two networks, both with the calling convention every sampler and loss in diffedu uses::

    out = net(x, t, cond=None)        # x: (B, ...), t: (B,) floats in [0, 1], out shaped like x

* :class:`MLP` — for 2D toy data (B, 2): a few fully connected layers that see x together with
  a sinusoidal embedding of t. Fast on a CPU; the toy chapters train it in seconds.
* :class:`UNet` — for images (B, C, H, W): a small U-Net (residual blocks, GroupNorm, optional
  self-attention at low resolution) with the time embedding added inside every residual block,
  as in DDPM (monograph §2.2) and the score-SDE networks (§4).

Two more for the image chapter: :class:`DigitClassifier` (the feature network of the image
metrics) and :class:`Autoencoder` (the first stage of latent diffusion, with :func:`autoencoder_loss`).

What a network *predicts* (noise, clean data, score, velocity) is not its business: the same
net serves every row of Table 6.1 (monograph §6.1); :mod:`diffedu.param` does the converting.

Class conditioning (monograph §8.2, classifier-free guidance): with ``num_classes=K`` the net
takes ``cond``, a LongTensor (B,) of labels in {0, ..., K-1}, or the extra "null" label ``K``
that means "no label". ``cond=None`` is the same as passing the null label everywhere, so an
unconditional call and a dropped-out label are one and the same thing.
"""
from diffedu.nets.embedding import TIME_SCALE, sinusoidal_embedding
from diffedu.nets.mlp import MLP
from diffedu.nets.unet import UNet
from diffedu.nets.classifier import DigitClassifier
from diffedu.nets.autoencoder import Autoencoder, AutoencoderOutput, autoencoder_loss

__all__ = ["TIME_SCALE", "sinusoidal_embedding", "MLP", "UNet", "DigitClassifier", "Autoencoder", "AutoencoderOutput", "autoencoder_loss"]
