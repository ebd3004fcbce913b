"""Progressive distillation (diffedu.distill.progressive) against closed forms (monograph §10.3)."""
import copy

import pytest
import torch

from diffedu import distill, toy
from diffedu.engine import fit
from diffedu.nets import MLP, UNet
from diffedu.param import Denoiser
from diffedu.samplers import grid_uniform, sample_ddim, sample_heun
from diffedu.schedules import RectifiedFlow, VPCosine, VPLinear

from distill_helpers import FixedX0, GridAffine, ddim_affine

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (fixture in tests/conftest.py)

SCHEDULES = [VPLinear(), VPCosine(), RectifiedFlow()]
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[0.6, 0.2], [0.2, 0.3]], dtype=torch.float64)


def _random_teacher(shape, sched, kind, seed=0):
    torch.manual_seed(seed)
    net = MLP(dim=shape[1], hidden=32, depth=2) if len(shape) == 2 else UNet(in_channels=shape[1], base=8)
    return Denoiser(net.double(), sched, kind).eval()


def _three_times(B, g):
    t = 0.2 + 0.75 * torch.rand(B, generator=g, dtype=torch.float64)
    s = t * torch.rand(B, generator=g, dtype=torch.float64) * 0.9
    u = s + (t - s) * (0.2 + 0.6 * torch.rand(B, generator=g, dtype=torch.float64))
    return t, u, s


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
@pytest.mark.parametrize("shape", [(16, 2), (3, 1, 8, 8)])
def test_one_student_step_with_the_target_lands_on_two_teacher_steps(sched, kind, shape):
    """The identity (10.3): DDIM(t -> s) with x0 = x~ equals DDIM(t -> u) then DDIM(u -> s) of the teacher, to 1e-12."""
    g = torch.Generator().manual_seed(1)
    teacher = _random_teacher(shape, sched, kind)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    t, u, s = _three_times(shape[0], g)
    target = distill.pd_target(teacher, z, t, u, s)
    with torch.no_grad():
        two = distill.ddim_step(teacher, distill.ddim_step(teacher, z, t, u), u, s)
        one = distill.ddim_step(FixedX0(target, sched), z, t, s)
    assert one.shape == z.shape
    assert (one - two).abs().max() < 1e-12 * max(1.0, two.abs().max().item())


def test_ddim_step_is_the_samplers_ddim_on_a_two_point_grid():
    mix, sched = toy.eight_gaussians(), VPLinear()
    m = mix.denoiser(sched)
    z = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mine = distill.ddim_step(m, z, 0.7, 0.3)
    theirs = sample_ddim(m, z, torch.tensor([0.7, 0.3], dtype=torch.float64))
    assert torch.allclose(mine, theirs, atol=1e-12, rtol=0)


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_gaussian_target_is_the_closed_form_affine_student(sched):
    """For N(mu, Sigma) data the two-step teacher map is affine, A z + b, and x~ = (A z + b - r z)/(alpha_s - r alpha_t)."""
    exact = toy.gaussian(MU, SIGMA).denoiser(sched)
    t, u, s = 0.9, 0.5, 0.1
    A1, b1 = ddim_affine(MU, SIGMA, sched, t, u)
    A2, b2 = ddim_affine(MU, SIGMA, sched, u, s)
    A, b = A2 @ A1, A2 @ b1 + b2
    tt = torch.tensor([t, s], dtype=torch.float64)
    (a_t, a_s), (s_t, s_s) = sched.alpha(tt).tolist(), sched.sigma(tt).tolist()
    r = s_s / s_t
    z = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    closed = (z @ (A - r * torch.eye(2, dtype=torch.float64)).T + b) / (a_s - r * a_t)
    assert torch.allclose(distill.pd_target(exact, z, t, u, s), closed, atol=1e-10, rtol=0)


