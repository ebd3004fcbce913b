"""The package builds cleanly (no deprecated metadata) and works installed from its wheel, outside the repo.

A reader installs diffedu as a wheel (pip, Colab), not from this checkout: build the wheel and the
sdist with every setuptools warning turned into an error, install the wheel into a fresh virtual
environment, and run one exact-oracle sample there with the repository nowhere on the path.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

BUILD = textwrap.dedent("""
    import sys, warnings
    from setuptools.warnings import SetuptoolsWarning
    warnings.simplefilter("error", SetuptoolsWarning)
    import setuptools.build_meta as backend
    out = sys.argv[1]
    print(backend.build_wheel(out))
    print(backend.build_sdist(out))
""")


def _source_copy(dst: Path, pyproject: str | None = None) -> Path:
    """What a build sees: pyproject, README, LICENSE and the package (no build artefacts of the checkout)."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "diffedu", dst / "diffedu", ignore=shutil.ignore_patterns("__pycache__"))
    if pyproject is not None:
        (dst / "pyproject.toml").write_text(pyproject)
    return dst


def _build(src: Path, out: Path) -> subprocess.CompletedProcess:
    out.mkdir()
    return subprocess.run([sys.executable, "-c", BUILD, str(out)], cwd=src, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("build") / "dist"
    res = _build(src, out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_wheel_and_sdist_build_without_packaging_warnings(dist):
    wheel = next(dist.glob("diffedu-*.whl"))
    assert next(dist.glob("diffedu-*.tar.gz"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    assert any(n.endswith("licenses/LICENSE") for n in names)
    for room in ("objectives", "samplers", "engine", "transport", "nets", "data", "metrics"):
        assert f"diffedu/{room}/__init__.py" in names, room


def test_the_deprecated_licence_table_would_fail_this_build(tmp_path):
    old = (ROOT / "pyproject.toml").read_text().replace('license = "MIT"\nlicense-files = ["LICENSE"]',
                                                        'license = {text = "MIT"}')
    assert old != (ROOT / "pyproject.toml").read_text()
    (tmp_path / "src").mkdir()
    res = _build(_source_copy(tmp_path / "src", old), tmp_path / "out")
    assert res.returncode != 0 and "license" in res.stderr.lower()


def test_the_installed_wheel_samples_from_the_exact_oracle(dist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    wheel = next(dist.glob("diffedu-*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300, capture_output=True)
    # the dependencies (torch, scipy, ...) come from this environment; diffedu itself only from the wheel
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = textwrap.dedent("""
        import torch, diffedu
        from diffedu import schedules, toy
        from diffedu.samplers import grid_uniform, sample_heun_t
        assert "venv" in diffedu.__file__, diffedu.__file__
        # data N(1, 0.25 I): the rectified-flow PF-ODE carries N(0, I) at t = 1 to it by x0 = 1 + x1 / 2
        mix = toy.gaussian(torch.ones(2), 0.25 * torch.eye(2))
        x1 = torch.randn(512, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x0 = sample_heun_t(mix.denoiser(schedules.RectifiedFlow()), x1, grid_uniform(64))
        err = (x0 - (1 + x1 / 2)).abs().max()
        assert err < 1e-3, err
        print("ok", diffedu.__file__)
    """)
    res = subprocess.run([str(py), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
