"""Generic checker machinery: compare a reader's function to the reference and say what is wrong.

Each chapter module (``diffedu.exercises.ch01`` ...) builds a list of :class:`Case` objects —
seeded random inputs of several shapes (and, where the function takes one, several times t) —
and calls :func:`check`. The verdict is a :class:`CheckResult`; on failure it is also raised
as :class:`ExerciseFailed` (an ``AssertionError``), so a notebook run under nbval fails on a
wrong answer and a reader sees a message such as::

    [Exercise 1.1] wrong sign: your output is -1 x the reference (on all 12 inputs).
    [Exercise 1.4] wrong scale: your output is 2 x the reference on every input.
    [Exercise 2.3] wrong values for t=0.9 (passes for t=0.1, 0.5): max |error| 0.31 ...
    [Exercise 1.2] not attempted yet: replace `raise NotImplementedError` with your solution.

The diagnosis is tried in this order: not attempted (NotImplementedError), raised another
exception, returned a non-tensor, wrong shape, NaN/inf where the reference is finite, wrong
sign (ratio ~ -1), wrong scale (constant ratio), off by a constant (constant difference: a
forgotten normalising constant), and otherwise the worst input and the largest error.

When displayed in a notebook, the result stores a machine-readable copy in the output's metadata
(key ``diffedu.check``), which ``python -m diffedu.exercises grade`` reads back from an executed
notebook (metadata, not an extra MIME type, so renderers such as the book ignore it).
"""
from __future__ import annotations

import html as _html
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

__all__ = ["Case", "CheckResult", "ExerciseFailed", "check", "diagnose", "METADATA_KEY", "seeded"]

#: key of the output metadata under which a displayed check result is stored (the grader reads it)
METADATA_KEY = "diffedu.check"


class ExerciseFailed(AssertionError):
    """Raised by a checker when the reader's answer is wrong (an AssertionError, so tests fail)."""

    def __init__(self, result: "CheckResult"):
        super().__init__(result.message)
        self.result = result


@dataclass
class Case:
    """One input on which the reader's function is compared to the reference.

    ``label`` says which input this is in messages (e.g. ``"x of shape (16, 2)"``); ``t`` is the
    time of the case, if the function takes one, so failures can be reported per t.
    """

    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    t: float | None = None


@dataclass
class CheckResult:
    """The verdict of a checker: exercise id, passed or not, and a message saying what is wrong."""

    exercise: str
    passed: bool
    message: str
    n_cases: int = 0
    n_passed: int = 0
    kind: str = "ok"  # ok | not_attempted | error | type | shape | nan | sign | scale | offset | values

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {"exercise": self.exercise, "passed": self.passed, "message": self.message,
                "kind": self.kind, "n_cases": self.n_cases, "n_passed": self.n_passed}

    def __repr__(self) -> str:
        return self.message

    def _repr_mimebundle_(self, include=None, exclude=None):
        colour = "#1b7f3b" if self.passed else "#b00020"
        html = (f'<div class="diffedu-check" style="border-left:4px solid {colour};padding:0.3em 0.8em">'
                f"{_html.escape(self.message)}</div>")
        return {"text/plain": self.message, "text/html": html}, {METADATA_KEY: self.to_dict()}