def _stream(mix, n, seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield mix.sample(n, generator=g, dtype=torch.float64)


def test_trained_one_step_student_converges_to_the_gaussian_optimum():
    """Budget: an affine student, 200 Adam steps (lr 3e-2, batch 256), one PD round 2 -> 1 step on t = 1 -> 0.5 -> 0:
    the student's map at t = 1 equals the closed-form optimum to 1e-3 (max entry; 2e-5 is reached)."""
    sched = VPLinear()
    mix = toy.gaussian(MU, SIGMA)
    exact = mix.denoiser(sched)
    ts = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    student = Denoiser(GridAffine(ts[::2]), sched, "x0")
    res = fit(student, lambda m, x, g: distill.pd_loss(m, exact, x, ts, generator=g), _stream(mix, 256, 0), steps=200,
              lr=3e-2, seed=0, ema_decay=None, grad_clip=None, progress=False)
    # optimum: x~ = two-step map / alpha_0 with sigma_0 = 0, i.e. DDIM(0.5 -> 0) o DDIM(1 -> 0.5)
    A1, b1 = ddim_affine(MU, SIGMA, sched, 1.0, 0.5)
    A2, b2 = ddim_affine(MU, SIGMA, sched, 0.5, 0.0)
    W, c = res.model.net.W[0].detach(), res.model.net.c[0].detach()
    assert (W - A2 @ A1).abs().max() < 1e-3 and (c - (A2 @ b1 + b2)).abs().max() < 1e-3


def test_student_at_2k_steps_reproduces_the_teacher_at_2k_plus_1_steps():
    """Two rounds from the exact Gaussian teacher at 8 DDIM steps (affine students, 150 + 150 Adam steps, lr 3e-2): the 4-step and
    2-step students' DDIM maps match the teacher's 8-step DDIM map to 1e-3 (mean L2), 100x closer than the teacher's own
    DDIM at the same NFE."""
    sched = VPLinear()
    mix = toy.gaussian(MU, SIGMA)
    exact = mix.denoiser(sched)
    ts8 = grid_uniform(8)
    init = Denoiser(GridAffine(ts8), sched, "x0")
    rounds = distill.progressive_distillation(exact, _stream(mix, 256, 1), ts8, rounds=2, steps=150, student=init,
                                              lr=3e-2, ema_decay=None, grad_clip=None)
    z = torch.randn(512, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    target = sample_ddim(exact, z, ts8)
    for r in rounds:
        err = (sample_ddim(r.student, z, r.ts) - target).norm(dim=1).mean().item()
        own = (sample_ddim(exact, z, r.ts) - target).norm(dim=1).mean().item()
        assert err < 1e-3 and err < own / 100, (r.n_steps, err, own)
    assert [r.n_steps for r in rounds] == [4, 2]


def test_students_keep_the_model_contract_and_every_sampler_accepts_them():
    sched = VPLinear()
    teacher = _random_teacher((8, 2), sched, "v")
    rounds = distill.progressive_distillation(teacher, _stream(toy.eight_gaussians(), 64, 0), grid_uniform(4),
                                              rounds=1, steps=3)
    z = torch.randn(8, 2, dtype=torch.float64)
    student = rounds[0].student
    assert student is not teacher and repr(student.schedule) == repr(sched)
    for sampler in (sample_ddim, sample_heun):
        assert sampler(student, z, rounds[0].ts).shape == z.shape


def test_image_students_train():
    sched = VPCosine()
    teacher = _random_teacher((4, 1, 8, 8), sched, "v")
    student = copy.deepcopy(teacher)
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    loss = distill.pd_loss(student, teacher, x0, grid_uniform(4, 0.999, 0.0), generator=torch.Generator().manual_seed(0))
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_bad_input_names_the_argument():
    sched = VPLinear()
    teacher = _random_teacher((4, 2), sched, "eps")
    z = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="t, u, s"):
        distill.pd_target(teacher, z, 0.2, 0.5, 0.1)
    with pytest.raises(ValueError, match="teacher_ts"):
        distill.student_grid(grid_uniform(3))
    with pytest.raises(ValueError, match="teacher_ts"):
        distill.pd_loss(teacher, teacher, z, grid_uniform(3))
    with pytest.raises(ValueError, match="weighting"):
        distill.pd_loss(teacher, teacher, z, grid_uniform(2), weighting="lsgan")
    with pytest.raises(TypeError, match="teacher"):
        distill.pd_target(lambda x, t: x, z, 0.5, 0.3, 0.1)
    with pytest.raises(ValueError, match="rounds"):
        distill.progressive_distillation(teacher, iter([z]), grid_uniform(6), rounds=2, steps=1)
    with pytest.raises(ValueError, match="student"):
        distill.progressive_distillation(toy.eight_gaussians().denoiser(sched), iter([z]), grid_uniform(4), rounds=1, steps=1)
    with pytest.raises(ValueError, match="student"):
        distill.distill_round(teacher, teacher, iter([z]), grid_uniform(2), steps=1)
