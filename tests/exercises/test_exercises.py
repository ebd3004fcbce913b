"""The exercise tooling: diagnoses of the checker, student notebooks, the grader.

The chapter notebooks themselves (solutions included) run under nbval; here the exercise cells
are graded on their own (the set-up cell plus the solution and check cells), which is what the
exercise convention promises and keeps this fast.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import nbformat
import pytest
import torch

from conftest import ROOT, chapter_notebooks
from diffedu.exercises import Case, CheckResult, ExerciseFailed, check, ch01, diagnose
from diffedu.exercises.notebooks import (
    exercise_cells, grade_notebook, make_student_notebook, strip_solution, write_student_notebooks,
)

CHAPTERS = [p for p in chapter_notebooks()
            if any("solution" in c.metadata.get("tags", []) for c in nbformat.read(p, as_version=4).cells)]


# ----------------------------------------------------------------------------- diagnoses
def _ref(x, scale):
    return (x**2).sum(-1) * scale


def _cases(times=(0.1, 0.5, 0.9)):
    g = torch.Generator().manual_seed(0)
    return [Case((torch.randn(b, d, generator=g), t), label=f"x ({b}, {d}), t={t}", t=t)
            for b, d in [(3, 2), (5, 4)] for t in times]


@pytest.mark.parametrize("wrong, kind, words", [
    (lambda x, t: -_ref(x, t), "sign", ["wrong sign", "-1"]),
    (lambda x, t: 2.5 * _ref(x, t), "scale", ["wrong scale", "2.5 x"]),
    (lambda x, t: _ref(x, t) + 0.75, "offset", ["off by a constant", "0.75"]),
    (lambda x, t: _ref(x, t)[:, None], "shape", ["wrong shape", "(3, 1)", "(3,)"]),
    (lambda x, t: _ref(x, t) * float("nan"), "nan", ["NaN"]),
    (lambda x, t: _ref(x, t) - float("inf"), "nan", ["-inf", "logsumexp"]),
    (lambda x, t: (_ for _ in ()).throw(NotImplementedError("Exercise")), "not_attempted", ["not attempted yet"]),
    (lambda x, t: x @ x, "error", ["raised RuntimeError", "x (3, 2)"]),
    (lambda x, t: _ref(x, t).tolist(), "type", ["returned list"]),
])
def test_checker_says_what_is_wrong(wrong, kind, words):
    result = diagnose(wrong, _ref, _cases(), exercise="9.9")
    assert not result.passed and result.kind == kind, result
    assert result.message.startswith("[Exercise 9.9] ")
    for word in words:
        assert word in result.message, (word, result.message)


def test_checker_names_the_failing_times():
    wrong = lambda x, t: _ref(x, t) * (1.0 if t < 0.8 else 1.3)  # noqa: E731
    result = diagnose(wrong, _ref, _cases())
    assert not result.passed
    assert "for t=0.9" in result.message and "passes for t=0.1, 0.5" in result.message, result.message
    assert "1.3 x" in result.message


def test_checker_reports_scale_that_depends_on_input():
    wrong = lambda x, t: _ref(x, t) * t  # noqa: E731  (forgot the t-dependent factor)
    result = diagnose(wrong, lambda x, t: _ref(x, 1.0), _cases())
    assert not result.passed and result.kind == "scale" and "depends on the input" in result.message


def test_check_raises_assertion_error_and_passes_on_reference():
    ok = check("9.9", _ref, _ref, _cases(), display=False)
    assert isinstance(ok, CheckResult) and ok.passed and "all 6 test inputs" in ok.message
    with pytest.raises(AssertionError, match="wrong sign"):
        check("9.9", lambda x, t: -_ref(x, t), _ref, _cases(), display=False)
    with pytest.raises(ExerciseFailed):
        check("9.9", lambda x, t: -_ref(x, t), _ref, _cases(), display=False)


def test_reader_function_cannot_corrupt_reference_inputs():
    def in_place(x, t):
        out = _ref(x, t)
        x.zero_()
        return out
    assert diagnose(in_place, _ref, _cases()).passed


# ----------------------------------------------------------------------------- chapter checkers
@pytest.mark.parametrize("exercise", sorted(ch01.EXERCISES))
def test_ch01_checkers_pass_on_reference_and_fail_on_errors(exercise):
    checker, reference = ch01.EXERCISES[exercise]
    assert checker(reference).passed
    with pytest.raises(AssertionError, match="not attempted yet"):
        checker(lambda *a: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(AssertionError, match="wrong sign"):
        checker(lambda *a: -reference(*a))
    with pytest.raises(AssertionError, match=r"wrong scale: your output is 2 x"):
        checker(lambda *a: 2 * reference(*a))


def test_ch01_typical_mistakes():
    # forgetting the normalising constant of a Gaussian: off by a constant per input
    def no_constant(x, mean, std):
        return (-0.5 * ((x - mean) / std) ** 2 - torch.log(std)).expand_as(x).reshape(len(x), -1).sum(-1)
    with pytest.raises(AssertionError, match="wrong|off by"):
        ch01.check_gaussian_log_density(no_constant)
    # a mixture density without logsumexp underflows far from the components
    def naive(x, means, stds, weights):
        d = x.shape[-1]
        sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
        comp = torch.exp(-0.5 * sq / stds**2) / (2 * math.pi * stds**2) ** (d / 2)
        return torch.log((weights * comp).sum(-1))
    with pytest.raises(AssertionError, match="-inf.*logsumexp"):
        ch01.check_mixture_log_density(naive)
    # the KL without its 1/2
    with pytest.raises(AssertionError, match="wrong scale: your output is 2 x"):
        ch01.check_gaussian_kl(lambda mu, lv: (mu**2 + lv.exp() - 1 - lv).reshape(len(mu), -1).sum(-1))


# ----------------------------------------------------------------------------- student notebooks
def test_strip_solution_keeps_indentation_and_hint():
    src = "def f(x):\n    # BEGIN SOLUTION (hint: square it)\n    y = x**2\n    return y\n    # END SOLUTION\n"
    out = strip_solution(src, exercise="1.1")
    assert out == ('def f(x):\n    # (hint: square it)\n'
                   '    raise NotImplementedError("Exercise 1.1: write your solution here")\n')
    with pytest.raises(ValueError):
        strip_solution("def f():\n    # BEGIN SOLUTION\n    pass\n")
    with pytest.raises(ValueError):
        strip_solution("x = 1\n")


def _exercise_subset(nb):
    """The set-up cell plus the exercise cells (markdown, solution, check) of a chapter."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    keep = [first] + [i for i, c in enumerate(nb.cells)
                      if set(c.metadata.get("tags", [])) & {"solution", "check"}]
    nb.cells = [nb.cells[i] for i in sorted(set(keep))]
    return nb


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    write_student_notebooks([ROOT / "chapters"], out)
    return out


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_student_notebook_has_stubs_and_no_outputs(path, student_dir):
    original = nbformat.read(path, as_version=4)
    student = nbformat.read(student_dir / path.name, as_version=4)
    assert len(student.cells) == len(original.cells)
    for before, after in zip(original.cells, student.cells):
        tags = after.metadata.get("tags", [])
        if after.cell_type == "code":
            assert after.outputs == [] and after.execution_count is None
        if "solution" in tags:
            assert "# BEGIN SOLUTION" not in after.source and "raise NotImplementedError(" in after.source
            assert "hide-input" not in tags
        else:
            assert after.source == before.source  # everything else, checks included, is kept


