"""The opt-in checks of ``fsmflow bench``: resume lookup cost and memory per instance.

``--resume-check`` times the lookup a resuming instance makes (``Store.last_record``) and a
whole resume (lock, lookup, restore, up to the start of the unfinished step) with 10 rows
in the table, then again after filling it with generated rows (generate_series, in SQL),
and shows the query plans. ``--memory-check`` parks thousands of instances inside a step
and reports the process's resident memory growth and how many state machines exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from transitions.extensions.asyncio import AsyncMachine

from fsmflow import sql
from fsmflow.bench.measure import linear_definition, trivial_steps
from fsmflow.engine.machine import WorkflowMachine
from fsmflow.engine.runner import PersistentWorkflowStateMachine
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import WorkflowDefinition, WorkflowStep
from fsmflow.settings import DBConfig, parse_table_name

logger = logging.getLogger("fsmflow.bench")

_FILL_CHUNK = 100_000
_FILL = """
INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, trigger, source_state,
    dest_state, context, status, fingerprint, attempt_id)
SELECT $1::text, 'fill-' || (g / 20), g % 20, 'next', 's' || (g % 20), 's' || (g % 20 + 1),
       $2::jsonb, 'running', $3::text, gen_random_uuid()
FROM generate_series($4::bigint, $5::bigint - 1) AS g
"""
PROBE_ROWS = 10


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000}


def _parking_steps(
    definition: WorkflowDefinition, state: str, arrived: Callable[[], None]
) -> dict[str, WorkflowStep]:
    """Trivial steps, except that ``state``'s step calls ``arrived`` and waits until
    cancelled (every instance waits on the same event: the bench adds no state of its own)."""
    never = asyncio.Event()

    async def park(context: WorkflowContext) -> tuple[WorkflowContext, None]:
        arrived()
        await never.wait()
        return context, None

    steps = trivial_steps(definition)
    steps[state] = WorkflowStep(name=state, execute=park)
    return steps


async def _cancel(tasks: list[asyncio.Task[Any]]) -> list[BaseException]:
    """Cancel parked runs (each releases its lock); return unexpected failures."""
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    return [
        r
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]


async def _until(event: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for ``event``; raise what made a task end first, if one does."""
    waiter = asyncio.create_task(event.wait())
    try:
        while not event.is_set():
            await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            ended = next((t for t in tasks if t.done()), None)
            if ended is not None and not event.is_set():
                raise ended.exception() or RuntimeError("a parked instance completed")
    finally:
        waiter.cancel()


async def _timed(operation: Callable[[], Awaitable[Any]], samples: int) -> list[float]:
    timings = []
    for _ in range(samples):
        began = time.perf_counter()
        await operation()
        timings.append(time.perf_counter() - began)
    return timings


# -- resume --------------------------------------------------------------------------------


