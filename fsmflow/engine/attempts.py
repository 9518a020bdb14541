"""The attempt loop of one state: attempts, retries with backoff, time limits, interrupts.

:meth:`Attempts.execute` runs a state's step until it returns, or fails for good (the
failure is recorded, then :class:`~fsmflow.errors.StepFailedError` raised). Each attempt
gets a fresh copy of the stored context. A step interrupted by a lost session runs again
once the lock is retaken and nobody moved the instance on; a shutdown or a signal ends
the run with :class:`~fsmflow.errors.WorkflowInterruptedError`. While an attempt runs,
:func:`fsmflow.step_info` returns its :class:`~fsmflow.engine.stepinfo.StepInfo`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NoReturn, Protocol

from fsmflow.engine.failures import traceback_text
from fsmflow.engine.interrupts import Interrupts
from fsmflow.engine.recorder import Instance
from fsmflow.engine.stepinfo import running_step
from fsmflow.engine.steps import StepCall, backoff_delay, is_async_callable, should_retry
from fsmflow.errors import (
    ConcurrentTransitionError,
    HistoryDeletedError,
    OwnershipLostError,
    StoreError,
    TransitionLimitError,
    WorkflowInterruptedError,
)
from fsmflow.model.context import WorkflowContext, decode_context
from fsmflow.model.definition import RetryPolicy, WorkflowStep

logger = logging.getLogger("fsmflow")


class Recording(Protocol):
    """What the attempt loop needs of the recorder (:class:`~fsmflow.engine.recorder.Recorder`)."""

    @property
    def seq(self) -> int:
        """The seq of the instance's last row."""

    @property
    def context_json(self) -> str:
        """The context the instance's last row stored, as JSON text."""

    async def fail(
        self, state: str, attempts: int, exc: Exception, *, raised_in: str | None = None
    ) -> NoReturn:
        """Record the instance as failed in ``state``; raise StepFailedError."""

    async def check_unmoved(self) -> None:
        """Raise if another runner moved the instance on, or its history is gone."""


class Lock(Protocol):
    """What the attempt loop needs of the instance's lock (an ownership)."""

    @property
    def is_lost(self) -> bool:
        """True once the session holding the lock died."""

    async def reacquire(self) -> None:
        """Take the lock again on a new session."""


