"""Student notebooks and grading (the classroom side of the exercise convention).

* :func:`make_student_notebook` replaces the code between ``# BEGIN SOLUTION`` and
  ``# END SOLUTION`` in cells tagged ``solution`` with ``raise NotImplementedError(...)``,
  keeps the checker cells, strips every output and execution count, and writes the diffedu and
  nbgrader metadata of :func:`diffedu.exercises.assignments.annotate` (cell roles, exercise ids,
  points, nbgrader grade ids): the cell metadata nbgrader itself writes into an assignment.
* :func:`grade_notebook` executes a notebook offline with nbclient (the current Python's kernel,
  errors tolerated so one wrong exercise does not stop the rest) and reads the verdict of every
  cell tagged ``check``. It runs the notebook **unsandboxed**, as the book's own tests do: grade
  students' submissions with :mod:`diffedu.exercises.grading` (``python -m diffedu.exercises
  grade``), which isolates them.

Both are reached from the command line: ``python -m diffedu.exercises student|grade ...``.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Iterable

from .assignments import annotate
from .core import METADATA_KEY, result_from_output

__all__ = ["BEGIN", "END", "SOLUTION_TAG", "CHECK_TAG", "strip_solution", "make_student_notebook",
           "write_student_notebooks", "grade_notebook", "exercise_cells"]

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
SOLUTION_TAG = "solution"
CHECK_TAG = "check"
#: tags that only make sense in the book (hide the solution); dropped in student notebooks
BOOK_ONLY_TAGS = {"hide-input", "hide-cell", "remove-input"}

_BEGIN_RE = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?P<note>.*)$")
_END_RE = re.compile(r"^[ \t]*# END SOLUTION\b.*$")
_CHECK_CALL_RE = re.compile(r"\b(check_\w+)\s*\(")


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def strip_solution(source: str, exercise: str = "") -> str:
    """Replace every ``# BEGIN SOLUTION ... # END SOLUTION`` block by ``raise NotImplementedError``.

    The ``raise`` keeps the indentation of the BEGIN marker. Text after the marker, e.g.
    ``# BEGIN SOLUTION (hint: use torch.logsumexp)``, is kept as a comment for the student.
    """
    out, inside, found = [], False, False
    for line in source.splitlines():
        m = _BEGIN_RE.match(line)
        if m and not inside:
            inside, found = True, True
            note = m.group("note").strip()
            if note:
                out.append(f"{m.group('indent')}# {note.lstrip('#: ').strip()}")
            label = f"Exercise {exercise}" if exercise else "Exercise"
            out.append(f'{m.group("indent")}raise NotImplementedError("{label}: write your solution here")')
            continue
        if inside:
            if _END_RE.match(line):
                inside = False
            continue
        out.append(line)
    if inside:
        raise ValueError("unterminated '# BEGIN SOLUTION' block (no '# END SOLUTION')")
    if not found:
        raise ValueError("a cell tagged 'solution' has no '# BEGIN SOLUTION' / '# END SOLUTION' block")
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _exercise_id_near(nb, index: int) -> str:
    """The exercise id of the check cell after a solution cell, from its source (best effort)."""
    for cell in nb.cells[index + 1:index + 4]:
        if cell.cell_type == "code" and CHECK_TAG in _tags(cell):
            m = _CHECK_CALL_RE.search(cell.source)
            return m.group(1) if m else ""
    return ""


def make_student_notebook(nb, points=None):
    """A student copy of a chapter notebook (``nbformat.NotebookNode`` in, new one out).

    ``points`` overrides the points of :data:`diffedu.exercises.assignments.POINTS` per exercise id.
    """
    nb = annotate(copy.deepcopy(nb), points)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = _tags(cell)
        if SOLUTION_TAG in tags:
            cell.source = strip_solution(cell.source)
            cell.metadata["tags"] = [t for t in tags if t not in BOOK_ONLY_TAGS]
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def _notebooks(paths: Iterable[Path]) -> list[Path]:
    found = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found += sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("_"))
        else:
            found.append(path)
    return found


def write_student_notebooks(paths: Iterable[Path], out_dir: Path, points=None) -> list[Path]:
    """Write student versions of the given notebooks (or of every notebook in given folders)."""
    import nbformat

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in _notebooks(paths):
        nb = nbformat.read(path, as_version=4)
        if not any(SOLUTION_TAG in _tags(c) for c in nb.cells if c.cell_type == "code"):
            continue
        target = out_dir / path.name
        nbformat.write(make_student_notebook(nb, points), target)
        written.append(target)
    return written


def exercise_cells(nb) -> list[int]:
    """Indices of the cells tagged ``check``."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and CHECK_TAG in _tags(c)]


def _error_text(outputs) -> str | None:
    for out in outputs:
        if out.get("output_type") == "error":
            text = f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"
            return text.strip()
    return None


def grade_notebook(path: Path, timeout: int = 600, kernel_name: str | None = None) -> dict:
    """Execute a notebook (errors tolerated) and score its check cells.

    Returns ``{"notebook", "exercises": [{"exercise", "passed", "message"}...], "passed",
    "total", "score"}``. A check cell that displayed a verdict is scored by it; one that failed
    before (e.g. a ``NameError`` because the solution cell does not run) counts as failed,
    with the error as its message. The kernel runs in the notebook's folder and inherits the
    environment, so ``DIFFEDU_FAST=1`` applies.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, allow_errors=True, kernel_name=kernel_name or _kernel_name(nb),
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    client.execute()
    exercises = []
    for i in exercise_cells(nb):
        cell = nb.cells[i]
        verdicts = [r for r in (result_from_output(o) for o in cell.outputs) if r is not None]
        error = _error_text(cell.outputs)
        if verdicts:
            latest = {}
            for v in verdicts:  # one verdict per exercise and cell (the last one shown)
                latest[v["exercise"]] = {"exercise": v["exercise"], "passed": bool(v["passed"]) and error is None,
                                         "message": v["message"]}
            exercises += latest.values()
        else:
            m = _CHECK_CALL_RE.search(cell.source)
            exercises.append({
                "exercise": m.group(1) if m else f"cell {i}",
                "passed": error is None,
                "message": error or "check cell ran without a verdict",
            })
    passed = sum(e["passed"] for e in exercises)
    total = len(exercises)
    return {"notebook": str(path), "exercises": exercises, "passed": passed, "total": total,
            "score": passed / total if total else 0.0}


def _kernel_name(nb) -> str:
    # run in the kernel of the Python that grades (the student's environment), whatever the
    # notebook's metadata names
    return "python3"


def dumps(report: dict) -> str:
    """A report as indented JSON."""
    return json.dumps(report, indent=2)


__all__ += ["dumps", "METADATA_KEY"]
