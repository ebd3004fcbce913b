"""A small KL-regularised convolutional autoencoder: the first stage of latent diffusion (beyond the monograph).

Latent diffusion (Rombach et al. 2022, "High-resolution image synthesis with latent diffusion
models"; the overview paper arXiv 2412.01371 describes it) trains an autoencoder once, then runs
the *same* diffusion losses and samplers on its latents z = E(x) and decodes the samples,
x = D(z). The encoder is Gaussian, q(z | x) = N(mu(x), diag sigma^2(x)), and a small KL term to
N(0, I) keeps the latent space from drifting (monograph §2.1 for the VAE it descends from); the
latents' overall scale is then fixed by the *latent scale factor* (:mod:`diffedu.baselines.latent`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from diffedu.nets.embedding import _check_int, _check_x
from diffedu.nets.unet import _groups

__all__ = ["Autoencoder", "AutoencoderOutput", "autoencoder_loss"]


class AutoencoderOutput(NamedTuple):
    """What :meth:`Autoencoder.forward` returns: reconstruction, encoder mean and log-variance, the latent drawn."""

    recon: torch.Tensor
    mean: torch.Tensor
    log_var: torch.Tensor
    z: torch.Tensor


def _block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(_groups(c_out), c_out), nn.SiLU())


class Autoencoder(nn.Module):
    """Convolutional autoencoder (B, C, H, W) -> latents (B, latent_channels, H/4, W/4) -> (B, C, H, W).

    Encoder: conv blocks with two stride-2 downsamplings, ending in 2 x latent_channels maps (mean
    and log-variance of q(z | x)). Decoder: the mirror image with nearest-neighbour upsampling and
    a tanh output in [-1, 1]. For 28x28 MNIST and ``latent_channels=4`` the latent is (4, 7, 7):
    196 numbers for 784 pixels.
    """

    def __init__(self, in_channels: int = 1, latent_channels: int = 4, base: int = 32):
        super().__init__()
        self.in_channels = _check_int(in_channels, "in_channels")
        self.latent_channels = _check_int(latent_channels, "latent_channels")
        b = _check_int(base, "base")
        self.encoder = nn.Sequential(
            _block(self.in_channels, b), nn.Conv2d(b, b, 3, stride=2, padding=1), _block(b, 2 * b),
            nn.Conv2d(2 * b, 2 * b, 3, stride=2, padding=1), _block(2 * b, 2 * b), nn.Conv2d(2 * b, 2 * self.latent_channels, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(self.latent_channels, 2 * b, 3, padding=1), _block(2 * b, 2 * b), nn.Upsample(scale_factor=2.0),
            _block(2 * b, b), nn.Upsample(scale_factor=2.0), _block(b, b), nn.Conv2d(b, self.in_channels, 3, padding=1), nn.Tanh())

    def encode(self, x: torch.Tensor):
        """Mean and log-variance of q(z | x), each (B, latent_channels, H/4, W/4)."""
        x = _check_x(x, 4, f"of shape (B, {self.in_channels}, H, W)")
        if x.shape[1] != self.in_channels or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"x: expected shape (B, {self.in_channels}, H, W) with H, W divisible by 4, got {tuple(x.shape)}")
        mean, log_var = self.encoder(x).chunk(2, dim=1)
        return mean, log_var.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, 4h, 4w) in [-1, 1] from latents (B, latent_channels, h, w)."""
        z = _check_x(z, 4, f"of shape (B, {self.latent_channels}, h, w)")
        if z.shape[1] != self.latent_channels:
            raise ValueError(f"z: expected {self.latent_channels} channels, got shape {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> AutoencoderOutput:
        """Encode, draw z = mean + exp(log_var / 2) * noise (the reparameterisation, monograph §2.1), decode."""
        mean, log_var = self.encode(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * noise
        return AutoencoderOutput(self.decode(z), mean, log_var, z)


def autoencoder_loss(ae: Autoencoder, x: torch.Tensor, *, kl_weight: float = 1e-4,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-example loss (B,): mean squared reconstruction error + ``kl_weight`` x KL(q(z|x) || N(0, I)) per latent dim.

    A small ``kl_weight`` (LDM's "KL-reg" autoencoders use ~1e-6 on a perceptual loss) keeps the
    reconstructions sharp; the latents then have some arbitrary scale, which the latent scale
    factor undoes before diffusion. ``engine.fit(ae, lambda m, x, g: autoencoder_loss(m, x, generator=g), ...)``.
    """
    if not isinstance(ae, Autoencoder):
        raise TypeError(f"ae: expected a diffedu.nets.Autoencoder, got {type(ae).__name__}")
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or kl_weight < 0:
        raise ValueError(f"kl_weight: expected a non-negative number, got {kl_weight!r}")
    out = ae(x, generator=generator)
    b = x.shape[0]
    rec = F.mse_loss(out.recon, x, reduction="none").reshape(b, -1).mean(1)
    kl = 0.5 * (out.mean.pow(2) + out.log_var.exp() - 1.0 - out.log_var).reshape(b, -1).mean(1)
    return rec + float(kl_weight) * kl
