"""The package's architecture, checked: the import rule between rooms, explicit exports, short functions.

The rule (README "Layout"): the foundation (``_checks, schedules, gaussian, forward, param, sde,
processes, toy, autodiff``) imports nothing above it; the rooms ``objectives, samplers, nets, data,
metrics, engine`` import the foundation and, among themselves, never ``objectives`` (and
``objectives`` never ``samplers``); ``guidance, likelihood, transport, distill, baselines`` may
import both layers below; ``viz, notebook, exercises`` sit on top. Only the top imports
matplotlib, ipywidgets or IPython.
"""
from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "diffedu"

FOUNDATION = {"_checks", "schedules", "gaussian", "forward", "param", "sde", "processes", "toy", "autodiff"}
ROOMS = {"objectives", "samplers", "nets", "data", "metrics", "engine"}
UPPER = {"guidance", "likelihood", "transport", "distill", "baselines"}
TOP = {"viz", "notebook", "exercises", "__main__", "train_images"}
LAYER = {**{m: 0 for m in FOUNDATION}, **{m: 1 for m in ROOMS}, **{m: 2 for m in UPPER}, **{m: 3 for m in TOP}}
PLOTTING = ("matplotlib", "ipywidgets", "IPython")


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _room(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path):
    """Every module name imported anywhere in the file (function-level imports included), absolute."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = ["diffedu", *path.relative_to(PKG).parent.parts]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "diffedu" or (node.level and not node.module):
                for a in node.names:  # from diffedu import x  /  from . import x
                    yield node.lineno, f"{mod}.{a.name}"
            else:
                yield node.lineno, mod


def _violations(path: Path):
    room = _room(path)
    if room == "__init__":
        return
    assert room in LAYER, f"{path.relative_to(PKG)}: room {room!r} is not in the layout table of tests/test_layout.py"
    for line, mod in _imports(path):
        top = mod.split(".")[0]
        where = f"{path.relative_to(PKG)}:{line} imports {mod}"
        if top in PLOTTING and LAYER[room] < 3:
            yield f"{where} (only viz, notebook and exercises may import {top})"
        if top != "diffedu" or mod == "diffedu":
            continue
        target = mod.split(".")[1]
        if target == room or target == "__init__":
            continue
        if target not in LAYER:
            yield f"{where} (unknown room {target!r})"
        elif LAYER[target] > LAYER[room]:
            yield f"{where} (layer {LAYER[room]} may not import layer {LAYER[target]})"
        elif LAYER[room] == 1 and LAYER[target] == 1 and (target == "objectives" or (room, target) == ("objectives", "samplers")):
            yield f"{where} ({room} may not import {target})"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_layering_rule(path):
    bad = list(_violations(path))
    assert not bad, "\n".join(bad)


def test_the_checker_catches_a_violation(tmp_path, monkeypatch):
    fake = PKG / "samplers" / "_layout_probe.py"
    try:
        fake.write_text("from diffedu.objectives import denoising_loss\nimport matplotlib\n")
        bad = list(_violations(fake))
    finally:
        fake.unlink()
    assert len(bad) == 2 and "may not import objectives" in bad[0] and "matplotlib" in bad[1]


@pytest.mark.parametrize("init", sorted(PKG.rglob("__init__.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_subpackages_export_explicit_names(init):
    tree = ast.parse(init.read_text())
    stars = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]
    assert not stars, f"{init.relative_to(PKG)}: star import at lines {stars}"
    if init.parent != PKG:
        names = [n for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)]
        has_code = any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body)
        assert names or not has_code, f"{init.relative_to(PKG)}: exports names without an __all__"


def test_every_exported_name_exists():
    import importlib

    for init in sorted(PKG.rglob("__init__.py")):
        mod = ".".join(["diffedu", *init.relative_to(PKG).parent.parts])
        m = importlib.import_module(mod)
        for name in getattr(m, "__all__", []):
            assert hasattr(m, name), f"{mod}.__all__ names {name!r}, which it does not define"


MAX_LINES = 80


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_tests_mirror_the_tree():
    tests = Path(__file__).resolve().parent
    for room in sorted(ROOMS | UPPER - {"guidance"}):
        if (PKG / room).is_dir():
            assert (tests / room).is_dir() and any((tests / room).glob("test_*.py")), f"tests/{room}/ is missing"


def test_only_one_conftest():
    # a second tests/**/conftest.py is imported under the same module name and shadows `from conftest import ...`
    tests = Path(__file__).resolve().parent
    extra = [p.relative_to(tests) for p in tests.rglob("conftest.py") if p.parent != tests]
    assert not extra, f"move these fixtures into tests/conftest.py: {extra}"


def test_test_files_have_unique_names():
    # pytest imports test modules by basename (no __init__.py): two test_x.py in different folders collide
    tests = Path(__file__).resolve().parent
    names = collections.Counter(p.name for p in tests.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], [n for n, c in names.items() if c > 1]
