"""Grading a class in the sandbox: a synthetic class of Chapter 1 submissions.

Fourteen submissions of ch01 (correct, partially correct, wrong sign, wrong shape, blank, an
infinite loop, a memory hog, one that fails on import, one that deletes files, one that reads
the reference solutions, one that reaches for the network, one cell that takes too long, one
that calls the package instead of writing the function, one that is not a notebook) are graded
together with two workers. The gradebook must have one row each with the expected status and
points, every runaway must be stopped by its limit, and nothing outside each submission's
temporary directory may change. Runs in about a minute on one core.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import time
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from diffedu.exercises import grading
from diffedu.exercises.grading import Grader, grade_batch
from diffedu.exercises.notebooks import make_student_notebook
from diffedu.exercises.sandbox import Limits, Sandbox

CH01 = ROOT / "chapters" / "ch01_generative_modelling.ipynb"
REFERENCES = ROOT / "diffedu" / "exercises" / "ch01.py"
LIMITS = Limits(cell_timeout=6, notebook_timeout=60, memory_mb=2048, grace=2)
POINTS = {"1.1": 2, "1.2": 3, "1.3": 1, "1.4": 2}

PARTIAL_11 = '''def gaussian_log_density(x, mean, std):
    z = (x - mean) / std
    return (-0.5 * z**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).expand_as(x).sum(-1)  # only 2D data
'''
SIGN_14 = '''def gaussian_kl(mu, log_var):
    return -(0.5 * (mu**2 + torch.exp(log_var) - 1.0 - log_var)).reshape(mu.shape[0], -1).sum(-1)
'''
SHAPE_14 = '''def gaussian_kl(mu, log_var):
    return (0.5 * (mu**2 + torch.exp(log_var) - 1.0 - log_var)).reshape(mu.shape[0], -1)  # forgot the sum
'''
LOOP = '''import time
while True:  # an infinite loop that even swallows the alarm
    try:
        time.sleep(0.05)
    except BaseException:
        pass
'''
HOG = "hog = [torch.empty(2**27) for _ in range(1000)]  # 512 MB at a time\n"
SLEEP = "import time\ntime.sleep(3600)\n"
NETWORK = "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=5)\n"
PACKAGE_11 = '''def gaussian_log_density(x, mean, std):
    from diffedu.gaussian import gaussian_log_prob
    return gaussian_log_prob(x, mean, std**2)
'''
IMPORT_14 = "from diffedu.exercises.ch01 import gaussian_kl\n"
READ_11 = f"exec(open({str(REFERENCES)!r}).read())\n"


def _deleter(decoys) -> str:
    return f'''import os, shutil, pathlib
for p in pathlib.Path('.').iterdir():  # its own working directory: allowed
    shutil.rmtree(p) if p.is_dir() else p.unlink()
for target in {[str(d) for d in decoys]!r}:  # anything else: must fail
    try:
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    except Exception as e:
        print('could not delete', target, type(e).__name__)
    try:
        open(os.path.join(target, 'x') if os.path.isdir(target) else target, 'w').write('overwritten')
    except Exception as e:
        print('could not write', target, type(e).__name__)
'''


def _solutions():
    nb = nbformat.read(CH01, as_version=4)
    student = make_student_notebook(nb)
    sols = {}
    for i, cell in enumerate(student.cells):
        meta = cell.metadata.get("diffedu", {})
        if meta.get("role") == "solution":
            sols[meta["exercise"]] = (i, nb.cells[i].source)
    return student, sols


def _make(student, sols, answers: dict, setup: str | None = None, extra: str | None = None):
    nb = copy.deepcopy(student)
    for ex, (i, source) in sols.items():
        text = answers.get(ex, source)
        nb.cells[i].source = text if text is not None else student.cells[i].source  # None: leave the stub
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    if setup is not None:
        nb.cells[first].source = setup
    if extra is not None:  # a cell the student added right after the set-up cell
        nb.cells.insert(first + 1, nbformat.v4.new_code_cell(extra))
    return nb


def build_class(folder: Path, decoys) -> dict:
    """Write the synthetic class; return ``{student: (expected status, expected points per exercise)}``."""
    student, sols = _solutions()
    s = {ex: src for ex, (_, src) in sols.items()}
    full = dict(POINTS)
    spec = {
        "correct": ({}, None, None, "ok", full),
        "partial": ({"1.1": PARTIAL_11, "1.3": None}, None, None, "ok", {**full, "1.1": 1.5, "1.3": 0}),
        "wrong_sign": ({"1.4": SIGN_14}, None, None, "ok", {**full, "1.4": 0}),
        "wrong_shape": ({"1.4": SHAPE_14}, None, None, "ok", {**full, "1.4": 0}),
        "blank": ({ex: None for ex in s}, None, None, "not_attempted", dict.fromkeys(full, 0)),
        "infinite_loop": ({"1.2": LOOP + s["1.2"]}, None, None, "timeout", {**full, "1.2": 0}),
        "memory_hog": ({"1.3": HOG + s["1.3"]}, None, None, "memory", {**full, "1.3": 0}),
        "raises_on_import": ({}, "import numpy_misspelled\nimport math\nimport torch\n", None, "error",
                             dict.fromkeys(full, 0)),
        "deletes_files": ({}, None, _deleter(decoys), "ok", full),
        "reads_references": ({"1.1": READ_11 + s["1.1"], "1.4": IMPORT_14}, None, None, "blocked",
                             {**full, "1.1": 0, "1.4": 0}),
        "network": ({"1.2": NETWORK + s["1.2"]}, None, None, "blocked", {**full, "1.2": 0}),
        "too_long_cell": ({"1.3": SLEEP + s["1.3"]}, None, None, "timeout", {**full, "1.3": 0}),
        "calls_package": ({"1.1": PACKAGE_11}, None, None, "ok", {**full, "1.1": 0}),
    }
    expected = {}
    for name, (answers, setup, extra, status, points) in spec.items():
        nbformat.write(_make(student, sols, answers, setup, extra), folder / f"{name}.ipynb")
        expected[name] = (status, points)
    (folder / "not_a_notebook.ipynb").write_text('{"cells": [ this is not JSON')
    expected["not_a_notebook"] = ("invalid", {})
    return expected


def _snapshot(*roots, skip=()) -> dict:
    files = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and not any(str(p).startswith(str(s)) for s in skip):
                files[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox("auto") as sb:
        yield sb


@pytest.fixture(scope="module")
def graded(sandbox, tmp_path_factory):
    """The class, graded once (two workers); the tests below read the outcome."""
    base = tmp_path_factory.mktemp("course")
    subs, out, teacher = base / "submissions", base / "gradebook", base / "teacher"
    subs.mkdir()
    (teacher / "notes").mkdir(parents=True)
    (teacher / "precious.txt").write_text("keep me")
    (teacher / "notes" / "answers.txt").write_text("the teacher's notes")
    expected = build_class(subs, [teacher / "precious.txt", teacher / "notes", subs, out])
    before = _snapshot(base, REFERENCES.parent, skip=[out])
    grader = Grader(limits=LIMITS, sandbox=sandbox, hide=[str(subs), str(out), str(teacher)])
    t0 = time.monotonic()
    book = grade_batch(subs, out, workers=2, grader=grader)
    seconds = time.monotonic() - t0
    after = _snapshot(base, REFERENCES.parent, skip=[out])
    return {"book": book, "expected": expected, "seconds": seconds, "before": before, "after": after,
            "subs": subs, "out": out, "grader": grader, "sandbox": sandbox}


def test_gradebook_has_one_row_per_submission_with_expected_status_and_points(graded):
    rows = {r.student: r for r in graded["book"]["results"]}
    assert sorted(rows) == sorted(graded["expected"]) and len(graded["book"]["results"]) == len(rows)
    assert {r.isolation for r in rows.values() if r.status != "invalid"} in ({"namespace"}, {"process"})
    expected = dict(graded["expected"])
    if rows["correct"].isolation == "process":  # no namespaces here: the audit hook refuses the deletions
        expected["deletes_files"] = ("blocked", expected["deletes_files"][1])
    problems = []
    for name, (status, points) in expected.items():
        row = rows[name]
        got = {e.exercise: e.points for e in row.exercises}
        if row.status != status or got != {k: float(v) for k, v in points.items()}:
            problems.append(f"{name}: status {row.status} (want {status}), points {got} (want {points}); {row.detail}")
    assert not problems, "\n".join(problems)
    assert rows["correct"].points == rows["correct"].max_points == 8


def test_messages_say_what_went_wrong(graded):
    ex = {r.student: {e.exercise: e for e in r.exercises} for r in graded["book"]["results"]}
    partial = ex["partial"]["1.1"]
    assert partial.kind == "shape" and partial.n_passed == 6 and partial.n_cases == 8
    assert "wrong shape" in partial.message and "(4, 1, 8, 8)" in partial.message and "Partial credit" in partial.message
    assert partial.failed_cases and all("(4, 1, 8, 8)" in c for c in partial.failed_cases)
    assert ex["partial"]["1.3"].kind == "not_attempted"
    assert ex["wrong_sign"]["1.4"].kind == "sign" and "wrong sign" in ex["wrong_sign"]["1.4"].message
    assert ex["wrong_shape"]["1.4"].kind == "shape"
    assert all(e.kind == "not_attempted" and "not attempted" in e.message for e in ex["blank"].values())
    assert ex["infinite_loop"]["1.2"].kind == "timeout" and "cell limit" in ex["infinite_loop"]["1.2"].message
    assert ex["too_long_cell"]["1.3"].kind == "timeout"
    assert ex["memory_hog"]["1.3"].kind == "memory"
    assert ex["network"]["1.2"].kind == "blocked"
    assert ex["calls_package"]["1.1"].kind == "blocked" and "disabled while grading" in ex["calls_package"]["1.1"].message
    assert "NameError" in ex["raises_on_import"]["1.1"].message
    rows = {r.student: r for r in graded["book"]["results"]}
    assert "network access" in rows["network"].detail and "diffedu.exercises.ch01" in rows["reads_references"].detail
    assert "not a readable notebook" in rows["not_a_notebook"].detail


def test_limits_are_respected(graded):
    rows = {r.student: r for r in graded["book"]["results"]}
    bound = LIMITS.cell_timeout + LIMITS.grace
    assert rows["infinite_loop"].attempts == 2  # killed once, then the rest graded in a fresh process
    assert bound <= rows["infinite_loop"].seconds < 2 * bound + 20
    assert LIMITS.cell_timeout <= rows["too_long_cell"].seconds < bound + 20
    assert all(r.seconds < LIMITS.notebook_timeout for r in rows.values())
    assert graded["seconds"] < 150, graded["seconds"]


def test_nothing_outside_the_working_directories_changes(graded):
    assert graded["after"] == graded["before"]
    root = graded["sandbox"].root
    assert not any((root / "work").iterdir()) and not any((root / "jobs").iterdir())


def test_gradebook_files_and_summary(graded):
    files = graded["book"]["files"]
    with open(files["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(graded["expected"])
    row = next(r for r in table if r["student"] == "partial")
    assert row["status"] == "ok" and float(row["1.1 (2)"]) == 1.5 and "wrong shape" in row["1.1 message"]
    data = json.loads(Path(files["json"]).read_text())
    assert [e["exercise"] for e in data["exercises"]] == ["1.1", "1.2", "1.3", "1.4"]
    assert len(data["submissions"]) == len(graded["expected"])
    summary = graded["book"]["summary"]
    assert summary["statuses"]["timeout"] == 2 and summary["statuses"]["invalid"] == 1
    graded_rows = [pts for status, pts in graded["expected"].values() if pts]
    means = {ex: sum(p[ex] for p in graded_rows) / len(graded_rows) for ex in POINTS}
    by = {e["exercise"]: e for e in summary["exercises"]}
    assert all(abs(by[ex]["mean_points"] - round(m, 2)) < 1e-9 for ex, m in means.items()), (by, means)
    assert summary["hardest"] == sorted(POINTS, key=lambda ex: (round(means[ex] / POINTS[ex], 3), ex))
    assert by["1.3"]["mistakes"][0][0] in ("not_attempted", "memory", "timeout", "error")
    text = Path(files["summary"]).read_text()
    assert "| 1.1 |" in text and "Statuses:" in text
    assert (graded["out"] / "logs" / "correct.log").exists()


def test_rerun_skips_unchanged_submissions(graded):
    first = {r.student: r for r in graded["book"]["results"]}
    t0 = time.monotonic()
    again = grade_batch(graded["subs"], graded["out"], workers=2, grader=graded["grader"])
    assert time.monotonic() - t0 < 20
    assert all(r.cached for r in again["results"])
    assert {r.student: (r.status, r.points) for r in again["results"]} == \
        {k: (r.status, r.points) for k, r in first.items()}
    student, sols = _solutions()  # the blank submission is handed in again, now correct
    nbformat.write(_make(student, sols, {}), graded["subs"] / "blank.ipynb")
    third = {r.student: r for r in grade_batch(graded["subs"], graded["out"], workers=2, grader=graded["grader"])["results"]}
    assert not third["blank"].cached and third["blank"].status == "ok" and third["blank"].points == 8
    assert all(r.cached for name, r in third.items() if name != "blank")


def test_process_isolation_still_blocks_the_dangerous_submissions(sandbox, tmp_path):
    """Without namespaces (e.g. where the kernel forbids them) the audit hook does the refusing."""
    subs, teacher = tmp_path / "subs", tmp_path / "teacher"
    subs.mkdir()
    teacher.mkdir()
    (teacher / "precious.txt").write_text("keep me")
    student, sols = _solutions()
    s = {ex: src for ex, (_, src) in sols.items()}
    cases = {"correct": ({}, None, "ok"), "deletes_files": ({}, _deleter([teacher / "precious.txt", teacher, subs]), "blocked"),
             "reads_references": ({"1.1": READ_11 + s["1.1"]}, None, "blocked"),
             "network": ({"1.2": NETWORK + s["1.2"]}, None, "blocked")}
    for name, (answers, extra, _) in cases.items():
        nbformat.write(_make(student, sols, answers, extra=extra), subs / f"{name}.ipynb")
    before = _snapshot(tmp_path)
    grader = Grader(limits=LIMITS, sandbox=sandbox, isolation="process", hide=[str(subs), str(teacher)])
    rows = {r.student: r for r in grade_batch(subs, tmp_path / "book", workers=2, grader=grader, cache=False)["results"]}
    assert _snapshot(tmp_path, skip=[tmp_path / "book"]) == before
    for name, (_, _, status) in cases.items():
        assert rows[name].isolation == "process" and rows[name].status == status, (name, rows[name].detail)
    assert rows["correct"].points == rows["deletes_files"].points == 8
    assert rows["reads_references"].points == 6 and rows["network"].points == 5
    assert "refused" in rows["reads_references"].detail


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="cell_timeout"):
        Limits(cell_timeout=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=100)
    with pytest.raises(ValueError, match="isolation"):
        Sandbox("chroot")
    with pytest.raises(ValueError, match="cells"):
        Grader(cells="some")
    with pytest.raises(ValueError, match="submissions"):
        grading.collect_submissions(["/nonexistent/*.ipynb"])
    with pytest.raises(ValueError, match="workers"):
        grade_batch([str(CH01)], "/tmp/unused", workers=0)