async def _measure_resume(
    config: DBConfig, conn: asyncpg.Connection, definition: WorkflowDefinition, samples: int
) -> dict[str, Any]:
    store = config.store
    name, instance = definition.name, "probe"
    lookups = await _timed(lambda: store.last_record(name, instance), samples)
    resumes: list[float] = []
    for _ in range(max(5, samples // 10)):
        began = time.perf_counter()
        at_step = asyncio.Event()
        steps = _parking_steps(definition, f"s{PROBE_ROWS - 1}", at_step.set)
        runner = PersistentWorkflowStateMachine(
            config, definition, steps=steps, instance_id=instance, handle_signals=False
        )
        task = asyncio.create_task(runner.run_workflow())
        await _until(at_step, [task])
        resumes.append(time.perf_counter() - began)
        await _cancel([task])
    schema, table = parse_table_name(config.table)
    query = sql.queries(schema, table)["last_record"]
    plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {query}", name, instance)
    rows = await conn.fetchval(
        f"SELECT count(*) FROM {sql.bind_table('fsmflow_transitions', schema, table)}"
    )
    lines = [r[0] for r in plan]
    first = next((line.strip() for line in lines if "Index" in line), "no index scan")
    buffers = next((line.split(":", 1)[1].strip() for line in lines if "Buffers:" in line), "?")
    executed = next((line for line in lines if line.startswith("Execution Time:")), "0 ms")
    return {
        "index_scan": first.split("(", 1)[0].replace("->", "").strip(),
        "buffers": buffers,
        "execution_ms": float(executed.split(":", 1)[1].split()[0]),
        "rows_in_table": rows,
        "last_record": _ms(lookups),
        "resume_to_step": _ms(resumes),
        "plan": lines,
        # The last row must come from the primary key. Counting the instance's rows (the
        # gap check) may use a sequential scan while the table is only a few pages: the
        # planner's cheaper choice there; at scale it is an index-only scan.
        "index_used": any("Index Scan Backward" in line and _alias(line) == "l" for line in lines)
        and not any("Seq Scan" in line and _alias(line) != "c" for line in lines),
        "small_table_seq_scans": sum("Seq Scan" in line for line in lines),
    }


def _alias(plan_line: str) -> str | None:
    """The table alias a plan node scans (``... on <table> <alias> (actual ...)``)."""
    found = re.search(r" on \S+ (\w+)(?: \(|$)", plan_line)
    return None if found is None else found.group(1)


async def resume_check(
    config: DBConfig, connect_kwargs: dict[str, Any], *, rows: int, samples: int = 200
) -> dict[str, Any]:
    """Time an instance's resume lookup with 10 rows in the table, then with ``rows``."""
    definition = linear_definition("bench_resume", PROBE_ROWS + 2)
    parked = asyncio.Event()
    first = PersistentWorkflowStateMachine(
        config,
        definition,
        steps=_parking_steps(definition, f"s{PROBE_ROWS - 1}", parked.set),
        instance_id="probe",
        handle_signals=False,
    )
    task = asyncio.create_task(first.run_workflow({"probe": True}))
    await _until(parked, [task])  # seq 0..9 are stored: 10 rows, stopped inside s9
    await _cancel([task])
    schema, table = parse_table_name(config.table)
    conn = await asyncpg.connect(**connect_kwargs)
    try:
        small = await _measure_resume(config, conn, definition, samples)
        fill = sql.bind_table(_FILL, schema, table)
        context = '{"order": {"id": 4242, "items": [1, 2, 3]}, "pad": "' + "x" * 150 + '"}'
        for start in range(0, rows - PROBE_ROWS, _FILL_CHUNK):
            end = min(start + _FILL_CHUNK, rows - PROBE_ROWS)
            await conn.execute(fill, definition.name, context, definition.fingerprint, start, end)
            logger.info("resume check: filled %d/%d rows", end + PROBE_ROWS, rows)
        await conn.execute(f"ANALYZE {sql.bind_table('fsmflow_transitions', schema, table)}")
        large = await _measure_resume(config, conn, definition, samples)
    finally:
        await conn.close()
    return {"small": small, "large": large}


# -- memory --------------------------------------------------------------------------------


def rss_bytes() -> int | None:
    """This process's resident memory (None where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def state_machines() -> int:
    """How many ``AsyncMachine`` objects exist in this process."""
    return sum(1 for o in gc.get_objects() if isinstance(o, AsyncMachine))


async def lock_capacity(connect_kwargs: dict[str, Any]) -> int:
    """How many locks the server's shared lock table is sized for."""
    conn = await asyncpg.connect(**connect_kwargs)
    try:
        value = await conn.fetchval(
            "SELECT current_setting('max_locks_per_transaction')::int * "
            "(current_setting('max_connections')::int "
            "+ current_setting('max_prepared_transactions')::int)"
        )
    finally:
        await conn.close()
    return int(value)


async def memory_check(
    config: DBConfig, *, instances: int, steps: int, context: dict[str, Any], trace: bool
) -> dict[str, Any]:
    """Park ``instances`` instances inside their first step; measure what they cost."""
    definition = linear_definition("bench_memory", steps)
    warm = PersistentWorkflowStateMachine(
        config, definition, steps=trivial_steps(definition), instance_id="warm-up"
    )
    await warm.run_workflow(context)
    arrived = 0
    all_in = asyncio.Event()

    def arrive() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == instances:
            all_in.set()

    parking = _parking_steps(definition, "s0", arrive)
    gc.collect()
    rss_before, machines_before = rss_bytes(), state_machines()
    if trace:
        tracemalloc.start()
    began = time.perf_counter()
    tasks = [
        asyncio.create_task(
            PersistentWorkflowStateMachine(
                config, definition, steps=parking, instance_id=f"parked-{i}"
            ).run_workflow(context)
        )
        for i in range(instances)
    ]
    machine = WorkflowMachine.of(definition).machine  # shared (joined on a trigger's use)
    try:
        while not all_in.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 2.0)
            logger.info("memory check: %d/%d instances inside their step", arrived, instances)
            failed = [t for t in tasks if t.done()]
            if failed:
                raise failed[0].exception() or RuntimeError("an instance ended early")
        seconds = time.perf_counter() - began
        gc.collect()
        rss_after, machines_after = rss_bytes(), state_machines()
        traced = tracemalloc.get_traced_memory() if trace else None
        models = len(machine.models)
    finally:
        if trace:
            tracemalloc.stop()
        failures = await _cancel(tasks)
    delta = None if rss_before is None or rss_after is None else rss_after - rss_before
    return {
        "instances": instances,
        "seconds_to_park_all": seconds,
        "rss_before_mb": None if rss_before is None else rss_before / 2**20,
        "rss_delta_mb": None if delta is None else delta / 2**20,
        "rss_per_instance_kb": None if delta is None else delta / instances / 1024,
        "tracemalloc_current_mb": None if traced is None else traced[0] / 2**20,
        "tracemalloc_peak_mb": None if traced is None else traced[1] / 2**20,
        "state_machines_before": machines_before,
        "state_machines_after": machines_after,
        "models_on_the_machine": models,
        "unexpected_failures": [f"{type(f).__name__}: {f}" for f in failures[:3]],
    }
