"""Bad input gets a clear error that names the argument (not an opaque shape error from torch)."""
import pytest
import torch

from diffedu import param, schedules as S, sde, toy
from diffedu.forward import add_noise, sample_times
from diffedu.objectives.denoising import denoising_loss, loss_weight
from diffedu.metrics import sliced_wasserstein
from diffedu.param import Denoiser

X = torch.randn(4, 2)
T = torch.full((4,), 0.5)
VP = S.VPLinear()


class _Bad(torch.nn.Module):
    def forward(self, x, t, cond=None):
        return x[:, :1]


CASES = [
    ("t", lambda: add_noise(VP, X, torch.full((4,), 1.5))),                       # t above 1
    ("t", lambda: add_noise(VP, X, torch.full((4,), -0.1))),                      # t below 0
    ("t", lambda: add_noise(VP, X, torch.tensor([0.1, float("nan"), 0.2, 0.3]))),  # NaN time
    ("t", lambda: add_noise(VP, X, torch.full((3,), 0.5))),                       # batch mismatch
    ("t", lambda: add_noise(VP, X, torch.tensor([1, 2, 3, 4]))),                  # integer steps leak in
    ("x0", lambda: add_noise(VP, torch.randn(4), 0.5)),                           # missing batch dim
    ("x0", lambda: add_noise(VP, torch.randn(0, 2), 0.5)),                        # empty batch
    ("x0", lambda: add_noise(VP, torch.tensor([[0.0, float("nan")]]), 0.5)),     # NaN data
    ("x0", lambda: add_noise(VP, torch.ones(2, 2, dtype=torch.long), 0.5)),      # integer data
    ("eps", lambda: add_noise(VP, X, T, eps=torch.randn(4, 3))),                  # eps shape
    ("schedule", lambda: add_noise("vp", X, T)),                                  # not a schedule
    ("src", lambda: param.convert(X, "noise", "x0", X, T, VP)),                   # unknown kind
    ("dst", lambda: param.convert(X, "eps", "flow", X, T, VP)),                   # unknown kind
    ("out", lambda: param.convert(torch.randn(4, 3), "eps", "x0", X, T, VP)),    # out shape
    ("prediction", lambda: Denoiser(torch.nn.Identity(), VP, "epsilon")),        # unknown prediction
    ("net output", lambda: Denoiser(_Bad(), VP)(X, T)),                          # net returns wrong shape
    ("beta_max", lambda: S.VPLinear(beta_min=1.0, beta_max=0.5)),                # schedule out of range
    ("beta_min", lambda: S.VPLinear(beta_min=-0.1)),
    ("sigma_max", lambda: S.VEGeometric(sigma_min=1.0, sigma_max=0.5)),
    ("sigma_min", lambda: S.VEGeometric(sigma_min=0.0)),
    ("s", lambda: S.VPCosine(s=-0.1)),
    ("betas", lambda: S.DiscreteSchedule(torch.tensor([0.1, 1.5]))),
    ("num_steps", lambda: S.DiscreteSchedule.linear(num_steps=0)),
    ("t", lambda: VP.alpha(torch.tensor([2.0]))),                                 # schedule method guards t
    ("means", lambda: toy.GaussianMixture(torch.randn(3), stds=1.0)),
    ("covs, stds", lambda: toy.GaussianMixture(torch.randn(2, 2))),
    ("covs", lambda: toy.GaussianMixture(torch.randn(2, 2), covs=torch.tensor([[[1.0, 0.5], [0.0, 1.0]]] * 2))),
    ("weights", lambda: toy.GaussianMixture(torch.randn(2, 2), stds=1.0, weights=[1.0, -1.0])),
    ("x", lambda: toy.eight_gaussians().score_t(torch.randn(4, 3), T, VP)),      # wrong dimension for the mixture
    ("cond", lambda: toy.labelled_mixture().score_t(X, T, VP, cond=torch.tensor([0, 1, 9, 0]))),
    ("cond", lambda: toy.eight_gaussians().score_t(X, T, VP, cond=torch.zeros(4, dtype=torch.long))),
    ("name", lambda: toy.sample_dataset("moons", 10)),
    ("kind", lambda: sample_times(8, kind="beta")),
    ("t_min, t_max", lambda: sample_times(8, t_min=0.5, t_max=0.2)),
    ("weighting", lambda: loss_weight("snr2", T, VP)),
    ("model", lambda: denoising_loss(torch.nn.Identity(), X)),
    ("score", lambda: sde.pf_ode_velocity(VP, X, T, torch.randn(4, 3))),
    ("ts", lambda: sde.simulate_forward_sde(VP, X, torch.tensor([0.5, 0.2]))),
    ("y", lambda: sliced_wasserstein(X, torch.randn(5, 2))),
]


@pytest.mark.parametrize("name,fn", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input_names_the_argument(name, fn):
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    assert name in str(info.value), f"error message should name {name!r}: {info.value}"

