"""diffedu.exercises.core: every student answer gets a verdict, never a crash; no vacuous pass."""
import numpy as np
import pytest
import torch

from diffedu.exercises import Case, ExerciseFailed, check, diagnose

REF = lambda x: 2 * x  # noqa: E731
CASES = [Case(args=(torch.linspace(-1, 1, 5, dtype=torch.float64),), label="x = linspace(-1, 1, 5)")]


@pytest.mark.parametrize("answer, kind", [
    (lambda x: "a string", "type"),
    (lambda x: None, "type"),
    (lambda x: torch.complex(2 * x, x), "type"),
    (lambda x: np.array(["a"] * 5), "type"),
    (lambda x: 2 * x > 0, "type"),
    (lambda x: torch.zeros(3), "shape"),
    (lambda x: -2 * x, "sign"),
    (lambda x: 6 * x, "scale"),
    (lambda x: 2 * x + 0.5, "offset"),
    (lambda x: x / 0 * 0, "nan"),
    (lambda x: [][1], "error"),
    (lambda x: (_ for _ in ()).throw(NotImplementedError()), "not_attempted"),
    (lambda x: 2 * x.numpy(), "ok"),
])
def test_every_answer_gets_a_verdict(answer, kind):
    res = diagnose(answer, REF, CASES, exercise="0.1")
    assert res.kind == kind, res.message
    assert res.passed == (kind == "ok")
    assert res.message.startswith("[Exercise 0.1]")


def test_no_cases_is_an_error_not_a_pass():
    with pytest.raises(ValueError, match="cases"):
        diagnose(REF, REF, [])
    with pytest.raises(ValueError, match="cases"):
        check("0.1", REF, REF, [], display=False)


def test_check_raises_on_a_wrong_answer():
    with pytest.raises(ExerciseFailed, match="wrong sign"):
        check("0.1", lambda x: -2 * x, REF, CASES, display=False)
