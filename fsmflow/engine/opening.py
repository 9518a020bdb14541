"""Opening an instance for a run: which instance, its last row (or its start), and whether
it may resume under this definition.

The I/O half of resuming: :mod:`fsmflow.engine.resuming` judges the rows, this module
reads them (and writes seq 0 of a new instance) through the four store methods of
:class:`Openings`, and logs what it found.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Protocol

from fsmflow.engine.resuming import (
    check_ended_well,
    definition_changes,
    resume_state,
    same_definition,
    started_record,
    state_version,
)
from fsmflow.model.definition import WorkflowDefinition
from fsmflow.model.records import SUBMIT_TRIGGER, TransitionRecord
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
        """Record seq 0 of a new instance."""

    async def trace_parent(self, workflow: str, instance_id: str) -> str | None:
        """The traceparent the instance's seq 0 stored (None: none)."""


class Opening:
    """Opens instances of ``definition`` (``definition_json`` is stored with each start).

    ``resumed`` is True once :meth:`load_or_start` found an existing instance.
    """

    def __init__(
        self, store: Openings, definition: WorkflowDefinition, definition_json: str | None
    ) -> None:
        self._store = store
        self._definition = definition
        self._definition_json = definition_json
        self.resumed = False
        self._trace: RunTrace = NO_TRACE

    def trace_run(self, redact: bool, status: Callable[[], str]) -> RunTrace:
        """The telemetry of the run about to open an instance (``with`` it around the run;
        ``status()`` is the instance's status when it ends): :meth:`load_or_start` starts
        its trace for a new instance, or continues the one the instance stored."""
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

    async def load_or_start(
        self, instance_id: str, initial: Callable[[], str], *, given_context: bool
    ) -> TransitionRecord:
        """The instance's last row; for a new instance, its start (seq 0, written now) with
        the context ``initial()`` returns (called only then: a typed workflow's default
        state is validated only when it seeds an instance) and the traceparent of the
        run's trace (:meth:`trace_run`), which then opens the run's span (continuing the
        stored trace of an existing instance)."""
        name, trace = self._definition.name, self._trace
        last = await self._store.last_record(name, instance_id)
        if last is None:
            started = await self._start(instance_id, initial(), trace.started(instance_id))
            await trace.opened(instance_id, self._store.trace_parent)
            return started
        self.resumed = True
        await trace.opened(instance_id, self._store.trace_parent)
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

    async def _start(
        self, instance_id: str, initial_json: str, trace_parent: str | None
    ) -> TransitionRecord:
        definition = self._definition
        state, attempt = definition.initial_state, uuid.uuid4().hex
        await self._store.start(
            definition.name,
            instance_id,
            state,
            initial_json,
            fingerprint=definition.fingerprint,
            attempt_id=attempt,
            definition_json=self._definition_json,
            state_version=state_version(definition),
            trace_parent=trace_parent,
        )
        logger.info(
            "workflow %r instance %r started in state %r", definition.name, instance_id, state
        )
        return started_record(definition, instance_id, initial_json, attempt)

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
