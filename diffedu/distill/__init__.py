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

Chapter 11 learns fast generators from scratch, checked against the exact flow map of
:func:`diffedu.toy.flow_map` (monograph §11):

* :mod:`~diffedu.distill.consistency` -- consistency models: f(x, t) = Psi_{t->0}(x) with the
  boundary condition built in, consistency distillation and training, multistep sampling
  (Song et al. 2023; Song & Dhariwal 2023; §11.2);
* :mod:`~diffedu.distill.ctm` -- consistency trajectory models: G(x_t, t, s) for any jump,
  soft consistency plus DSM, gamma-sampling (Kim et al. 2024; §11.4);
* :mod:`~diffedu.distill.scm` -- continuous-time consistency (sCM): TrigFlow, the tangent df/dt by
  ``torch.func.jvp``, tangent normalisation and warm-up, adaptive weighting (Lu & Song 2024; §11.3);
* :mod:`~diffedu.distill.meanflow` -- MeanFlow: a network u(x, r, t) of the average velocity trained on
  the identity u = v - (t - r) du/dt, one- and few-step jumps (Geng et al. 2025; §11.5).
"""
from diffedu.distill.consistency import (
    CM_WEIGHTINGS,
    DISTANCES,
    ConsistencyModel,
    GRID_SPACINGS,
    ExactConsistency,
    boundary_coefficients,
    cd_loss,
    consistency_distance,
    consistency_grid,
    ct_curriculum,
    ct_loss,
    pseudo_huber,
    sample_consistency,
    teacher_step,
    train_consistency,
)
from diffedu.distill.ctm import CTM, ExactCTM, PairMLP, ctm_loss, jump_coefficients, sample_gamma
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
from diffedu.distill.meanflow import (
    MeanFlow,
    TwoTimeNet,
    adaptive_weight,
    check_meanflow_schedule,
    meanflow_loss,
    meanflow_target,
    sample_meanflow,
    sample_meanflow_times,
    total_derivative,
    train_meanflow,
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
from diffedu.distill.scm import (
    SCM,
    TrigFlow,
    consistency_tangent,
    sample_scm_times,
    scm_loss,
    scm_target,
    tangent_warmup,
    train_scm,
)

__all__ = [
    "CM_WEIGHTINGS",
    "CTM",
    "ConsistencyModel",
    "DISTANCES",
    "ExactCTM",
    "ExactConsistency",
    "GRID_SPACINGS",
    "PairMLP",
    "boundary_coefficients",
    "cd_loss",
    "consistency_distance",
    "consistency_grid",
    "ct_curriculum",
    "ct_loss",
    "ctm_loss",
    "jump_coefficients",
    "pseudo_huber",
    "sample_consistency",
    "sample_gamma",
    "teacher_step",
    "train_consistency",
    "MeanFlow",
    "TwoTimeNet",
    "adaptive_weight",
    "check_meanflow_schedule",
    "meanflow_loss",
    "meanflow_target",
    "sample_meanflow",
    "sample_meanflow_times",
    "total_derivative",
    "train_meanflow",
    "SCM",
    "TrigFlow",
    "consistency_tangent",
    "sample_scm_times",
    "scm_loss",
    "scm_target",
    "tangent_warmup",
    "train_scm",
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
