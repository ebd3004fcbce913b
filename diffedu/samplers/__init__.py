"""How do we integrate? Samplers for the reverse process (monograph §2.2, §3.4, §4.2-4.4, §9).

Every sampler is one short function over (model, x, time grid): ``model(x_t, t, cond) -> Prediction``
with ``model.schedule`` (see :class:`diffedu.param.Denoiser`); time grids are float64 and run
from noise (t near 1) to data (t near 0). Every sampler takes ``callback=`` (called with one
:class:`Step` record after each step) and ``progress=`` (a tqdm bar); :func:`trajectory` collects
the states of any of them. Submodules: ``grids`` (time grids and :class:`Grid`, a grid with its
schedule coefficients), ``ode`` (deterministic solvers), ``ancestral`` (DDPM), ``langevin``
(Langevin, annealed Langevin), ``sde`` (reverse SDE, PC), ``record`` (Step, trajectory),
``unipc`` (UniPC, UniC after any one-step solver, iPNDM), ``adaptive`` (grids from a local-error
density measured with the model), ``calibrated`` (grids and multistep weights fitted to the model's own fine solve on
calibration noise), ``parallel`` (ParaDiGMS: Picard sweeps over a window, one batched call each).
"""
from .ancestral import ancestral_step, sample_ancestral
from .grids import Grid, check_grid, grid_ddpm, grid_karras, grid_log_snr, grid_power, grid_uniform
from .adaptive import error_density, grid_adaptive, grid_from_density
from .calibrated import FineTrajectory, calibrate_multistep, fine_solve, grid_calibrated, grid_loss, sample_calibrated
from .langevin import langevin_step, sample_annealed_langevin, sample_langevin, score_function
from .ode import (SOLVERS, sample_ddim, sample_deis, sample_dpm_solver, sample_dpm_solver_pp_2m,
                  sample_dpm_solver_pp_2s, sample_dpm_solver_pp_3m, sample_euler, sample_heun, sample_heun_t,
                  solve_pf_ode_reference)
from .parallel import sample_paradigms
from .record import CountingModel, Step, trajectory
from .sde import langevin_corrector_step, reverse_sde_step, sample_euler_maruyama, sample_pc
from .unipc import sample_ipndm, sample_unic, sample_unipc, unipc_weights

__all__ = [
    # the step record and the one trajectory collector
    "CountingModel", "Step", "trajectory",
    # time grids
    "Grid", "check_grid", "grid_uniform", "grid_power", "grid_log_snr", "grid_karras", "grid_ddpm",
    "error_density", "grid_adaptive", "grid_from_density",  # grids from the model's own evaluations (§9.4-9.5)
    "grid_calibrated", "grid_loss", "fine_solve",  # grids fitted to the model's own fine solve (LD3 / AYS-style, §9.4-9.5)
    "FineTrajectory", "calibrate_multistep", "sample_calibrated",  # grid + multistep weights fitted to it (S4S-style)
    # deterministic PF-ODE solvers (monograph §9, Table 9.1)
    "sample_euler", "sample_heun", "sample_heun_t", "sample_ddim", "sample_dpm_solver", "sample_dpm_solver_pp_2s",
    "sample_dpm_solver_pp_2m", "sample_dpm_solver_pp_3m", "sample_deis", "solve_pf_ode_reference", "SOLVERS",
    "sample_unipc", "sample_unic", "sample_ipndm", "unipc_weights",  # UniPC, UniC, iPNDM (§9.4)
    "sample_paradigms",  # ParaDiGMS: parallel Picard sweeps (§9.8)
    # stochastic samplers
    "ancestral_step", "sample_ancestral",  # §2.2
    "langevin_step", "score_function", "sample_langevin", "sample_annealed_langevin",  # §3.1, §3.4
    "reverse_sde_step", "langevin_corrector_step", "sample_euler_maruyama", "sample_pc",  # §4.2, §4.4
]
