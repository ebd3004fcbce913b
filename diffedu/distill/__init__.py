"""Distillation: few-step and one-step students of a diffusion teacher (monograph §10.1-§10.4).

A diffusion model samples by solving its PF-ODE, one network evaluation (NFE) per step. A
better solver (monograph §9) lowers the NFE at fixed accuracy; *distillation* instead trains a
student to do in one evaluation what the teacher does in many (monograph §10.1):

* :mod:`~diffedu.distill.progressive` -- trajectory-level: one student DDIM step regresses on two
  teacher DDIM steps, halving the steps every round (Salimans & Ho 2022; monograph §10.3);
* :mod:`~diffedu.distill.guided` -- the same for a classifier-free-guided teacher, with the
  guidance scale w as the student's input (Meng et al. 2023; §10.3);
* :mod:`~diffedu.distill.dmd` -- distribution-level: a one-step generator moved by the difference
  of the teacher's score and the score of its own samples, the gradient of a KL (VSD, Diff-Instruct,
  DMD; §10.2), with DMD's optional regression on teacher ODE pairs.

Every student keeps the model contract ``model(x_t, t, cond) -> Prediction`` with
``model.schedule``, so every sampler of :mod:`diffedu.samplers` accepts it, for (B, 2) points and
(B, C, H, W) images alike.
"""
from diffedu.distill.dmd import (
    DMD_WEIGHTINGS,
    DMDPair,
    DMDResult,
    dmd_gradient,
    dmd_loss,
    one_step,
    regression_pairs,
    train_dmd,
)
from diffedu.distill.guided import (
    FixedGuidance,
    GuidedCond,
    GuidedStudent,
    GuidedTeacher,
    guided_loss,
    sample_guided_cond,
)
from diffedu.distill.progressive import (
    PD_WEIGHTINGS,
    Round,
    ddim_step,
    distill_round,
    pd_loss,
    pd_target,
    progressive_distillation,
    student_grid,
)

__all__ = [
    "DMD_WEIGHTINGS",
    "DMDPair",
    "DMDResult",
    "FixedGuidance",
    "GuidedCond",
    "GuidedStudent",
    "GuidedTeacher",
    "PD_WEIGHTINGS",
    "Round",
    "ddim_step",
    "distill_round",
    "dmd_gradient",
    "dmd_loss",
    "guided_loss",
    "one_step",
    "pd_loss",
    "pd_target",
    "progressive_distillation",
    "regression_pairs",
    "sample_guided_cond",
    "student_grid",
    "train_dmd",
]
