"""Grading submissions at scale: untrusted notebooks in the sandbox, references in the grader.

For each submitted notebook the :class:`Grader`

1. finds its exercises (from the release manifest if one is given, else from its check cells)
   and their points (manifest, else :data:`~diffedu.exercises.assignments.POINTS`; never the
   submission's own metadata);
2. captures, in this (trusted) process, the inputs, reference and tolerances of every checker
   without running any student code;
3. runs the submission's set-up, solution and own cells in the sandbox
   (:class:`~diffedu.exercises.sandbox.Sandbox`), where each check cell becomes "call the student's
   function on these inputs and record what it returns" — the reference solutions are neither
   importable nor readable there, and the package functions an exercise asks for are disabled;
4. replays the recorded outputs through :func:`~diffedu.exercises.core.diagnose` against the
   references here, so the message says what is wrong (sign, scale, offset, shape, NaN, the
   failing t), and gives **partial credit**: points x (inputs that pass / inputs), each input
   judged on its own.

:func:`grade_batch` grades a folder (or glob) of submissions in parallel, skips the ones whose
content and grading settings are unchanged since the last run, and writes the gradebook
(``gradebook.csv``, ``gradebook.json``, ``summary.md``, ``logs/``).
"""
from __future__ import annotations

import base64
import csv
import glob
import hashlib
import io
import json
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

from . import assignments, core
from .assignments import ExerciseSpec
from .sandbox import Limits, Sandbox, SandboxJob

__all__ = ["STATUSES", "ExerciseResult", "SubmissionResult", "Grader", "grade_batch", "collect_submissions",
           "student_ids", "load_manifest", "summarize", "format_summary", "write_gradebook"]

#: submission statuses, from best to worst (a submission gets the worst that applies)
STATUSES = ("ok", "not_attempted", "error", "blocked", "memory", "timeout", "crashed", "sandbox_error", "invalid")
_MAX_NOTEBOOK_BYTES = 20 * 2**20
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,59}$")


@dataclass
class ExerciseResult:
    """The grade of one exercise: points out of ``max_points``, the verdict and which inputs failed."""

    exercise: str
    grade_id: str
    max_points: float
    points: float = 0.0
    passed: bool = False
    kind: str = "missing"
    n_cases: int = 0
    n_passed: int = 0
    message: str = ""
    failed_cases: list = field(default_factory=list)


@dataclass
class SubmissionResult:
    """One gradebook row: who, how it ran (``status``, ``detail``), and the exercises' grades."""

    student: str
    path: str
    status: str
    detail: str = ""
    exercises: list = field(default_factory=list)
    points: float = 0.0
    max_points: float = 0.0
    chapter: str | None = None
    isolation: str = ""
    seconds: float = 0.0
    attempts: int = 0
    sha256: str = ""
    cached: bool = False

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SubmissionResult":
        """The row stored by :meth:`to_dict` (e.g. from the cache)."""
        data = dict(data)
        data["exercises"] = [ExerciseResult(**e) for e in data.get("exercises", [])]
        return cls(**data)

    def to_report(self) -> dict:
        """The single-notebook report printed by ``python -m diffedu.exercises grade NOTEBOOK``."""
        exercises = [asdict(e) for e in self.exercises]
        passed = sum(e.passed for e in self.exercises)
        total = len(self.exercises)
        return {"notebook": self.path, "student": self.student, "status": self.status, "detail": self.detail,
                "exercises": exercises, "passed": passed, "total": total, "score": passed / total if total else 0.0,
                "points": self.points, "max_points": self.max_points, "isolation": self.isolation}


# ----------------------------------------------------------------------------- inputs
def collect_submissions(items) -> list[Path]:
    """Notebook paths from files, folders (their ``*.ipynb``) and glob patterns, deduplicated and sorted."""
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    found = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if p.endswith(".ipynb"))
        if not matches:
            raise ValueError(f"submissions: no notebook found for {str(item)!r}")
        found += matches
    return sorted({p.resolve(): None for p in found})


