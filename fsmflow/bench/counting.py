"""Counting what ``fsmflow bench`` runs cost on the server: statements and transactions.

Timed runs carry no instrumentation. Separate *accounting passes* open fresh connections
whose class counts every statement the client sends (asyncpg's query logger), close them
(so the server flushes their statistics) and read the server's counters before and after:
``pg_stat_statements`` (when the extension is loaded: statements), ``pg_stat_database``
(``xact_commit``: committed transactions) and the next transaction id (transactions that
wrote, server-wide). Counts are differences between passes, so fixed costs (connecting,
the schema check) cancel out: ``(pass(2K instances) - pass(K)) / (K*N)`` is the cost per
transition including starting and finishing instances; ``(pass(K, 2N steps) - pass(K, N))
/ (K*N)`` is the steady-state cost of one more step.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from fsmflow.bench.measure import (
    baseline_insert,
    baseline_pool,
    linear_definition,
    run_baseline,
    run_fsmflow,
    sample_context,
    trivial_steps,
)
from fsmflow.model.context import encode_context
from fsmflow.settings import DBConfig

# -- counting ------------------------------------------------------------------------------

_SPACES: Final = re.compile(r"\s+")
_TABLE_NAME: Final = re.compile(r'"[a-z0-9_]+"(\."[a-z0-9_]+")?')


def statement_label(query: str) -> str:
    """A short, table-independent label for a statement (for the breakdown)."""
    text = _TABLE_NAME.sub("<table>", _SPACES.sub(" ", query).strip())
    return text if len(text) <= 72 else text[:69] + "..."


class StatementLog:
    """Every statement sent on connections of :meth:`connection_class`, by label."""

    def __init__(self, *, count: bool = True) -> None:
        self.counts: Counter[str] = Counter()
        self.pids: set[int] = set()
        self.count = count  # False: only note the backend pids (no per-query overhead)

    def record(self, entry: Any) -> None:
        """asyncpg query-logger callback."""
        self.counts[statement_label(entry.query)] += 1

    def connection_class(self) -> type[asyncpg.Connection]:
        """An asyncpg connection class that reports to this log."""
        log = self

        class CountingConnection(asyncpg.Connection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                log.pids.add(self.get_server_pid())
                if log.count:
                    self.add_query_logger(log.record)

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


class Monitor:
    """The bench's own connection reading server counters; it counts its own statements."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements = 0
        self.has_statements_view = False
        self.can_force_flush = False
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
            "current_setting('server_version_num')::int >= 150000 AS flushable, "
            "EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements') AS pss"
        )
        facts = dict(rows[0])
        self.can_force_flush = bool(facts.pop("flushable"))
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
        return Snapshot(row["xact_commit"], row["xid"], mark, calls)

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

    def __sub__(self, other: Counts) -> Counts:
        server = None
        if self.server_statements is not None and other.server_statements is not None:
            server = self.server_statements - other.server_statements
        client = Counter(self.client)
        client.subtract(other.client)
        return Counts(
            client, self.xacts - other.xacts, self.write_xacts - other.write_xacts, server
        )


async def accounting_pass(
    monitor: Monitor, log: StatementLog, work: Callable[[], Awaitable[None]]
) -> Counts:
    """Run ``work`` (which opens and closes its own counted connections) between snapshots."""
    before = await monitor.snapshot()
    await work()
    await asyncio.sleep(0)  # query-logger callbacks run via call_soon
    await monitor.wait_gone(log.pids)
    after = await monitor.snapshot()
    server = None
    if before.calls is not None and after.calls is not None:
        server = sum(n - before.calls.get(key, 0) for key, n in after.calls.items())
    return Counts(
        client=log.counts,
        xacts=after.xact_commit
        - before.xact_commit
        - (after.monitor_statements - before.monitor_statements),
        write_xacts=after.next_xid - before.next_xid,
        server_statements=server,
    )


async def account_mode(
    monitor: Monitor,
    config: DBConfig,
    kwargs: dict[str, Any],
    *,
    steps: int,
    instances: int,
    concurrency: int,
    context_bytes: int,
) -> dict[str, Any]:
    """Statements and transactions per row (baseline) and per transition (fsmflow)."""
    n = steps
    k = concurrency if concurrency > 1 else min(instances, 10)
    context = sample_context(context_bytes)

    async def fsmflow(instances: int, steps: int) -> Counts:
        log = StatementLog()
        counted = counting_config(config, log)
        definition = linear_definition(f"bench_acct_{steps}", steps)

        async def work() -> None:
            try:
                await run_fsmflow(
                    counted,
                    definition,
                    trivial_steps(definition),
                    instances=instances,
                    concurrency=concurrency,
                    context=context,
                    prefix=uuid.uuid4().hex,
                )
            finally:
                await counted.close()

        return await accounting_pass(monitor, log, work)

    async def baseline(rows: int) -> Counts:
        log = StatementLog()
        counted = {**kwargs, "connection_class": log.connection_class()}
        pool = await baseline_pool(counted, config.pool_size if concurrency > 1 else 1)

        async def work() -> None:
            try:
                await run_baseline(
                    pool.execute,
                    baseline_insert(config),
                    rows=rows,
                    steps=n,
                    concurrency=concurrency,
                    context_json=encode_context(context),
                    fingerprint="bench",
                    prefix=uuid.uuid4().hex,
                )
            finally:
                await pool.close()

        return await accounting_pass(monitor, log, work)

    one = await fsmflow(k, n)
    transitions = k * n
    return {
        "source": "pg_stat_statements" if monitor.has_statements_view else "client",
        "baseline_per_row": _per(
            await baseline(2 * transitions) - await baseline(transitions), transitions
        ),
        "fsmflow_per_transition": _per(await fsmflow(2 * k, n) - one, transitions, per=k),
        "fsmflow_per_step_steady": _per(await fsmflow(k, 2 * n) - one, transitions),
    }


def _per(counts: Counts, transitions: int, per: int | None = None) -> dict[str, Any]:
    client = sum(counts.client.values())
    out: dict[str, Any] = {
        "statements_client": client / transitions,
        "statements_server": None
        if counts.server_statements is None
        else counts.server_statements / transitions,
        "transactions": counts.xacts / transitions,
        "write_transactions": counts.write_xacts / transitions,
    }
    out["statements"] = (
        out["statements_client"] if out["statements_server"] is None else out["statements_server"]
    )
    divisor = per or transitions
    out["breakdown"] = {
        label: round(n / divisor, 3) for label, n in counts.client.most_common() if n > 0
    }
    out["breakdown_per"] = "instance" if per else "transition"
    return out
