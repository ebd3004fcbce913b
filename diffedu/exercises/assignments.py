"""What is graded: the exercises of a notebook, their points, their nbgrader metadata, and the
package functions each exercise asks the student to write (disabled while grading).

An exercise is found from its **check cell** (tagged ``check``): a call such as
``ch01.check_gaussian_kl(gaussian_kl)`` names the chapter module, the checker (whose id, "1.4",
comes from the module's ``EXERCISES``) and the expression that gives the student's function.
:func:`exercise_specs` turns a notebook into a list of :class:`ExerciseSpec`; :func:`annotate`
writes the metadata that diffedu's grader and nbgrader read:

* every code cell: ``metadata.diffedu.role`` = ``setup`` (the first code cell), ``solution``,
  ``check`` or ``context`` (the chapter's own cells); a cell without a role was added by the
  student;
* solution cells: ``metadata.nbgrader = {"solution": true, "grade": false, "grade_id":
  "ex-1-4-solution", ...}``; check cells: ``{"grade": true, "solution": false, "locked": true,
  "points": 2, "grade_id": "ex-1-4", ...}`` (nbgrader's schema version 3; grade ids use only
  letters, digits and hyphens, as nbgrader requires);
* the notebook: ``metadata.diffedu = {"chapter": "ch01", "exercises": [...], "total_points": 8}``.

Points come from :data:`POINTS` (a chapter's table; 1 point where absent) unless the caller
passes others. The grader never takes points from a submitted notebook: a student can edit its
metadata. It uses the release manifest or this table.
"""
from __future__ import annotations

import ast
import copy
import importlib
import re
from dataclasses import asdict, dataclass
from typing import Mapping

__all__ = ["POINTS", "DEFAULT_POINTS", "DISABLED", "ExerciseSpec", "grade_id", "check_calls",
           "exercise_specs", "annotate", "chapter_of", "disabled_for", "resolve_name", "cell_role",
           "parse_points", "chapter_modules"]

#: points per exercise (the default of a release; a manifest or ``--points`` overrides them)
POINTS: dict[str, float] = {
    "1.1": 2, "1.2": 3, "1.3": 1, "1.4": 2,
    "2.1": 2, "2.2": 2, "2.3": 3, "2.4": 2,
    "3.1": 1, "3.2": 1, "3.3": 2, "3.4": 3,
    "4.1": 2, "4.2": 2, "4.3": 3, "4.4": 1,
    "5.1": 2, "5.2": 2, "5.3": 3, "5.4": 2,
    "6.1": 3, "6.2": 2, "6.3": 1,
    "8.1": 1, "8.2": 2, "8.3": 3, "8.4": 2,
    "7.1": 2, "7.2": 2, "7.3": 2, "7.4": 1,
    "9.1": 2, "9.2": 2, "9.3": 3, "9.4": 2,
    "10.1": 2, "10.2": 2, "10.3": 1,
    "I.1": 2, "I.2": 2, "I.3": 1,
    "A.1": 2, "A.2": 2, "A.3": 3,
    "B.1": 2, "B.2": 2, "B.3": 3,
    "C.1": 2, "C.2": 2, "C.3": 3,
}
#: points of an exercise that :data:`POINTS` does not list
DEFAULT_POINTS = 1