def student_ids(paths) -> dict:
    """Student id of each submission: its file name without ``.ipynb``; where two share a name,
    the path relative to their common folder (``alice/ch01_x``)."""
    paths = [Path(p) for p in paths]
    stems = Counter(p.stem for p in paths)
    common = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")
    out = {}
    for p in paths:
        out[p] = p.stem if stems[p.stem] == 1 else str(p.relative_to(common).with_suffix(""))
    return out


def load_manifest(path) -> dict:
    """``{chapter: [ExerciseSpec, ...]}`` from a release manifest (``python -m diffedu.exercises release``)."""
    try:
        data = json.loads(Path(path).read_text())
        chapters = data["chapters"]
        out = {str(c["chapter"]): [ExerciseSpec.from_dict(e) for e in c["exercises"]] for c in chapters}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"manifest: cannot read {str(path)!r} as a release manifest ({e})") from None
    if not out:
        raise ValueError(f"manifest: {str(path)!r} lists no chapter")
    return out


# ----------------------------------------------------------------------------- checker capture
class _Plan:
    """What a checker would do, captured without calling a student function: reference, inputs, tolerances."""

    def __init__(self, spec: ExerciseSpec):
        import importlib

        module = importlib.import_module(spec.module)
        checker = getattr(module, spec.checker, None)
        if checker is None:
            raise ValueError(f"manifest: {spec.module} has no checker {spec.checker!r}")
        seen = {}

        def capture(exercise, fn, reference, cases, *, rtol=1e-4, atol=1e-5, **_):
            seen.update(exercise=exercise, reference=reference, cases=list(cases), rtol=rtol, atol=atol)
            return core.CheckResult(exercise, True, "captured")

        with mock.patch.object(module, "check", capture), mock.patch.object(core, "check", capture):
            checker(None)
        if not seen:
            raise ValueError(f"{spec.module}.{spec.checker} does not call check(); it cannot be graded")
        self.reference, self.cases = seen["reference"], seen["cases"]
        self.rtol, self.atol = seen["rtol"], seen["atol"]
        self.blob = _pickle_cases(module, self.cases)


def _pickle_cases(module, cases) -> bytes:
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - scikit-learn's joblib vendors it
        from joblib.externals import cloudpickle
    cloudpickle.register_pickle_by_value(module)  # lambdas of the chapter module travel by value
    try:
        return cloudpickle.dumps([(tuple(c.args), dict(c.kwargs)) for c in cases])
    finally:
        cloudpickle.unregister_pickle_by_value(module)


# ----------------------------------------------------------------------------- replay and scoring
class _Raised:
    def __init__(self, rec: dict):
        self.ename = rec.get("ename") if _IDENT.match(str(rec.get("ename", ""))) else "Exception"
        self.msg, self.ni = str(rec.get("msg", ""))[:500], bool(rec.get("ni"))
        self.blocked, self.memory = bool(rec.get("blocked")), bool(rec.get("memory"))

    def throw(self):
        """Raise an exception like the one the student's function raised (same class name and message)."""
        if self.ni:
            raise NotImplementedError(self.msg)
        raise type(self.ename, (Exception,), {})(self.msg)


def _decode(rec):
    """The value (or :class:`_Raised`) a record of the child stands for; ValueError if malformed."""
    import numpy as np
    import torch

    if not isinstance(rec, dict):
        raise ValueError("record")
    kind = rec.get("k")
    if kind == "raise":
        return _Raised(rec)
    if kind == "scalar":
        return float(rec["v"])
    if kind == "other":
        name = str(rec.get("type", "object"))
        return type(name if _IDENT.match(name) else "object", (), {})()
    shape = rec.get("shape")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(isinstance(s, int) and 0 <= s < 2**31 for s in shape)):
        raise ValueError("shape")
    numel = int(np.prod(shape)) if shape else 1
    if numel > 1 << 22:
        raise ValueError("size")
    if kind in ("complex", "bool"):
        return torch.zeros(shape, dtype=torch.complex128 if kind == "complex" else torch.bool)
    if kind == "tensor":
        raw = base64.b64decode(str(rec["data"]), validate=True)
        if len(raw) != numel * 8:
            raise ValueError("data")
        return torch.from_numpy(np.frombuffer(raw, dtype=np.float64).copy()).reshape(shape)
    raise ValueError("kind")


