"""Opening an instance for a run: which instance, its last row (or its start), and whether
it may resume under this definition.

The I/O half of resuming: :mod:`fsmflow.engine.resuming` judges the rows, this module
reads them (and writes seq 0 of a new instance) through the four store methods of
:class:`Openings`, and logs what it found.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fsmflow.engine.resuming import (
    check_ended_well,
    definition_changes,
    resume_state,
    same_definition,
    started_record,
    state_version,
)
from fsmflow.errors import ConcurrentTransitionError
from fsmflow.model.definition import WorkflowDefinition
from fsmflow.model.records import SUBMIT_TRIGGER, TransitionRecord
from fsmflow.store.history import Opened, StartRow, same_attempt
from fsmflow.store.ownership import Ownership
from fsmflow.telemetry import NO_TRACE, RunTrace, run_trace

logger = logging.getLogger("fsmflow")


class Openings(Protocol):
    """What opening an instance needs of the store (:class:`~fsmflow.store.facade.Store`)."""

    async def latest_unfinished(self, workflow: str) -> str | None:
        """The id of the most recently started unfinished instance of ``workflow``."""

    async def last_record(self, workflow: str, instance_id: str) -> TransitionRecord | None:
        """The instance's last row, or None if it has none."""

    async def record_at(self, workflow: str, instance_id: str, seq: int) -> TransitionRecord | None:
        """The instance's row at ``seq``, or None."""

    async def start(
        self,
        workflow: str,
        instance_id: str,
        state: str,
        context_json: str,
        *,
        fingerprint: str | None,
        attempt_id: str,
        definition_json: str | None,
        state_version: int | None = None,
        trace_parent: str | None = None,
    ) -> None:
        """Record seq 0 of a new instance (synchronously committed)."""

    async def open_instance(
        self,
        workflow: str,
        instance_id: str,
        *,
        start: StartRow | None,
        wait: bool = False,
        lock_timeout: float | None = None,
    ) -> tuple[Ownership, Opened]:
        """Own the instance, read its last row and start it with ``start`` if it has none,
        in one round trip."""

    async def trace_parent(self, workflow: str, instance_id: str) -> str | None:
        """The traceparent the instance's seq 0 stored (None: none)."""


