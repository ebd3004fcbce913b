"""What do we minimise? The training objectives of Parts B-C (monograph §2-§6).

* :mod:`~diffedu.objectives.denoising` — the denoising loss as four choices (schedule,
  prediction target, weight, time distribution; monograph §6.1);
* :mod:`~diffedu.objectives.elbo` — the DDPM evidence lower bound, term by term (§2.2);
* :mod:`~diffedu.objectives.score_matching` — explicit, implicit, sliced and denoising score
  matching, Tweedie, SURE (§3);
* :mod:`~diffedu.objectives.flow_matching` — conditional / marginal flow matching, paths, reflow (§5);
* :mod:`~diffedu.objectives.edm` — EDM preconditioning, weighting and noise distribution (§6.3).
"""
from diffedu.objectives.denoising import denoising_loss, loss_weight, regression_target, WEIGHTINGS
from diffedu.objectives.elbo import (
    ddpm_forward_kernel, ddpm_forward_step, ddpm_posterior, ddpm_time_grid, elbo_eps_weights,
    elbo_terms, ELBOTerms, hybrid_loss, LearnedVarianceDenoiser, TwoHeadNet
)
from diffedu.objectives.score_matching import (
    denoising_score_matching, dsm_target, explicit_score_matching, implicit_score_matching,
    model_score, sliced_score_matching, sure, tweedie_x0
)
from diffedu.objectives.flow_matching import (
    conditional_fm_loss, conditional_velocity, marginal_fm_loss, match_time, PathChange, PATHS,
    reflow_pairs, straightness
)
from diffedu.objectives.edm import (
    edm_preconditioning, edm_time_density, edm_time_sampler, edm_weight, EDMCoefficients,
    EDMDenoiser
)

__all__ = [
    "denoising_loss", "loss_weight", "regression_target", "WEIGHTINGS", "ddpm_forward_kernel",
    "ddpm_forward_step", "ddpm_posterior", "ddpm_time_grid", "elbo_eps_weights", "elbo_terms",
    "ELBOTerms", "hybrid_loss", "LearnedVarianceDenoiser", "TwoHeadNet", "denoising_score_matching",
    "dsm_target", "explicit_score_matching", "implicit_score_matching", "model_score",
    "sliced_score_matching", "sure", "tweedie_x0", "conditional_fm_loss", "conditional_velocity",
    "marginal_fm_loss", "match_time", "PathChange", "PATHS", "reflow_pairs", "straightness",
    "edm_preconditioning", "edm_time_density", "edm_time_sampler", "edm_weight", "EDMCoefficients",
    "EDMDenoiser", "denoising", "elbo", "score_matching", "flow_matching", "edm"
]
