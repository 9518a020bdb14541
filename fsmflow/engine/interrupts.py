"""What may interrupt a run, and when: the phases of one run and the reasons that stop them.

A run is always awaiting one thing, its *phase*: a ``"step"``, an ``"append"`` or a
``"wait"`` (choosing the instance, taking the lock, backing off, recovering a lost
session), or nothing between them. An interrupt cancels the run's task only if its reason
may stop the current phase (:data:`CANCELLED_BY`); the phase that was cancelled then turns
the cancellation into :class:`~fsmflow.errors.WorkflowInterruptedError` (or, for a step
interrupted by a lost session, into a new attempt). A cancellation that no interrupt
caused is left alone: it belongs to the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from fsmflow.engine.shutdown import Shutdown
from fsmflow.errors import WorkflowInterruptedError

T = TypeVar("T")

# What each interrupt reason may cancel, by what the runner is awaiting.
CANCELLED_BY: Final[dict[str, frozenset[str]]] = {
    "step": frozenset({"lost", "shutdown"}),
    "append": frozenset({"shutdown"}),
    "wait": frozenset({"stop", "shutdown"}),
}


class Interrupts:
    """The interrupt state of one runner: what its run awaits, and why it was interrupted.

    ``instance_id`` tells the id once chosen (errors name it). While a run is under way
    ``task`` is the task running it and ``shutdown`` the process's signal handling (None
    when the runner leaves signals alone); both are None between runs.
    """

    def __init__(self, workflow_name: str, instance_id: Callable[[], str | None]) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.shutdown: Shutdown | None = None
        self.phase: str | None = None  # what the run awaits: step, append, wait, or None
        self._workflow_name = workflow_name
        self._instance_id = instance_id
        self._reason: str | None = None

    def __repr__(self) -> str:
        return f"Interrupts(phase={self.phase!r}, pending={self._reason!r})"

    def interrupt(self, reason: str) -> None:
        """Cancel the run's task if ``reason`` may stop the current phase (see the runner's
        :meth:`~fsmflow.engine.runner.PersistentWorkflowStateMachine.interrupt`)."""
        phase = self.phase
        if self.task is None or phase is None or self._reason is not None:
            return
        if reason not in CANCELLED_BY[phase]:
            return
        self._reason = reason
        self.task.cancel(f"fsmflow: {reason}")

    async def guarded(self, phase: str, state: str, work: Awaitable[T]) -> T:
        """Await ``work`` in ``phase`` (``"wait"`` or ``"append"``): an interrupt that
        may stop this phase raises :class:`WorkflowInterruptedError`."""
        self.phase = phase
        try:
            return await work
        except asyncio.CancelledError:
            if self.take() is None:
                raise
            raise self.interrupted(state, step_cancelled=False) from None
        finally:
            self.phase = None

    def take(self) -> str | None:
        """The reason of the interrupt that cancelled the task (now consumed), or None if
        the cancellation came from elsewhere."""
        reason, self._reason = self._reason, None
        if reason is not None and self.task is not None:
            self.task.uncancel()
        return reason

    def check_stop(self, state: str) -> None:
        """:class:`WorkflowInterruptedError` if a stop was requested (a signal came)."""
        if self.shutdown is not None and self.shutdown.requested:
            raise self.interrupted(state, step_cancelled=False)

    def interrupted(self, state: str, *, step_cancelled: bool) -> WorkflowInterruptedError:
        """The error that ends a run interrupted in ``state``."""
        second = self.shutdown is not None and self.shutdown.second_signal
        return WorkflowInterruptedError(
            self._workflow_name,
            self._instance_id() or "(not chosen yet)",
            state,
            step_cancelled=step_cancelled,
            second_signal=second,
        )
