"""Latent diffusion: the same losses and samplers, run in an autoencoder's latent space (Rombach et al. 2022).

Beyond the monograph's chapters (the overview paper arXiv 2412.01371 describes it). Three steps:

1. train an :class:`~diffedu.nets.Autoencoder` x -> z -> x (reconstruction + a small KL);
2. encode the data, z_0 = c * mean(x), with the **latent scale factor** c = 1 / std(z) computed
   from data (:func:`latent_scale_factor`), so that z_0 has unit variance like the data the
   schedules were designed for (monograph §2.2: x_t = alpha_t x_0 + sigma_t eps assumes a data
   scale of about 1; Rombach et al. 2022, §4.3.2 and appendix G, rescale by 1 / std for the same reason);
3. train any :class:`~diffedu.param.Denoiser` on z_0 with :func:`diffedu.objectives.denoising_loss`,
   sample z_0 with any sampler, decode x = D(z_0 / c).

:class:`LatentDiffusion` bundles autoencoder, scale factor and latent denoiser; it keeps the model
contract *in latent space* (``model(z_t, t, cond)`` -> Prediction, ``.schedule``), so every
sampler and wrapper (guidance) applies to it unchanged, and :meth:`LatentDiffusion.sample`
decodes. Why this lives in ``baselines/``: it composes a network (``nets``) with the losses and
samplers of the rooms below, which only the upper layer may import; it is a generative family
of its own (the autoencoder-with-a-prior, like the VAE next door), not a new training objective.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from diffedu.nets.autoencoder import Autoencoder
from diffedu.param import Denoiser, Prediction

__all__ = ["latent_scale_factor", "encode_dataset", "LatentDiffusion"]


def latent_scale_factor(z: torch.Tensor) -> float:
    """c = 1 / std(z) over every entry of a batch of latents (B, ...), so that c z has unit variance.

    Computed from data, once, after the autoencoder is trained and before diffusion starts.
    """
    if not torch.is_tensor(z) or not z.is_floating_point() or z.ndim < 2 or z.numel() < 2:
        raise ValueError(f"z: expected a floating batch of latents (B, ...), got {getattr(z, 'shape', type(z).__name__)}")
    std = float(z.detach().double().std())
    if not std > 0.0:
        raise ValueError("z: latents have zero variance (is the autoencoder trained?)")
    return 1.0 / std


def encode_dataset(ae: Autoencoder, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The encoder means of images x (N, C, H, W), in eval mode, without gradients, batch by batch."""
    if not isinstance(ae, Autoencoder):
        raise TypeError(f"ae: expected a diffedu.nets.Autoencoder, got {type(ae).__name__}")
    was_training = ae.training
    ae.eval()
    dev = next(ae.parameters()).device
    with torch.no_grad():
        out = torch.cat([ae.encode(x[i:i + batch_size].to(dev))[0] for i in range(0, len(x), batch_size)])
    ae.train(was_training)
    return out


class LatentDiffusion(nn.Module):
    """Autoencoder + latent scale factor + a Denoiser on scaled latents z_0 = c E(x).

    ``forward(z_t, t, cond)`` is the latent denoiser's (the model contract in latent space).
    :meth:`encode` maps images to scaled latents, :meth:`decode` scaled latents to images,
    :meth:`sample` draws z_1 ~ N(0, I), integrates with ``sampler`` and decodes.
    """

    def __init__(self, autoencoder: Autoencoder, denoiser: Denoiser, scale_factor: float, latent_shape):
        super().__init__()
        if not isinstance(autoencoder, Autoencoder):
            raise TypeError(f"autoencoder: expected a diffedu.nets.Autoencoder, got {type(autoencoder).__name__}")
        if not isinstance(denoiser, nn.Module) or not hasattr(denoiser, "schedule"):
            raise TypeError(f"denoiser: expected a model with .schedule (e.g. a diffedu.param.Denoiser), got "
                            f"{type(denoiser).__name__}")
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, (int, float)) or not scale_factor > 0:
            raise ValueError(f"scale_factor: expected a positive number (see latent_scale_factor), got {scale_factor!r}")
        self.autoencoder, self.denoiser, self.scale_factor = autoencoder, denoiser, float(scale_factor)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        if len(self.latent_shape) != 3 or self.latent_shape[0] != autoencoder.latent_channels:
            raise ValueError(f"latent_shape: expected ({autoencoder.latent_channels}, h, w), got {latent_shape!r}")

    @property
    def schedule(self):
        return self.denoiser.schedule

    def forward(self, z_t: torch.Tensor, t, cond=None) -> Prediction:
        return self.denoiser(z_t, t, cond)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents c * mean(x): what the latent denoiser is trained on."""
        return self.scale_factor * encode_dataset(self.autoencoder, x)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Images D(z_0 / c) in [-1, 1], without gradients."""
        with torch.no_grad():
            return self.autoencoder.eval().decode(z0 / self.scale_factor)

    def sample(self, n: int, sampler: Callable, ts, *, generator: Optional[torch.Generator] = None, cond=None,
               batch_size: int = 500) -> torch.Tensor:
        """n decoded samples (n, C, H, W): ``sampler(self, z_1, ts, cond=cond)`` from z_1 ~ N(0, I), then decode."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        dev = next(self.denoiser.parameters()).device
        out = []
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            z = torch.randn((b, *self.latent_shape), generator=generator, device=generator.device if generator else "cpu")
            c = None if cond is None else cond[i:i + b]
            with torch.no_grad():
                z0 = sampler(self, z.to(dev), ts, cond=c) if c is not None else sampler(self, z.to(dev), ts)
            out.append(self.decode(z0))
        return torch.cat(out)
