"""How do we integrate? Samplers for the reverse process (monograph §2.2, §3.4, §4.2-4.4, §9).

Every sampler is one short function over (model, x, time grid): ``model(x_t, t, cond) -> Prediction``
with ``model.schedule`` (see :class:`diffedu.param.Denoiser`); time grids are float64 and run
from noise (t near 1) to data (t near 0). Submodules: ``ode`` (deterministic solvers and grids),
``ancestral`` (DDPM), ``langevin`` (Langevin, annealed Langevin), ``sde`` (reverse SDE, PC).
"""
from .ancestral import *  # noqa
from .langevin import *  # noqa
from .sde import *  # noqa
from .ode import *  # noqa
