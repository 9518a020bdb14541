"""Statements, transactions and WAL flushes per transition: the accounting passes.

Each pass runs one workload on fresh counted connections (:mod:`fsmflow.bench.counting`)
and reads the server's counters around it. Figures are differences between passes, so
what a pass pays once (connecting, the store's schema check) cancels out:
``(pass(2K instances) - pass(K)) / (K*N)`` is the cost per transition including
starting and finishing instances; ``(pass(K, 2N steps) - pass(K, N)) / (K*N)`` is the
steady-state cost of one more step.

A once-per-pass cost cancels only if it is paid exactly once: each fsmflow pass opens
its store (and so checks the table) before its instances start. Left to the instances,
the check runs once for every instance that finds the store unchecked at the same
moment, a number that moves from pass to pass with the timing (32 concurrent instances:
0 to 32 extra statements a pass), which is what made the concurrent steady state read
1.027 or 0.972 statements per transition instead of 1.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from fsmflow import sql
from fsmflow.bench.counting import (
    Counts,
    Monitor,
    Rows,
    StatementLog,
    accounting_pass,
    counting_config,
)
from fsmflow.bench.handrolled import HANDROLLED_WORKFLOW, HandRolled, handrolled_insert
from fsmflow.bench.measure import (
    BASELINE_CONNECTIONS,
    BASELINE_WORKFLOW,
    Execute,
    baseline_insert,
    baseline_pool,
    linear_definition,
    run_baseline,
    run_fsmflow,
    sample_context,
    trivial_steps,
)
from fsmflow.model.context import encode_context
from fsmflow.settings import DBConfig, parse_table_name


async def fsmflow_pass(
    monitor: Monitor,
    config: DBConfig,
    *,
    instances: int,
    steps: int,
    concurrency: int,
    context: dict[str, Any],
) -> Counts:
    """What ``instances`` fsmflow instances of ``steps`` steps cost, on a fresh store."""
    log = StatementLog()
    counted = counting_config(config, log)
    definition = linear_definition(f"bench_acct_{steps}", steps)
    prefix = uuid.uuid4().hex

    async def work() -> None:
        try:
            await counted.store.open()  # the table check: once, before any instance
            await run_fsmflow(
                counted,
                definition,
                trivial_steps(definition),
                instances=instances,
                concurrency=concurrency,
                context=context,
                prefix=prefix,
            )
        finally:
            await counted.close()

    return await accounting_pass(monitor, log, work, Rows(history(config), definition.name, prefix))


def history(config: DBConfig) -> str:
    """``config``'s history table, quoted."""
    schema, table = parse_table_name(config.table)
    return sql.bind_table("fsmflow_transitions", schema, table)


async def _on_baseline_connections(
    monitor: Monitor,
    kwargs: dict[str, Any],
    concurrency: int,
    run: Callable[[Execute], Awaitable[Any]],
    rows: Rows,
) -> Counts:
    """``run`` on fresh counted connections: one when sequential, else a pool of 10."""
    log = StatementLog()
    counted = {**kwargs, "connection_class": log.connection_class()}

    async def work() -> None:
        if concurrency == 1:
            conn = await asyncpg.connect(**counted)
            try:
                await run(conn.execute)
            finally:
                await conn.close()
            return
        pool = await baseline_pool(counted, BASELINE_CONNECTIONS)
        try:
            await run(pool.execute)
        finally:
            await pool.close()

    return await accounting_pass(monitor, log, work, rows)


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
    """Statements and transactions per row (baseline) and per transition (hand-rolled,
    fsmflow all-in and steady state)."""
    n = steps
    k = concurrency if concurrency > 1 else min(instances, 10)
    context = sample_context(context_bytes)
    hand = HandRolled(handrolled_insert(config), n)

    async def fsmflow(instances: int, steps: int) -> Counts:
        return await fsmflow_pass(
            monitor,
            config,
            instances=instances,
            steps=steps,
            concurrency=concurrency,
            context=context,
        )

    async def baseline(rows: int) -> Counts:
        prefix = uuid.uuid4().hex

        async def run(execute: Execute) -> None:
            await run_baseline(
                execute,
                baseline_insert(config),
                rows=rows,
                steps=n,
                concurrency=concurrency,
                context_json=encode_context(context),
                fingerprint="bench",
                prefix=prefix,
            )

        where = Rows(history(config), BASELINE_WORKFLOW, prefix)
        return await _on_baseline_connections(monitor, kwargs, concurrency, run, where)

    async def handrolled(instances: int) -> Counts:
        prefix = uuid.uuid4().hex

        async def run(execute: Execute) -> None:
            await hand.run(
                execute,
                instances=instances,
                concurrency=concurrency,
                context=context,
                prefix=prefix,
            )

        where = Rows(history(config), HANDROLLED_WORKFLOW, prefix)
        return await _on_baseline_connections(monitor, kwargs, concurrency, run, where)

    one = await fsmflow(k, n)
    transitions = k * n
    return {
        "source": "pg_stat_statements" if monitor.has_statements_view else "client",
        "baseline_per_row": _per(
            await baseline(2 * transitions) - await baseline(transitions), transitions
        ),
        "handrolled_per_transition": _per(
            await handrolled(2 * k) - await handrolled(k), transitions, per=k
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
        "write_transactions": counts.row_xacts / transitions,
        "write_transactions_server": counts.write_xacts / transitions,
        "wal_flushes": None if counts.wal_flushes is None else counts.wal_flushes / transitions,
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
