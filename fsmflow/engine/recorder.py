"""The recorder: every row a run appends to its instance's history, and the checks on it.

One :class:`Recorder` per run of one instance, created once the lock is held: it appends
on the owning session (a finished step, a trigger fired by hand, the terminal failed
row with its traceback), refuses to go past the definition's loop limit, and tells a
history deleted under the run from a competing runner. :class:`Position` is where the
instance stands in its stored history; the recorder advances it after each committed row.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, Protocol, TypeVar

from fsmflow.engine.failures import error_json, location, traceback_text
from fsmflow.errors import (
    ConcurrentTransitionError,
    HistoryDeletedError,
    StepFailedError,
    TransitionLimitError,
)
from fsmflow.model.context import compact_json
from fsmflow.model.definition import Transition
from fsmflow.model.records import Status, TransitionRecord
from fsmflow.store.ownership import Ownership
from fsmflow.telemetry import NO_TRACE, RunTrace

logger = logging.getLogger("fsmflow")


def new_attempt_id() -> str:
    """A random 128-bit attempt id as 32 hex digits (stored in a uuid column): what an
    unknown outcome is resolved by. (uuid4() costs ~5 us, this ~1 us, on every append.)"""
    return os.urandom(16).hex()


T = TypeVar("T")


class History(Protocol):
    """What the recorder needs of the store (:class:`~fsmflow.store.facade.Store`)."""

    def append(
        self,
        workflow: str,
        instance_id: str,
        seq: int,
        *,
        trigger: str | None,
        source: str | None,
        dest: str | None,
        context_json: str,
        status: str,
        fingerprint: str | None,
        attempt_id: str,
        duration_ms: float | None,
        error_json: str | None = None,
        owner: Ownership | None = None,
        waiting_since: datetime | None = None,
        wait_seconds: float | None = None,
        event_id: int | None = None,
        state_version: int | None = None,
    ) -> Coroutine[Any, Any, None]:
        """Append row ``seq``; :class:`ConcurrentTransitionError` if it is not the next."""

    async def last_record(self, workflow: str, instance_id: str) -> TransitionRecord | None:
        """The instance's last row, or None if it has none."""


class Guard(Protocol):
    """How the recorder awaits an append: interruptible by a shutdown only."""

    async def guarded(self, phase: str, state: str, work: Awaitable[T]) -> T:
        """Await ``work`` in ``phase``; an interrupt raises WorkflowInterruptedError."""


@dataclass(slots=True)
class Position:
    """Where an instance stands: its last row's ``seq`` and ``status`` (``"running"``
    for a failed instance run again) and the context that row stored, as JSON text."""

    seq: int = -1
    status: Status = "running"
    context_json: str = "{}"

    def restore(self, record: TransitionRecord) -> None:
        """Stand at ``record``, the instance's last row (a failed instance runs again)."""
        self.seq = record.seq
        self.status = "running" if record.status == "failed" else record.status
        self.context_json = compact_json(record.context)


@dataclass(frozen=True, slots=True)
class Wait:
    """A waiting row's wait: begun at ``since`` (None: a new wait, begun now by the server's
    clock), its first deadline ``seconds`` after that (None: none)."""

    since: datetime | None = None
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Instance:
    """The instance a recorder writes: its names and its definition's fingerprint."""

    workflow_name: str
    instance_id: str
    fingerprint: str
    redact: bool  # FSMFLOW_REDACT_ERRORS: no error messages in rows and logs
    state_version: int | None = None  # a typed workflow's: stored with every row
    trace: RunTrace = NO_TRACE  # the run's spans and metrics: told of each row, attempt, wait


