"""Command line for the exercises: student notebooks and grading.

    python -m diffedu.exercises student chapters/ -o student/
    python -m diffedu.exercises grade student/ch01_generative_modelling.ipynb [--out scores.json]

`grade` prints a JSON report (exercise id, passed, message for each exercise; passed, total,
score) and exits 0 whatever the score, so a class's notebooks can be graded in a loop; use
--fail-under to turn a low score into a non-zero exit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .notebooks import dumps, grade_notebook, write_student_notebooks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffedu.exercises", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("student", help="write student notebooks (solutions replaced by stubs, outputs stripped)")
    st.add_argument("paths", nargs="+", type=Path, help="chapter notebooks, or folders of them")
    st.add_argument("-o", "--out", type=Path, default=Path("student"), help="output folder (default: student/)")
    gr = sub.add_parser("grade", help="execute a filled-in notebook offline and print per-exercise scores as JSON")
    gr.add_argument("notebook", type=Path)
    gr.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    gr.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    gr.add_argument("--fail-under", type=float, default=None, help="exit 1 if the score (0..1) is below this")
    args = parser.parse_args(argv)

    if args.command == "student":
        written = write_student_notebooks(args.paths, args.out)
        for path in written:
            print(path)
        if not written:
            print("no notebook with exercises (cells tagged 'solution') found", file=sys.stderr)
            return 1
        return 0

    report = grade_notebook(args.notebook, timeout=args.timeout)
    text = dumps(report)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.fail_under is not None and report["score"] < args.fail_under:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
