"""How likely is the data? Exact likelihood along the PF-ODE and the Fokker-Planck equation (monograph §4.5, §4.3, §5.5).

* :mod:`~diffedu.likelihood.ode` — log p_0(x) by the instantaneous change of variables,
  dequantisation and bits per dimension (§4.5);
* :mod:`~diffedu.likelihood.fokker_planck` — Fokker-Planck and continuity residuals, and the
  Fokker-Planck equation solved on a grid (§4.3, §5.5).
"""
from diffedu.likelihood.ode import bits_per_dim, dequantize, LikelihoodResult, log_likelihood, velocity_field
from diffedu.likelihood.fokker_planck import (
    continuity_residual, fokker_planck_residual, fokker_planck_residual_grid, Grid,
    histogram_density, l1_distance, make_grid, solve_fokker_planck
)

__all__ = [
    "bits_per_dim", "dequantize", "LikelihoodResult", "log_likelihood", "velocity_field",
    "continuity_residual", "fokker_planck_residual", "fokker_planck_residual_grid", "Grid",
    "histogram_density", "l1_distance", "make_grid", "solve_fokker_planck", "ode", "fokker_planck"
]