class Opening:
    """Opens instances of ``definition`` (``definition_json`` is stored with each start).

    ``resumed`` is True once :meth:`open` found an existing instance.
    """

    def __init__(
        self, store: Openings, definition: WorkflowDefinition, definition_json: str | None
    ) -> None:
        self._store = store
        self._definition = definition
        self._definition_json = definition_json
        self.resumed = False
        self._started: tuple[str, StartRow] | None = None  # the seq 0 this run inserted
        self._owner: Ownership | None = None  # and the session it was inserted on
        self._started_generation = -1
        self._trace: RunTrace = NO_TRACE

    def trace_run(self, redact: bool, status: Callable[[], str]) -> RunTrace:
        """The telemetry of the run about to open an instance (``with`` it around the run;
        ``status()`` is the instance's status when it ends): :meth:`open` starts its trace
        for a new instance, or continues the one the instance stored."""
        self._trace = run_trace(self._definition.name, redact, status)
        return self._trace

    def __repr__(self) -> str:
        return f"Opening({self._definition.name!r}, resumed={self.resumed})"

    async def choose(self, instance_id: str | None) -> str:
        """``instance_id``, else the latest unfinished instance, else a new id."""
        if instance_id is None:
            instance_id = await self._store.latest_unfinished(self._definition.name)
        if instance_id is None:
            instance_id = uuid.uuid4().hex
        return instance_id

    async def open(
        self, instance_id: str, initial: Callable[[], str], given_context: bool,
        options: Mapping[str, Any],
    ) -> tuple[Ownership, TransitionRecord]:  # fmt: skip
        """Own the instance and return its last row; a new instance is started (its seq 0
        with the context ``initial()`` returns) in the same round trip as the lock.
        ``options``: the runner's ``wait`` and ``lock_timeout``.

        ``initial()`` is asked first; if it fails (a typed workflow's default state that
        does not validate), the instance is only looked up, and its error is raised only
        if the instance turns out to be new.
        """
        definition = self._definition
        try:
            start: StartRow | None = StartRow(
                definition.initial_state, initial(), definition.fingerprint,
                uuid.uuid4().hex, self._definition_json, state_version(definition),
            )  # fmt: skip
            seed_error: Exception | None = None
        except Exception as exc:
            start, seed_error = None, exc
        if start is not None:  # the traceparent its seq 0 stores, if this run starts it
            start = start.traced(self._trace.started(instance_id))
        wait, lock_timeout = bool(options["wait"]), options["lock_timeout"]
        owner, opened = await self._store.open_instance(
            definition.name, instance_id, start=start, wait=wait, lock_timeout=lock_timeout
        )
        try:
            found = await self._found(instance_id, start, opened, seed_error, given_context)
        except BaseException:
            await owner.release()
            raise
        self._owner, self._started_generation = owner, owner.generation
        return owner, found

    async def _found(
        self, instance_id: str, start: StartRow | None, opened: Opened,
        seed_error: Exception | None, given_context: bool,
    ) -> TransitionRecord:  # fmt: skip
        name, trace = self._definition.name, self._trace
        created = opened.started and start is not None
        await trace.opened(instance_id, self._store.trace_parent, created=created)
        if opened.started and start is not None:
            self._started = (instance_id, start)
            logger.info(
                "workflow %r instance %r started in state %r", name, instance_id, start.state
            )
            return started_record(
                self._definition, instance_id, start.context_json, start.attempt_id
            )
        # Read again now that the lock is held: the open statement's snapshot may predate
        # the moment the lock was granted (a previous owner's last commit just before it).
        last = await self._store.last_record(name, instance_id)
        if last is None:
            if seed_error is not None:
                raise seed_error
            raise ConcurrentTransitionError(name, instance_id, 0)  # its seq 0 went meanwhile
        if start is not None and last.seq == 0 and same_attempt(last, start.attempt_id):
            self._started = (instance_id, start)  # ours: its answer was lost, then retried
        self.resumed = True
        if given_context:
            # Programs pass their seed context on every start, not knowing whether they
            # resume: that is normal, so INFO, not WARNING.
            logger.info(
                "workflow %r instance %r exists: resuming with its stored context "
                "(the given context seeds new instances only)",
                name,
                instance_id,
            )
        return last

    async def start_again(self) -> bool:
        """Write again the seq 0 this run inserted, if the server lost it: that insert
        committed asynchronously, so a server crash before the first transition's commit
        may have taken it. False (nothing written) if this run started no instance, or if
        the session it was inserted on still lives (then the rows were deleted)."""
        owner = self._owner
        if self._started is None or owner is None or owner.generation == self._started_generation:
            return False  # not ours, or its session never died: no crash took it
        instance_id, start = self._started
        logger.warning(
            "workflow %r instance %r: its start (seq 0) was lost with a server crash before "
            "its first transition was committed; writing it again",
            self._definition.name,
            instance_id,
        )
        await self._store.start(
            self._definition.name, instance_id, start.state, start.context_json,
            fingerprint=start.fingerprint, attempt_id=start.attempt_id,
            definition_json=start.definition_json, state_version=start.state_version,
            trace_parent=start.trace_parent,
        )  # fmt: skip
        return True

    def check_ended(self, record: TransitionRecord) -> None:
        """For an instance that ended at ``record`` and stays ended: raise if it failed or
        was cancelled, else log that it had completed."""
        check_ended_well(self._definition.name, record)
        logger.info(
            "workflow %r instance %r already %s",
            self._definition.name,
            record.instance_id,
            record.status,
        )

    async def check_resumable(self, record: TransitionRecord, *, allow_change: bool) -> str:
        """The state to resume in; refuses unknown states and (unless ``allow_change``)
        a changed definition."""
        state = resume_state(self._definition, record)
        if not await same_definition(self._definition, record, self._store.record_at):
            await self._check_drift(record, allow_change)
        if self.resumed and record.seq == 0 and record.trigger == SUBMIT_TRIGGER:
            logger.info(  # a worker's first run of a submitted instance: nothing crashed
                "workflow %r instance %r (submitted) starts in state %r",
                self._definition.name,
                record.instance_id,
                state,
            )
        elif self.resumed:
            logger.info(
                "workflow %r instance %r resumed in state %r after seq %d",
                self._definition.name,
                record.instance_id,
                state,
                record.seq,
            )
        return state

    async def _check_drift(self, record: TransitionRecord, allowed: bool) -> None:
        first = record
        if record.seq != 0:
            found = await self._store.record_at(self._definition.name, record.instance_id, 0)
            first = found or record
        changes = definition_changes(self._definition, first, allowed=allowed)
        logger.warning(
            "workflow %r instance %r resumes under a changed definition: %s",
            self._definition.name,
            record.instance_id,
            "; ".join(changes),
        )