#: exercise id -> the package functions that compute what the exercise asks for. While a chapter
#: is graded, each of them is replaced by a sentinel that raises when called, so a submission
#: that merely calls the package does not score (see the README's classroom section).
DISABLED: dict[str, tuple[str, ...]] = {
    "1.1": ("diffedu.gaussian.gaussian_log_prob",),
    "1.2": ("diffedu.toy.GaussianMixture.log_prob", "diffedu.toy.GaussianMixture.log_prob_t"),
    "1.4": ("diffedu.gaussian.gaussian_kl",),
    "2.1": ("diffedu.forward.posterior", "diffedu.forward.posterior_coefficients",
            "diffedu.objectives.elbo.ddpm_posterior"),
    "2.3": ("diffedu.samplers.ancestral.ancestral_step", "diffedu.forward.reverse_kernel"),
    "2.4": ("diffedu.forward.reverse_log_variance",),
    "3.1": ("diffedu.objectives.score_matching.dsm_target",),
    "3.2": ("diffedu.samplers.langevin.langevin_step",),
    "3.3": ("diffedu.objectives.score_matching.tweedie_x0", "diffedu.param.convert", "diffedu.param.to_x0"),
    "3.4": ("diffedu.autodiff.hutchinson_trace", "diffedu.autodiff.quadratic_form"),
    "4.1": ("diffedu.sde.reverse_sde_drift",),
    "4.2": ("diffedu.samplers.sde.reverse_sde_step",),
    "4.3": ("diffedu.autodiff.hutchinson_trace", "diffedu.autodiff.quadratic_form"),
    "4.4": ("diffedu.likelihood.ode.bits_per_dim",),
    "5.1": ("diffedu.objectives.flow_matching.conditional_velocity",),
    "5.2": ("diffedu.param.convert",),
    "5.3": ("diffedu.baselines.flows.cnf_log_prob", "diffedu.likelihood.ode.log_likelihood"),
    "5.4": ("diffedu.objectives.flow_matching.straightness",),
    "6.1": ("diffedu.param.convert", "diffedu.param.to_x0"),
    "6.2": ("diffedu.objectives.edm.edm_preconditioning",),
    "7.1": ("diffedu.transport.sinkhorn_f_update",),
    "7.2": ("diffedu.transport.bures_sq", "diffedu.transport.gaussian_w2_sq"),
    "7.3": ("diffedu.transport.sb_cfm_velocity",),
    "7.4": ("diffedu.transport.barycentric_map",),
    "8.3": ("diffedu.toy.tilted_log_prob",),
    "8.4": ("diffedu.toy.linear_gaussian_posterior",),
    "9.1": ("diffedu.samplers.ode.sample_ddim",),
    "9.2": ("diffedu.samplers.grids.grid_log_snr",),
    "9.3": ("diffedu.samplers.ode.sample_dpm_solver_pp_2m",),
    "9.4": ("diffedu.forward.ddim_posterior", "diffedu.forward.ddim_posterior_coefficients", "diffedu.samplers.ode.sample_ddim"),
    "I.1": ("diffedu.metrics.images.gaussian_frechet_distance",),
    "I.2": ("diffedu.metrics.images.mmd2_polynomial",),
    "A.1": ("diffedu.processes.euler_maruyama",),
    "A.2": ("diffedu.processes.milstein",),
    "A.3": ("diffedu.toy.flow_map",),
    "B.1": ("diffedu.autodiff.jacobian_trace",),
    "B.2": ("diffedu.processes.ou_log_prob", "diffedu.processes.ou_moments"),
    "B.3": ("diffedu.likelihood.fokker_planck.fokker_planck_residual",),
    "C.1": ("diffedu.processes.ou_moments",),
    "C.2": ("diffedu.processes.girsanov_log_weight",),
    "C.3": ("diffedu.processes.ou_moments",),
}

_CHECK_NAME_RE = re.compile(r"^check_\w+$")
_CHAPTER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: modules of diffedu.exercises that are grading machinery, not chapters of checkers
_MACHINERY = frozenset({"core", "notebooks", "assignments", "grading", "sandbox", "release"})