class Recorder:
    """Appends the rows of one run of ``instance`` on ``owner``'s session.

    ``position`` is shared with the runner, which reads it; only the recorder advances it,
    and only after a row committed.
    """

    def __init__(
        self,
        history: History,
        guard: Guard,
        owner: Ownership,
        instance: Instance,
        position: Position,
        start_again: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._history = history
        self._guard = guard
        self._owner = owner
        self._instance = instance
        self.position = position
        # Writes this run's own seq 0 again if the server lost it (it committed
        # asynchronously); True if it did.
        self._start_again = start_again

    def __repr__(self) -> str:
        return f"Recorder({self._instance.workflow_name!r}, {self._instance.instance_id!r})"

    @property
    def seq(self) -> int:
        """The seq of the instance's last row."""
        return self.position.seq

    @property
    def instance_id(self) -> str:
        """The id of the instance this recorder writes."""
        return self._instance.instance_id

    @property
    def context_json(self) -> str:
        """The context the instance's last row stored, as JSON text."""
        return self.position.context_json

    async def record(
        self,
        chosen: Transition | None,
        source: str,
        dest: str | None,
        encoded: str,
        duration_ms: float,
        *,
        wait: Wait | None = None,
        event_id: int | None = None,
        trigger: str | None = None,
    ) -> None:
        """Append the row of a finished step (or a trigger fired by hand, a delivered
        event, a timeout): a move to ``dest``, or with ``dest`` None the instance's
        completion; with ``wait``, the instance waits in ``dest`` from this row on.
        ``trigger`` overrides the chosen transition's (the runner's own waiting rows)."""
        status: Status = "waiting" if wait is not None else "running" if dest else "completed"
        if trigger is None and chosen is not None:
            trigger = chosen.trigger
        seq = await self._append(
            source,
            dest,
            encoded,
            status,
            trigger=trigger,
            duration_ms=duration_ms,
            wait=wait,
            event_id=event_id,
        )
        name, instance_id = self._instance.workflow_name, self._instance.instance_id
        # Context values are never logged: only the size of what was stored. Per
        # transition at DEBUG (an INFO line costs ~13 us per transition once a handler
        # formats it); INFO marks start, resume, completion and failure.
        logger.debug(
            "workflow %r instance %r seq %d: %s -> %s (step %.1f ms, context %d bytes)",
            name,
            instance_id,
            seq,
            source,
            dest or "(end)",
            duration_ms,
            len(encoded),
        )
        if dest is None:
            logger.info(
                "workflow %r instance %r completed at seq %d in state %r",
                name,
                instance_id,
                seq,
                source,
            )

    async def check_limit(self, state: str, limit: int) -> None:
        """Before the step of ``state``: past ``limit`` rows (the definition's
        ``max_transitions``) record the instance as failed and raise
        :class:`TransitionLimitError`."""
        seq = self.position.seq
        if seq < limit:
            return
        exc = TransitionLimitError(
            self._instance.workflow_name,
            self._instance.instance_id,
            f"reached max_transitions={limit} (seq {seq}) before the step of state "
            f"{state!r}: a loop that never ends? The instance is recorded as failed; raise "
            "the definition's max_transitions, or fix the loop, then `fsmflow retry` it",
        )
        await self.record_failure(state, 0, exc)
        raise exc

    async def fail(
        self, state: str, attempts: int, exc: Exception, *, raised_in: str | None = None
    ) -> NoReturn:
        """Record the instance as failed in ``state`` and raise :class:`StepFailedError`
        (``raised_in``: the state whose step raised, when the instance moved on since)."""
        await self.record_failure(state, attempts, exc, raised_in=raised_in)
        raise StepFailedError(
            self._instance.workflow_name,
            self._instance.instance_id,
            raised_in or state,
            attempts,
            exc,
            redact=self._instance.redact,
            location=location(exc),
        ) from exc

    async def record_failure(
        self, state: str, attempts: int, exc: Exception, *, raised_in: str | None = None
    ) -> None:
        """Append the terminal failed row (in ``state``, with the last stored context) and
        log the failure with its traceback, once, at ERROR."""
        redact = self._instance.redact
        if self.position.status == "completed":
            # A trigger fired by hand completed the instance before its step raised: the
            # completion is committed and stays the last row (a failed row after it would
            # let a retry run a finished instance again).
            logger.error(
                "workflow %r instance %r: step %r raised after a trigger fired by hand "
                "completed the instance at seq %d; nothing more is recorded: %s\n%s",
                self._instance.workflow_name,
                self._instance.instance_id,
                raised_in or state,
                self.position.seq,
                type(exc).__name__,
                traceback_text(exc, redact=redact),
            )
            return
        error = error_json(exc, attempts, redact=redact, raised_in=raised_in)
        self._instance.trace.failing(exc)
        await self._append(state, state, self.position.context_json, "failed", error_json=error)
        logger.error(
            "workflow %r instance %r step %r failed after %d attempt(s) and is recorded as "
            "failed at seq %d: %s\n%s",
            self._instance.workflow_name,
            self._instance.instance_id,
            raised_in or state,
            attempts,
            self.position.seq,
            type(exc).__name__,
            traceback_text(exc, redact=redact),
        )

    async def check_unmoved(self) -> None:
        """After the lock was retaken: :class:`ConcurrentTransitionError` if another runner
        moved the instance on meanwhile, :class:`HistoryDeletedError` if it is gone."""
        instance, seq = self._instance, self.position.seq
        last = await self._history.last_record(instance.workflow_name, instance.instance_id)
        if last is None and await self._lost_start(seq + 1):
            return  # this run's seq 0 was lost with the server and is written again
        if last is None or last.seq < seq:
            await self.check_not_deleted(seq + 1)
        if last is None or last.seq != seq:
            raise ConcurrentTransitionError(instance.workflow_name, instance.instance_id, seq + 1)

    async def check_not_deleted(self, seq: int) -> None:
        """After a refused append: :class:`HistoryDeletedError` if the history is gone
        (``reset_db`` with force, ``prune`` or a DELETE), rather than blaming a runner."""
        instance = self._instance
        last = await self._history.last_record(instance.workflow_name, instance.instance_id)
        if last is None or last.seq < seq - 1:
            found = "no rows" if last is None else f"rows up to seq {last.seq}"
            raise HistoryDeletedError(
                instance.workflow_name,
                instance.instance_id,
                f"its stored history was deleted while this runner ran it (expected seq "
                f"{seq - 1}, found {found}); nothing was written. Start the instance again "
                "if that was not intended",
            )

    async def _append(
        self,
        source: str,
        dest: str | None,
        encoded: str,
        status: Status,
        *,
        trigger: str | None = None,
        duration_ms: float | None = None,
        error_json: str | None = None,
        wait: Wait | None = None,
        event_id: int | None = None,
    ) -> int:
        """Append the instance's next row on the owning session, then advance to it."""
        seq = self.position.seq + 1
        row = (source, dest, encoded, status, trigger, duration_ms, error_json, wait, event_id)
        started = time.perf_counter()
        try:
            await self._guard.guarded("append", source, self._appending(seq, new_attempt_id(), row))
        except ConcurrentTransitionError:
            if not await self._lost_start(seq):
                await self.check_not_deleted(seq)
                raise
            await self._guard.guarded("append", source, self._appending(seq, new_attempt_id(), row))
        position = self.position
        position.seq, position.status, position.context_json = seq, status, encoded
        seconds = time.perf_counter() - started
        self._instance.trace.recorded(seq, trigger, source, dest, status, seconds)
        return seq

    async def _lost_start(self, seq: int) -> bool:
        """Before seq 1, with the owning session lost since the start: if the instance has
        no row at all, the seq 0 this run wrote (committed asynchronously) was lost with a
        server crash: write it again (True), so seq 1 can follow it. (Rows deleted while
        the session lived are a deletion: :class:`HistoryDeletedError`, as before.)"""
        if seq != 1 or self._start_again is None:
            return False
        instance = self._instance
        last = await self._history.last_record(instance.workflow_name, instance.instance_id)
        return last is None and await self._start_again()

    def _appending(self, seq: int, attempt_id: str, row: tuple[Any, ...]) -> Awaitable[None]:
        source, dest, encoded, status, trigger, duration_ms, error_json, wait, event_id = row
        instance = self._instance
        return self._history.append(
            instance.workflow_name,
            instance.instance_id,
            seq,
            trigger=trigger,
            source=source,
            dest=dest,
            context_json=encoded,
            status=status,
            fingerprint=instance.fingerprint,
            attempt_id=attempt_id,
            duration_ms=duration_ms,
            error_json=error_json,
            owner=self._owner,
            waiting_since=None if wait is None else wait.since,
            wait_seconds=None if wait is None else wait.seconds,
            event_id=event_id,
            state_version=instance.state_version,
        )
