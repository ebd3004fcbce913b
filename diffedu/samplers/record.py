"""One step record for every sampler, the loop that reports it, and :func:`trajectory` (monograph §2.2, §3.4, §4.4, §9).

Every sampler of :mod:`diffedu.samplers` takes ``callback=`` and ``progress=`` and runs its steps
through one :class:`StepLoop`: after each step it calls ``callback(step)`` with one immutable
:class:`Step`, the same record whatever the algorithm:

=============  ======================================================================================
``step.i``     the step index, 0, 1, ... (Langevin counts every inner step; see each sampler)
``step.t``     the time the state ``x`` is at, a float (None for Langevin on a bare score function)
``step.x``     the state after the step
``step.prediction``  the model's :class:`~diffedu.param.Prediction` the step was computed from (at the
               start of the step, its first evaluation), or None where the sampler makes none
=============  ======================================================================================

A sampler whose result is not the last state of its loop (a final denoising step ``x0_hat``)
reports that result as one more step at t = 0, so the last step's ``x`` is always what the sampler
returns, and ``trajectory(...)[-1]`` equals the sampler's output.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from diffedu._checks import check_model
from diffedu.param import Prediction

__all__ = ["Step", "StepLoop", "CountingModel", "check_callback", "trajectory"]


@dataclass(frozen=True)
class Step:
    """What a sampler reports after each step: ``callback(Step(i, t, x, prediction))`` (see the module docstring)."""

    i: int
    t: Optional[float]
    x: torch.Tensor
    prediction: Optional[Prediction] = None


def check_callback(callback) -> Optional[Callable[[Step], None]]:
    """``callback`` if it is None or a callable taking one positional argument (the :class:`Step`); else a TypeError naming it."""
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(f"callback: expected a callable callback(step) or None, got {type(callback).__name__}")
    try:
        sig = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return callback
    try:
        sig.bind(None)
    except TypeError:
        raise TypeError(f"callback: expected callback(step) taking one argument, a diffedu.samplers.Step with .i, .t, .x "
                        f"and .prediction; got a callable with signature {sig} (the old forms callback(i, t, x), "
                        "(i, x, prediction), (k, x) and (i, k, x) are replaced by callback(step))") from None
    return callback


class StepLoop:
    """The loop of a sampler: ``range(n)``, with a tqdm bar if ``progress``, and :meth:`report`, the one place a step is reported.

    It holds only its arguments (no counter): ``for i in loop: ...; x = loop.report(i, t, x, prediction)``.
    """

    __slots__ = ("n", "callback", "progress", "desc")

    def __init__(self, n: int, callback=None, progress: bool = False, desc: str = "sampling"):
        if not isinstance(progress, bool):
            raise TypeError(f"progress: expected True or False, got {progress!r}")
        self.n, self.callback, self.progress, self.desc = n, check_callback(callback), progress, desc

    def __iter__(self) -> Iterator[int]:
        if not self.progress:
            return iter(range(self.n))
        from tqdm.auto import tqdm

        return iter(tqdm(range(self.n), desc=self.desc, leave=False))

    def report(self, i: int, t: Optional[float], x: torch.Tensor,
               prediction: Optional[Prediction] = None) -> torch.Tensor:
        """Call ``callback(Step(i, t, x, prediction))`` if there is a callback; returns ``x``."""
        if self.callback is not None:
            self.callback(Step(i, t, x, prediction))
        return x


def trajectory(sampler: Callable, model, x: torch.Tensor, ts=None, **kwargs) -> torch.Tensor:
    """Every state of ``sampler(model, x, ts, **kwargs)``: the start ``x``, then ``step.x`` of each step, stacked.

    Works for every sampler of :mod:`diffedu.samplers` (they all report a :class:`Step`); for
    :func:`~diffedu.samplers.langevin.sample_langevin`, which has no time grid, leave ``ts=None``.
    Shape (1 + number of steps, B, ...): (len(ts), B, ...) for the ODE solvers; the last entry is the
    sampler's output. A ``callback`` in ``kwargs`` still sees every step.
    """
    user = check_callback(kwargs.pop("callback", None))
    states = [x]

    def record(step: Step):
        states.append(step.x)
        if user is not None:
            user(step)

    args = (model, x) if ts is None else (model, x, ts)
    sampler(*args, callback=record, **kwargs)
    return torch.stack(states)


class CountingModel:
    """Wraps a model and counts what a sampler really spends on it: the NFE (monograph §9.1).

    ``CountingModel(model)(x, t, cond)`` is ``model(x, t, cond)``; it keeps ``nfe`` (calls, i.e.
    sequential rounds for a batched sampler such as ParaDiGMS), ``batch_sizes`` (the batch of each
    call), ``evals`` (points evaluated, their sum) and ``seconds`` (time spent inside the model), and
    has the model's ``schedule``, so every sampler accepts it.
    """

    def __init__(self, model):
        self.model = check_model(model)
        self.schedule = model.schedule
        self.nfe, self.seconds, self.batch_sizes = 0, 0.0, []

    def __call__(self, x, t, cond=None):
        t0 = time.perf_counter()
        out = self.model(x, t, cond)
        self.seconds += time.perf_counter() - t0
        self.nfe += 1
        self.batch_sizes.append(len(x))
        return out

    @property
    def evals(self) -> int:
        return sum(self.batch_sizes)