class Attempts:
    """The attempt loop of one run: ``current_state`` tells the machine's state (a
    trigger fired by hand inside a step moves it). ``call`` is the running attempt."""

    def __init__(
        self,
        interrupts: Interrupts,
        recording: Recording,
        lock: Lock,
        current_state: Callable[[], str | None],
        instance: Instance,
    ) -> None:
        self._interrupts = interrupts
        self._recording = recording
        self._lock = lock
        self._current_state = current_state
        self._instance = instance
        self.call: StepCall | None = None
        self._async_steps: dict[str, bool] = {}  # by state: a run's steps never change

    def __repr__(self) -> str:
        return f"Attempts({self._instance.workflow_name!r}, {self._instance.instance_id!r})"

    async def execute(self, state: str, step: WorkflowStep, policy: RetryPolicy) -> Any:
        """Attempt ``state``'s step until it returns (its raw result) or fails for good."""
        guarded = self._interrupts.guarded
        attempt = 1
        while True:
            self._interrupts.check_stop(state)  # e.g. a signal that came during recovery
            # The session may have died while no step ran (backoff, an `after` callback):
            # never start a step without the lock, or it could overlap another runner's.
            if self._lock.is_lost:
                await guarded("wait", state, self.regain_ownership())
            # Each attempt gets a fresh copy of the stored context: exactly what a
            # resumed process would see, whatever an earlier attempt mutated. (Validated:
            # pydantic's model_construct is plain Python and costs twice as much.)
            context = WorkflowContext(data=decode_context(self._recording.context_json))
            call = StepCall(step.execute, context, self._is_async(state, step))
            seq_before = self._recording.seq
            running = running_step(
                self._instance.workflow_name, self._instance.instance_id, state, seq_before, attempt
            )
            # step_info() inside the step; the attempt's span is the current span
            with running, self._instance.trace.attempt(state, seq_before, attempt):
                outcome = await self._attempt(call, policy, state)
            if outcome is _LOST:
                await guarded("wait", state, self._after_lost(state, call))
                continue
            if not isinstance(outcome, _Failed):
                return outcome
            exc = outcome.error
            if self._recording.seq != seq_before:
                # A trigger fired by hand was recorded before the step raised: the
                # instance has moved on, and its committed step must not run again.
                moved_to = self._current_state()
                assert moved_to is not None
                await self._recording.fail(moved_to, attempt, exc, raised_in=state)
            if attempt >= policy.max_attempts or not should_retry(exc, policy):
                await self._recording.fail(state, attempt, exc)
            self._instance.trace.retrying(exc)
            # Outside the except block that caught the failure: a cancellation during
            # the pause must reach the handlers above, not escape from a handler.
            await guarded("wait", state, self._pause(call, state, attempt, policy, exc))
            attempt += 1

    def _is_async(self, state: str, step: WorkflowStep) -> bool:
        is_async = self._async_steps.get(state)
        if is_async is None:  # inspecting the callable costs more than a trivial step
            is_async = self._async_steps[state] = is_async_callable(step.execute)
        return is_async

    async def _attempt(self, call: StepCall, policy: RetryPolicy, state: str) -> Any:
        """One attempt: the step's result, a :class:`_Failed`, or ``_LOST``."""
        self.call, self._interrupts.phase = call, "step"
        try:
            return await call.run(policy.timeout, name=state)
        except asyncio.CancelledError:
            reason = self._interrupts.take()
            if reason is None:
                raise
            if reason == "lost":
                return _LOST
            raise self._interrupts.interrupted(state, step_cancelled=True) from None
        except _CONTROL_ERRORS:
            raise
        except Exception as exc:
            return _Failed(exc)
        finally:
            self.call, self._interrupts.phase = None, None

    async def _after_lost(self, state: str, call: StepCall) -> None:
        # Ownership was lost mid-step: never let two executions overlap in this process,
        # retake the lock, and make sure nobody advanced the instance meanwhile; then run
        # the step again.
        await call.wait_abandoned()
        await self.regain_ownership()
        logger.warning(
            "workflow %r instance %r: step %r interrupted by a lost session; running it again",
            self._instance.workflow_name,
            self._instance.instance_id,
            state,
        )

    async def regain_ownership(self) -> None:
        """Retake a lost lock; :class:`ConcurrentTransitionError` if another runner moved
        the instance on meanwhile (:class:`OwnershipLostError` if it still holds it)."""
        await self._lock.reacquire()
        await self._recording.check_unmoved()

    async def _pause(
        self, call: StepCall, state: str, attempt: int, policy: RetryPolicy, exc: Exception
    ) -> None:
        """Between attempts: wait for a timed-out sync step's thread (it cannot be
        stopped, and two executions of one step never overlap), then back off."""
        await call.wait_abandoned()
        delay = backoff_delay(policy, attempt)
        logger.warning(
            "workflow %r instance %r step %r attempt %d/%d failed (%s); retrying in %.2fs",
            self._instance.workflow_name,
            self._instance.instance_id,
            state,
            attempt,
            policy.max_attempts,
            type(exc).__name__,
            delay,
        )
        if logger.isEnabledFor(logging.DEBUG):
            text = traceback_text(exc, redact=self._instance.redact)
            logger.debug("attempt %d failed:\n%s", attempt, text)
        await asyncio.sleep(delay)


# Raised inside a step by fsmflow's own machinery (a trigger fired by hand records a row):
# they are about the runner, not the step, and end the run instead of failing the step.
_CONTROL_ERRORS: Final = (
    WorkflowInterruptedError,
    ConcurrentTransitionError,
    OwnershipLostError,
    HistoryDeletedError,
    TransitionLimitError,
    StoreError,
)


@dataclass(frozen=True, slots=True)
class _Failed:
    """An attempt that raised ``error``."""

    error: Exception


_LOST: Final = object()  # an attempt interrupted by a lost session
