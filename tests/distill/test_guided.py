"""Guided distillation (diffedu.distill.guided): the per-example CFG teacher and the w-conditioned student (monograph §10.3, §8.2)."""
import pytest
import torch

from diffedu import distill, guidance, toy
from diffedu.nets import MLP, UNet
from diffedu.samplers import grid_uniform, sample_ddim
from diffedu.schedules import VPLinear

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (fixture in tests/conftest.py)


def _setup(B=32):
    mix = toy.labelled_mixture()
    sched = VPLinear()
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(B, 2, generator=g, dtype=torch.float64)
    c = torch.randint(0, mix.num_classes, (B,), generator=g)
    return mix, sched, mix.denoiser(sched), x, c


@pytest.mark.parametrize("w", [0.0, 1.5, 4.0])
def test_guided_teacher_at_one_scale_is_cfg(w):
    mix, sched, model, x, c = _setup()
    teacher = distill.GuidedTeacher(model, null_label=mix.num_classes)
    t = torch.full((len(x),), 0.4, dtype=torch.float64)
    got = distill.FixedGuidance(teacher, w)(x, t, c)
    ref = guidance.cfg(model, w, null_label=mix.num_classes)(x, t, c)
    assert torch.allclose(got.eps, ref.eps, atol=1e-12) and torch.allclose(got.x0, ref.x0, atol=1e-10)


def test_per_example_scales_match_one_scale_at_a_time():
    mix, sched, model, x, c = _setup()
    teacher = distill.GuidedTeacher(model, null_label=mix.num_classes)
    w = torch.linspace(0, 3, len(x), dtype=torch.float64)
    t = torch.full((len(x),), 0.6, dtype=torch.float64)
    got = teacher(x, t, distill.GuidedCond(c, w)).eps
    for i in (0, 7, len(x) - 1):
        one = guidance.cfg(model, float(w[i]), null_label=mix.num_classes)(x[i:i + 1], t[i:i + 1], c[i:i + 1]).eps
        assert torch.allclose(got[i:i + 1], one, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 2), (2, 1, 8, 8)])
def test_guided_student_takes_w_as_an_input_channel_and_keeps_the_contract(shape):
    torch.manual_seed(0)
    sched = VPLinear()
    net = MLP(dim=3, out_dim=2, hidden=16, depth=1, num_classes=3) if len(shape) == 2 else \
        UNet(in_channels=2, out_channels=1, base=8, num_classes=3)
    student = distill.GuidedStudent(net, sched, "v", w_scale=4.0)
    x = torch.randn(shape)
    c = torch.randint(0, 3, (shape[0],))
    out_1, out_3 = sample_ddim(student.at(1.0), x, grid_uniform(3), cond=c), sample_ddim(student.at(3.0), x, grid_uniform(3), cond=c)
    assert out_1.shape == x.shape and not torch.allclose(out_1, out_3)


def test_stage_one_loss_is_zero_for_the_teacher_itself_and_pd_accepts_guided_models():
    mix, sched, model, x, c = _setup()
    teacher = distill.GuidedTeacher(model, null_label=mix.num_classes)
    gen = torch.Generator().manual_seed(1)
    assert distill.guided_loss(teacher, teacher, x, c, generator=gen).abs().max() < 1e-20
    cond = distill.sample_guided_cond(c, (0.0, 3.0), generator=gen)
    cond = distill.GuidedCond(cond.labels, cond.w.double())
    assert (cond.w >= 0).all() and (cond.w <= 3).all()
    loss = distill.pd_loss(teacher, teacher, x, grid_uniform(4), cond=cond, weighting="none", generator=gen)
    # the teacher's own one step is not its two steps: the loss is positive, and finite
    assert loss.shape == (len(x),) and torch.isfinite(loss).all() and loss.mean() > 0


def test_bad_input_names_the_argument():
    mix, sched, model, x, c = _setup(4)
    teacher = distill.GuidedTeacher(model, null_label=mix.num_classes)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    with pytest.raises(TypeError, match="cond"):
        teacher(x, t, c)
    with pytest.raises(ValueError, match="cond.w"):
        teacher(x, t, distill.GuidedCond(c, torch.zeros(3)))
    with pytest.raises(ValueError, match="w_range"):
        distill.sample_guided_cond(c, (3.0, 1.0))
    with pytest.raises(ValueError, match="null_label"):
        distill.GuidedTeacher(model, null_label=-1)
    with pytest.raises(ValueError, match="cond"):
        distill.FixedGuidance(teacher, 1.0)(x, t, None)
