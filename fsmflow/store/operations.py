"""Operations on stored instances: list, fork, cancel, retry, prune, and a health check.

:class:`~fsmflow.store.Store` calls these with its :class:`Parts` (never with itself):
the gateway, the history, the owners and the schema. Only prune and reset run SQL of
their own, through the gateway's named queries. History stays append-only: fork writes a
new instance, cancel and retry append one row, and only prune (and ``reset_db``) deletes.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fsmflow import sql
from fsmflow.errors import (
    ConcurrentTransitionError,
    ConfigError,
    DefinitionChangedError,
    HistoryCorruptError,
    InstanceExistsError,
    InstanceLockedError,
    InstanceNotFoundError,
    InstanceStateError,
    PermissionDeniedError,
    SchemaMissingError,
)
from fsmflow.model.context import encode_context
from fsmflow.model.definition import WorkflowDefinition, check_identifier, diff_summaries
from fsmflow.model.records import (
    CANCEL_TRIGGER,
    RETRY_TRIGGER,
    STATUSES,
    SUBMIT_TRIGGER,
    HealthReport,
    InstanceSummary,
    Status,
    TransitionRecord,
)
from fsmflow.store.database import Database
from fsmflow.store.events import Events
from fsmflow.store.fleet import Fleet
from fsmflow.store.history import History
from fsmflow.store.ownership import Owners, Ownership
from fsmflow.store.schema import Schema, durability_problem
from fsmflow.telemetry import forking

logger = logging.getLogger("fsmflow.store")


@dataclass(frozen=True, slots=True)
class Parts:
    """The parts of a store that operations use."""

    db: Database
    history: History
    owners: Owners
    schema: Schema
    events: Events
    fleet: Fleet


# -- listing -----------------------------------------------------------------------------


async def list_instances(
    parts: Parts,
    workflow: str | None = None,
    *,
    status: Status | Sequence[Status] | None = None,
    limit: int = 100,
    after: InstanceSummary | None = None,
) -> list[InstanceSummary]:
    """Instances newest first (by start time), of one workflow or of all.

    ``status`` keeps instances whose last row has that status (or one of those).
    Paginate with ``after=page[-1]``: pages never skip or repeat an instance, however
    many start meanwhile. Every lookup is an index scan; a rare ``status`` scans the
    instances of the workflow until ``limit`` of them match.
    """
    if workflow is not None:
        check_identifier(workflow, "workflow name")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return await parts.history.instance_page(workflow, _statuses(status), None, limit, after)


def _statuses(status: Status | Sequence[Status] | None) -> list[str] | None:
    if status is None:
        return None
    chosen: list[str] = [status] if isinstance(status, str) else list(status)
    unknown = sorted(set(chosen) - set(STATUSES))
    if unknown:
        raise ValueError(f"unknown status {unknown}; use one of {', '.join(STATUSES)}")
    return chosen


async def _existing(parts: Parts, workflow: str, instance_id: str, doing: str) -> TransitionRecord:
    check_identifier(workflow, "workflow name")
    check_identifier(instance_id, "instance_id")
    last = await parts.history.last_record(workflow, instance_id)
    if last is None:
        raise InstanceNotFoundError(
            workflow,
            instance_id,
            f"no such instance to {doing} (no stored history under this workflow name and "
            "id); `fsmflow list` shows the instances",
        )
    return last


# -- fork --------------------------------------------------------------------------------


async def fork_instance(
    parts: Parts,
    workflow: str,
    instance_id: str,
    *,
    seq: int | None = None,
    new_instance_id: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    state: str | None = None,
    definition: WorkflowDefinition | None = None,
    allow_definition_change: bool = False,
) -> TransitionRecord:
    """Start a new instance from instance ``instance_id``'s row ``seq`` (default: its last).

    The new instance resumes in the state the source was about to run after that row
    (its ``dest_state``), or in ``state`` if given, with that row's context, top-level keys
    of ``overrides`` set on top. Its seq-0 row records ``forked_from_instance``/
    ``forked_from_seq`` and keeps the source's seq-0 definition and fingerprint, so drift
    checks still apply; with ``definition`` it takes that definition's fingerprint and
    summary instead, so it resumes under the current code (a definition that differs from
    the source's needs ``allow_definition_change``, else :class:`DefinitionChangedError`).
    ``state`` must be a state of ``definition`` (else of the stored one):
    :class:`InstanceStateError` if not. This is the way out of an
    :class:`~fsmflow.errors.UnknownStateError`. The source's history is only read.

    A completion row has no state left to run: forking it without ``state`` raises
    :class:`InstanceStateError` (fork an earlier seq to run the last step again).
    ``new_instance_id`` pins the new id (an existing one raises :class:`InstanceExistsError`;
    nothing is overwritten); by default a fresh id is generated. Returns the new seq-0 row.
    """
    row = await _fork_point(parts, workflow, instance_id, seq, chosen=state is not None)
    first = row if row.seq == 0 else await parts.history.record_at(workflow, instance_id, 0)
    if first is None:
        raise HistoryCorruptError(
            workflow, instance_id, "stored history has a gap: seq 0 is missing"
        )
    fingerprint, summary = _fork_definition(first, definition, allow_definition_change)
    dest = _fork_state(row, state, summary)
    context, version = _fork_context(row, definition, overrides)
    encoded = encode_context(
        context,
        max_bytes=parts.db.config.max_context_bytes,
        where=f"fork of instance {instance_id!r} at seq {row.seq}",
    )
    new_id = _new_instance_id(new_instance_id)
    redact = parts.db.config.redact_errors
    forked = forking(workflow, new_id, source=instance_id, seq=row.seq, redact=redact)
    with forked as start:  # its span is the parent of the new instance's runs
        try:
            await parts.history.start(
                workflow,
                new_id,
                dest,
                encoded,
                fingerprint=fingerprint,
                attempt_id=uuid.uuid4().hex,
                definition_json=None if summary is None else json.dumps(summary),
                forked_from=(instance_id, row.seq),
                state_version=version,
                trace_parent=start.trace_parent,
            )
        except ConcurrentTransitionError:
            raise _exists(workflow, new_id) from None
    started = await parts.history.record_at(workflow, new_id, 0)
    assert started is not None
    return started


def _fork_context(
    row: TransitionRecord, definition: WorkflowDefinition | None, overrides: Any
) -> tuple[dict[str, Any], int | None]:
    """The context a fork starts with, and its state version: the row's as stored, or,
    forked onto a typed ``definition``, upgraded to its state_version and validated (the
    overrides set on top of the upgraded state)."""
    spec = None if definition is None else definition.state_spec
    if spec is None:
        version = row.state_version if definition is None else None
        return {**row.context, **dict(overrides or {})}, version
    name, where = row.workflow_name, f"the fork of instance {row.instance_id!r} at seq {row.seq}"
    upgraded = spec.upgrade(row.context, row.state_version, name, row.instance_id)
    merged = {**(row.context if upgraded is None else upgraded), **dict(overrides or {})}
    model = spec.validate(merged, name, row.instance_id, where)
    return spec.dump(model, name, row.instance_id, where), spec.version


def _fork_definition(
    first: TransitionRecord, definition: WorkflowDefinition | None, allowed: bool
) -> tuple[str | None, dict[str, Any] | None]:
    """The fingerprint and summary a fork's seq 0 stores: the source's, or ``definition``'s."""
    if definition is None:
        return first.fingerprint, first.definition
    if definition.name != first.workflow_name:
        raise ConfigError(
            f"the definition given is workflow {definition.name!r}, but instance "
            f"{first.instance_id!r} is of workflow {first.workflow_name!r}: pass that "
            "workflow's definition"
        )
    if definition.fingerprint != first.fingerprint and not allowed:
        changes = diff_summaries(first.definition or {}, definition.summary())
        changes.append(
            "forking onto this definition is refused without allow_definition_change=True "
            "(CLI: --allow-definition-change)"
        )
        raise DefinitionChangedError(first.workflow_name, first.instance_id, changes)
    return definition.fingerprint, definition.summary()


def _fork_state(row: TransitionRecord, state: str | None, summary: dict[str, Any] | None) -> str:
    """The state the fork resumes in: ``state`` (checked against ``summary``'s states when
    known), else the row's ``dest_state``."""
    if state is None:
        assert row.dest_state is not None  # _fork_point refused a completion row
        return row.dest_state
    states = None if summary is None else summary.get("states")
    if isinstance(states, list) and state not in states:
        shown = ", ".join(repr(s) for s in states)
        raise InstanceStateError(
            row.workflow_name,
            row.instance_id,
            f"cannot fork onto state {state!r}: {state!r} is not a state of the "
            f"definition (its states: {shown})",
        )
    return state


async def _fork_point(
    parts: Parts, workflow: str, instance_id: str, seq: int | None, *, chosen: bool
) -> TransitionRecord:
    last = await _existing(parts, workflow, instance_id, "fork from")
    row: TransitionRecord | None = last
    if seq is not None and seq != last.seq:
        if not 0 <= seq < last.seq:
            raise InstanceNotFoundError(
                workflow,
                instance_id,
                f"has no seq {seq} to fork from (its history has seq 0 to {last.seq})",
            )
        row = await parts.history.record_at(workflow, instance_id, seq)
    if row is None:
        raise HistoryCorruptError(
            workflow, instance_id, f"stored history has a gap: seq {seq} is missing"
        )
    if row.dest_state is None and not chosen:
        which = f"seq {row.seq}" if seq is not None else f"its last row (seq {row.seq})"
        raise InstanceStateError(
            workflow,
            instance_id,
            f"{which} completed the instance: no state is left to run. Fork from an earlier "
            f"seq (seq {row.seq - 1} runs the step of state {row.source_state!r} again), "
            "or name the state to resume in (state=..., CLI --state)",
        )
    return row


def _new_instance_id(pinned: str | None) -> str:
    # An existing pinned id is refused by History.start itself (seq 0 exists: unique key).
    return uuid.uuid4().hex if pinned is None else check_identifier(pinned, "new instance_id")


def _exists(workflow: str, instance_id: str) -> InstanceExistsError:
    return InstanceExistsError(
        workflow,
        instance_id,
        "already exists: a fork never overwrites history; choose another new instance id "
        "(or let fsmflow generate one)",
    )


# -- cancel and retry --------------------------------------------------------------------


async def cancel_instance(
    parts: Parts, workflow: str, instance_id: str, *, reason: str | None = None
) -> TransitionRecord:
    """Append a ``cancelled`` row: the instance ends, and running it raises
    :class:`~fsmflow.errors.InstanceCancelledError`. Returns that row.

    Refused with :class:`InstanceLockedError` while a live runner owns the instance (its
    advisory lock is taken, on a dedicated connection, for the append) — unless the
    instance waits: a runner waiting on it in-process runs no step, so the row is appended
    (conditionally) beside it and the runner, woken, stops with the cancellation. Refused
    with :class:`InstanceStateError` if the instance already ended. The row keeps the last
    context and state (fork it to run it again); ``reason`` is stored in its ``error`` column.
    """
    error = {"type": "Cancelled", "message": reason or "cancelled by an operator"}
    try:
        async with _owned(parts, workflow, instance_id, "cancel") as owner:
            last = await _cancellable(parts, workflow, instance_id)
            record = await _append_after(parts, owner, last, "cancelled", CANCEL_TRIGGER, error)
        if await _submitted(parts, workflow, instance_id):
            await parts.fleet.dequeue(workflow, instance_id)
        return record
    except InstanceLockedError:
        last = await _cancellable(parts, workflow, instance_id)
        if last.status != "waiting":
            raise
    record = await _append_after(parts, None, last, "cancelled", CANCEL_TRIGGER, error)
    # A runner (a worker's or a program's) waits on it: woken, it stops with the cancel,
    # and a worker then takes it off the queue.
    if await _submitted(parts, workflow, instance_id):
        await parts.fleet.wake(workflow, instance_id)
    await parts.events.notify(workflow, instance_id)
    return record


async def _submitted(parts: Parts, workflow: str, instance_id: str) -> bool:
    """True if the instance was submitted to the worker fleet (only those are queued: a
    program's instances touch no fleet table, so SELECT and INSERT suffice for them)."""
    first = await parts.history.record_at(workflow, instance_id, 0)
    return first is not None and first.trigger == SUBMIT_TRIGGER


async def _cancellable(parts: Parts, workflow: str, instance_id: str) -> TransitionRecord:
    last = await _existing(parts, workflow, instance_id, "cancel")
    if last.terminal:
        raise InstanceStateError(
            workflow, instance_id, f"already {last.status} at seq {last.seq}: nothing to cancel"
        )
    return last


async def retry_instance(parts: Parts, workflow: str, instance_id: str) -> TransitionRecord:
    """Make a failed instance runnable again: append a ``running`` row after its ``failed``
    row, in the state whose step failed, with the context that step started from.

    The program's next run of the instance (no ``retry_failed`` needed) runs that step
    again; an instance submitted to the worker fleet is queued again for the workers.
    Refused while a runner owns the instance, and for an instance that did not fail.
    Returns the appended row.
    """
    # Completed and cancelled are final: refused without the lock (a run that has just
    # completed may still be giving its lock back).
    last = await _existing(parts, workflow, instance_id, "retry")
    if last.status in ("completed", "cancelled"):
        raise InstanceStateError(workflow, instance_id, _not_retryable(last))
    async with _owned(parts, workflow, instance_id, "retry") as owner:
        last = await _existing(parts, workflow, instance_id, "retry")
        if last.status != "failed":
            raise InstanceStateError(workflow, instance_id, _not_retryable(last))
        record = await _append_after(parts, owner, last, "running", RETRY_TRIGGER, None)
    if await _submitted(parts, workflow, instance_id):  # the workers run it again
        await parts.fleet.requeue(workflow, instance_id)
    return record


def _not_retryable(last: TransitionRecord) -> str:
    where = f"at seq {last.seq}"
    if last.status == "running":
        return (
            f"did not fail (running, state {last.dest_state!r} {where}); its next run "
            "resumes it as it is"
        )
    if last.status == "completed":
        return f"completed {where}: nothing to retry; fork it from an earlier seq instead"
    return f"was cancelled {where}: it stays cancelled; fork it to run it again"


@asynccontextmanager
async def _owned(
    parts: Parts, workflow: str, instance_id: str, doing: str
) -> AsyncIterator[Ownership]:
    check_identifier(workflow, "workflow name")
    check_identifier(instance_id, "instance_id")
    try:
        owner = await parts.owners.acquire(workflow, instance_id, wait=False, lock_timeout=None)
    except InstanceLockedError:
        raise InstanceLockedError(
            workflow,
            instance_id,
            f"a live runner owns this instance (it holds its lock): cannot {doing} it now; "
            "stop that runner first (SIGTERM stops it at the next step boundary)",
        ) from None
    try:
        yield owner
    finally:
        await owner.release()


async def _append_after(
    parts: Parts,
    owner: Ownership | None,
    last: TransitionRecord,
    status: Status,
    trigger: str,
    error: dict[str, Any] | None,
) -> TransitionRecord:
    """Append an operator's row after ``last`` (on the owning session, if any): a
    conditional append either way."""
    state = last.dest_state or last.source_state
    seq = last.seq + 1
    where = f"operator row after seq {last.seq}"
    await parts.history.append(
        last.workflow_name,
        last.instance_id,
        seq,
        trigger=trigger,
        source=state,
        dest=state,
        context_json=encode_context(
            last.context, max_bytes=parts.db.config.max_context_bytes, where=where
        ),
        status=status,
        fingerprint=last.fingerprint,
        attempt_id=uuid.uuid4().hex,
        duration_ms=None,
        error_json=None if error is None else json.dumps(error),
        owner=owner,
        state_version=last.state_version,  # the context is the last row's, unchanged
    )
    record = await parts.history.record_at(last.workflow_name, last.instance_id, seq)
    assert record is not None
    return record


# -- health ------------------------------------------------------------------------------


async def check_health(parts: Parts, *, workers: bool = False) -> HealthReport:
    """Connect and check what running workflows needs: the table, its schema version,
    SELECT and INSERT on it, a writable server, and durable commits; with ``workers``,
    also what a worker needs (the fleet's tables and the right to change them).

    Connection failures raise (after ``FSMFLOW_DB_RETRY_SECONDS``) like any other call.
    """
    facts = await parts.schema.health_facts()
    row = facts.row
    problems: list[str] = []
    warnings: list[str] = []
    table = parts.db.qualified_table
    if not facts.exists:
        problems.append(f"table {table!r} does not exist: run `fsmflow init-db`")
    elif facts.problem:
        problems.append(facts.problem)
    elif not (row["can_select"] and row["can_insert"]):
        problems.append(f"the role lacks SELECT and INSERT on {table!r}")
    elif not row["can_send"]:
        events = parts.db.qualified_events
        problems.append(f"the role lacks SELECT and INSERT on the events table {events!r}")
    can_run_workers = facts.exists and not facts.problem and await _fleet_ready(parts)
    if workers and not can_run_workers and facts.exists and not facts.problem:
        fleet = parts.fleet
        problems.append(
            f"workers cannot run: the role needs SELECT, INSERT, UPDATE, DELETE on "
            f"{fleet.queue_table!r} and {fleet.workers_table!r}"
        )
    if row["in_recovery"]:
        problems.append("the server is a read-only standby: appends would fail")
    durability = durability_problem(row["synchronous_commit"], parts.db.target)
    if durability is not None:
        strict = parts.db.config.strict_durability
        (problems if strict else warnings).append(
            durability + (" (FSMFLOW_STRICT_DURABILITY is set)" if strict else "")
        )
    return HealthReport(
        target=parts.db.target,
        table=table,
        server_version=row["server_version"],
        table_exists=facts.exists,
        schema_version_ok=facts.version == sql.SCHEMA_VERSION,
        schema_version=facts.version,
        missing_columns=facts.missing_columns,
        can_select=row["can_select"],
        can_insert=row["can_insert"],
        can_delete=row["can_delete"],
        synchronous_commit=row["synchronous_commit"],
        in_recovery=row["in_recovery"],
        problems=tuple(problems),
        warnings=tuple(warnings),
        can_run_workers=can_run_workers,
    )


async def _fleet_ready(parts: Parts) -> bool:
    try:
        await parts.fleet.check_privileges(checked=False)  # report, never refuse, here
    except (PermissionDeniedError, SchemaMissingError):
        return False
    return True