def _replay(values):
    """A stand-in for the student's function returning (or raising) the recorded values in order."""
    it = iter(values)

    def fn(*args, **kwargs):
        value = next(it)
        if isinstance(value, _Raised):
            value.throw()
        return value

    return fn


def _score_outputs(spec: ExerciseSpec, plan: _Plan, outputs: list) -> ExerciseResult:
    res = ExerciseResult(spec.exercise, spec.grade_id, spec.points, n_cases=len(plan.cases))
    try:
        values = [_decode(o) for o in outputs]
        if len(values) != len(plan.cases):
            raise ValueError("count")
    except (ValueError, KeyError, TypeError):
        res.kind, res.message = "crashed", f"[Exercise {spec.exercise}] the sandbox returned an unreadable record."
        return res
    opts = dict(exercise=spec.exercise, rtol=plan.rtol, atol=plan.atol)
    overall = core.diagnose(_replay(values), plan.reference, plan.cases, **opts)
    ok = [core.diagnose(_replay([v]), plan.reference, [c], **opts).passed for v, c in zip(values, plan.cases)]
    res.n_passed, res.passed, res.kind, res.message = sum(ok), overall.passed, overall.kind, overall.message
    raised = [v for v in values if isinstance(v, _Raised)]
    if overall.kind == "error" and any(v.blocked for v in raised):
        res.kind = "blocked"
    elif overall.kind == "error" and any(v.memory for v in raised):
        res.kind = "memory"
    res.points = round(spec.points * res.n_passed / len(plan.cases), 2) if plan.cases else 0.0
    res.failed_cases = [c.label for c, good in zip(plan.cases, ok) if not good][:5]
    if 0 < res.n_passed < len(plan.cases):
        res.message += (f" Partial credit: {res.n_passed} of {len(plan.cases)} inputs pass "
                        f"({res.points:g} of {spec.points:g} points).")
    return res


