"""Other generative families for comparison: the Gaussian VAE and normalising flows (monograph §1, §2.1, §5.1-5.2)."""
from diffedu.baselines.vae import GaussianVAE, VAETerms
from diffedu.baselines.flows import AffineCoupling, cnf_log_prob, cnf_sample, CNFResult, CouplingFlow

__all__ = [
    "GaussianVAE", "VAETerms", "AffineCoupling", "cnf_log_prob", "cnf_sample", "CNFResult",
    "CouplingFlow", "vae", "flows"
]
