"""Exercises with automatic checkers, student notebooks and grading (see book/contributing.md).

Convention: in a chapter notebook, an exercise's solution is written between the markers
``# BEGIN SOLUTION`` and ``# END SOLUTION`` in a code cell tagged ``solution`` (and
``hide-input``, so the book hides it behind a toggle); the next code cell, tagged ``check``,
calls the chapter's checker, e.g. ``ch01.check_gaussian_log_density(gaussian_log_density)``.

* :mod:`diffedu.exercises.core` — the checker machinery (diagnoses sign, scale, shape, NaN...);
* :mod:`diffedu.exercises.ch01` ... — one module of checkers per chapter;
* :mod:`diffedu.exercises.assignments` — exercises, points, nbgrader metadata, disabled functions;
* :mod:`diffedu.exercises.release` — ``python -m diffedu.exercises release ch03 -o release/``;
* :mod:`diffedu.exercises.grading` and :mod:`diffedu.exercises.sandbox` — grading a class in
  isolated, limited processes: ``python -m diffedu.exercises grade submissions/ -o gradebook/``;
* ``python -m diffedu.exercises student chapters/ -o student/`` — student notebooks.
"""
from .core import Case, CheckResult, ExerciseFailed, check, diagnose
from .grading import Grader, grade_batch
from .sandbox import Limits, Sandbox

__all__ = ["Case", "CheckResult", "ExerciseFailed", "check", "diagnose", "Grader", "grade_batch", "Limits", "Sandbox"]