@dataclass(frozen=True)
class ExerciseSpec:
    """One graded exercise: what the grader calls, on which function, for how many points."""

    exercise: str   # "1.4"
    module: str     # "diffedu.exercises.ch01"
    checker: str    # "check_gaussian_kl"
    expr: str       # the check call's argument, evaluated in the student's namespace
    points: float
    grade_id: str   # "ex-1-4" (nbgrader's id of the check cell)

    def to_dict(self) -> dict:
        """A JSON-ready copy (the release manifest stores these)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "ExerciseSpec":
        """The spec stored by :meth:`to_dict` (e.g. read back from a manifest)."""
        try:
            return cls(str(data["exercise"]), str(data["module"]), str(data["checker"]), str(data["expr"]),
                       float(data["points"]), str(data.get("grade_id") or grade_id(str(data["exercise"]))))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"manifest: an exercise entry is malformed ({e!r}): {dict(data)!r}") from None


def grade_id(exercise: str) -> str:
    """nbgrader's id of an exercise's check cell: ``"1.4"`` -> ``"ex-1-4"`` (letters, digits, hyphens)."""
    if not isinstance(exercise, str) or not exercise:
        raise ValueError(f"exercise: expected an id such as '1.4', got {exercise!r}")
    return "ex-" + re.sub(r"[^A-Za-z0-9]+", "-", exercise).strip("-")


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def cell_role(cell, index_of_first_code: bool = False) -> str | None:
    """The role of a code cell from its diffedu metadata, else from its tags (``None``: added by the student)."""
    role = (cell.get("metadata", {}).get("diffedu") or {}).get("role")
    if role:
        return str(role)
    tags = _tags(cell)
    if "check" in tags:
        return "check"
    if "solution" in tags:
        return "solution"
    return "setup" if index_of_first_code else None


def check_calls(source: str) -> list[tuple[str | None, str, str]]:
    """The checker calls in a check cell: ``(module name or None, checker, argument source)``.

    ``ch01.check_gaussian_kl(gaussian_kl)`` gives ``("ch01", "check_gaussian_kl", "gaussian_kl")``.
    A cell that does not parse, or a call without an argument, gives no entry for that call.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            module, name = func.value.id, func.attr
        elif isinstance(func, ast.Name):
            module, name = None, func.id
        else:
            continue
        if not _CHECK_NAME_RE.match(name):
            continue
        arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "fn"), None)
        if arg is None:
            continue
        calls.append(((node.lineno, node.col_offset), (module, name, ast.get_source_segment(source, arg) or "")))
    return [call for _, call in sorted(calls)]


def chapter_modules() -> list[str]:
    """Short names of the modules of checkers (``ch01`` ... ``images``): those with an ``EXERCISES`` table."""
    from . import __path__ as pkg_path  # the chapter modules next to this one
    import pkgutil

    names = []
    for m in pkgutil.iter_modules(pkg_path):
        if m.name.startswith("_") or m.name in _MACHINERY:
            continue
        try:
            if hasattr(importlib.import_module(f"diffedu.exercises.{m.name}"), "EXERCISES"):
                names.append(m.name)
        except Exception:  # noqa: BLE001 - a broken chapter module is not a chapter
            continue
    return sorted(names)


def _find_exercise(module_name: str | None, checker: str) -> tuple[str, str] | None:
    """(module path, exercise id) of a checker, looked up in the named chapter module, else in all of them
    (a check cell may use an alias such as ``ex_images.check_...``)."""
    known = chapter_modules()
    names = [module_name] if module_name in known else known
    for name in names:
        try:
            module = importlib.import_module(f"diffedu.exercises.{name}")
        except ImportError:
            continue
        for ex, entry in getattr(module, "EXERCISES", {}).items():
            if getattr(entry[0], "__name__", None) == checker:
                return module.__name__, ex
    return None


def parse_points(items) -> dict[str, float]:
    """``["1.1=3", "1.2=0.5"]`` -> ``{"1.1": 3.0, "1.2": 0.5}`` (the CLI's ``--points``)."""
    out = {}
    for item in items or ():
        ex, sep, value = str(item).partition("=")
        try:
            if not sep or not ex.strip():
                raise ValueError
            out[ex.strip()] = float(value)
        except ValueError:
            raise ValueError(f"points: expected EXERCISE=POINTS such as 1.1=3, got {item!r}") from None
        if out[ex.strip()] < 0:
            raise ValueError(f"points: must be >= 0, got {item!r}")
    return out


