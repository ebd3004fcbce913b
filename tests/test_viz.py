"""Tests for diffedu.viz on the Agg backend: returned objects, artist counts, image arrays (no golden images)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import matplotlib  # a hard dependency of diffedu: no skip

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.animation import FuncAnimation  # noqa: E402

from diffedu import viz  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def gaussian_log_prob(x):
    return -0.5 * (x ** 2).sum(dim=1) - math.log(2 * math.pi)


def test_importing_diffedu_does_not_import_matplotlib():
    code = "import sys, diffedu, diffedu.viz, diffedu.nets, diffedu.data, diffedu.engine; assert 'matplotlib' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_scatter_on_given_and_new_axes():
    x = torch.randn(50, 2)
    fig, ax = plt.subplots()
    assert viz.scatter(x, ax=ax) is ax
    assert len(ax.collections) == 1
    np.testing.assert_allclose(ax.collections[0].get_offsets(), x.numpy(), rtol=1e-6)
    ax2 = viz.scatter(x.numpy(), color="r")
    assert ax2 is not ax and len(ax2.collections) == 1
    with pytest.raises(ValueError, match="x"):
        viz.scatter(torch.randn(5, 3))


def test_density_image_is_exp_log_prob_on_the_grid():
    ax = viz.density(gaussian_log_prob, extent=(-3, 3, -2, 2), n=41)
    img = ax.images[-1].get_array()
    assert img.shape == (41, 41)
    # row 0 is y = ymin, column 0 is x = xmin (origin="lower"); the centre is the mode
    assert img[20, 20] == pytest.approx(1 / (2 * math.pi))
    assert img[0, 0] == pytest.approx(math.exp(-0.5 * (9 + 4)) / (2 * math.pi))
    assert tuple(ax.images[-1].get_extent()) == (-3, 3, -2, 2)
    log_img = viz.density(gaussian_log_prob, extent=(-3, 3, -2, 2), n=41, log=True).images[-1].get_array()
    np.testing.assert_allclose(np.exp(log_img), img, rtol=1e-6)


def test_density_bad_input():
    with pytest.raises(ValueError, match="log_prob_fn"):
        viz.density(lambda x: x, extent=(-1, 1, -1, 1), n=5)
    with pytest.raises(ValueError, match="extent"):
        viz.density(gaussian_log_prob, extent=(1, -1, -1, 1))
    with pytest.raises(TypeError, match="extent"):
        viz.density(gaussian_log_prob, extent=(1, 2))
    with pytest.raises(ValueError, match="n"):
        viz.density(gaussian_log_prob, extent=(-1, 1, -1, 1), n=1)
    with pytest.raises(TypeError, match="log_prob_fn"):
        viz.density(3, extent=(-1, 1, -1, 1))


def test_vector_field_quiver():
    ax = viz.vector_field(lambda x: -x, extent=(-2, 2, -2, 2), n=7)
    q = ax.collections[-1]
    assert q.N == 49
    np.testing.assert_allclose(q.U, -q.X, atol=1e-6)
    np.testing.assert_allclose(q.V, -q.Y, atol=1e-6)
    qn = viz.vector_field(lambda x: -3 * x, extent=(-2, 2, -2, 2), n=6, normalize=True).collections[-1]
    np.testing.assert_allclose(np.hypot(qn.U, qn.V), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="field_fn"):
        viz.vector_field(lambda x: x[:, 0], extent=(-1, 1, -1, 1))


def test_trajectories_lines_and_endpoints():
    xs = torch.randn(10, 6, 2).cumsum(0)
    ax = viz.trajectories(xs)
    assert len(ax.lines) == 6
    assert len(ax.collections) == 2
    np.testing.assert_allclose(ax.lines[3].get_xydata(), xs[:, 3].numpy(), rtol=1e-6)
    ax = viz.trajectories(xs, max_paths=2, endpoints=False)
    assert len(ax.lines) == 2 and len(ax.collections) == 0
    with pytest.raises(ValueError, match="xs"):
        viz.trajectories(torch.randn(10, 2))


def test_make_grid_layout():
    x = torch.linspace(-1, 1, 5).reshape(5, 1, 1, 1).expand(5, 1, 3, 4)
    g = viz.make_grid(x, nrow=2, padding=1)
    assert g.shape == (3 * 4 + 1, 2 * 5 + 1)
    assert g[1, 1] == 0.0 and g[1, 6] == 0.25 and g[5, 1] == 0.5 and g[9, 1] == 1.0
    assert g[0, 0] == 1.0  # padding
    assert g[9, 6] == 1.0  # empty slot filled with the pad value
    rgb = viz.make_grid(torch.zeros(3, 3, 4, 4), nrow=8, padding=0)
    assert rgb.shape == (4, 12, 3) and np.all(rgb == 0.5)
    with pytest.raises(ValueError, match="x"):
        viz.make_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="nrow"):
        viz.make_grid(torch.zeros(2, 1, 4, 4), nrow=0)


def test_image_grid():
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    fig, ax = plt.subplots()
    assert viz.image_grid(x, nrow=5, ax=ax, title="digits") is ax
    img = ax.images[-1]
    assert img.get_array().shape == (2 * 9 + 1, 5 * 9 + 1)
    assert img.get_clim() == (0.0, 1.0)
    assert ax.get_title() == "digits"
    rgb = viz.image_grid(torch.rand(4, 3, 8, 8) * 2 - 1, nrow=2)
    assert rgb.images[-1].get_array().shape == (19, 19, 3)


def test_animate_trajectories_is_small_funcanimation():
    xs = torch.randn(100, 20, 2).cumsum(0) * 0.1
    anim = viz.animate_trajectories(xs, max_frames=4, times=np.linspace(1, 0, 100))
    assert isinstance(anim, FuncAnimation)
    html = anim.to_jshtml()
    assert html.count("data:image/png;base64") == 4
    assert len(html) < 2_000_000
    with pytest.raises(ValueError, match="times"):
        viz.animate_trajectories(xs, times=[0.0, 1.0])


def test_loss_curve():
    losses = np.exp(-np.linspace(0, 3, 200)) + 0.01
    ax = viz.loss_curve(losses, smooth=20)
    assert len(ax.lines) == 2
    assert len(ax.lines[1].get_xdata()) == 200 - 20 + 1
    assert ax.get_yscale() == "log"
    ax = viz.loss_curve(torch.tensor([1.0, -1.0]), smooth=1)
    assert len(ax.lines) == 1 and ax.get_yscale() == "linear"
    with pytest.raises(ValueError, match="losses"):
        viz.loss_curve([])
