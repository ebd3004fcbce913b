"""The release flow, the nbgrader metadata, manifests, and the grade command on a class folder."""
from __future__ import annotations

import json
import re

import nbformat
import pytest

from conftest import ROOT
from diffedu.exercises import assignments, grading
from diffedu.exercises.__main__ import main
from diffedu.exercises.notebooks import BEGIN, make_student_notebook
from diffedu.exercises.release import release, resolve_chapters

CHAPTERS = ROOT / "chapters"
CH01 = CHAPTERS / "ch01_generative_modelling.ipynb"
GRADE_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # what nbgrader accepts


def _with_exercises():
    return [p for p in sorted(CHAPTERS.glob("*.ipynb"))
            if any("solution" in c.metadata.get("tags", []) for c in nbformat.read(p, as_version=4).cells)]


@pytest.mark.parametrize("path", _with_exercises(), ids=lambda p: p.name)
def test_student_notebooks_carry_nbgrader_metadata(path):
    nb = make_student_notebook(nbformat.read(path, as_version=4))
    ids, checks, solutions = [], 0, 0
    for cell in nb.cells:
        tags, meta = cell.metadata.get("tags", []), cell.metadata.get("nbgrader")
        if cell.cell_type != "code":
            continue
        assert cell.metadata["diffedu"]["role"] in ("setup", "context", "solution", "check")
        if "solution" in tags:
            solutions += 1
            assert meta["solution"] is True and meta["grade"] is False and meta["schema_version"] == 3
            ids.append(meta["grade_id"])
        elif "check" in tags:
            checks += 1
            assert meta["grade"] is True and meta["solution"] is False and meta["locked"] is True
            assert meta["points"] == cell.metadata["diffedu"]["points"] > 0
            ids.append(meta["grade_id"])
        else:
            assert meta is None
    assert checks >= 3 and solutions >= 3
    assert len(ids) == len(set(ids)) and all(GRADE_ID.match(i) for i in ids), ids
    info = nb.metadata["diffedu"]
    assert info["total_points"] == sum(e["points"] for e in info["exercises"]) and len(info["exercises"]) == checks


def test_points_table_and_disabled_functions_are_real():
    for ex, names in assignments.DISABLED.items():
        for name in names:
            assert callable(assignments.resolve_name(name)), (ex, name)
    known = {ex for m in assignments.chapter_modules()
             for ex in __import__(f"diffedu.exercises.{m}", fromlist=["EXERCISES"]).EXERCISES}
    assert set(assignments.DISABLED) <= known and set(assignments.POINTS) <= known
    assert assignments.grade_id("1.4") == "ex-1-4" and assignments.grade_id("I.2") == "ex-I-2"
    assert assignments.parse_points(["1.1=3", "2.2=0.5"]) == {"1.1": 3.0, "2.2": 0.5}
    with pytest.raises(ValueError, match="points"):
        assignments.parse_points(["1.1"])
    with pytest.raises(ValueError, match="exercise"):
        assignments.grade_id("")


def test_release_writes_students_solutions_nbgrader_and_manifest(tmp_path):
    manifest = release(["3"], tmp_path, chapters_dir=CHAPTERS, solutions=True, nbgrader=True, points=["3.1=5"])
    (entry,) = manifest["chapters"]
    assert entry["chapter"] == "ch03" and [e["exercise"] for e in entry["exercises"]] == ["3.1", "3.2", "3.3", "3.4"]
    assert entry["exercises"][0]["points"] == 5 and entry["total_points"] == 5 + sum(
        assignments.POINTS[e] for e in ("3.2", "3.3", "3.4"))
    student = nbformat.read(entry["student"], as_version=4)
    assert student.metadata["diffedu"]["total_points"] == entry["total_points"]
    assert not any(BEGIN in c.source for c in student.cells)
    source = nbformat.read(entry["nbgrader"], as_version=4)  # nbgrader's source version keeps the solutions
    sols = [c for c in source.cells if (c.metadata.get("nbgrader") or {}).get("solution")]
    assert sols and all(BEGIN in c.source for c in sols) and all(c.get("outputs", []) == [] for c in source.cells
                                                                 if c.cell_type == "code")
    assert 'dict(name="ch03")' in (tmp_path / "nbgrader" / "nbgrader_config.py").read_text()
    solutions = sorted(p.split("/")[-1] for p in manifest["solutions"])
    assert solutions == ["ch01_generative_modelling.ipynb", "ch02_variational_ddpm.ipynb"]
    assert any(BEGIN in c.source for c in nbformat.read(tmp_path / "solutions" / solutions[0], as_version=4).cells)
    specs = grading.load_manifest(tmp_path / "manifest.json")
    assert [s.exercise for s in specs["ch03"]] == ["3.1", "3.2", "3.3", "3.4"] and specs["ch03"][0].points == 5
    bare = release(["ch01"], tmp_path / "bare", chapters_dir=CHAPTERS)
    assert bare["solutions"] == [] and "nbgrader" not in bare["chapters"][0]


