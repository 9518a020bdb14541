"""The boundaries of a step, and the probe that sees them (and kills the process at one).

A state's step passes four boundaries, in this order:

* ``before_step`` — the step is about to run (the runner's ``step_started``);
* ``inside_step`` — the step has done its work and is returning (a wrapper around it);
* ``before_commit`` — the step returned, its row is not written yet (``step_finished``);
* ``after_commit`` — the row is committed (``transition_recorded``).

A *step run* is identified by its state and the seq of the row that entered the state
(the seq the runner reports while the step runs): a rerun after a crash has the same one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from fsmflow.engine.runner import RunnerEvent
from fsmflow.engine.steps import is_async_callable
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import WorkflowStep

__all__ = ["BOUNDARIES", "Boundary", "Point", "Probe"]

Boundary = Literal["before_step", "inside_step", "before_commit", "after_commit"]
BOUNDARIES: Final[tuple[Boundary, ...]] = (
    "before_step",
    "inside_step",
    "before_commit",
    "after_commit",
)
_AT_EVENT: Final[Mapping[str, Boundary]] = {
    "step_started": "before_step",
    "step_finished": "before_commit",
    "transition_recorded": "after_commit",
}


@dataclass(frozen=True)
class Point:
    """One boundary of one step run: ``state``'s step entered at ``seq``."""

    seq: int
    state: str
    boundary: Boundary

    def as_json(self) -> list[Any]:
        """``[seq, state, boundary]``."""
        return [self.seq, self.state, self.boundary]

    @classmethod
    def from_json(cls, value: list[Any]) -> Point:
        """The point :meth:`as_json` wrote."""
        seq, state, boundary = value
        if boundary not in BOUNDARIES:
            raise ValueError(f"unknown boundary {boundary!r}")
        return cls(int(seq), str(state), boundary)


class Probe:
    """Records every boundary the run passes and SIGKILLs the process at ``kill``.

    ``listen`` is the runner's listener; :meth:`wrap` puts the ``inside_step`` boundary
    into each step. The kill is real: no ``finally`` runs, no connection is closed.
    """

    def __init__(self, kill: Point | None) -> None:
        self.kill = kill
        self.passed: list[Point] = []
        self._run: tuple[int, str] | None = None  # (seq, state) of the running step

    def listen(self, event: RunnerEvent) -> None:
        """Note ``event``'s boundary (the moves of waits, which run no step, are not)."""
        boundary = _AT_EVENT.get(event.point)
        if event.point == "step_started":
            self._run = (event.seq, event.state)
        if boundary is None or self._run is None or self._run[1] != event.state:
            return
        self._reach(boundary)
        if boundary == "after_commit":
            self._run = None

    def wrap(self, steps: Mapping[str, WorkflowStep]) -> dict[str, WorkflowStep]:
        """``steps`` with the ``inside_step`` boundary after each one's work."""
        return {
            name: WorkflowStep(name=name, execute=self._inside(step.execute), retry=step.retry)
            for name, step in steps.items()
        }

    def _inside(self, execute: Callable[[WorkflowContext], Any]) -> Callable[..., Any]:
        if is_async_callable(execute):

            async def run_async(context: WorkflowContext) -> Any:
                result = await execute(context)
                self._reach("inside_step")
                return result

            return run_async

        def run(context: WorkflowContext) -> Any:
            result = execute(context)
            if hasattr(result, "__await__"):  # a sync callable returning an awaitable
                return self._after(result)
            self._reach("inside_step")
            return result

        return run

    async def _after(self, awaitable: Any) -> Any:
        result = await awaitable
        self._reach("inside_step")
        return result

    def _reach(self, boundary: Boundary) -> None:
        if self._run is None:
            return
        point = Point(self._run[0], self._run[1], boundary)
        self.passed.append(point)
        if point == self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
