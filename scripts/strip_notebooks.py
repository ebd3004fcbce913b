"""Strip outputs, execution counts and widget state from notebooks (run by `make strip`).

Usage: python scripts/strip_notebooks.py [NOTEBOOK_OR_FOLDER ...]   (default: chapters/)
Committed notebooks carry no outputs; tests/test_notebooks.py checks it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(nb) -> bool:
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.outputs or cell.execution_count is not None:
                changed = True
            cell.outputs, cell.execution_count = [], None
            if cell.metadata.pop("execution", None) is not None:
                changed = True
    if nb.metadata.pop("widgets", None) is not None:
        changed = True
    return changed


def main(argv: list[str]) -> int:
    targets = [Path(a) for a in argv] or [Path(__file__).resolve().parents[1] / "chapters"]
    for target in targets:
        for path in sorted(target.glob("*.ipynb")) if target.is_dir() else [target]:
            nb = nbformat.read(path, as_version=4)
            if strip(nb):
                nbformat.write(nb, path)
                print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