def exercise_specs(nb, points: Mapping[str, float] | None = None) -> list[tuple[int, ExerciseSpec]]:
    """``(check cell index, spec)`` for every checker call in the notebook's check cells, in order.

    ``points`` overrides :data:`POINTS` per exercise id. A call to an unknown checker is skipped
    (it cannot be graded); the same exercise checked twice is graded at its first check cell.
    """
    table = {**POINTS, **(points or {})}
    specs, seen = [], set()
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code" or cell_role(cell) != "check":
            continue
        for module_name, checker, expr in check_calls(cell.get("source", "")):
            found = _find_exercise(module_name, checker)
            if found is None or found[1] in seen:
                continue
            module, ex = found
            seen.add(ex)
            specs.append((i, ExerciseSpec(ex, module, checker, expr, float(table.get(ex, DEFAULT_POINTS)), grade_id(ex))))
    return specs


def chapter_of(nb, specs=None) -> str | None:
    """The chapter (``"ch01"``) a notebook belongs to: its metadata, else the module of its checkers."""
    meta = (nb.get("metadata", {}).get("diffedu") or {}).get("chapter")
    if isinstance(meta, str) and _CHAPTER_RE.match(meta):
        return meta
    for _, spec in specs if specs is not None else exercise_specs(nb):
        return spec.module.rsplit(".", 1)[-1]
    return None


def _nbgrader(**fields) -> dict:
    base = {"grade": False, "solution": False, "locked": False, "task": False, "schema_version": 3}
    base.update(fields)
    return base


def annotate(nb, points: Mapping[str, float] | None = None):
    """A copy of a chapter (or student) notebook with diffedu and nbgrader metadata on its cells.

    Existing cell tags, sources and outputs are left as they are; only ``metadata.diffedu`` and
    ``metadata.nbgrader`` are (re)written.
    """
    nb = copy.deepcopy(nb)
    specs = exercise_specs(nb, points)
    by_cell: dict[int, list[ExerciseSpec]] = {}
    for i, spec in specs:
        by_cell.setdefault(i, []).append(spec)
    first_code = next((i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"), None)
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        cell.metadata.pop("nbgrader", None)
        role = cell_role(cell, i == first_code) or "context"
        info = {"role": role}
        if role == "check" and i in by_cell:
            exs = by_cell[i]
            info.update(exercise=exs[0].exercise, exercises=[s.exercise for s in exs],
                        points=sum(s.points for s in exs))
            cell.metadata["nbgrader"] = _nbgrader(grade=True, locked=True, points=info["points"],
                                                  grade_id=exs[0].grade_id)
        elif role == "solution":
            nxt = [s for j, s in specs if j > i]
            if nxt:
                info["exercise"] = nxt[0].exercise
                cell.metadata["nbgrader"] = _nbgrader(solution=True, grade_id=f"{nxt[0].grade_id}-solution")
        cell.metadata["diffedu"] = info
    nb.metadata["diffedu"] = {
        "chapter": chapter_of(nb, specs),
        "exercises": [{"exercise": s.exercise, "grade_id": s.grade_id, "points": s.points} for _, s in specs],
        "total_points": sum(s.points for _, s in specs),
    }
    return nb


def disabled_for(exercises, extra=()) -> list[str]:
    """The package functions disabled while grading these exercise ids (plus ``extra`` names)."""
    names = []
    for ex in exercises:
        names += DISABLED.get(ex, ())
    names += list(extra)
    return sorted(set(names))


def resolve_name(dotted: str):
    """The object a dotted name such as ``diffedu.toy.GaussianMixture.log_prob`` points to."""
    if not isinstance(dotted, str) or "." not in dotted:
        raise ValueError(f"name: expected a dotted name such as 'diffedu.gaussian.gaussian_kl', got {dotted!r}")
    parts = dotted.split(".")
    for k in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ValueError(f"name: no module found for {dotted!r}")
