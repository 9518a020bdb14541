"""Counting what ``fsmflow bench`` runs cost on the server: statements and transactions.

Timed runs carry no instrumentation. Separate *accounting passes*
(:mod:`fsmflow.bench.accounting`, :mod:`fsmflow.bench.start`) open fresh connections whose
class counts every statement the client sends, close them (so the server flushes their
statistics) and read the server's counters before and after: ``pg_stat_statements``
(when the extension is loaded: statements), ``pg_stat_database`` (``xact_commit``:
committed transactions), the next transaction id (transactions that wrote, server-wide)
and the WAL flushes the counted sessions waited for: on PostgreSQL 18+ each counted
connection reads its own backend's ``pg_stat_get_backend_io`` WAL fsyncs as it closes
(exact, whatever else runs on the server; those two probe statements are left out of
every count); on 14-17 ``pg_stat_wal.wal_sync``, which counts every process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import asyncpg
from asyncpg.prepared_stmt import PreparedStatement

from fsmflow.settings import DBConfig

# -- counting ------------------------------------------------------------------------------

T = TypeVar("T")
_FORCE_FLUSH: Final = "SELECT pg_stat_force_next_flush()"
_OWN_WAL_FSYNCS: Final = (
    "SELECT coalesce(sum(fsyncs), 0)::bigint FROM pg_stat_get_backend_io(pg_backend_pid()) "
    "WHERE object = 'wal'"
)
_SPACES: Final = re.compile(r"\s+")
_TABLE_NAME: Final = re.compile(r'"[a-z0-9_]+"(\."[a-z0-9_]+")?')


def statement_label(query: str) -> str:
    """A short, table-independent label for a statement (for the breakdown)."""
    text = _TABLE_NAME.sub("<table>", _SPACES.sub(" ", query).strip())
    return text if len(text) <= 72 else text[:69] + "..."


class StatementLog:
    """Every statement sent on connections of :meth:`connection_class`, by label.

    Counted when the client *sends* it (not when it answers): ``sent`` and ``in_flight``
    are exact at any moment, so a window (an instance's start) can be cut at a listener
    call. Covers ``execute``/``fetch*`` (with or without arguments), ``executemany`` and
    statements from ``Connection.prepare()``; not cursors or COPY, which fsmflow does not
    use on its hot paths.
    """

    def __init__(self, *, count: bool = True) -> None:
        self.counts: Counter[str] = Counter()
        self.pids: set[int] = set()
        self.count = count  # False: only note the backend pids (no per-query overhead)
        self.sent = 0
        self.answered = 0
        self.session_flushes = False  # read each session's WAL fsyncs as it closes (PG 18+)
        self.wal_flushes = 0
        self.probes = 0  # statements of those reads (uncounted, but the server sees them)

    @property
    def in_flight(self) -> int:
        """Statements sent and not answered yet."""
        return self.sent - self.answered

    def record(self, query: str) -> None:
        """Note one statement being sent."""
        self.sent += 1
        self.counts[statement_label(query)] += 1

    async def quiet(self, settle: float = 0.02) -> None:
        """Wait until nothing is in flight and nothing new was sent for ``settle`` s (so a
        release sent after ``run_workflow`` returned is not taken for the next start)."""
        while True:
            mark = self.sent
            await asyncio.sleep(settle)
            if self.in_flight == 0 and self.sent == mark:
                return

    def connection_class(self) -> type[asyncpg.Connection]:
        """An asyncpg connection class that reports to this log."""
        log = self

        async def sent(query: str, call: Awaitable[T]) -> T:
            log.record(query)
            try:
                return await call
            finally:
                log.answered += 1

        class CountingStatement(PreparedStatement):
            __slots__ = ()

            # PreparedStatement's one private door to the protocol (name-mangled).
            async def _PreparedStatement__do_execute(self, executor: Any) -> Any:
                parent = super()._PreparedStatement__do_execute  # type: ignore[misc]
                return await sent(self.get_query(), parent(executor))

        class CountingConnection(asyncpg.Connection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                log.pids.add(self.get_server_pid())
                self.probing = False

            async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
                if log.session_flushes and not self.is_closed():
                    with contextlib.suppress(Exception):  # a broken session just closes
                        # Read first, then add: pools close their connections together,
                        # and ``+= await`` would add to a total read before the await.
                        flushes = await self._own_wal_flushes()
                        log.wal_flushes += flushes
                await super().close(timeout=timeout)

            async def _own_wal_flushes(self) -> int:
                self.probing = True
                log.probes += 2
                # The flush happens before the server answers: the next read sees it.
                await asyncpg.Connection.execute(self, _FORCE_FLUSH)
                return int(await asyncpg.Connection.fetchval(self, _OWN_WAL_FSYNCS))

            # asyncpg's own signature (its timeout argument included), overridden.
            async def execute(
                self,
                query: str,
                *args: Any,
                timeout: float | None = None,  # noqa: ASYNC109
            ) -> str:
                if args or not log.count or self.probing:  # with arguments: via _execute
                    return await super().execute(query, *args, timeout=timeout)
                return await sent(query, super().execute(query, timeout=timeout))

            async def _execute(self, query: str, args: Any, *rest: Any, **kwargs: Any) -> Any:
                call = super()._execute(query, args, *rest, **kwargs)  # type: ignore[misc]
                return await (sent(query, call) if log.count and not self.probing else call)

            async def _executemany(self, query: str, args: Any, *rest: Any, **kwargs: Any) -> Any:
                call = super()._executemany(query, args, *rest, **kwargs)  # type: ignore[misc]
                return await (sent(query, call) if log.count else call)

            async def _prepare(self, query: str, **kwargs: Any) -> Any:
                statement = await super()._prepare(query, **kwargs)  # type: ignore[misc]
                if log.count:
                    statement.__class__ = CountingStatement
                return statement

        return CountingConnection


class _CountingConfig(DBConfig):
    """Settings whose connections count their statements into a :class:`StatementLog`."""

    _connection_class: Any = None

    def connect_kwargs(self) -> dict[str, Any]:
        return {**super().connect_kwargs(), "connection_class": self._connection_class}


def counting_config(config: DBConfig, log: StatementLog) -> DBConfig:
    """A copy of ``config`` whose connections report every statement to ``log``."""
    counted = _CountingConfig(**config.model_dump())
    counted._connection_class = log.connection_class()
    return counted


@dataclass(frozen=True)
class Snapshot:
    """Server counters at one moment."""

    xact_commit: int
    next_xid: int
    monitor_statements: int
    calls: dict[tuple[Any, ...], int] | None  # pg_stat_statements, None when unavailable
    wal_flushes: int | None  # see Monitor.flush_source; None when not measurable


class Monitor:
    """The bench's own connection reading server counters; it counts its own statements."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements = 0
        self.has_statements_view = False
        self.can_force_flush = False
        self.flush_source: str | None = None  # where WAL flushes are read, if anywhere
        self.flush_note = ""  # why they are not measurable, or what the source counts
        self._own: set[tuple[Any, ...]] = set()

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        self.statements += 1
        return await self.conn.fetch(query, *args)

    async def probe(self) -> dict[str, Any]:
        """Server facts; detects pg_stat_statements and ``pg_stat_force_next_flush``."""
        rows = await self._fetch(
            "SELECT current_setting('server_version') AS version, "
            "current_setting('synchronous_commit') AS synchronous_commit, "
            "current_setting('fsync') AS fsync, "
            "current_setting('server_version_num')::int AS version_num, "
            "current_setting('wal_sync_method') AS wal_sync_method, "
            "EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements') AS pss"
        )
        facts = dict(rows[0])
        version = int(facts.pop("version_num"))
        self.can_force_flush = version >= 150000
        self._choose_flush_source(version, facts["fsync"], facts["wal_sync_method"])
        if facts.pop("pss"):
            try:
                await self._fetch("SELECT count(*) FROM pg_stat_statements")
                self.has_statements_view = True
            except asyncpg.PostgresError:  # installed but not in shared_preload_libraries
                self.has_statements_view = False
        # Twice now: asyncpg's one-time type introspection happens outside every measured
        # window, and the pg_stat_statements entries that moved in between are this
        # monitor's own (matched by query id, whatever text the view shows for them).
        first = await self.snapshot()
        await self.wait_gone({0})
        second = await self.snapshot()
        if first.calls is not None and second.calls is not None:
            self._own = {k for k, n in second.calls.items() if n != first.calls.get(k, 0)}
        return facts

    def _choose_flush_source(self, version: int, fsync: str, method: str) -> None:
        if fsync != "on":
            self.flush_note = "not measurable: fsync is off (no commit waits for a flush)"
        elif method.startswith("open_"):
            self.flush_note = f"not measurable: wal_sync_method={method} syncs inside writes"
        elif version >= 180000:
            self.flush_source = "pg_stat_get_backend_io"
            self.flush_note = "WAL fsyncs of the counted sessions, pg_stat_get_backend_io"
        elif version >= 140000:
            self.flush_source = "pg_stat_wal"
            self.flush_note = "pg_stat_wal.wal_sync: every process's WAL syncs (walwriter too)"
        else:
            self.flush_note = "not measurable: PostgreSQL before 14 does not count WAL syncs"

    async def snapshot(self) -> Snapshot:
        """Read the counters (flushing this session's own statistics first)."""
        if self.can_force_flush:
            await self._fetch("SELECT pg_stat_force_next_flush()")
        mark = self.statements
        row = (
            await self._fetch(
                "SELECT xact_commit, pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xid "
                "FROM pg_stat_database WHERE datname = current_database()"
            )
        )[0]
        calls = None
        if self.has_statements_view:
            found = await self._fetch(
                "SELECT userid, queryid, toplevel, calls FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            calls = {
                key: r["calls"]
                for r in found
                if (key := (r["userid"], r["queryid"], r["toplevel"])) not in self._own
            }
        return Snapshot(row["xact_commit"], row["xid"], mark, calls, await self._wal_flushes())

    async def _wal_flushes(self) -> int | None:
        """Server-wide WAL syncs (14-17); None where the sessions count their own or where
        nothing is measurable."""
        if self.flush_source != "pg_stat_wal":
            return None
        return int((await self._fetch("SELECT wal_sync FROM pg_stat_wal"))[0][0])

    async def row_transactions(self, rows: Rows) -> int:
        """How many transactions wrote those rows (each row's ``xmin``)."""
        found = await self._fetch(
            f"SELECT count(DISTINCT xmin::text) AS n FROM {rows.table} "
            "WHERE workflow_name = $1 AND instance_id LIKE $2",
            rows.workflow,
            rows.prefix + "-%",
        )
        return int(found[0]["n"])

    async def wait_gone(self, pids: set[int]) -> None:
        """Wait (up to 10 s) until those backends have exited: their statistics are flushed."""
        deadline = time.monotonic() + 10.0
        while pids and time.monotonic() < deadline:
            rows = await self._fetch(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = any($1::int[])",
                list(pids),
            )
            if rows[0]["n"] == 0:
                return
            await asyncio.sleep(0.02)


@dataclass
class Counts:
    """What one accounting pass cost on the server and the client."""

    client: Counter[str]
    xacts: int
    write_xacts: int
    server_statements: int | None
    wal_flushes: int | None = None
    row_xacts: int = 0  # distinct transactions that wrote the pass's history rows

    def __sub__(self, other: Counts) -> Counts:
        client = Counter(self.client)
        client.subtract(other.client)
        return Counts(
            client,
            self.xacts - other.xacts,
            self.write_xacts - other.write_xacts,
            _minus(self.server_statements, other.server_statements),
            _minus(self.wal_flushes, other.wal_flushes),
            self.row_xacts - other.row_xacts,
        )


def _minus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


@dataclass(frozen=True)
class Rows:
    """Where a pass writes: history rows of ``workflow`` whose instance ids start with
    ``prefix-`` in ``table`` (quoted)."""

    table: str
    workflow: str
    prefix: str


async def accounting_pass(
    monitor: Monitor, log: StatementLog, work: Callable[[], Awaitable[None]], rows: Rows
) -> Counts:
    """Run ``work`` (which opens and closes its own counted connections) between snapshots;
    ``rows``: where it writes (their distinct ``xmin`` are its write transactions, exact
    whatever else runs on the server)."""
    log.session_flushes = monitor.flush_source == "pg_stat_get_backend_io"
    before = await monitor.snapshot()
    await work()
    await monitor.wait_gone(log.pids)
    after = await monitor.snapshot()
    server = None
    if before.calls is not None and after.calls is not None:
        server = sum(n - before.calls.get(key, 0) for key, n in after.calls.items()) - log.probes
    return Counts(
        client=log.counts,
        xacts=after.xact_commit
        - before.xact_commit
        - (after.monitor_statements - before.monitor_statements)
        - log.probes,
        write_xacts=after.next_xid - before.next_xid,
        server_statements=server,
        wal_flushes=log.wal_flushes
        if log.session_flushes
        else _minus(after.wal_flushes, before.wal_flushes),
        row_xacts=await monitor.row_transactions(rows),
    )