def test_unsandboxed_grade_notebook_full_marks_for_solutions_zero_for_stubs(student_dir, tmp_path):
    """grade_notebook (nbclient, no sandbox: for trusted notebooks such as the book's) on Chapter 1."""
    path = next(p for p in CHAPTERS if p.name.startswith("ch01"))
    solution = _exercise_subset(nbformat.read(path, as_version=4))
    stub = _exercise_subset(nbformat.read(student_dir / path.name, as_version=4))
    n_checks = len(exercise_cells(solution))
    for name, nb in (("solution", solution), ("stub", stub)):
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    good = grade_notebook(tmp_path / "solution.ipynb", timeout=300)
    assert good["total"] == n_checks and good["passed"] == n_checks and good["score"] == 1.0, good
    bad = grade_notebook(tmp_path / "stub.ipynb", timeout=300)
    assert bad["total"] == n_checks and bad["passed"] == 0 and bad["score"] == 0.0, bad
    assert all("not attempted yet" in ex["message"] for ex in bad["exercises"])


@pytest.fixture(scope="module")
def sandboxed_chapters(student_dir, tmp_path_factory):
    """Every chapter's solutions and stubs graded in the sandbox, in one batch (two workers)."""
    from diffedu.exercises.assignments import annotate
    from diffedu.exercises.grading import Grader, grade_batch
    from diffedu.exercises.sandbox import Limits

    folder = tmp_path_factory.mktemp("graded_chapters")
    for path in CHAPTERS:  # annotate: the chapter's own cells are skipped, as in a student notebook
        nbformat.write(annotate(nbformat.read(path, as_version=4)), folder / f"{path.stem}__solution.ipynb")
        (folder / f"{path.stem}__stub.ipynb").write_bytes((student_dir / path.name).read_bytes())
    with Grader(limits=Limits(cell_timeout=120, notebook_timeout=300, memory_mb=3072)) as grader:
        book = grade_batch(folder, folder / "gradebook", workers=2, grader=grader, cache=False)
    return {r.student: r for r in book["results"]}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_grader_full_marks_for_solutions_zero_for_stubs(path, sandboxed_chapters):
    n_checks = len(exercise_cells(nbformat.read(path, as_version=4)))
    assert n_checks >= 3, f"{path.name}: a chapter needs at least 3 exercises with checkers"
    good, bad = sandboxed_chapters[f"{path.stem}__solution"], sandboxed_chapters[f"{path.stem}__stub"]
    assert good.status == "ok" and len(good.exercises) == n_checks, (good.status, good.detail)
    assert all(e.passed for e in good.exercises) and good.points == good.max_points > 0, \
        [e.message for e in good.exercises if not e.passed]
    assert bad.status == "not_attempted" and bad.points == 0 and len(bad.exercises) == n_checks, bad.detail
    for ex in bad.exercises:  # every checker fails on the generated stubs, saying why
        assert not ex.passed and "not attempted yet" in ex.message, ex
    assert [e.exercise for e in bad.exercises] == [e.exercise for e in good.exercises]


