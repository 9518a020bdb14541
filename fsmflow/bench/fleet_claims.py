"""Claim latency for ``fsmflow bench --workers``: the ``claim`` query at a large queue and
history.

The queue gets ``queued`` unclaimed instances (plus enough for every claim the
measurement takes, so at least ``queued`` are waiting at each one) and a few hundred
claimed by a running worker, all in one ``INSERT ... SELECT generate_series``. The
claim is made as a worker makes it, through a worker session of its own
(:meth:`~fsmflow.store.fleet.WorkerSession.claim`: the prepared ``claim`` query on the
session's connection, with its settings; 10 instances a claim, each claim committed and
kept: the claimed instances leave the ready index as they do in a fleet) with 10 history
rows, then after one more ``INSERT ... SELECT`` has filled the
history to ``history_rows``; the queue is vacuumed before each timing, as autovacuum
keeps a busy queue. Its plan (EXPLAIN ANALYZE inside a rolled-back transaction) at both
sizes shows the index used, the buffers read and the time the server spends executing
it: the rest of a claim's latency is the round trip and the commit's WAL flush.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, Final

import asyncpg

from fsmflow import sql
from fsmflow.bench.measure import percentile
from fsmflow.engine.worker import DEFAULT_CONCURRENCY
from fsmflow.settings import DBConfig, parse_table_name
from fsmflow.store.fleet import Identity, WorkerSession

logger = logging.getLogger("fsmflow.bench")

CLAIM_WORKFLOW: Final = "bench_claim"
CLAIMER: Final = "bench-claimer"  # the worker id of the session that claims
RUNNING: Final = "bench-running-worker"  # holds the claimed rows the claim must skip
PROBE_ROWS: Final = 10
_WARM: Final = 5
_QUEUE_FILL: Final = """
INSERT INTO fsmflow_transitions_queue (workflow_name, instance_id, ready_at, claimed_by,
                                       claimed_at, submitted_at)
SELECT $1::text, 'fill-' || g,
       clock_timestamp() - interval '1 day' + make_interval(secs => g / 1000.0),
       CASE WHEN g <= $2 THEN $3::text END, CASE WHEN g <= $2 THEN clock_timestamp() END,
       clock_timestamp() - interval '1 day'
FROM generate_series(1, $4::int) AS g
"""
# Instances of 20 rows each ('fill-<n>', the queued instances among them), seq 0 first.
_HISTORY_FILL: Final = """
INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, trigger, source_state,
                                 dest_state, context, status, fingerprint, attempt_id)
SELECT $1::text, 'fill-' || (g / 20), g % 20,
       CASE WHEN g % 20 > 0 THEN 'next' END, CASE WHEN g % 20 > 0 THEN 's' || (g % 20 - 1) END,
       's' || (g % 20), $2::json, 'running', 'bench', gen_random_uuid()
FROM generate_series($3::bigint, $4::bigint - 1) AS g
"""
_CONTEXT: Final = '{"order": {"id": 4242, "items": [1, 2, 3]}, "pad": "' + "x" * 150 + '"}'


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree."""
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _buffers(node: dict[str, Any]) -> int:
    return int(node["Shared Hit Blocks"]) + int(node["Shared Read Blocks"])


def plan_facts(plan: dict[str, Any], table: str) -> dict[str, Any]:
    """What a claim's plan did: buffers in all and in its scans, indexes, tables read."""
    every = list(_nodes(plan))
    scans = [n for n in every if n.get("Relation Name") and n["Node Type"] != "ModifyTable"]
    relations = {n["Relation Name"] for n in every if n.get("Relation Name")}
    return {
        "plan_buffers": _buffers(plan),
        "plan_scan_buffers": sum(_buffers(n) for n in scans),
        "ready_index_used": any(
            n.get("Index Name") == sql.object_name(table, "_queue_ready_idx") for n in every
        ),
        "seq_scans": sorted(n["Relation Name"] for n in every if n["Node Type"] == "Seq Scan"),
        "history_in_plan": table in relations,
    }


