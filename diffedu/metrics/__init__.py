"""How good are the samples? Distances between sample sets and densities (monograph §1.2).

* :mod:`diffedu.metrics.samples` — sliced Wasserstein-2, Monte-Carlo KL, moment errors: the
  yardsticks of the 2D chapters, measured against the exact densities of :mod:`diffedu.toy`.
"""
from diffedu.metrics.samples import kl_monte_carlo, moment_errors, sliced_wasserstein

__all__ = ["sliced_wasserstein", "kl_monte_carlo", "moment_errors"]
