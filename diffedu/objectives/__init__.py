"""What do we minimise? The training objectives of Parts B-C (monograph §2-§6).

* :mod:`~diffedu.objectives.denoising` — the denoising loss as four choices (schedule,
  prediction target, weight, time distribution; monograph §6.1);
* :mod:`~diffedu.objectives.elbo` — the DDPM evidence lower bound, term by term (§2.2);
* :mod:`~diffedu.objectives.score_matching` — explicit, implicit, sliced and denoising score
  matching, Tweedie, SURE (§3);
* :mod:`~diffedu.objectives.flow_matching` — conditional / marginal flow matching, paths, reflow (§5);
* :mod:`~diffedu.objectives.edm` — EDM preconditioning, weighting and noise distribution (§6.3).
"""
