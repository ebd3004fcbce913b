"""Command line for the exercises: student notebooks, releases and grading.

    python -m diffedu.exercises student chapters/ -o student/
    python -m diffedu.exercises release ch01 ch02 -o release/ [--with-solutions] [--nbgrader]
    python -m diffedu.exercises grade student/ch01_generative_modelling.ipynb [--out report.json]
    python -m diffedu.exercises grade submissions/ -o gradebook/ [--manifest release/manifest.json]

`grade` runs every submission in the grading sandbox (its own process: time, memory and file
limits, no network, a fresh working directory, the reference solutions out of reach). With one
notebook it prints a JSON report (per exercise: points, passed, kind, message; passed, total,
score) and `--fail-under` turns a low score into exit code 1. With a folder, a glob or several
notebooks it grades them in parallel and writes gradebook.csv, gradebook.json, summary.md and
logs/ to the output folder, skipping submissions unchanged since the last run; it exits 0
unless the sandbox itself failed for some submission (exit 2).
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from .notebooks import write_student_notebooks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffedu.exercises", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("student", help="write student notebooks (solutions replaced by stubs, outputs stripped)")
    st.add_argument("paths", nargs="+", type=Path, help="chapter notebooks, or folders of them")
    st.add_argument("-o", "--out", type=Path, default=Path("student"), help="output folder (default: student/)")
    st.add_argument("--points", nargs="*", default=[], metavar="EX=P", help="points per exercise, e.g. 1.1=3")
    rel = sub.add_parser("release", help="release chapters: student notebooks, manifest, optional solutions/nbgrader")
    rel.add_argument("chapters", nargs="+", help="chapters to release: ch03, 3, a notebook name or path")
    rel.add_argument("-o", "--out", type=Path, default=Path("release"), help="output folder (default: release/)")
    rel.add_argument("--chapters-dir", type=Path, default=Path("chapters"), help="where the chapter notebooks are")
    rel.add_argument("--with-solutions", action="store_true", help="add the worked solutions of earlier chapters")
    rel.add_argument("--nbgrader", action="store_true", help="also write nbgrader's source/ tree and a config")
    rel.add_argument("--points", nargs="*", default=[], metavar="EX=P", help="points per exercise, e.g. 1.1=3")
    gr = sub.add_parser("grade", help="grade one notebook (JSON report) or a class (gradebook) in the sandbox")
    gr.add_argument("submissions", nargs="+", help="notebooks, folders of notebooks, or glob patterns")
    gr.add_argument("-o", "--out", type=Path, default=None,
                    help="one notebook: also write the JSON report to this file; a class: the gradebook folder "
                         "(default: gradebook/)")
    gr.add_argument("--manifest", type=Path, default=None, help="release manifest: exercises and points to grade")
    gr.add_argument("--points", nargs="*", default=[], metavar="EX=P", help="override points, e.g. 1.1=3")
    gr.add_argument("--workers", type=int, default=None, help="submissions graded at once (default: CPU cores)")
    gr.add_argument("--timeout", "--cell-timeout", dest="cell_timeout", type=float, default=60.0,
                    help="seconds per cell (default 60)")
    gr.add_argument("--notebook-timeout", type=float, default=600.0, help="seconds per submission (default 600)")
    gr.add_argument("--memory-mb", type=float, default=4096.0, help="address-space limit per submission (default 4096)")
    gr.add_argument("--isolation", choices=("auto", "namespace", "process"), default="auto",
                    help="namespace (Linux user namespaces), process, or auto (namespace where possible)")
    gr.add_argument("--cells", choices=("exercises", "all"), default="exercises",
                    help="run the set-up, solution and student cells (default) or every code cell")
    gr.add_argument("--disable", nargs="*", default=[], metavar="NAME", help="more functions to disable while grading")
    gr.add_argument("--hide", nargs="*", default=[], type=Path, metavar="PATH", help="more paths to hide from submissions")
    gr.add_argument("--no-cache", action="store_true", help="regrade every submission")
    gr.add_argument("--fail-under", type=float, default=None, help="one notebook: exit 1 if its score (0..1) is below")
    return parser


def _student(args) -> int:
    from .assignments import parse_points

    written = write_student_notebooks(args.paths, args.out, parse_points(args.points))
    for path in written:
        print(path)
    if not written:
        print("no notebook with exercises (cells tagged 'solution') found", file=sys.stderr)
        return 1
    return 0


def _release(args) -> int:
    from .release import MANIFEST, release

    manifest = release(args.chapters, args.out, chapters_dir=args.chapters_dir, solutions=args.with_solutions,
                       nbgrader=args.nbgrader, points=args.points)
    for entry in manifest["chapters"]:
        print(f"{entry['chapter']}: {entry['student']} ({len(entry['exercises'])} exercises, "
              f"{entry['total_points']:g} points)")
    for path in manifest["solutions"]:
        print(f"solutions: {path}")
    print(f"manifest: {args.out / MANIFEST}")
    return 0


def _single(args) -> bool:
    items = args.submissions
    return len(items) == 1 and Path(items[0]).is_file() and not glob.has_magic(items[0])


def _grade(args) -> int:
    from .assignments import parse_points
    from .grading import Grader, format_summary, grade_batch
    from .sandbox import Limits

    limits = Limits(cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout, memory_mb=args.memory_mb)
    hide = list(args.hide)
    options = dict(limits=limits, isolation=args.isolation, manifest=args.manifest, points=parse_points(args.points),
                   cells=args.cells, disable=args.disable)
    if _single(args):
        here = [Path(args.submissions[0]).resolve().parent] + ([args.out.resolve().parent] if args.out else [])
        with Grader(hide=hide + here, **options) as grader:
            report = grader.grade(Path(args.submissions[0])).to_report()
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 1 if args.fail_under is not None and report["score"] < args.fail_under else 0
    out = args.out or Path("gradebook")
    book = grade_batch(args.submissions, out, workers=args.workers, cache=not args.no_cache,
                       hide=hide, **options)
    print(format_summary(book["summary"]))
    for kind, path in book["files"].items():
        print(f"{kind}: {path}")
    return 2 if any(r.status == "sandbox_error" for r in book["results"]) else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return {"student": _student, "release": _release, "grade": _grade}[args.command](args)
    except ValueError as e:  # bad input: a clear message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
