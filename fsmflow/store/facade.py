""":class:`Store`: the face of the store layer, composed of parts that never call back.

The parts, each given only what it needs: :class:`~fsmflow.store.database.Database` (the
pool, named queries, the one retry loop, driver-error translation), :class:`Schema` (the
one table check, creation, upgrades), :class:`History` (appends and reads),
:class:`Owners` (owner connections, locks, the in-process registry) and
:mod:`~fsmflow.store.operations` (list, fork, cancel, retry, prune, health, reset).
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from fsmflow.model.definition import WorkflowDefinition
from fsmflow.model.records import (
    HealthReport,
    InstanceSummary,
    PruneResult,
    Status,
    TransitionRecord,
)
from fsmflow.sql import Migration
from fsmflow.store import deleting, operations
from fsmflow.store.browsing import Browsing
from fsmflow.store.config import StoreConfig
from fsmflow.store.database import Database
from fsmflow.store.deleting import PruneProgress
from fsmflow.store.events import Events
from fsmflow.store.faces import ErrorsFace, EventsFace, FleetFace, OwnersFace
from fsmflow.store.fleet import Fleet
from fsmflow.store.history import Appender, History
from fsmflow.store.listening import Listener
from fsmflow.store.operations import Parts
from fsmflow.store.ownership import Owners
from fsmflow.store.schema import Schema

T = TypeVar("T")


class Store(OwnersFace, EventsFace, FleetFace, ErrorsFace):
    """Connections and SQL for one table. Open lazily; ``async with`` closes it.

    Every method that writes is a single statement in its own transaction (prune and
    reset: one transaction per batch).
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._db = db = Database(config)
        self._schema = Schema(db)
        db.ready = self._schema.check
        self._history = History(db)
        self._owners = Owners(db, self._history.record_at)
        self._events = Events(db, self._history)
        self._listener = Listener(db)
        self._fleet = Fleet(db, self._history)
        self._parts = Parts(
            db, self._history, self._owners, self._schema, self._events, self._fleet
        )
        self._browsing = Browsing(db)

    def __repr__(self) -> str:
        state = "closed" if self._db.closed else "open" if self._db.is_open else "not opened"
        return f"Store(target={self.target!r}, table={self.qualified_table!r}, {state})"

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def target(self) -> str:
        """Where the database is, safe to show (no password)."""
        return self._db.target

    @property
    def schema(self) -> str | None:
        """The configured schema of the table, if any."""
        return self._db.schema

    @property
    def table(self) -> str:
        """The table's name without its schema."""
        return self._db.table

    @property
    def qualified_table(self) -> str:
        """The table as configured (``[schema.]table``)."""
        return self._db.qualified_table

    @property
    def resolved_table(self) -> str:
        """The table as the server resolved it, schema included (known once opened)."""
        return self._db.resolved_table

    @property
    def browsing(self) -> Browsing:
        """The dashboard's read queries (``fsmflow ui``): names, counts, id search."""
        return self._browsing

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The asyncpg pool while the store is open, else None (the seed's ``DBConfig.pool``)."""
        return self._db.current_pool

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self, *, check_schema: bool = True) -> Store:
        """Connect (retrying transient failures) and verify the table; idempotent."""
        await self._db.pool(checked=check_schema)
        return self

    async def close(self) -> None:
        """Close every connection (releasing any held locks). The store cannot be reopened."""
        self._db.closed = True
        await self._listener.close()
        await self._owners.close()
        await self._db.close()

    async def connect_kwargs(self) -> dict[str, Any]:
        """asyncpg connect arguments, starting the embedded server if none is configured."""
        return await self._db.connect_kwargs()

    async def connect(self) -> asyncpg.Connection:
        """A dedicated (unpooled) connection with the same settings."""
        return await self._db.connect()

    # -- administration ----------------------------------------------------------------

    async def init_db(self) -> None:
        """Create the table and its indexes if missing, or upgrade an older fsmflow table in
        place (each migration after its version). Idempotent, safe to run concurrently.
        :class:`~fsmflow.errors.SchemaMismatchError` for a foreign or newer table."""
        await self._schema.init_db()

    async def migrate(self, *, dry_run: bool = False) -> list[Migration]:
        """Create the table or apply its pending migrations, one migrator at a time; what
        was applied (``dry_run``: what would be, nothing changed). Needs the migrator role."""
        return await self._schema.migrate(dry_run=dry_run)

    async def reset_db(self, *, force: bool = False) -> None:
        """Delete every row of the history and events tables, of all workflows. Irreversible.

        Refused with :class:`~fsmflow.errors.ResetRefusedError` while any session holds an
        instance's lock (a live runner would fail on its next append), unless ``force``;
        one transaction, the tables locked first."""
        await self._owners.settle()  # this process's runs that just ended: locks given back
        await deleting.reset_table(self._parts, force=force)

    async def check_health(self, *, workers: bool = False) -> HealthReport:
        """What running workflows needs: the table, its schema version, SELECT and INSERT
        on it, a writable server, durable commits (``fsmflow check``); with ``workers``,
        what a worker needs too (``fsmflow check --workers``)."""
        return await operations.check_health(self._parts, workers=workers)

    # -- writing and reading history ---------------------------------------------------

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
        """Record seq 0 of a new instance; :class:`~fsmflow.errors.ConcurrentTransitionError`
        if it exists. ``trace_parent``: the traceparent of the span that started it."""
        await self._history.start(
            workflow,
            instance_id,
            state,
            context_json,
            fingerprint=fingerprint,
            attempt_id=attempt_id,
            definition_json=definition_json,
            forked_from=forked_from,
            state_version=state_version,
            trace_parent=trace_parent,
        )

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
        """Append ``seq`` if the instance's last row is ``seq - 1`` (one statement); with
        ``owner``, on the owning session, an unknown outcome settled by reading it back.
        (Not a coroutine itself: the append's own, one frame fewer on every transition.)"""
        return self._history.append(
            workflow,
            instance_id,
            seq,
            trigger=trigger,
            source=source,
            dest=dest,
            context_json=context_json,
            status=status,
            fingerprint=fingerprint,
            attempt_id=attempt_id,
            duration_ms=duration_ms,
            error_json=error_json,
            owner=owner,
            waiting_since=waiting_since,
            wait_seconds=wait_seconds,
            event_id=event_id,
            state_version=state_version,
        )

    async def last_record(self, workflow: str, instance_id: str) -> TransitionRecord | None:
        """The latest row of an instance, or None; :class:`~fsmflow.errors.HistoryCorruptError`
        if a seq before it is missing."""
        return await self._history.last_record(workflow, instance_id)

    async def record_at(self, workflow: str, instance_id: str, seq: int) -> TransitionRecord | None:
        """The row at ``seq`` of an instance, or None."""
        return await self._history.record_at(workflow, instance_id, seq)

    async def trace_parent(self, workflow: str, instance_id: str) -> str | None:
        """The W3C traceparent stored on the instance's seq-0 row (None: none)."""
        return await self._history.trace_parent(workflow, instance_id)

    async def history(self, workflow: str, instance_id: str) -> list[TransitionRecord]:
        """Every row of an instance, in seq order (empty if it has none)."""
        return await self._history.history(workflow, instance_id)

    async def latest_unfinished(self, workflow: str) -> str | None:
        """The id of the most recently started instance of ``workflow`` that has not ended."""
        return await self._history.latest_unfinished(workflow)

    # -- operations --------------------------------------------------------------------

    async def list_instances(
        self,
        workflow: str | None = None,
        *,
        status: Status | Sequence[Status] | None = None,
        limit: int = 100,
        after: InstanceSummary | None = None,
    ) -> list[InstanceSummary]:
        """Instances newest first (by start time), of one workflow or of all; ``status``
        filters by the last row's status; paginate with ``after=page[-1]``."""
        return await operations.list_instances(
            self._parts, workflow, status=status, limit=limit, after=after
        )

    async def fork_instance(
        self,
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
        """Start a new instance from row ``seq`` (default: the last) of ``instance_id``,
        optionally in a chosen ``state`` of a given ``definition``; the source is only
        read. Returns the new instance's seq-0 row."""
        return await operations.fork_instance(
            self._parts,
            workflow,
            instance_id,
            seq=seq,
            new_instance_id=new_instance_id,
            overrides=overrides,
            state=state,
            definition=definition,
            allow_definition_change=allow_definition_change,
        )

    async def cancel_instance(
        self, workflow: str, instance_id: str, *, reason: str | None = None
    ) -> TransitionRecord:
        """Append a ``cancelled`` row (refused while a runner owns the instance)."""
        return await operations.cancel_instance(self._parts, workflow, instance_id, reason=reason)

    async def retry_instance(self, workflow: str, instance_id: str) -> TransitionRecord:
        """Append a ``running`` row after a ``failed`` one: the next run resumes there."""
        return await operations.retry_instance(self._parts, workflow, instance_id)

    async def prune_instances(
        self,
        older_than: timedelta,
        *,
        workflow: str | None = None,
        dry_run: bool = False,
        batch_size: int = 500,
        on_batch: PruneProgress | None = None,
    ) -> PruneResult:
        """Delete every row of ended instances last updated before ``older_than`` ago (by
        the server's clock); instances a runner holds are skipped. Irreversible."""
        await self._owners.settle()
        return await deleting.prune_instances(
            self._parts,
            older_than,
            workflow=workflow,
            dry_run=dry_run,
            batch_size=batch_size,
            on_batch=on_batch,
        )
