"""Resuming: what an instance's stored rows mean for the run that opens it.

Decisions without I/O: whether the instance already ended (and, if it failed or was
cancelled, the error that says so), which state it resumes in, and whether a changed
definition may take it over. The runner reads and writes the rows and logs; this module
only judges them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from .definition import WorkflowDefinition, diff_summaries
from .errors import (
    DefinitionChangedError,
    InstanceCancelledError,
    InstanceFailedError,
    UnknownStateError,
)
from .records import TransitionRecord


def has_ended(record: TransitionRecord, *, retry_failed: bool) -> bool:
    """True if the instance ended at ``record`` and this run leaves it ended (a failed
    instance is run again with ``retry_failed``)."""
    return record.terminal and not (record.status == "failed" and retry_failed)


def check_ended_well(workflow: str, record: TransitionRecord) -> None:
    """For an instance that ended at ``record``: :class:`InstanceFailedError` if it failed,
    :class:`InstanceCancelledError` if it was cancelled; nothing if it completed."""
    if record.status == "failed":
        error = record.error or {}
        raise InstanceFailedError(
            workflow,
            record.instance_id,
            f"failed at seq {record.seq} in state {record.source_state!r} "
            f"({error.get('type', 'error')}); run it again with retry_failed=True "
            "(or `fsmflow retry`) once the cause is fixed",
        )
    if record.status == "cancelled":
        raise InstanceCancelledError(
            workflow, record.instance_id, f"was cancelled at seq {record.seq}"
        )


def resume_state(definition: WorkflowDefinition, record: TransitionRecord) -> str:
    """The state an instance whose last row is ``record`` resumes in.

    :class:`UnknownStateError` if ``definition`` has no such state.
    """
    state = record.dest_state or record.source_state
    if state is None or state not in definition.steps:
        raise UnknownStateError(definition.name, record.instance_id, record.seq, str(state))
    return state


def definition_changes(
    definition: WorkflowDefinition, first: TransitionRecord, *, allowed: bool
) -> list[str]:
    """How ``definition`` differs from the one stored in the instance's row ``first``.

    :class:`DefinitionChangedError` unless the change is ``allowed``.
    """
    changes = diff_summaries(first.definition or {}, definition.summary())
    if not allowed:
        raise DefinitionChangedError(definition.name, first.instance_id, changes)
    return changes


def started_record(
    definition: WorkflowDefinition, instance_id: str, context_json: str, attempt_id: str
) -> TransitionRecord:
    """The seq-0 row of an instance just started in ``definition``'s initial state, as
    reading it back would return it (``created_at`` is this process's clock)."""
    return TransitionRecord(
        workflow_name=definition.name,
        instance_id=instance_id,
        seq=0,
        trigger=None,
        source_state=None,
        dest_state=definition.initial_state,
        context=json.loads(context_json),
        status="running",
        created_at=datetime.now(UTC),
        fingerprint=definition.fingerprint,
        attempt_id=attempt_id,
    )
