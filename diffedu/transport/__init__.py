"""Chapter 7: diffusion models and optimal transport (monograph §7.1-§7.5).

Distribution-to-distribution translation: exact and entropic OT between samples
(:mod:`~diffedu.transport.discrete`, POT, plus log-domain Sinkhorn as the lesson), closed forms
between Gaussians (:mod:`~diffedu.transport.gaussian`: W_2/Bures, the OT map, entropic OT, the
Schrödinger bridge), static SB = entropic OT and diffusion couplings vs SB
(:mod:`~diffedu.transport.bridge`), and minibatch couplings for flow matching: OT-CFM, SB-CFM
(:mod:`~diffedu.transport.couplings`). Time runs t = 0 data, t = 1 noise.
"""
from diffedu.transport.bridge import (diffusion_coupling, forward_backward_coupling, gaussian_ipf, reference_sb_plan,
                                      sb_cfm_mean_std, sb_cfm_sample, sb_cfm_velocity, sb_eps, static_sb_plan)
from diffedu.transport.couplings import (COUPLINGS, couple, entropic_pairs, ot_cfm_loss, ot_pairs, sb_cfm_loss,
                                         sb_pairs)
from diffedu.transport.discrete import (OTResult, SinkhornResult, barycentric_map, cost_matrix, entropic_ot, exact_ot,
                                        plan_entropy, sinkhorn_f_update, sinkhorn_g_update, sinkhorn_log,
                                        uniform_weights)
from diffedu.transport.gaussian import (EntropicCost, GaussianMap, GaussianPlan, bures_sq, gaussian_entropic_cost,
                                        gaussian_entropic_plan, full_gaussian_kl, gaussian_ot_map, gaussian_sb_marginal,
                                        gaussian_w2_sq, sqrtm_psd)

__all__ = [
    # discrete OT (monograph §7.2-§7.3)
    "OTResult", "SinkhornResult", "cost_matrix", "uniform_weights", "exact_ot", "entropic_ot", "sinkhorn_f_update",
    "sinkhorn_g_update", "sinkhorn_log", "barycentric_map", "plan_entropy",
    # Gaussian closed forms (monograph §7.3-§7.5)
    "GaussianPlan", "GaussianMap", "EntropicCost", "sqrtm_psd", "bures_sq", "gaussian_w2_sq", "gaussian_ot_map",
    "gaussian_entropic_plan", "gaussian_entropic_cost", "gaussian_sb_marginal", "full_gaussian_kl",
    # Schrödinger bridges (monograph §7.3-§7.4)
    "sb_eps", "static_sb_plan", "sb_cfm_mean_std", "sb_cfm_sample", "sb_cfm_velocity", "diffusion_coupling",
    "forward_backward_coupling", "reference_sb_plan", "gaussian_ipf",
    # minibatch couplings for flow matching (monograph §7.5)
    "COUPLINGS", "ot_pairs", "entropic_pairs", "sb_pairs", "couple", "ot_cfm_loss", "sb_cfm_loss",
]
