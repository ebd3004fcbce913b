"""Other generative families and composites: the Gaussian VAE, normalising flows (monograph §1, §2.1, §5.1-5.2), and latent diffusion (an autoencoder with a diffusion model in its latent space; overview paper arXiv 2412.01371)."""
from diffedu.baselines.vae import GaussianVAE, VAETerms
from diffedu.baselines.latent import LatentDiffusion, encode_dataset, latent_scale_factor
from diffedu.baselines.flows import AffineCoupling, cnf_log_prob, cnf_sample, CNFResult, CouplingFlow

__all__ = [
    "GaussianVAE", "VAETerms", "LatentDiffusion", "encode_dataset", "latent_scale_factor", "AffineCoupling", "cnf_log_prob", "cnf_sample", "CNFResult",
    "CouplingFlow", "vae", "flows", "latent"
]