# ----------------------------------------------------------------------------- one submission
def _first_code(nb):
    return next((i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"), None)


def _locate(nb, spec: ExerciseSpec):
    """The cell of a submission that checks ``spec`` (by nbgrader id, diffedu metadata or the checker call)."""
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code" or assignments.cell_role(cell) != "check":
            continue
        meta = cell.get("metadata", {})
        ids = (meta.get("diffedu") or {}).get("exercises") or [(meta.get("diffedu") or {}).get("exercise")]
        if (meta.get("nbgrader") or {}).get("grade_id") == spec.grade_id or spec.exercise in ids:
            return i
        if any(c[1] == spec.checker for c in assignments.check_calls(cell.get("source", ""))):
            return i
    return None


def _job_cells(nb, positions: dict, mode: str) -> list:
    """The cells the sandbox runs: set-up, solutions and the student's own cells; checks at their place."""
    at = {}
    for ex, pos in positions.items():
        at.setdefault(pos if pos is not None else len(nb.cells), []).append(ex)
    first, cells = _first_code(nb), []
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        role = assignments.cell_role(cell, i == first)
        if i in at:
            cells.append({"i": i, "kind": "check", "exercises": at.pop(i)})
        elif role == "check" or (role == "context" and mode == "exercises"):
            continue
        else:
            cells.append({"i": i, "kind": "code", "source": str(cell.get("source", ""))})
    for i in sorted(at):  # exercises without a check cell in the submission: checked at the end
        cells.append({"i": i, "kind": "check", "exercises": at[i]})
    return cells


def _describe(nb, i: int, first) -> str:
    if i >= len(nb.cells):
        return "the final check"
    cell = nb.cells[i]
    role = assignments.cell_role(cell, i == first) or "your own cell"
    ex = (cell.get("metadata", {}).get("diffedu") or {}).get("exercise")
    return f"cell {i} ({role}{' of ' + ex if ex else ''})"


def _error_text(err: dict) -> str:
    return f"{err.get('ename', 'Error')}: {err.get('evalue', '')}".strip().rstrip(":")


def _cell_problem(run, i, limits: Limits):
    """(kind, text) of what went wrong in cell ``i`` of the run, or None."""
    if i in run.killed:
        if run.killed[i] == "timeout":
            return "timeout", f"ran past the {limits.cell_timeout:g} s cell limit and was stopped"
        return "crashed", "ended the process (the rest was graded in a fresh one)"
    err = run.cells.get(i)
    if err:
        return err.get("kind", "error"), f"raised {_error_text(err)}"
    return None


def _unchecked(spec: ExerciseSpec, plan: _Plan, run, pos, solution, nb, limits: Limits) -> ExerciseResult:
    """The result of an exercise whose function could not be called on the inputs (0 points)."""
    res = ExerciseResult(spec.exercise, spec.grade_id, spec.points, n_cases=len(plan.cases))
    tag, rec = f"[Exercise {spec.exercise}]", run.checks.get(spec.exercise)
    check_problem = _cell_problem(run, pos, limits)
    if rec is not None and rec.get("status") == "timeout":
        check_problem = ("timeout", f"ran past the {limits.cell_timeout:g} s cell limit")
    if check_problem:
        res.kind, res.message = check_problem[0], f"{tag} checking your function {check_problem[1]}."
    elif rec is None:
        res.kind = "timeout" if run.notebook_timeout else "crashed" if run.fatal else "missing"
        res.message = {"timeout": f"{tag} not checked: the notebook's time limit ({limits.notebook_timeout:g} s) "
                                  "was reached first.",
                       "crashed": f"{tag} not checked: {run.fatal}.",
                       "missing": f"{tag} not checked."}[res.kind]
    else:
        err = rec.get("error") or {}
        res.kind, res.message = err.get("kind", "error"), f"{tag} {_error_text(err)}."
    sol = _cell_problem(run, solution, limits) if solution is not None else None
    if sol and res.kind in ("error", "missing"):
        res.kind = sol[0]
        res.message += f" The cell that defines it, {_describe(nb, solution, _first_code(nb))}, {sol[1]}."
    return res


def _solution_cell(nb, pos, exercise: str):
    """The solution cell an exercise's check refers to: the nearest one above its check cell."""
    if pos is None:
        for i, cell in enumerate(nb.cells):
            if (cell.get("metadata", {}).get("diffedu") or {}).get("exercise") == exercise and \
                    assignments.cell_role(cell) == "solution":
                return i
        return None
    for i in range(pos - 1, -1, -1):
        cell = nb.cells[i]
        if cell.get("cell_type") != "code":
            continue
        role = assignments.cell_role(cell)
        if role == "solution":
            return i
        if role == "check":
            return None
    return None


_KIND_STATUS = {"timeout": "timeout", "memory": "memory", "blocked": "blocked", "crashed": "crashed"}
_REFUSED = (("socket.", "network access"), ("urllib.", "network access"), ("http.", "network access"),
            ("ftplib.", "network access"), ("smtplib.", "network access"), ("poplib.", "network access"),
            ("imaplib.", "network access"), ("nntplib.", "network access"), ("telnetlib.", "network access"),
            ("webbrowser.", "network access"), ("subprocess.", "starting a process"), ("os.system", "starting a process"),
            ("os.exec", "starting a process"), ("os.posix_spawn", "starting a process"), ("os.spawn", "starting a process"),
            ("os.fork", "starting a process"), ("os.startfile", "starting a process"), ("os.kill", "signalling a process"),
            ("signal.", "signalling a process"), ("ctypes.", "ctypes"), ("gc.", "the garbage collector's object lists"),
            ("resource.", "changing resource limits"), ("object.__setattr__", "rewriting the sandbox"),
            ("import", "importing the reference solutions"))


def _refused(what: str) -> str:
    return next((label for prefix, label in _REFUSED if what.startswith(prefix)),
                "file access outside the working directory")


def _status(run, exercises, nb, limits: Limits):
    """(status, detail) of a run: the worst thing that happened, and a short account of it."""
    first, notes, worst = _first_code(nb), [], ["ok"]

    def bump(status, note=None):
        if STATUSES.index(status) > STATUSES.index(worst[0]):
            worst[0] = status
        if note:
            notes.append(note)

    if run.fatal:
        infra = run.fatal.split(":", 1)[0] in ("start", "isolation", "setup")
        bump("sandbox_error" if infra else "crashed", run.fatal[:300])
    for i in sorted(set(run.killed) | {i for i, e in run.cells.items() if e}):
        kind, text = _cell_problem(run, i, limits)  # "blocked" comes from the violations below, not from errors
        bump(_KIND_STATUS.get(kind, "error") if kind != "blocked" else "error", f"{_describe(nb, i, first)} {text[:200]}")
    if run.notebook_timeout:
        bump("timeout", f"stopped at the notebook's time limit ({limits.notebook_timeout:g} s)")
    for v in run.violations:
        where = _describe(nb, v["cell"], first) if isinstance(v.get("cell"), int) else "set-up"
        bump("blocked", f"refused {_refused(v['what'])} ({v['detail'][:150]}) in {where}")
    for e in exercises:
        rec = run.checks.get(e.exercise) or {}
        if e.kind in _KIND_STATUS and e.kind != "blocked":  # a disabled package function is a wrong answer
            bump(_KIND_STATUS[e.kind])
        elif rec.get("status") == "unavailable":
            bump("error")
    if worst[0] == "ok" and exercises and all(e.kind == "not_attempted" for e in exercises):
        worst[0] = "not_attempted"
    return worst[0], "; ".join(dict.fromkeys(notes))[:800]


class Grader:
    """Grades submitted notebooks in the sandbox (see the module docstring).

    ``limits``: a :class:`~diffedu.exercises.sandbox.Limits`; ``isolation``: ``auto``,
    ``namespace`` or ``process``; ``manifest``: a release manifest (path or the dict of
    :func:`load_manifest`) fixing exercises, points and checked expressions; ``points``:
    per-exercise overrides; ``cells``: ``"exercises"`` (set-up, solution and the student's own
    cells) or ``"all"`` (every code cell but the checks); ``disable``: extra dotted names to
    disable; ``hide``: extra paths the student code must not read. Thread-safe.
    """

    def __init__(self, *, limits: Limits | None = None, isolation: str = "auto", manifest=None, points=None,
                 cells: str = "exercises", disable=(), hide=(), sandbox: Sandbox | None = None):
        if cells not in ("exercises", "all"):
            raise ValueError(f"cells: expected 'exercises' or 'all', got {cells!r}")
        if limits is not None and not isinstance(limits, Limits):
            raise ValueError(f"limits: expected a Limits, got {type(limits).__name__}")
        for name in disable:
            if not isinstance(name, str) or name.count(".") < 1:
                raise ValueError(f"disable: expected dotted names such as 'torch.distributions.Normal', got {name!r}")
        self.limits, self.isolation, self.cells = limits or Limits(), isolation, cells
        self.manifest = load_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else manifest
        self.points, self.disable, self.hide = dict(points or {}), tuple(disable), tuple(str(h) for h in hide)
        preload = sorted({".".join(n.split(".")[:k]) for names in assignments.DISABLED.values() for n in names
                          for k in range(2, n.count(".") + 1)})
        self._sandbox = sandbox or Sandbox(isolation, hide=hide, preload=preload)
        self._own, self._plans, self._lock = sandbox is None, {}, threading.Lock()

    def close(self) -> None:
        """Stop the sandbox (if this grader started it)."""
        if self._own:
            self._sandbox.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fingerprint(self) -> str:
        """A hash of everything besides the notebook that decides a grade (settings and grader code)."""
        settings = {"limits": self.limits.to_dict(), "isolation": self.isolation, "cells": self.cells,
                    "disable": self.disable, "points": self.points, "hide": self.hide,
                    "manifest": {k: [s.to_dict() for s in v] for k, v in (self.manifest or {}).items()}}
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for f in sorted(Path(__file__).parent.glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
        return h.hexdigest()

    def _plan(self, spec: ExerciseSpec) -> _Plan:
        key = (spec.module, spec.checker)
        with self._lock:  # capturing patches the chapter module: one at a time
            if key not in self._plans:
                self._plans[key] = _Plan(spec)
            return self._plans[key]

    def _specs(self, nb):
        if self.manifest is None:
            specs = assignments.exercise_specs(nb, self.points)
            if not specs:
                raise ValueError("no exercises found: no check cell calls a known checker")
            return assignments.chapter_of(nb, specs), specs
        chapter = assignments.chapter_of(nb)
        if chapter not in self.manifest:
            if chapter is not None or len(self.manifest) != 1:
                raise ValueError(f"not a notebook of the released chapters ({', '.join(self.manifest)}): "
                                 f"it belongs to {chapter or 'no known chapter'}")
            chapter = next(iter(self.manifest))
        from dataclasses import replace

        return chapter, [(_locate(nb, s), replace(s, points=self.points.get(s.exercise, s.points)))
                         for s in self.manifest[chapter]]

    def _disabled(self, specs) -> dict:
        out: dict = {}
        for _, s in specs:
            for name in assignments.DISABLED.get(s.exercise, ()):
                out.setdefault(name, []).append(s.exercise)
        for name in self.disable:
            out.setdefault(name, []).extend(s.exercise for _, s in specs)
        return {k: ", ".join(dict.fromkeys(v)) for k, v in out.items()}

    def _read(self, path: Path, data, row: SubmissionResult):
        """The parsed notebook, or None with ``row`` marked invalid."""
        import nbformat

        try:
            data = path.read_bytes() if data is None else data
        except OSError as e:
            row.detail = f"cannot read the file: {e}"
            return None, None
        row.sha256 = hashlib.sha256(data).hexdigest()
        if len(data) > _MAX_NOTEBOOK_BYTES:
            row.detail = f"larger than {_MAX_NOTEBOOK_BYTES >> 20} MB: not graded"
            return None, data
        try:
            nb = nbformat.reads(data.decode("utf-8"), as_version=4)
            if not isinstance(nb.get("cells"), list):
                raise ValueError("no cells")
        except Exception as e:  # noqa: BLE001 - any unreadable file is "invalid"
            row.detail = f"not a readable notebook ({type(e).__name__}: {str(e)[:200]})"
            return None, data
        return nb, data

    def grade(self, path, student: str | None = None, data: bytes | None = None) -> SubmissionResult:
        """Grade one submitted notebook (``data``: its bytes, if already read)."""
        t0, path = time.monotonic(), Path(path)
        row = SubmissionResult(student or path.stem, str(path), "invalid")
        nb, data = self._read(path, data, row)
        if nb is None:
            return row
        try:
            row.chapter, specs = self._specs(nb)
            plans = {s.exercise: self._plan(s) for _, s in specs}
        except ValueError as e:
            row.detail = str(e)
            return row
        row.max_points = round(sum(s.points for _, s in specs), 2)
        positions = {s.exercise: pos for pos, s in specs}
        job = SandboxJob(_job_cells(nb, positions, self.cells), {s.exercise: s.expr for _, s in specs},
                         {ex: p.blob for ex, p in plans.items()}, self._disabled(specs), {"submission.ipynb": data})
        run = self._sandbox.run(job, self.limits, None if self.isolation == "auto" else self.isolation)
        for pos, spec in specs:
            rec, plan = run.checks.get(spec.exercise), plans[spec.exercise]
            if rec is not None and rec.get("status") == "ok":
                row.exercises.append(_score_outputs(spec, plan, rec.get("outputs")))
            else:
                job_pos = pos if pos is not None else len(nb.cells)
                row.exercises.append(_unchecked(spec, plan, run, job_pos, _solution_cell(nb, pos, spec.exercise),
                                                nb, self.limits))
        row.points = round(sum(e.points for e in row.exercises), 2)
        row.status, row.detail = _status(run, row.exercises, nb, self.limits)
        row.isolation, row.attempts, row.seconds = run.isolation, run.attempts, round(time.monotonic() - t0, 2)
        row.log = run.log
        return row


# ----------------------------------------------------------------------------- the batch
def _safe_name(student: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", student)[:120] or "student"


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def grade_batch(items, out_dir, *, workers: int | None = None, cache: bool = True, grader: Grader | None = None,
                progress=None, **grader_options) -> dict:
    """Grade every submission in ``items`` (files, folders, globs) and write the gradebook to ``out_dir``.

    Runs up to ``workers`` submissions at once (default: the number of CPU cores). With
    ``cache``, a submission whose bytes and grading settings are unchanged since the last run in
    ``out_dir`` keeps its row. ``progress(result)`` is called as each row is ready. Returns
    ``{"results": [...], "summary": {...}, "files": {...}}``.
    """
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    paths = collect_submissions(items)
    ids = student_ids(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own = grader is None
    if own:  # the student code must not read the class's submissions or the gradebook
        hide = list(grader_options.pop("hide", ())) + sorted({str(p.parent) for p in paths}) + [str(out.resolve())]
        grader = Grader(hide=hide, **grader_options)
    try:
        key, cache_path = grader.fingerprint(), out / ".diffedu-cache.json"
        db = _load_cache(cache_path) if cache else {}
        results, todo = {}, []
        for p in paths:
            try:
                data = p.read_bytes()
            except OSError:
                data = None  # graded as "invalid: cannot read the file"
            digest = hashlib.sha256((data or b"") + key.encode()).hexdigest()
            hit = db.get(ids[p])
            row = _cached_row(hit, digest, p) if cache else None
            if row is not None:
                results[p] = row
            else:
                todo.append((p, data, digest))
        n = workers or _cores()
        with ThreadPoolExecutor(max_workers=max(1, min(n, len(todo) or 1))) as pool:
            futures = {pool.submit(_grade_one, grader, p, ids[p], data): (p, digest) for p, data, digest in todo}
            for fut in futures:
                p, digest = futures[fut]
                results[p] = fut.result()
                if results[p].status != "sandbox_error":
                    db[ids[p]] = {"key": digest, "row": results[p].to_dict()}
                if progress:
                    progress(results[p])
    finally:
        if own:
            grader.close()
    rows = [results[p] for p in paths]
    summary = summarize(rows)
    files = write_gradebook(rows, out, summary, {"limits": grader.limits.to_dict(), "cells": grader.cells})
    cache_path.write_text(json.dumps({k: v for k, v in db.items() if k in set(ids.values())}))
    return {"results": rows, "summary": summary, "files": files}


def _cached_row(hit, digest: str, path: Path):
    """The cached row of a submission if its key matches (None if absent, stale or unreadable)."""
    if not isinstance(hit, dict) or hit.get("key") != digest:
        return None
    try:
        return SubmissionResult.from_dict({**hit["row"], "cached": True, "path": str(path)})
    except (KeyError, TypeError, ValueError):
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _grade_one(grader: Grader, path: Path, student: str, data: bytes) -> SubmissionResult:
    try:
        return grader.grade(path, student, data)
    except Exception as e:  # noqa: BLE001 - one broken submission or sandbox hiccup never stops the batch
        return SubmissionResult(student, str(path), "sandbox_error", detail=f"{type(e).__name__}: {e}"[:500])


# ----------------------------------------------------------------------------- the gradebook
def _exercise_order(rows) -> list:
    """Exercise ids in the order they first appear, with their (most common) maximum points."""
    order, maxima = {}, {}
    for r in rows:
        for e in r.exercises:
            order.setdefault(e.exercise, len(order))
            maxima.setdefault(e.exercise, Counter())[e.max_points] += 1
    return [(ex, maxima[ex].most_common(1)[0][0]) for ex in sorted(order, key=order.get)]


def summarize(rows) -> dict:
    """Class statistics: statuses, and per exercise the mean points, full marks and common mistakes."""
    exercises = []
    for ex, max_points in _exercise_order(rows):
        got = [e for r in rows for e in r.exercises if e.exercise == ex]
        mistakes = Counter(e.kind for e in got if not e.passed)
        mean = sum(e.points for e in got) / len(got) if got else 0.0
        exercises.append({"exercise": ex, "max_points": max_points, "submissions": len(got),
                          "mean_points": round(mean, 2), "mean_fraction": round(mean / max_points, 3) if max_points else 0.0,
                          "full_marks": sum(e.passed for e in got), "mistakes": mistakes.most_common(3)})
    totals = [r.points for r in rows]
    return {"submissions": len(rows), "cached": sum(r.cached for r in rows),
            "statuses": dict(Counter(r.status for r in rows).most_common()),
            "mean_points": round(sum(totals) / len(totals), 2) if totals else 0.0,
            "max_points": max((r.max_points for r in rows), default=0.0),
            "isolation": sorted({r.isolation for r in rows if r.isolation}),
            "exercises": exercises,
            "hardest": [e["exercise"] for e in sorted(exercises, key=lambda e: (e["mean_fraction"], e["exercise"]))]}


def format_summary(summary: dict) -> str:
    """The summary as a short Markdown report (hardest exercises first)."""
    lines = [f"# Gradebook summary: {summary['submissions']} submissions ({summary['cached']} unchanged, from the cache)",
             "", "Statuses: " + ", ".join(f"{k} {v}" for k, v in summary["statuses"].items()),
             f"Mean total: {summary['mean_points']:g} of {summary['max_points']:g} points. "
             f"Isolation: {', '.join(summary['isolation']) or 'none ran'}.", "",
             "| exercise | max | mean | full marks | most common mistakes |", "|---|---|---|---|---|"]
    by_id = {e["exercise"]: e for e in summary["exercises"]}
    for ex in summary["hardest"]:
        e = by_id[ex]
        mistakes = ", ".join(f"{k} {n}" for k, n in e["mistakes"]) or "-"
        lines.append(f"| {ex} | {e['max_points']:g} | {e['mean_points']:g} | {e['full_marks']}/{e['submissions']} | {mistakes} |")
    return "\n".join(lines) + "\n"


def write_gradebook(rows, out_dir, summary: dict | None = None, meta: dict | None = None) -> dict:
    """Write ``gradebook.csv``, ``gradebook.json``, ``summary.md`` and ``logs/<student>.log``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else summarize(rows)
    order = _exercise_order(rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["student", "status", "points", "max_points"] + [f"{ex} ({m:g})" for ex, m in order]
                    + [f"{ex} message" for ex, _ in order] + ["detail", "file", "seconds", "cached"])
    for r in rows:
        by = {e.exercise: e for e in r.exercises}
        writer.writerow([r.student, r.status, r.points, r.max_points]
                        + [by[ex].points if ex in by else "" for ex, _ in order]
                        + [by[ex].message if ex in by else "" for ex, _ in order]
                        + [r.detail, r.path, r.seconds, r.cached])
    files = {"csv": out / "gradebook.csv", "json": out / "gradebook.json", "summary": out / "summary.md"}
    files["csv"].write_text(buf.getvalue())
    payload = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(meta or {}),
               "exercises": [{"exercise": ex, "max_points": m} for ex, m in order],
               "submissions": [r.to_dict() for r in rows], "summary": summary}
    files["json"].write_text(json.dumps(payload, indent=1))
    files["summary"].write_text(format_summary(summary))
    logs = out / "logs"
    for r in rows:
        if getattr(r, "log", ""):
            logs.mkdir(exist_ok=True)
            (logs / f"{_safe_name(r.student)}.log").write_text(r.log)
    return {k: str(v) for k, v in files.items()}
