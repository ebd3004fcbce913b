"""Shared fixtures for the book, notebook and exercise tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
sys.path.insert(0, str(ROOT / "scripts"))  # scripts/check_book.py, strip_notebooks.py


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def repo_notebooks(folder: str = "chapters") -> list[Path]:
    """Notebooks that are (or would be) committed: tracked, or untracked but not git-ignored."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", f"{folder}/*.ipynb"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()
        return sorted({ROOT / p for p in out if (ROOT / p).exists()})
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return sorted((ROOT / folder).glob("*.ipynb"))


def chapter_notebooks() -> list[Path]:
    """Every notebook of chapters/ (numbered chapters chNN_*, appendices and the image chapters)."""
    return [p for p in repo_notebooks() if not p.name.startswith("_")]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: tiny nets are faster so, and do not stall on shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
