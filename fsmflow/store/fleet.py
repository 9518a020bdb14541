"""The worker fleet's tables: submitting instances, the queue workers claim from, and the
live workers.

Part of the store layer (it knows asyncpg). The queue and the workers table hold
coordination state only: a claim is a hint that keeps workers from all trying the same
instance, while the instance's advisory lock (taken by its runner) stays the fence. The
history is the truth: a queue row whose instance ended is simply removed when a worker
finds it so. :class:`Fleet` runs on the pool; :class:`WorkerSession` is one worker's own
connection, whose life is the worker's life as the other workers see it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from fsmflow import sql
from fsmflow.errors import (
    ConcurrentTransitionError,
    InstanceExistsError,
    PermissionDeniedError,
    SchemaMissingError,
)
from fsmflow.model.definition import WorkflowDefinition, check_identifier
from fsmflow.model.records import WorkerInfo, to_worker
from fsmflow.store import dberrors
from fsmflow.store.database import Database
from fsmflow.store.events import wake_payload
from fsmflow.store.history import History, same_attempt
from fsmflow.store.lanes import LANE_SETTINGS

logger = logging.getLogger("fsmflow.worker")

# plan_cache_mode: the claim is a prepared statement on this one long-lived session. Left
# to "auto", the server caches a generic plan after five runs, planned with the statistics
# of that moment: a worker that started on a near-empty queue keeps a plan that reads the
# whole queue (a seq scan, and a hash join for the UPDATE) on every claim once a burst of
# submissions arrives, until an ANALYZE of the queue invalidates it. Custom plans see the
# queue's current size and use the ready index; planning a claim costs ~0.1 ms.
_SESSION_SETTINGS: Final = {
    **LANE_SETTINGS,
    "application_name": "fsmflow-worker",
    "plan_cache_mode": "force_custom_plan",
}
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Claim:
    """An instance a worker claimed: ``wakes`` as it was at the claim (a later event,
    cancel or retry changes it), ``failures`` in a row before this claim."""

    workflow_name: str
    instance_id: str
    wakes: int
    failures: int
    ready_at: datetime

    @property
    def key(self) -> Key:
        """``(workflow_name, instance_id)``."""
        return (self.workflow_name, self.instance_id)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a worker is: its id, where it runs and what it serves."""

    worker_id: str
    host: str
    pid: int
    workflows: tuple[str, ...]
    concurrency: int


