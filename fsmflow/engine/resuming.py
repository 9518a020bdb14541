"""Resuming: what an instance's stored rows mean for the run that opens it.

Decisions without I/O: whether the instance already ended (and, if it failed or was
cancelled, the error that says so), which state it resumes in, and whether a changed
definition may take it over. The runner reads and writes the rows and logs; this module
only judges them.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fsmflow.errors import (
    DefinitionChangedError,
    InstanceCancelledError,
    InstanceFailedError,
    UnknownStateError,
)
from fsmflow.model.conditions import UNARY_OPERATORS, Condition, canonical_json, canonical_value
from fsmflow.model.context import compact_json
from fsmflow.model.definition import WorkflowDefinition, diff_summaries
from fsmflow.model.records import TransitionRecord


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


async def same_definition(
    definition: WorkflowDefinition,
    record: TransitionRecord,
    record_at: Callable[[str, str, int], Awaitable[TransitionRecord | None]],
) -> bool:
    """True if the instance whose last row is ``record`` was started under ``definition``.

    Compares fingerprints first: the current one, then fsmflow 0.1's (which hashed the
    repr of condition values). 0.1's fingerprint of a set-valued condition depended on the
    hash seed of the process that stored it, so failing both, the instance's seq-0 summary
    (read with ``record_at(workflow, instance, 0)`` unless ``record`` is seq 0) is compared
    with ``definition``'s, canonically. A row without a fingerprint is never judged.
    """
    stored = record.fingerprint
    if stored is None or stored == definition.fingerprint:
        return True
    if stored == legacy_fingerprint(definition):
        return True
    first = record if record.seq == 0 else await record_at(definition.name, record.instance_id, 0)
    return first is not None and summaries_match(first.definition, definition)


def summaries_match(stored: dict[str, Any] | None, definition: WorkflowDefinition) -> bool:
    """True if ``stored`` (a seq-0 ``definition`` summary, as read back) describes
    ``definition``: equal to its summary, or equal to fsmflow 0.1's summary of it up to the
    order in which the repr of a set listed its items."""
    if stored is None:
        return False
    current = definition.summary()
    if json.loads(canonical_json(stored)) == json.loads(canonical_json(current)):
        return True
    legacy = _legacy_summary(definition)
    transitions = stored.get("transitions")
    if {**stored, "transitions": None} != {**legacy, "transitions": None}:
        return False
    if not isinstance(transitions, list) or len(transitions) != len(definition.transitions):
        return False
    return all(
        _legacy_transition_matches(old, new, t.conditions)
        for old, new, t in zip(
            transitions, legacy["transitions"], definition.transitions, strict=True
        )
    )


def legacy_fingerprint(definition: WorkflowDefinition) -> str:
    """The fingerprint fsmflow 0.1 stored for ``definition`` (in this process's hash seed)."""
    text = compact_json(_legacy_summary(definition), ensure_ascii=True, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _legacy_summary(definition: WorkflowDefinition) -> dict[str, Any]:
    summary = definition.summary()
    for described, transition in zip(summary["transitions"], definition.transitions, strict=True):
        described["conditions"] = [_legacy_describe(c) for c in transition.conditions]
    return summary


def _legacy_describe(condition: Condition) -> str:
    if condition.operator == "custom":
        fn = condition.custom_function
        return f"{condition.field} custom {getattr(fn, '__qualname__', type(fn).__name__)}"
    if condition.operator in UNARY_OPERATORS:
        return f"{condition.field} {condition.operator}"
    return f"{condition.field} {condition.operator} {condition.value!r}"


def _legacy_transition_matches(old: Any, new: dict[str, Any], conditions: list[Condition]) -> bool:
    if not isinstance(old, dict) or {**old, "conditions": None} != {**new, "conditions": None}:
        return False
    texts = old.get("conditions")
    if not isinstance(texts, list) or len(texts) != len(conditions):
        return False
    return all(_legacy_condition_matches(t, c) for t, c in zip(texts, conditions, strict=True))


def _legacy_condition_matches(text: Any, condition: Condition) -> bool:
    """True if 0.1's ``describe()`` text is ``condition``'s, whatever order its sets had."""
    if text == _legacy_describe(condition):
        return True
    head = f"{condition.field} {condition.operator} "
    if not isinstance(text, str) or not text.startswith(head):
        return False
    try:  # a literal only: literal_eval never runs code
        value = ast.literal_eval(text.removeprefix(head))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return bool(canonical_value(value) == canonical_value(condition.value))


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
        state_version=state_version(definition),
    )


def state_version(definition: WorkflowDefinition) -> int | None:
    """The state_version a typed workflow's rows store (None: the dict API)."""
    spec = definition.state_spec
    return None if spec is None else spec.version