def seeded(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed: every checker draws its inputs from one of these."""
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- comparison
def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _as_tensor(out):
    if torch.is_tensor(out):
        return out
    if isinstance(out, (float, int)) and not isinstance(out, bool):
        return torch.tensor(float(out), dtype=torch.float64)
    try:
        import numpy as np

        if isinstance(out, (np.ndarray, np.generic)):
            return torch.as_tensor(out)
    except ImportError:  # pragma: no cover
        pass
    return None


def _constant(values: torch.Tensor, tol: float) -> float | None:
    """The common value if ``values`` are all equal up to ``tol`` (relative), else None."""
    if values.numel() == 0:
        return None
    centre = values.median().item()
    spread = (values - centre).abs().max().item()
    return centre if spread <= tol * max(1.0, abs(centre)) else None


def _ratio_and_offset(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], atol: float):
    """Common ratio out/ref (where |ref| is not tiny) and common difference out - ref, or None."""
    out = torch.cat([o.reshape(-1) for o in outs]).double()
    ref = torch.cat([r.reshape(-1) for r in refs]).double()
    big = ref.abs() > max(atol * 10, 1e-6)
    ratio = _constant(out[big] / ref[big], 1e-3) if big.sum() >= 1 else None
    if ratio is not None:
        # a ratio must explain the small entries too
        if not torch.allclose(out, ratio * ref, rtol=1e-3, atol=atol * 10):
            ratio = None
    offset = _constant(out - ref, 1e-3)
    return ratio, offset


def _failing_times(failed: list[Case], passed: list[Case]) -> str:
    bad = sorted({c.t for c in failed if c.t is not None})
    good = sorted({c.t for c in passed if c.t is not None} - set(bad))
    if not bad:
        return ""
    text = " for t=" + ", ".join(_fmt(t) for t in bad)
    if good:
        text += " (passes for t=" + ", ".join(_fmt(t) for t in good) + ")"
    return text


class _Verdict(Exception):
    """Raised inside a comparison to end the check early with (message, kind)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.message, self.kind = message, kind


def _run_case(fn: Callable, case: Case, expected: torch.Tensor) -> torch.Tensor:
    """The reader's output on one case as a float64 tensor shaped like ``expected``, or a :class:`_Verdict`."""
    try:
        got = fn(*_clone(case.args), **_clone(case.kwargs))
    except NotImplementedError:
        raise _Verdict("not attempted yet: replace `raise NotImplementedError(...)` with your solution.",
                       "not_attempted") from None
    except Exception as e:  # the reader's code raised: say which input and what
        raise _Verdict(f"your function raised {type(e).__name__}: {e} (input: {case.label}).", "error") from None
    try:
        got_t = _as_tensor(got)
    except (TypeError, ValueError, RuntimeError):  # e.g. a numpy array of strings or objects
        got_t = None
    if got_t is None or got_t.is_complex() or got_t.dtype == torch.bool:
        what = type(got).__name__ if got_t is None else f"a {got_t.dtype} tensor"
        raise _Verdict(f"returned {what}, expected a real tensor of shape {tuple(expected.shape)} "
                       f"(input: {case.label}).", "type")
    if tuple(got_t.shape) != tuple(expected.shape):
        raise _Verdict(f"wrong shape: got {tuple(got_t.shape)}, expected {tuple(expected.shape)} "
                       f"(input: {case.label}).", "shape")
    return got_t.detach().to(device=expected.device, dtype=torch.float64)


def _check_finite_where_expected(got: torch.Tensor, expected: torch.Tensor, case: Case) -> None:
    bad_nan = torch.isfinite(expected) & ~torch.isfinite(got)
    if bad_nan.any():
        idx = tuple(int(i) for i in bad_nan.nonzero()[0].tolist())
        value = got[idx].item()
        what = "NaN" if math.isnan(value) else ("-inf" if value < 0 else "inf")
        hint = {"-inf": " exp() of a very negative number underflows to 0 and log(0) = -inf: "
                        "stay in log space (torch.logsumexp).",
                "inf": " Something overflowed: stay in log space where you can."}.get(what, "")
        raise _Verdict(f"{what} in your output at index {idx} where the reference is "
                       f"{_fmt(expected[idx].item())} (input: {case.label}).{hint}", "nan")


def _explain(outs, refs, ok_cases, bad_cases, n: int, atol: float):
    """(message, kind) for failing cases: sign, scale, offset, input-dependent scale, or plain wrong values."""
    times = _failing_times(bad_cases, ok_cases)
    where = f"{len(bad_cases)} of {n} inputs"
    ratio, offset = _ratio_and_offset(outs, refs, atol)
    if ratio is not None and abs(ratio + 1) < 1e-3:
        return f"wrong sign: your output is -1 x the reference{times} ({where}).", "sign"
    if ratio is not None and abs(ratio) > 1e-8:
        return f"wrong scale: your output is {_fmt(ratio)} x the reference{times} ({where}).", "scale"
    if offset is not None:
        return (f"off by a constant: your output is the reference {'+' if offset >= 0 else '-'} "
                f"{_fmt(abs(offset))}{times} ({where}); a missing normalising constant?", "offset")
    # per-case ratios that differ between inputs: a scale error that depends on the input
    ratios = [_ratio_and_offset([o], [r], atol)[0] for o, r in zip(outs, refs)]
    if all(v is not None for v in ratios):
        per = ", ".join(f"{_fmt(v)} ({c.label})" for v, c in list(zip(ratios, bad_cases))[:3])
        return f"wrong scale that depends on the input{times}: ratios yours/reference = {per}.", "scale"
    o, r = outs[0], refs[0]
    err = (o - r).abs()
    i = int(err.argmax())
    detail = (f"max |error| {_fmt(err.max().item())} at flat index {i} (yours {_fmt(o[i].item())}, "
              f"reference {_fmt(r[i].item())})")
    return f"wrong values{times} ({where}); first failing input: {bad_cases[0].label}: {detail}.", "values"


def diagnose(
    fn: Callable,
    reference: Callable,
    cases: Iterable[Case],
    *,
    exercise: str = "",
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> CheckResult:
    """Run ``fn`` and ``reference`` on every case and return a :class:`CheckResult` (never raises on the reader's code).

    ``rtol``/``atol`` are the tolerances of ``torch.allclose`` between the two outputs. A result
    the reader returned that is not a real tensor (None, a string, complex values) is a
    ``"type"`` verdict; an empty list of cases is a mistake of the checker and raises ValueError.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("cases: a check needs at least one test input (got none), or it would pass vacuously")
    tag = f"[Exercise {exercise}] " if exercise else ""
    n = len(cases)

    def result(passed, message, kind, n_passed=0):
        return CheckResult(exercise, passed, tag + message, n, n_passed, kind)

    outs, refs, ok_cases, bad_cases = [], [], [], []
    for case in cases:
        with torch.no_grad():
            expected = _as_tensor(reference(*case.args, **case.kwargs)).detach().double()
        try:
            got = _run_case(fn, case, expected)
            _check_finite_where_expected(got, expected, case)
        except _Verdict as v:
            return result(False, v.message, v.kind)
        finite = torch.isfinite(expected)
        if torch.allclose(got[finite], expected[finite], rtol=rtol, atol=atol):
            ok_cases.append(case)
        else:
            bad_cases.append(case)
            outs.append(got[finite])
            refs.append(expected[finite])
    if not bad_cases:
        return result(True, f"passed: your function agrees with the reference on all {n} test inputs.", "ok", n)
    message, kind = _explain(outs, refs, ok_cases, bad_cases, n, atol)
    return result(False, message, kind, len(ok_cases))


def _clone(obj):
    """Give the reader's function copies, so an in-place edit cannot change the reference's input."""
    if torch.is_tensor(obj):
        return obj.clone()
    if isinstance(obj, tuple):
        return tuple(_clone(o) for o in obj)
    if isinstance(obj, list):
        return [_clone(o) for o in obj]
    if isinstance(obj, Mapping):
        return {k: _clone(v) for k, v in obj.items()}
    return obj


def _display(result: CheckResult) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - plain Python
        return
    if get_ipython() is not None:
        display(result)


def check(
    exercise: str,
    fn: Callable,
    reference: Callable,
    cases: Iterable[Case],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    raise_on_failure: bool = True,
    display: bool = True,
) -> CheckResult:
    """Check ``fn`` against ``reference`` on ``cases``; show the verdict; raise if it is wrong.

    The result is returned (a notebook displays it as a green or red line, with the
    machine-readable copy the grader reads). With ``raise_on_failure`` (the default) a wrong
    answer is displayed and then raised as :class:`ExerciseFailed` with the same message.
    """
    result = diagnose(fn, reference, cases, exercise=exercise, rtol=rtol, atol=atol)
    if not result.passed and raise_on_failure:
        if display:  # the exception prevents a return value: show the verdict before raising
            _display(result)
        raise ExerciseFailed(result)
    return result  # as a cell's last expression, Jupyter displays it


def result_from_output(output: Mapping) -> dict | None:
    """The check result stored in one notebook output (display_data / execute_result), if any."""
    meta = output.get("metadata") or {}
    if METADATA_KEY not in meta:
        return None
    value = meta[METADATA_KEY]
    return json.loads(value) if isinstance(value, str) else dict(value)


def isclose_scalar(a: float, b: float, rel: float = 1e-6) -> bool:  # small helper for chapter checks
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel)
