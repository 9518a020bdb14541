"""Claim latency for ``fsmflow bench --workers``: the ``claim`` query at a large queue and
history.

The queue gets ``queued`` unclaimed instances (plus enough for every claim the
measurement takes, so at least ``queued`` are waiting at each one) and a few hundred
claimed by a running worker, all in one ``INSERT ... SELECT generate_series``. The
``claim`` query is sent as a worker sends it (a prepared statement, 10 instances a claim,
each claim committed and kept: the claimed instances leave the ready index as they do in
a fleet) with 10 history rows, then after one more ``INSERT ... SELECT`` has filled the
history to ``history_rows``; its plan (EXPLAIN ANALYZE inside a rolled-back transaction)
at both sizes shows the index used and the buffers read.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Final

import asyncpg

from fsmflow import sql
from fsmflow.bench.measure import percentile
from fsmflow.engine.worker import DEFAULT_CONCURRENCY
from fsmflow.settings import DBConfig, parse_table_name

logger = logging.getLogger("fsmflow.bench")

CLAIM_WORKFLOW: Final = "bench_claim"
CLAIMER: Final = "bench-claimer"  # the worker id the measured claims are made for
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
_BUFFERS: Final = re.compile(r"Buffers: shared((?: \w+=\d+)+)")


def _buffers(lines: list[str]) -> int:
    """Shared buffers the whole plan hit or read (its first Buffers line: the top node)."""
    for line in lines:
        found = _BUFFERS.search(line)
        if found:
            counts = dict(re.findall(r"(\w+)=(\d+)", found.group(1)))
            return int(counts.get("hit", 0)) + int(counts.get("read", 0))
    return 0


class ClaimProbe:
    """The scratch table's queue and history, and the claim as a worker sends it."""

    def __init__(self, config: DBConfig, conn: asyncpg.Connection, limit: int) -> None:
        self.schema, self.table = parse_table_name(config.table)
        self.conn = conn
        self.limit = limit
        self.query = sql.queries(self.schema, self.table)["claim"]
        self.history = sql.bind_table(sql.PLACEHOLDER, self.schema, self.table)
        self.queue = sql.bind_table(sql.PLACEHOLDER + sql.QUEUE_SUFFIX, self.schema, self.table)
        self.ready_index = sql.object_name(self.table, "_queue_ready_idx")

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
        await self.conn.execute(f"ANALYZE {self.queue}")

    async def plan(self) -> list[str]:
        """The claim's EXPLAIN (ANALYZE, BUFFERS), rolled back: it claims nothing."""
        transaction = self.conn.transaction()
        await transaction.start()
        try:
            rows = await self.conn.fetch(
                f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {self.query}", *self.args
            )
        finally:
            await transaction.rollback()
        return [str(r[0]) for r in rows]

    async def measure(self, samples: int) -> dict[str, Any]:
        """``samples`` committed claims, timed; the plan and the queue they ran against."""
        unclaimed = await self.conn.fetchval(
            f"SELECT count(*) FROM {self.queue} WHERE claimed_by IS NULL"
        )
        rows_in_history = await self.conn.fetchval(f"SELECT count(*) FROM {self.history}")
        lines = await self.plan()
        statement = await self.conn.prepare(self.query)
        for _ in range(_WARM):
            await statement.fetch(*self.args)
        timings, short = [], 0
        for _ in range(samples):
            began = time.perf_counter()
            claimed = await statement.fetch(*self.args)
            timings.append(time.perf_counter() - began)
            short += len(claimed) < self.limit
        executed = next((x for x in lines if x.startswith("Execution Time:")), "0 ms")
        return {
            "history_rows": int(rows_in_history),
            "unclaimed_at_start": int(unclaimed),
            "claims": samples,
            "short_claims": short,  # claims that found fewer than `limit`: should be none
            "p50_ms": percentile(timings, 0.5) * 1000,
            "p99_ms": percentile(timings, 0.99) * 1000,
            "max_ms": max(timings) * 1000,
            "plan_buffers": _buffers(lines),
            "plan_execution_ms": float(executed.split(":", 1)[1].split()[0]),
            "ready_index_used": any(self.ready_index in x for x in lines),
            "seq_scans": [x.strip() for x in lines if "Seq Scan" in x],
            "history_in_plan": any(
                f"{self.table} " in x or f"{self.table}_pkey" in x for x in lines
            ),
            "plan": lines,
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
    try:
        probe = ClaimProbe(config, conn, DEFAULT_CONCURRENCY)
        claimed = max(1, min(500, queued // 20))
        per_phase = (samples + _WARM) * probe.limit
        logger.info("workers: claim latency: queueing %d instances", queued + 2 * per_phase)
        await probe.fill_queue(queued + 2 * per_phase + claimed, claimed)
        await probe.fill_history(0, PROBE_ROWS)
        small = await probe.measure(samples)
        logger.info("workers: claim latency: filling the history to %d rows", history_rows)
        began = time.perf_counter()
        await probe.fill_history(PROBE_ROWS, max(history_rows, PROBE_ROWS))
        fill_seconds = time.perf_counter() - began
        large = await probe.measure(samples)
    finally:
        await conn.close()
    return {
        "queued": queued,
        "claimed_by_a_running_worker": claimed,
        "limit": probe.limit,
        "history_fill_seconds": fill_seconds,
        "small": small,
        "large": large,
    }
