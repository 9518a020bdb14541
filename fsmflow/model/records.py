"""Typed views of stored history: what the store returns, never raw rows.

:func:`to_record` and :func:`to_summary` build them from the store's rows; they only
index rows by column name, so this module does not know the driver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol, get_args

from pydantic import BaseModel

from fsmflow.errors import HistoryCorruptError
from fsmflow.model.context import WorkflowContext

Status = Literal["running", "waiting", "completed", "failed", "cancelled"]
STATUSES: Final[tuple[Status, ...]] = get_args(Status)  # every status, in this order
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class Row(Protocol):
    """A row read by the store, indexed by column name (an ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any:
        """The value of column ``key``."""


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One stored row: an instance's start (seq 0), a finished step, or a terminal event."""

    workflow_name: str
    instance_id: str
    seq: int
    trigger: str | None
    source_state: str | None
    dest_state: str | None
    context: dict[str, Any] = field(repr=False)
    status: Status
    created_at: datetime
    fingerprint: str | None = None
    attempt_id: str | None = None
    duration_ms: float | None = None
    error: dict[str, Any] | None = None
    definition: dict[str, Any] | None = field(default=None, repr=False)
    forked_from_instance: str | None = None
    forked_from_seq: int | None = None
    waiting_since: datetime | None = None  # a waiting row: when the wait began (server clock)
    wake_at: datetime | None = None  # a waiting row: its earliest deadline, if any
    event_id: int | None = None  # the event this row delivered (or consumed unmatched)
    state_version: int | None = None  # a typed workflow's state version (None: untyped)

    @property
    def completed(self) -> bool:
        """True for the row that completed the instance."""
        return self.status == "completed"

    @property
    def terminal(self) -> bool:
        """True when the instance ended at this row (completed, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class WorkflowState:
    """Where an instance stands: what ``run_workflow`` returns.

    ``workflow_id`` is ``instance_id`` under the seed API's name. A ``waiting`` instance
    (returned by ``run_workflow(suspend=True)``) waits in ``current_state`` for one of the
    events ``waiting_for`` or until ``wake_at`` (its next deadline, server clock). For a
    typed workflow ``state`` is the state model instance; ``context.data`` is its JSON form.
    """

    workflow_name: str
    instance_id: str
    current_state: str
    context: WorkflowContext
    completed: bool
    status: Status = "running"
    seq: int = 0
    waiting_for: tuple[str, ...] = ()
    wake_at: datetime | None = None
    state: BaseModel | None = None  # a typed workflow's state model instance (else None)

    @property
    def workflow_id(self) -> str:
        """The instance id under the seed API's name (``workflow_state.workflow_id``)."""
        return self.instance_id

    @classmethod
    def from_record(cls, record: TransitionRecord) -> WorkflowState:
        """The state an instance is in after ``record``."""
        return cls(
            workflow_name=record.workflow_name,
            instance_id=record.instance_id,
            current_state=record.dest_state or record.source_state or "",
            context=WorkflowContext(data=record.context),
            completed=record.completed,
            status=record.status,
            seq=record.seq,
            wake_at=record.wake_at if record.status == "waiting" else None,
        )


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event sent to an instance (``send_event``): ``payload`` is its JSON value.

    ``delivered_seq`` is the seq of the history row that consumed it (None: pending).
    """

    workflow_name: str
    instance_id: str
    event_id: int
    event: str
    key: str | None
    payload: Any = field(repr=False)
    created_at: datetime
    delivered_seq: int | None = None


@dataclass(frozen=True, slots=True)
class SentEvent:
    """What ``send_event`` did: the stored event, and whether it was stored by an earlier
    send with the same key (``duplicate``: this send wrote nothing)."""

    event: EventRecord
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class InstanceSummary:
    """One instance in a listing: its status, current state and times."""

    workflow_name: str
    instance_id: str
    status: Status
    current_state: str
    seq: int
    started_at: datetime
    updated_at: datetime
    forked_from_instance: str | None = None


# Triggers of the rows appended by operators (cancel_instance, retry_instance). They are
# not Python identifiers, so they can never clash with a trigger of a definition.
CANCEL_TRIGGER: Final = "fsmflow:cancel"
RETRY_TRIGGER: Final = "fsmflow:retry"
# Triggers of the runner's own waiting rows: the wait begins (after a step, or on entering
# a state without one), and an event that matched no transition was consumed.
WAIT_TRIGGER: Final = "fsmflow:wait"
SUBMIT_TRIGGER: Final = "fsmflow:submit"  # seq 0 of an instance submitted to the fleet
UNMATCHED_TRIGGER: Final = "fsmflow:unmatched-event"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker process of the fleet, as its row in the database says (``fsmflow
    workers``): where it runs, what it serves, how busy it is. No context values."""

    worker_id: str
    host: str
    pid: int
    workflows: tuple[str, ...]
    concurrency: int
    running: int
    finished: int
    started_at: datetime
    heartbeat_at: datetime
    stopping: bool = False

    def __repr__(self) -> str:
        return (
            f"WorkerInfo({self.host}:{self.pid}, id={self.worker_id[:8]!r}, "
            f"running={self.running}/{self.concurrency}, workflows={list(self.workflows)!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as ISO 8601 strings)."""
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "workflows": list(self.workflows),
            "concurrency": self.concurrency,
            "running": self.running,
            "finished": self.finished,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "stopping": self.stopping,
        }


def to_worker(row: Row) -> WorkerInfo:
    """A :class:`WorkerInfo` from a row of the workers table."""
    return WorkerInfo(
        worker_id=row["worker_id"],
        host=row["host"],
        pid=int(row["pid"]),
        workflows=tuple(row["workflows"]),
        concurrency=int(row["concurrency"]),
        running=int(row["claimed"]),  # claimed right now (the heartbeat's count lags)
        finished=int(row["finished"]),
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
        stopping=bool(row["stopping"]),
    )


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What ``prune_instances`` deleted (or, with ``dry_run``, would delete) so far.

    ``skipped`` counts instances that matched but were left alone: a runner held their lock,
    or a retry appended to them after they were listed.
    """

    cutoff: datetime
    dry_run: bool
    instances: int = 0
    rows: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What ``check_health`` (``fsmflow check``) found; healthy when ``problems`` is empty.

    ``warnings`` do not make it unhealthy (``synchronous_commit`` off is a problem only with
    ``FSMFLOW_STRICT_DURABILITY``, as at start-up).
    """

    target: str
    table: str
    server_version: str
    table_exists: bool
    schema_version_ok: bool
    missing_columns: tuple[str, ...]
    can_select: bool
    can_insert: bool
    can_delete: bool
    synchronous_commit: str
    in_recovery: bool
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    schema_version: int | None = None  # from the table's comment; None if none
    can_run_workers: bool = False  # the fleet's tables exist and the role may change them

    @property
    def healthy(self) -> bool:
        """True when nothing prevents running workflows against this table."""
        return not self.problems


def _json_or_none(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _context(row: Row) -> dict[str, Any]:
    """The row's context; :class:`HistoryCorruptError` if it is not a JSON object (fsmflow
    only ever stores objects, so the row was altered by hand)."""
    context = json.loads(row["context"])
    if not isinstance(context, dict):
        raise HistoryCorruptError(
            row["workflow_name"],
            row["instance_id"],
            f"the stored context at seq {row['seq']} is a JSON {_json_kind(context)}, not an "
            "object: the row was altered by hand; fork the instance from an intact seq",
        )
    return context


def _error(row: Row) -> dict[str, Any] | None:
    """The row's error, as an object: a hand-written plain value becomes its message."""
    error = _json_or_none(row["error"])
    if error is None or isinstance(error, dict):
        return error
    message = error if isinstance(error, str) else json.dumps(error, ensure_ascii=False)
    return {"type": "error", "message": message}


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "scalar"


def to_record(row: Row) -> TransitionRecord:
    """Build a :class:`TransitionRecord` from a full table row.

    :class:`HistoryCorruptError` if the context is not a JSON object; an ``error`` that is
    not an object is normalized to ``{"type": "error", "message": <it, as text>}``.
    """
    attempt = row["attempt_id"]
    return TransitionRecord(
        workflow_name=row["workflow_name"],
        instance_id=row["instance_id"],
        seq=row["seq"],
        trigger=row["trigger"],
        source_state=row["source_state"],
        dest_state=row["dest_state"],
        context=_context(row),
        status=row["status"],
        created_at=row["created_at"],
        fingerprint=row["fingerprint"],
        attempt_id=None if attempt is None else str(attempt),
        duration_ms=row["duration_ms"],
        error=_error(row),
        definition=_json_or_none(row["definition"]),
        forked_from_instance=row["forked_from_instance"],
        forked_from_seq=row["forked_from_seq"],
        waiting_since=_optional(row, "waiting_since"),
        wake_at=_optional(row, "wake_at"),
        event_id=_optional(row, "event_id"),
        state_version=_optional(row, "state_version"),
    )


def _optional(row: Row, column: str) -> Any:
    """A column that rows read before schema version 4 (6 for state_version) lack."""
    try:
        return row[column]
    except KeyError:
        return None


def to_event(row: Row) -> EventRecord:
    """Build an :class:`EventRecord` from a row of the events table (plus ``delivered_seq``)."""
    return EventRecord(
        workflow_name=row["workflow_name"],
        instance_id=row["instance_id"],
        event_id=row["id"],
        event=row["event"],
        key=row["key"],
        payload=json.loads(row["payload"]),
        created_at=row["created_at"],
        delivered_seq=row["delivered_seq"],
    )


def to_summary(row: Row) -> InstanceSummary:
    """Build an :class:`InstanceSummary` from a ``list_instances`` row."""
    return InstanceSummary(
        workflow_name=row["workflow_name"],
        instance_id=row["instance_id"],
        status=row["status"],
        current_state=row["current_state"] or "",
        seq=row["seq"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        forked_from_instance=row["forked_from_instance"],
    )
