"""Exercises with automatic checkers, student notebooks and grading (see book/contributing.md).

Convention: in a chapter notebook, an exercise's solution is written between the markers
``# BEGIN SOLUTION`` and ``# END SOLUTION`` in a code cell tagged ``solution`` (and
``hide-input``, so the book hides it behind a toggle); the next code cell, tagged ``check``,
calls the chapter's checker, e.g. ``ch01.check_gaussian_log_density(gaussian_log_density)``.

* :mod:`diffedu.exercises.core` — the checker machinery (diagnoses sign, scale, shape, NaN...);
* :mod:`diffedu.exercises.ch01` ... — one module of checkers per chapter;
* ``python -m diffedu.exercises student chapters/ -o student/`` — student notebooks;
* ``python -m diffedu.exercises grade NOTEBOOK.ipynb`` — per-exercise scores as JSON.
"""
from .core import Case, CheckResult, ExerciseFailed, check, diagnose

__all__ = ["Case", "CheckResult", "ExerciseFailed", "check", "diagnose"]
