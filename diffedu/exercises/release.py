"""Releasing chapters to a class: one call writes everything a course needs for an assignment.

:func:`release` takes chapter selectors (``ch03``, ``3``, a file name or path) and writes into
``out_dir``::

    manifest.json                      exercises (id, checker, checked expression, points, grade_id) per chapter
    student/chNN_*.ipynb               the student versions (stubs, no outputs, diffedu + nbgrader metadata)
    solutions/chMM_*.ipynb             with ``solutions=True``: the worked solutions of the earlier chapters
    nbgrader/source/chNN/chNN_*.ipynb  with ``nbgrader=True``: nbgrader's source version (solutions kept
    nbgrader/nbgrader_config.py        between the ``# BEGIN SOLUTION`` markers, metadata set) and a config

"Earlier chapters" are the chapters of ``chapters_dir`` numbered below the highest released one
that are not released themselves. The manifest is what ``grade --manifest`` uses to decide what
is graded and for how many points, whatever a submission's own metadata says.
"""
from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

from .assignments import annotate, chapter_of, exercise_specs, parse_points
from .notebooks import SOLUTION_TAG, make_student_notebook

__all__ = ["release", "resolve_chapters", "chapter_number", "MANIFEST"]

MANIFEST = "manifest.json"
_NUMBER_RE = re.compile(r"^ch(\d+)")


def chapter_number(path) -> int | None:
    """The chapter number of a notebook named ``chNN_*.ipynb`` (None for other names)."""
    m = _NUMBER_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def resolve_chapters(selectors, chapters_dir="chapters") -> list[Path]:
    """Chapter notebooks for selectors such as ``"ch03"``, ``"3"``, ``"ch03_score_based"`` or a path."""
    folder = Path(chapters_dir)
    if not folder.is_dir():
        raise ValueError(f"chapters_dir: not a folder: {str(folder)!r}")
    available = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    if isinstance(selectors, (str, Path)):
        selectors = [selectors]
    found = []
    for sel in selectors:
        text = str(sel)
        path = Path(text)
        if path.suffix == ".ipynb" and path.is_file():
            found.append(path)
            continue
        digits = re.fullmatch(r"(?:ch)?0*(\d+)", text)
        matches = [p for p in available if (digits and chapter_number(p) == int(digits.group(1)))
                   or p.stem == text or p.name == text]
        if not matches:
            raise ValueError(f"chapters: no chapter notebook matches {text!r} in {str(folder)!r} "
                             f"(available: {', '.join(p.stem for p in available) or 'none'})")
        found += matches
    if not found:
        raise ValueError("chapters: name at least one chapter to release")
    return sorted(dict.fromkeys(p.resolve() for p in found), key=lambda p: (chapter_number(p) or 0, p.name))


def _stripped(nb):
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def _write(nb, path: Path) -> str:
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return str(path)


def _earlier(released: list[Path], chapters_dir: Path) -> list[Path]:
    top = max(chapter_number(p) or 0 for p in released)
    names = {p.name for p in released}
    return [p for p in sorted(chapters_dir.glob("ch*.ipynb"))
            if chapter_number(p) is not None and chapter_number(p) < top and p.name not in names]


def _nbgrader_config(chapters) -> str:
    names = ", ".join(f'dict(name="{c}")' for c in chapters)
    return ("# nbgrader configuration written by `python -m diffedu.exercises release --nbgrader`\n"
            "c = get_config()\n"
            f"c.CourseDirectory.db_assignments = [{names}]\n"
            "# the stub diffedu's own student notebooks use (nbgrader's default works as well)\n"
            "c.ClearSolutions.code_stub = {\"python\": 'raise NotImplementedError(\"Exercise: write your solution here\")'}\n")


def release(chapters, out_dir, *, chapters_dir="chapters", solutions: bool = False, nbgrader: bool = False,
            points=None) -> dict:
    """Write the release of ``chapters`` into ``out_dir`` (see the module docstring); return the manifest.

    ``points``: a dict ``{exercise id: points}`` or a list of ``"1.1=3"`` strings overriding the
    default points.
    """
    import nbformat

    points = parse_points(points) if isinstance(points, (list, tuple)) else dict(points or {})
    paths, out, folder = resolve_chapters(chapters, chapters_dir), Path(out_dir), Path(chapters_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        specs = exercise_specs(nb, points)
        if not specs or not any(SOLUTION_TAG in c.metadata.get("tags", []) for c in nb.cells):
            raise ValueError(f"chapters: {path.name} has no exercises (no solution and check cells)")
        chapter = chapter_of(nb, specs) or path.stem
        entry = {"chapter": chapter, "source": str(path), "exercises": [s.to_dict() for _, s in specs],
                 "total_points": sum(s.points for _, s in specs),
                 "student": _write(make_student_notebook(nb, points), out / "student" / path.name)}
        if nbgrader:
            entry["nbgrader"] = _write(_stripped(annotate(nb, points)), out / "nbgrader" / "source" / chapter / path.name)
        entries.append(entry)
    manifest = {"manifest_version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "chapters": entries,
                "solutions": []}
    if solutions:
        for path in _earlier(paths, folder):
            manifest["solutions"].append(_write(_stripped(nbformat.read(path, as_version=4)), out / "solutions" / path.name))
    if nbgrader:
        (out / "nbgrader").mkdir(parents=True, exist_ok=True)
        (out / "nbgrader" / "nbgrader_config.py").write_text(_nbgrader_config([e["chapter"] for e in entries]))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
