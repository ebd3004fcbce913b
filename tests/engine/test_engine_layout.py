"""House rules of diffedu/engine/: short functions, cited docstrings, absolute imports, no module-level state."""
import ast
from pathlib import Path

import pytest

import diffedu.engine as engine

ENGINE = Path(engine.__file__).resolve().parent
MODULES = sorted(ENGINE.glob("*.py"))


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_functions_are_short_and_imports_absolute(path):
    tree = _tree(path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.name}:{node.lineno} {node.name} is {length} lines long"
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}:{node.lineno} uses a relative import"
        if isinstance(node, ast.ImportFrom) and node.names[0].name == "*":
            pytest.fail(f"{path.name}:{node.lineno} uses a star import")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_level_mutable_state(path):
    for node in _tree(path).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if names and names != ["__all__"] and node.value is not None:
            assert not isinstance(node.value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)), \
                f"{path.name}:{node.lineno} {names} is module-level mutable state"


def test_public_names_are_explicit_documented_and_cited():
    assert sorted(engine.__all__) == sorted(set(engine.__all__))
    for name in engine.__all__:
        obj = getattr(engine, name)
        doc = obj.__doc__ or ""
        assert doc.strip(), f"engine.{name} has no docstring"
        if callable(obj) and not isinstance(obj, type) or name in ("EMA", "TrainState", "FitResult", "LossHistory"):
            assert "monograph §" in doc, f"engine.{name}'s docstring cites no monograph section"
    assert "from diffedu.engine" in (ENGINE / "__init__.py").read_text()
