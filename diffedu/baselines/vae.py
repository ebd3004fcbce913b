"""Variational autoencoders: the ELBO as reconstruction minus KL (monograph §2.1).

A VAE has a prior p(z) = N(0, I), a decoder p_theta(x | z) and an encoder q_phi(z | x). For every x,

    log p_theta(x) >= ELBO(x) = E_{q_phi(z|x)} [log p_theta(x | z)] - KL(q_phi(z | x) || p(z))
                   = log p_theta(x) - KL(q_phi(z | x) || p_theta(z | x)),

so the bound is tight exactly when the encoder equals the true posterior (tested on a linear
Gaussian VAE, where everything is closed form). With a Gaussian decoder N(mu_theta(z), s^2 I),
the reconstruction term is a squared error, and the decoder mean averages over every x that a
z could have come from — the Gaussian VAE's blurriness (monograph §2.1). Stacking latents
z_1 -> ... -> z_T gives a hierarchical VAE; fixing its encoder to add Gaussian noise gives
DDPM (monograph §2.2, :mod:`diffedu.objectives.elbo`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import math

import torch
from torch import nn

from diffedu._checks import check_data, check_positive
from diffedu.gaussian import gaussian_kl, gaussian_log_prob

__all__ = ["VAETerms", "GaussianVAE"]


def _mlp(d_in: int, d_out: int, hidden: int, depth: int) -> nn.Module:
    if depth == 0:
        return nn.Linear(d_in, d_out)
    layers = [nn.Linear(d_in, hidden), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    layers.append(nn.Linear(hidden, d_out))
    return nn.Sequential(*layers)


@dataclass
class VAETerms:
    """The two ELBO terms per example (B,): ``reconstruction`` = E_q log p(x|z), ``kl`` = KL(q(z|x) || p(z)).

    ``elbo`` = reconstruction - kl <= log p_theta(x) (monograph §2.1).
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        return self.reconstruction - self.kl


class GaussianVAE(nn.Module):
    """A VAE with Gaussian encoder q(z|x) = N(mu_phi(x), diag var_phi(x)), prior N(0, I) and Gaussian decoder (monograph §2.1).

    Decoder p(x|z) = N(mu_theta(z), s^2 I) with a single learned log-std (or a fixed one,
    ``decoder_std=...``). ``depth=0`` makes encoder and decoder linear maps (probabilistic PCA, whose
    log p(x) is closed form). Vector data (B, data_dim).
    """

    def __init__(self, data_dim: int = 2, latent_dim: int = 2, hidden: int = 128, depth: int = 2,
                 decoder_std: Optional[float] = None):
        super().__init__()
        for name, v, lo in (("data_dim", data_dim, 1), ("latent_dim", latent_dim, 1), ("hidden", hidden, 1), ("depth", depth, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.encoder = _mlp(data_dim, 2 * latent_dim, hidden, depth)
        self.decoder = _mlp(latent_dim, data_dim, hidden, depth)
        if decoder_std is None:
            self.log_std = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("log_std", torch.tensor(math.log(check_positive(decoder_std, "decoder_std"))))

    @property
    def decoder_var(self) -> torch.Tensor:
        """The decoder variance s^2."""
        return torch.exp(2 * self.log_std)

    def _check_x(self, x):
        check_data(x, "x")
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x: expected shape (B, {self.data_dim}), got {tuple(x.shape)}")
        return x

    def encode(self, x: torch.Tensor):
        """(mu, log var) of q_phi(z | x), each (B, latent_dim)."""
        h = self.encoder(self._check_x(x))
        return h[:, : self.latent_dim], h[:, self.latent_dim:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder mean mu_theta(z), (B, data_dim)."""
        check_data(z, "z")
        return self.decoder(z)

    def terms(self, x: torch.Tensor, *, n_samples: int = 1, analytic_kl: bool = True,
              generator: Optional[torch.Generator] = None) -> VAETerms:
        """ELBO terms per example with ``n_samples`` reparameterised draws z = mu + sigma e (monograph §2.1).

        ``analytic_kl``: KL(q || N(0, I)) in closed form; otherwise the single-sample estimate
        log q(z|x) - log p(z) (which makes the per-sample ELBO exactly log p(x) when q is the true
        posterior — the zero-variance property of a tight bound).
        """
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples: expected a positive int, got {n_samples!r}")
        mu, logvar = self.encode(x)
        var = torch.exp(logvar)
        rec, klmc = 0.0, 0.0
        for _ in range(n_samples):
            e = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + var.sqrt() * e
            rec = rec + gaussian_log_prob(x, self.decode(z), self.decoder_var.to(x))
            if not analytic_kl:
                klmc = klmc + gaussian_log_prob(z, mu, var) - gaussian_log_prob(z, torch.zeros_like(z), 1.0)
        rec = rec / n_samples
        if analytic_kl:
            kl = gaussian_kl(mu, var, torch.zeros_like(mu), 1.0)
        else:
            kl = klmc / n_samples
        return VAETerms(reconstruction=rec, kl=kl)

    def elbo(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """ELBO(x) = E_q log p(x|z) - KL(q(z|x) || p(z)) per example (B,) (monograph §2.1)."""
        return self.terms(x, **kw).elbo

    def log_likelihood_is(self, x: torch.Tensor, n_samples: int = 256,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Importance-sampled log p_theta(x) ~= log mean_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q (IWAE bound; monograph §2.1).

        A lower bound for finite ``n_samples`` that tightens to log p_theta(x) as n_samples grows.
        """
        mu, logvar = self.encode(x)
        var = torch.exp(logvar)
        logw = []
        for _ in range(n_samples):
            e = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + var.sqrt() * e
            logw.append(gaussian_log_prob(x, self.decode(z), self.decoder_var.to(x))
                        + gaussian_log_prob(z, torch.zeros_like(z), 1.0) - gaussian_log_prob(z, mu, var))
        return torch.logsumexp(torch.stack(logw), 0) - math.log(n_samples)

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None, mean_only: bool = True,
               device=None) -> torch.Tensor:
        """Draw x ~ p_theta: z ~ N(0, I), then the decoder mean (``mean_only``, the usual picture) or x ~ N(mu(z), s^2 I)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        dev = device if device is not None else self.log_std.device
        gdev = generator.device if generator is not None else dev
        z = torch.randn(n, self.latent_dim, generator=generator, device=gdev).to(dev)
        x = self.decode(z)
        if not mean_only:
            x = x + self.decoder_var.sqrt() * torch.randn(x.shape, generator=generator, device=gdev).to(dev)
        return x