def test_release_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="chapters: no chapter notebook matches 'ch42'"):
        resolve_chapters(["ch42"], CHAPTERS)
    with pytest.raises(ValueError, match="chapters_dir"):
        resolve_chapters(["1"], tmp_path / "nowhere")
    with pytest.raises(ValueError, match="manifest"):
        grading.load_manifest(tmp_path / "missing.json")
    assert main(["release", "ch42", "--chapters-dir", str(CHAPTERS), "-o", str(tmp_path)]) == 2


def test_student_ids_and_job_cells(tmp_path):
    paths = [tmp_path / "alice" / "ch01.ipynb", tmp_path / "bob" / "ch01.ipynb", tmp_path / "carol.ipynb"]
    ids = grading.student_ids(paths)
    assert ids[paths[0]] == "alice/ch01" and ids[paths[1]] == "bob/ch01" and ids[paths[2]] == "carol"
    nb = make_student_notebook(nbformat.read(CH01, as_version=4))
    nb.cells.append(nbformat.v4.new_code_cell("helper = 1"))  # a cell the student added
    specs = assignments.exercise_specs(nb)
    positions = {s.exercise: pos for pos, s in specs}
    cells = grading._job_cells(nb, positions, "exercises")
    kinds = [(c["kind"], nb.cells[c["i"]].metadata.get("diffedu", {}).get("role")) for c in cells]
    assert kinds[0] == ("code", "setup") and ("code", None) in kinds
    assert [c["exercises"] for c in cells if c["kind"] == "check"] == [["1.1"], ["1.2"], ["1.3"], ["1.4"]]
    assert not any(role == "context" for _, role in kinds)
    everything = grading._job_cells(nb, positions, "all")
    assert len(everything) > len(cells) and any(nb.cells[c["i"]].metadata["diffedu"]["role"] == "context"
                                                for c in everything if "diffedu" in nb.cells[c["i"]].metadata)


def test_grade_command_on_a_class_with_a_manifest(tmp_path, capsys):
    """A student who edits a check cell and the points in the metadata gains nothing with the manifest."""
    assert main(["release", "1", "--chapters-dir", str(CHAPTERS), "-o", str(tmp_path / "release")]) == 0
    student = nbformat.read(tmp_path / "release" / "student" / CH01.name, as_version=4)
    source = nbformat.read(CH01, as_version=4)
    subs = tmp_path / "submissions"
    subs.mkdir()
    for i, cell in enumerate(student.cells):  # everyone solves 1.3 only
        if cell.metadata.get("diffedu", {}).get("exercise") == "1.3" and cell.metadata["diffedu"]["role"] == "solution":
            cell.source = source.cells[i].source
    nbformat.write(student, subs / "honest.ipynb")
    for cell in student.cells:  # the tamperer checks a correct lambda for 1.4 and claims 100 points
        if cell.metadata.get("diffedu", {}).get("exercise") == "1.4" and cell.metadata["diffedu"]["role"] == "check":
            cell.source = "ch01.check_gaussian_kl(lambda mu, lv: (0.5 * (mu**2 + lv.exp() - 1 - lv)).reshape(len(mu), -1).sum(-1))"
            cell.metadata["nbgrader"]["points"] = 100
    nbformat.write(student, subs / "tamperer.ipynb")
    args = ["grade", str(subs), "-o", str(tmp_path / "book"), "--workers", "2", "--timeout", "20",
            "--notebook-timeout", "60", "--memory-mb", "2048", "--manifest", str(tmp_path / "release" / "manifest.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Gradebook summary: 2 submissions" in printed and "gradebook.csv" in printed
    rows = {r["student"]: r for r in json.loads((tmp_path / "book" / "gradebook.json").read_text())["submissions"]}
    for name in ("honest", "tamperer"):
        assert rows[name]["points"] == assignments.POINTS["1.3"] and rows[name]["max_points"] == 8, json.dumps(rows[name], indent=1)
    kl = next(e for e in rows["tamperer"]["exercises"] if e["exercise"] == "1.4")
    assert kl["kind"] == "not_attempted" and kl["max_points"] == 2
    with grading.Grader() as plain, grading.Grader(manifest=tmp_path / "release" / "manifest.json") as strict:
        assert plain.fingerprint() != strict.fingerprint()  # a different manifest regrades
