"""How likely is the data? Exact likelihood along the PF-ODE and the Fokker-Planck equation (monograph §4.5, §4.3, §5.5).

* :mod:`~diffedu.likelihood.ode` — log p_0(x) by the instantaneous change of variables,
  dequantisation and bits per dimension (§4.5);
* :mod:`~diffedu.likelihood.fokker_planck` — Fokker-Planck and continuity residuals, and the
  Fokker-Planck equation solved on a grid (§4.3, §5.5).
"""