class ClaimProbe:
    """The scratch table's queue and history, and the claim as a worker sends it."""

    def __init__(self, config: DBConfig, conn: asyncpg.Connection, limit: int) -> None:
        self.schema, self.table = parse_table_name(config.table)
        self.conn = conn
        self.limit = limit
        self.query = sql.queries(self.schema, self.table)["claim"]
        self.history = sql.bind_table(sql.PLACEHOLDER, self.schema, self.table)
        self.queue = sql.bind_table(sql.PLACEHOLDER + sql.QUEUE_SUFFIX, self.schema, self.table)

    @property
    def args(self) -> tuple[Any, ...]:
        """The claim's parameters: the workflows served, the limit, the worker id."""
        return ([CLAIM_WORKFLOW], self.limit, CLAIMER)

    async def fill_history(self, start: int, end: int) -> None:
        """Rows ``start`` to ``end - 1`` of the generated history, in one statement."""
        fill = sql.bind_table(_HISTORY_FILL, self.schema, self.table)
        await self.conn.execute(fill, CLAIM_WORKFLOW, _CONTEXT, start, end)
        await self.conn.execute(f"ANALYZE {self.history}")

    async def fill_queue(self, total: int, claimed: int) -> None:
        """``total`` queued instances, the ``claimed`` oldest of them claimed."""
        fill = sql.bind_table(_QUEUE_FILL, self.schema, self.table)
        await self.conn.execute(fill, CLAIM_WORKFLOW, claimed, RUNNING, total)

    async def vacuum_queue(self) -> None:
        """What autovacuum keeps doing to a busy queue, done now: not during the timing."""
        await self.conn.execute(f"VACUUM (ANALYZE) {self.queue}")

    async def plan(self) -> dict[str, Any]:
        """The claim's EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON), rolled back: it claims
        nothing. A custom plan, as the worker's session runs it."""
        transaction = self.conn.transaction()
        await transaction.start()
        try:
            found = await self.conn.fetchval(
                f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, FORMAT JSON) {self.query}", *self.args
            )
        finally:
            await transaction.rollback()
        document = json.loads(found) if isinstance(found, str) else found
        return dict(document[0])

    async def measure(self, session: WorkerSession, samples: int) -> dict[str, Any]:
        """``samples`` claims by ``session``, timed; the plan and the queue they met."""
        await self.vacuum_queue()
        unclaimed = await self.conn.fetchval(
            f"SELECT count(*) FROM {self.queue} WHERE claimed_by IS NULL"
        )
        rows_in_history = await self.conn.fetchval(f"SELECT count(*) FROM {self.history}")
        explained = await self.plan()
        for _ in range(_WARM):
            await session.claim(self.limit)
        wal = await self.conn.fetchval("SELECT pg_current_wal_lsn()::text")
        timings, short = [], 0
        for _ in range(samples):
            began = time.perf_counter()
            claimed = await session.claim(self.limit)
            timings.append(time.perf_counter() - began)
            short += len(claimed) < self.limit
        wal_bytes = await self.conn.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint", wal
        )
        return {
            "history_rows": int(rows_in_history),
            "unclaimed_at_start": int(unclaimed),
            "claims": samples,
            "short_claims": short,  # claims that found fewer than `limit`: should be none
            "p50_ms": percentile(timings, 0.5) * 1000,
            "p99_ms": percentile(timings, 0.99) * 1000,
            "max_ms": max(timings) * 1000,
            # WAL the claims wrote (server-wide): full-page images after a checkpoint make
            # a claim's commit flush, most of its latency, several times larger.
            "wal_bytes_per_claim": int(wal_bytes) / samples,
            "plan_execution_ms": float(explained["Execution Time"]),
            **plan_facts(explained["Plan"], self.table),
            "plan": explained["Plan"],
        }


async def claim_latency(
    config: DBConfig,
    connect_kwargs: dict[str, Any],
    *,
    queued: int,
    history_rows: int,
    samples: int,
) -> dict[str, Any]:
    """The claim's latency with ``queued`` waiting, at 10 and at ``history_rows`` rows."""
    conn = await asyncpg.connect(**connect_kwargs)
    identity = Identity(CLAIMER, "bench", os.getpid(), (CLAIM_WORKFLOW,), DEFAULT_CONCURRENCY)
    session = config.store.fleet.session(identity, list)
    try:
        probe = ClaimProbe(config, conn, DEFAULT_CONCURRENCY)
        claimed = max(1, min(500, queued // 20))
        per_phase = (samples + _WARM) * probe.limit
        logger.info("workers: claim latency: queueing %d instances", queued + 2 * per_phase)
        await probe.fill_queue(queued + 2 * per_phase + claimed, claimed)
        await probe.fill_history(0, PROBE_ROWS)
        await session.open()
        small = await probe.measure(session, samples)
        logger.info("workers: claim latency: filling the history to %d rows", history_rows)
        began = time.perf_counter()
        await probe.fill_history(PROBE_ROWS, max(history_rows, PROBE_ROWS))
        fill_seconds = time.perf_counter() - began
        large = await probe.measure(session, samples)
    finally:
        if session.registrations:
            await session.close()
        await config.close()
        await conn.close()
    return {
        "queued": queued,
        "claimed_by_a_running_worker": claimed,
        "limit": probe.limit,
        "history_fill_seconds": fill_seconds,
        "small": small,
        "large": large,
    }