class Fleet:
    """The fleet's statements that run on the pool (submitting, listing, bookkeeping)."""

    def __init__(self, db: Database, history: History) -> None:
        self.db = db
        self.history = history
        self.queue_table = _qualified(db, sql.QUEUE_SUFFIX)
        self.workers_table = _qualified(db, sql.WORKERS_SUFFIX)

    def __repr__(self) -> str:
        return f"Fleet({self.queue_table!r}, {self.workers_table!r})"

    async def submit(
        self, definition: WorkflowDefinition, definition_json: str, context_json: str,
        instance_id: str | None, trace_parent: str | None = None,
    ) -> str:  # fmt: skip
        """Record seq 0 of a new instance and queue it, in one statement; its id.
        ``trace_parent``: the W3C traceparent of the span that submitted it (None: none)."""
        name = definition.name
        pinned = instance_id is not None
        instance_id = uuid.uuid4().hex if instance_id is None else instance_id
        check_identifier(instance_id, "instance_id")
        attempt = uuid.uuid4().hex
        args = (
            name, instance_id, definition.initial_state, context_json, definition.fingerprint,
            attempt, definition_json, self.db.wake_channel, wake_payload(name, instance_id),
            None if definition.state_spec is None else definition.state_spec.version,
            trace_parent,
        )  # fmt: skip
        pool = await self.db.pool()
        query = self.db.queries["submit"]
        try:
            await pool.fetchrow(query, *args)
            return instance_id
        except asyncpg.UniqueViolationError:
            pass
        except Exception as exc:
            if not dberrors.is_retriable(exc):
                raise self.db.translate(exc) from None
            # Unknown outcome (lost connection): the read-back below decides.
        first = await self.history.record_at(name, instance_id, 0)
        if first is None:
            await self.db.retry("submit", lambda: pool.fetchrow(query, *args))
        elif not same_attempt(first, attempt):
            if not pinned:  # a random id taken: cannot happen short of a broken generator
                raise ConcurrentTransitionError(name, instance_id, 0)
            raise InstanceExistsError(
                name,
                instance_id,
                "an instance with this id exists already: nothing was written; submit "
                "with another id (or none: a new one is made), or run or fork the existing one",
            )
        return instance_id

    async def requeue(self, workflow: str, instance_id: str) -> bool:
        """Put a submitted instance back in the queue (after a retry); False if it was not
        submitted (a program runs it)."""
        row = await self.db.fetchrow("requeue", workflow, instance_id)
        if row is None:
            return False
        await self.notify([(workflow, instance_id)])
        return True

    async def dequeue(self, workflow: str, instance_id: str) -> None:
        """The instance ended: it leaves the queue (if it was there)."""
        await self.db.fetchrow("dequeue", workflow, instance_id)

    async def wake(self, workflow: str, instance_id: str) -> None:
        """Make a queued instance runnable now (it was cancelled while waiting)."""
        await self.db.fetchrow("wake", workflow, instance_id)

    async def notify(self, keys: Collection[Key]) -> None:
        """Wake the workers (and waiting runners) of these instances once this returns."""
        if keys:
            payloads = [wake_payload(w, i) for w, i in keys]
            await self.db.fetchrow("notify_many", self.db.wake_channel, payloads)

    def _denied(self, doing: str) -> PermissionDeniedError:
        """The error for a role that may not read the fleet's tables (the driver's
        translation names the history's grants only)."""
        return PermissionDeniedError(
            f"the database role may not read the worker fleet's tables {self.queue_table} "
            f"and {self.workers_table} at {self.db.target}: GRANT SELECT ON them TO <role> "
            f"to {doing} (a worker itself needs SELECT, INSERT, UPDATE, DELETE on them)"
        )

    async def list_workers(self) -> list[WorkerInfo]:
        """The live workers, oldest first."""
        try:
            rows = await self.db.fetch("list_workers", self.db.config.worker_stale)
        except PermissionDeniedError:
            raise self._denied("list the workers") from None
        return [to_worker(row) for row in rows]

    async def instance_workers(self, keys: Iterable[Key]) -> dict[Key, WorkerInfo]:
        """The live worker that has claimed each of these instances, where one has."""
        wanted = list(keys)
        if not wanted:
            return {}
        try:
            rows = await self.db.fetch(
                "instance_workers",
                [k[0] for k in wanted],
                [k[1] for k in wanted],
                self.db.config.worker_stale,
            )
        except PermissionDeniedError:
            raise self._denied("see which worker runs what") from None
        return {(row["workflow_name"], row["instance_id"]): to_worker(row) for row in rows}

    async def check_privileges(self, *, checked: bool = True) -> None:
        """:class:`PermissionDeniedError` (or :class:`SchemaMissingError`) unless the role
        may run workers: the fleet's tables exist and it may change them. ``checked=False``
        (the health check) asks without the table check a store does at its first query."""
        row = await self.db.fetchrow(
            "fleet_privileges", self.queue_table, self.workers_table, checked=checked
        )
        assert row is not None
        if not row["exist"]:
            raise SchemaMissingError(
                f"the worker fleet's tables {self.queue_table} and {self.workers_table} do "
                f"not exist at {self.db.target}: run `fsmflow migrate` (schema version "
                f"{sql.SCHEMA_VERSION}) with the migrator role"
            )
        if not row["can_coordinate"]:
            raise PermissionDeniedError(
                f"the database role may not run workers on {self.db.target}: it needs "
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON {self.queue_table}, "
                f"{self.workers_table} TO <role> (the history itself stays SELECT, INSERT)"
            )

    def session(self, identity: Identity, running: Callable[[], Collection[Key]]) -> WorkerSession:
        """A worker's own connection; ``running`` tells which instances it runs now."""
        return WorkerSession(self.db, identity, running)


def _qualified(db: Database, suffix: str) -> str:
    name = sql.table_of(db.table, suffix)
    return f"{db.schema}.{name}" if db.schema else name