def test_grade_cli_reports_a_wrong_answer(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("import torch\nfrom diffedu.exercises import ch01"),
        nbformat.v4.new_code_cell("def gaussian_kl(mu, log_var):\n    # BEGIN SOLUTION\n"
                                  "    return (mu**2 + log_var.exp() - 1 - log_var).reshape(len(mu), -1).sum(-1)\n"
                                  "    # END SOLUTION", metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("ch01.check_gaussian_kl(gaussian_kl)", metadata={"tags": ["check"]}),
        nbformat.v4.new_code_cell("ch01.check_reparameterise(lambda mu, lv, e: mu + (0.5 * lv).exp() * e)",
                                  metadata={"tags": ["check"]}),
        nbformat.v4.new_code_cell("ch01.check_gaussian_log_density(undefined_name)", metadata={"tags": ["check"]}),
    ]
    path = tmp_path / "answers.ipynb"
    nbformat.write(nb, path)
    proc = subprocess.run([sys.executable, "-m", "diffedu.exercises", "grade", str(path), "--out", str(tmp_path / "s.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert json.loads((tmp_path / "s.json").read_text()) == report
    assert report["total"] == 3 and report["passed"] == 1
    kl, rep, missing = report["exercises"]
    assert kl["exercise"] == "1.4" and not kl["passed"] and "wrong scale: your output is 2 x" in kl["message"]
    assert rep["exercise"] == "1.3" and rep["passed"]
    assert not missing["passed"] and "NameError" in missing["message"]


def test_student_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffedu.exercises", "student", "chapters", "-o", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in tmp_path.glob("*.ipynb")} == {p.name for p in CHAPTERS}


# ------------------------------------------------------------------ every chapter's checkers
def _checker_modules() -> list[str]:
    """Every module of diffedu.exercises that declares EXERCISES (one per chapter)."""
    import importlib
    import pkgutil

    import diffedu.exercises as ex

    names = [m.name for m in pkgutil.iter_modules(ex.__path__) if not m.name.startswith("_")]
    return sorted(n for n in names if hasattr(importlib.import_module(f"diffedu.exercises.{n}"), "EXERCISES"))


def test_every_chapter_with_exercises_has_a_checker_module():
    import re

    modules = set(_checker_modules())
    for path in CHAPTERS:
        m = re.match(r"(ch\d\d)_", path.name)
        key = m.group(1) if m else path.stem.split("_")[0]
        if any("solution" in c.get("metadata", {}).get("tags", []) for c in nbformat.read(path, as_version=4).cells):
            assert key in modules, f"{path.name}: exercises but no diffedu/exercises/{key}.py with EXERCISES"


@pytest.mark.parametrize("chapter", _checker_modules())
def test_chapter_checkers_pass_on_references_and_fail_on_stubs_and_sign_errors(chapter):
    import importlib

    module = importlib.import_module(f"diffedu.exercises.{chapter}")
    for ex, (checker, reference) in module.EXERCISES.items():
        assert checker(reference).passed, ex

        def stub(*args, **kwargs):
            raise NotImplementedError

        with pytest.raises(ExerciseFailed, match="not attempted"):
            checker(stub)
        with pytest.raises(ExerciseFailed, match="sign"):
            checker(lambda *a, ref=reference, **k: -ref(*a, **k))
