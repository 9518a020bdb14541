"""History: appending an instance's rows and reading them back as typed records.

Every write is one statement in its own transaction: seq 0 starts an instance; each later
row is appended only if the instance's last row is the one before it (the conditional
append is the fence). Rows are never updated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from fsmflow.errors import ConcurrentTransitionError, HistoryCorruptError
from fsmflow.model.records import InstanceSummary, TransitionRecord, to_record, to_summary
from fsmflow.store import dberrors
from fsmflow.store.database import INSERTED_ONE, Database


class Appender(Protocol):
    """An owner of the instance that writes its rows on its own session."""

    async def append(self, seq: int, attempt_id: str, args: tuple[Any, ...]) -> None:
        """Append row ``seq`` (the ``append`` query's arguments) exactly once."""


def gap_error(workflow: str, instance_id: str, detail: str) -> HistoryCorruptError:
    """The error for rows deleted by hand from an instance's history."""
    return HistoryCorruptError(
        workflow,
        instance_id,
        f"stored history has a gap: {detail} (rows were deleted by hand); "
        "`fsmflow history` names it — fork the instance from an intact seq",
    )


def checked_last(row: asyncpg.Record, workflow: str, instance_id: str) -> TransitionRecord:
    """An instance's last row with its ``prev_seq`` and ``row_count`` (the last_record and
    open queries): :class:`HistoryCorruptError` if a seq before it is missing."""
    seq = row["seq"]
    if row["prev_seq"] != (seq - 1 if seq > 0 else None):
        missing = (-1 if row["prev_seq"] is None else row["prev_seq"]) + 1
        raise gap_error(workflow, instance_id, f"seq {missing} is missing before seq {seq}")
    if row["row_count"] != seq + 1:
        detail = f"{row['row_count']} rows up to seq {seq}: a seq before it is missing"
        raise gap_error(workflow, instance_id, detail)
    return to_record(row)


def same_attempt(record: TransitionRecord | None, attempt_id: str) -> bool:
    """True if ``record`` is the row written by ``attempt_id`` (stored as a uuid)."""
    return record is not None and (record.attempt_id or "").replace("-", "") == attempt_id


@dataclass(frozen=True, slots=True)
class StartRow:
    """The seq-0 row of a new instance, for the ``open`` query to insert if it has none."""

    state: str
    context_json: str
    fingerprint: str | None
    attempt_id: str
    definition_json: str | None
    state_version: int | None = None
    trace_parent: str | None = None  # the W3C traceparent of the span that started it

    def traced(self, trace_parent: str | None) -> StartRow:
        """This row with ``trace_parent``."""
        return dataclasses.replace(self, trace_parent=trace_parent)


@dataclass(frozen=True, slots=True)
class Opened:
    """What the ``open`` query found: the instance's last row as of its statement (None:
    none), and whether it inserted the given seq 0 (``started``)."""

    record: TransitionRecord | None
    started: bool


class History:
    """The rows of every instance of one table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- writing -----------------------------------------------------------------------

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
        forked_from: tuple[str, int] | None = None,
        state_version: int | None = None,
        trace_parent: str | None = None,
    ) -> None:
        """Record seq 0 of a new instance; :class:`ConcurrentTransitionError` if it exists.
        ``state_version``: the version of a typed workflow's state (None: untyped);
        ``trace_parent``: the W3C traceparent of the span that started it (None: none)."""
        pool = await self.db.pool()
        query = self.db.queries["start"]
        fork_instance, fork_seq = forked_from or (None, None)
        args = (
            workflow, instance_id, state, context_json, fingerprint, attempt_id,
            definition_json, fork_instance, fork_seq, state_version, trace_parent,
        )  # fmt: skip
        try:
            await pool.execute(query, *args)
            return
        except asyncpg.UniqueViolationError:
            pass
        except Exception as exc:
            if not dberrors.is_retriable(exc):
                raise self.db.translate(exc) from None
            # Unknown outcome (lost connection): the read-back below decides.
        first = await self.record_at(workflow, instance_id, 0)
        if first is None:
            await self.db.retry("start", lambda: pool.execute(query, *args))
        elif not same_attempt(first, attempt_id):
            raise ConcurrentTransitionError(workflow, instance_id, 0)

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
        owner: Appender | None = None,
        waiting_since: datetime | None = None,
        wait_seconds: float | None = None,
        event_id: int | None = None,
        state_version: int | None = None,
    ) -> Coroutine[Any, Any, None]:
        """Append ``seq`` if the instance's last row is ``seq - 1`` — one statement, one
        round trip. :class:`ConcurrentTransitionError` if another writer got there first.

        With ``owner`` the row is written on the owning session, and a lost connection is
        resolved by reading the row back (by ``attempt_id``), never by writing twice.
        A ``waiting`` row's wait began at ``waiting_since`` (None: now, by the server's
        clock) and its first deadline is ``wait_seconds`` later (None: none); ``event_id``
        names the event the row delivers; ``state_version`` the version of a typed
        workflow's state (None: untyped).
        """
        args = (
            workflow, instance_id, seq, trigger, source, dest, context_json, status,
            fingerprint, attempt_id, duration_ms, error_json, waiting_since, wait_seconds,
            event_id, state_version,
        )  # fmt: skip
        if owner is not None:
            return owner.append(seq, attempt_id, args)
        return self._append_pooled(args)

    async def _append_pooled(self, args: tuple[Any, ...]) -> None:
        workflow, instance_id, seq = args[0], args[1], args[2]
        query = self.db.queries["append"]
        pool = await self.db.pool()
        try:
            result = await pool.execute(query, *args)
        except asyncpg.UniqueViolationError:
            raise ConcurrentTransitionError(workflow, instance_id, seq) from None
        except Exception as exc:
            raise self.db.translate(exc) from None
        if result != INSERTED_ONE:
            raise ConcurrentTransitionError(workflow, instance_id, seq)

    def open_query(
        self, workflow: str, instance_id: str, start: StartRow | None
    ) -> tuple[str, tuple[Any, ...]]:
        """The ``open`` query and its arguments after the lock key (see
        :meth:`~fsmflow.store.ownership.Ownership.try_lock`)."""
        args: tuple[Any, ...] = (workflow, instance_id) + (
            (None, "{}", None, None, None, False, None, None) if start is None else (
                start.state, start.context_json, start.fingerprint, start.attempt_id,
                start.definition_json, True, start.state_version, start.trace_parent,
            )
        )  # fmt: skip
        return self.db.queries["open"], args

    def opened(self, row: asyncpg.Record, workflow: str, instance_id: str) -> Opened:
        """What the ``open`` query's ``row`` says; :class:`HistoryCorruptError` for a gap."""
        if row["seq"] is None:
            return Opened(None, bool(row["started"]))
        return Opened(checked_last(row, workflow, instance_id), False)

    # -- reading -----------------------------------------------------------------------

    async def last_record(self, workflow: str, instance_id: str) -> TransitionRecord | None:
        """The latest row of an instance (index lookups), or None.

        :class:`HistoryCorruptError` if a seq before it is missing.
        """
        row = await self.db.fetchrow("last_record", workflow, instance_id)
        return None if row is None else checked_last(row, workflow, instance_id)

    async def record_at(self, workflow: str, instance_id: str, seq: int) -> TransitionRecord | None:
        """The row at ``seq`` of an instance, or None."""
        row = await self.db.fetchrow("record_at", workflow, instance_id, seq)
        return None if row is None else to_record(row)

    async def trace_parent(self, workflow: str, instance_id: str) -> str | None:
        """The traceparent the instance's seq-0 row stored (None: none, or no such row)."""
        row = await self.db.fetchrow("trace_parent", workflow, instance_id)
        return None if row is None else row["trace_parent"]

    async def history(self, workflow: str, instance_id: str) -> list[TransitionRecord]:
        """Every row of an instance, in seq order (empty if it has none).

        :class:`HistoryCorruptError` names the first missing seq if there is a gap.
        """
        rows = await self.db.fetch("history", workflow, instance_id)
        records = [to_record(r) for r in rows]
        for expected, record in enumerate(records):
            if record.seq != expected:
                raise gap_error(workflow, instance_id, f"seq {expected} is missing")
        return records

    async def latest_unfinished(self, workflow: str) -> str | None:
        """The id of the most recently started instance of ``workflow`` that has not ended."""
        row = await self.db.fetchrow("latest_unfinished", workflow)
        return None if row is None else str(row["instance_id"])

    async def instance_page(
        self,
        workflow: str | None,
        statuses: Sequence[str] | None,
        updated_before: datetime | None,
        limit: int,
        after: InstanceSummary | None,
    ) -> list[InstanceSummary]:
        """One page of the ``list_instances`` query (keyset: ``after`` the given instance)."""
        cursor = (None, None, None) if after is None else (
            after.started_at, after.workflow_name, after.instance_id
        )  # fmt: skip
        wanted = None if statuses is None else list(statuses)
        rows = await self.db.fetch(
            "list_instances", workflow, wanted, updated_before, limit, *cursor
        )
        return [to_summary(row) for row in rows]

    async def server_now(self) -> datetime:
        """The database server's clock."""
        row = await self.db.fetchrow("server_time", checked=False)
        assert row is not None
        now: datetime = row["now"]
        return now