class WorkerSession:
    """One worker's connection: its registration (the session other workers watch),
    heartbeats, claims and their release. A lost connection is opened again and the
    worker registered again, claiming back what it still runs."""

    def __init__(
        self, db: Database, identity: Identity, running: Callable[[], Collection[Key]]
    ) -> None:
        self.db = db
        self.identity = identity
        self._running = running
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the session
        self.registrations = 0

    def __repr__(self) -> str:
        state = "open" if self._conn is not None and not self._conn.is_closed() else "closed"
        return f"WorkerSession({self.identity.worker_id[:8]!r}, {state})"

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        kwargs = dict(await self.db.connect_kwargs())
        kwargs["server_settings"] = {**kwargs.get("server_settings", {}), **_SESSION_SETTINGS}
        conn: asyncpg.Connection = await asyncpg.connect(**kwargs)
        try:
            await self._register(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    async def _register(self, conn: asyncpg.Connection) -> None:
        me = self.identity
        await conn.fetchrow(
            self.db.queries["register_worker"],
            me.worker_id, me.host, me.pid, list(me.workflows), me.concurrency,
        )  # fmt: skip
        self.registrations += 1
        if self.registrations > 1:
            await self._reclaim(conn)

    async def _reclaim(self, conn: asyncpg.Connection) -> None:
        running = list(self._running())
        if running:
            await conn.execute(
                self.db.queries["reclaim"],
                self.identity.worker_id,
                [k[0] for k in running],
                [k[1] for k in running],
            )
        logger.warning(
            "worker %s registered again (its session had been lost); claimed back %d "
            "running instance(s) nobody took meanwhile",
            self.identity.worker_id[:8],
            len(running),
        )

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        query = self.db.queries[name]

        async def once() -> list[asyncpg.Record]:
            async with self._lock:
                conn = await self._connection()
                try:
                    rows: list[asyncpg.Record] = await conn.fetch(query, *args)
                except Exception as exc:
                    if dberrors.is_retriable(exc):
                        conn.terminate()  # the next attempt opens a new session
                    raise
                return rows

        return await self.db.retry(name, once)

    async def open(self) -> None:
        """Connect and register the worker."""
        await self.db.pool()  # the table check first (and the embedded server started)

        async def connect() -> None:
            async with self._lock:
                await self._connection()

        await self.db.retry("register worker", connect)

    async def claim(self, limit: int) -> list[Claim]:
        """Claim up to ``limit`` ready instances, oldest ready first."""
        me = self.identity
        rows = await self._fetch("claim", list(me.workflows), limit, me.worker_id)
        claims = [
            Claim(r["workflow_name"], r["instance_id"], r["wakes"], r["failures"], r["ready_at"])
            for r in rows
        ]
        return sorted(claims, key=lambda c: (c.ready_at, c.key))

    async def next_ready(self) -> float | None:
        """In how many seconds the next unclaimed instance becomes ready (None: none is
        queued but instances waiting for events)."""
        rows = await self._fetch("next_ready", list(self.identity.workflows))
        seconds = rows[0]["seconds"] if rows else None
        return None if seconds is None else float(seconds)

    async def release(self, key: Key, *, delay: float = 0.0, failed: bool = False) -> int:
        """Give a claim back, runnable after ``delay`` seconds; the failures in a row."""
        rows = await self._fetch("release", *key, self.identity.worker_id, delay, failed)
        if rows and delay <= 0:  # runnable now: wake the workers (this one too)
            await self._fetch("notify_many", self.db.wake_channel, [wake_payload(*key)])
        return int(rows[0]["failures"]) if rows else 0

    async def finish(self, key: Key) -> None:
        """The instance ended: it leaves the queue."""
        await self._fetch("dequeue", *key)

    async def suspend(self, claim: Claim, wake_at: datetime | None) -> bool:
        """Give back a claim whose instance now waits, ready at ``wake_at`` (None: on an
        event); False if an event, cancel or retry came since the claim (then it is
        released as it is, runnable now)."""
        args = (*claim.key, self.identity.worker_id, wake_at, claim.wakes)
        if await self._fetch("suspend", *args):
            return True
        await self.release(claim.key)
        return False

    async def heartbeat(self, running: int, finished: int, *, stopping: bool) -> None:
        """Tell the others this worker lives; registers again if it was taken for dead."""
        rows = await self._fetch(
            "heartbeat_worker", self.identity.worker_id, running, finished, stopping
        )
        if not rows:

            async def register() -> None:
                async with self._lock:
                    await self._register(await self._connection())

            await self.db.retry("register worker", register)

    async def reap(self) -> tuple[list[str], int]:
        """Take dead workers off the list and give their claims back: (``host:pid`` of
        each dead worker, how many claims were given back)."""
        rows = await self._fetch("reap_workers", self.db.config.worker_stale)
        return list(rows[0]["dead"]), int(rows[0]["released"])

    async def close(self) -> list[Key]:
        """Give back every claim still held and leave the list; the instances given back."""
        try:
            rows = await self._fetch("release_worker", self.identity.worker_id)
        finally:
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=5)
        return [(r["workflow_name"], r["instance_id"]) for r in rows]
