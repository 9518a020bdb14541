"""``fsmflow bench --workers``: the worker fleet against one process, in the same run.

Three measurements, each in a scratch table (history, queue and workers tables, dropped
afterwards), with the workflow of :mod:`fsmflow.bench.fleet_workflow`:

* **throughput**: ``--worker-instances`` instances submitted with ``store.submit`` and run
  by 1, 2, 4 (``--worker-counts``) worker processes (:mod:`fsmflow.bench.fleet_child`),
  the ``--worker-concurrency`` total in flight split among them; against a **baseline**
  measured in the same run: this one process running as many instances with
  ``run_workflow``, as many in flight. Each window runs on the server's clock, from
  before the first submission (or start) to the last row written; CPU per transition is
  the worker processes' user + system time in that window (``/proc``), not the server's.
* **takeover**: three loaded workers; one is SIGKILLed (``--takeover-kills`` times, a new
  one started after each, as a supervisor would): from the kill to the row each of its
  in-flight instances records next, written by another worker.
* **claim latency**: the ``claim`` query as a worker sends it (10 instances a claim, each
  committed) with ``--claim-queued`` unclaimed instances queued (a few hundred claimed
  beside them), at 10 history rows and at ``--claim-history-rows``; its plan at both.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import asyncpg

from fsmflow import sql
from fsmflow.bench.fleet_child import Children, WorkerProcess, child_settings
from fsmflow.bench.fleet_claims import claim_latency
from fsmflow.bench.fleet_workflow import fleet_workflow
from fsmflow.bench.measure import copy_config, percentile, run_fsmflow, sample_context
from fsmflow.settings import DBConfig, parse_table_name

logger = logging.getLogger("fsmflow.bench")

TAKEOVER_WORKERS: Final = 3
SUBMITTERS: Final = 4  # the bench's own submitting tasks (and its pool's size)
_POLL: Final = 0.05
_SETTLE: Final = 0.05  # after SIGSTOP: a statement already sent completes on the server
_WAIT: Final = 120.0  # bound on any wait for a fact (registration, takeover)
TERMINAL: Final = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class FleetOptions:
    """What ``fsmflow bench --workers`` runs (its ``--worker-*``, ``--claim-*`` options)."""

    instances: int = 2_000
    steps: int = 20
    counts: tuple[int, ...] = (1, 2, 4)
    concurrency: int = 32
    rounds: int = 1
    kills: int = 3
    claim_queued: int = 10_000
    claim_history_rows: int = 1_000_000
    claim_samples: int = 200
    context_bytes: int = 200


class Tables:
    """The scratch history's table names, bound for SQL, and its named queries."""

    def __init__(self, config: DBConfig) -> None:
        self.schema, self.table = parse_table_name(config.table)
        self.history = self.bind(sql.PLACEHOLDER)
        self.queue = self.bind(sql.PLACEHOLDER + sql.QUEUE_SUFFIX)
        self.workers = self.bind(sql.PLACEHOLDER + sql.WORKERS_SUFFIX)
        self.queries = sql.queries(self.schema, self.table)

    def bind(self, text: str) -> str:
        """``text`` with the scratch table for ``fsmflow_transitions``."""
        return sql.bind_table(text, self.schema, self.table)


async def _until(what: str, check: Callable[[], Awaitable[bool]], within: float) -> None:
    """Poll ``check`` until true; :class:`RuntimeError` naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench --workers: gave up waiting for {what} after {within:.0f} s")
        await asyncio.sleep(_POLL)


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu(workers: list[WorkerProcess]) -> float | None:
    found = [w.cpu_seconds() for w in workers]
    return None if any(s is None for s in found) else sum(s or 0.0 for s in found)


class Fleet:
    """One ``--workers`` run: its scratch table, monitor connection and child processes."""

    def __init__(
        self, config: DBConfig, conn: asyncpg.Connection, children: Children, opts: FleetOptions
    ) -> None:
        self.config = config
        self.conn = conn
        self.children = children
        self.opts = opts
        self.tables = Tables(config)
        self.context = sample_context(opts.context_bytes)
        self.submitter = copy_config(config, pool_size=SUBMITTERS)
        self.batches = itertools.count()  # top-up batches of the takeover phase

    # -- facts read from the database ------------------------------------------------------

    async def registered(self, workers: list[WorkerProcess]) -> bool:
        """True once every one of ``workers`` is listed (raises if one exited)."""
        for worker in workers:
            if not worker.alive:
                raise RuntimeError(
                    f"worker process {worker.pid} exited with {worker.process.returncode}:\n"
                    f"{worker.log_tail()}"
                )
        pids = await self.conn.fetch(f"SELECT pid FROM {self.tables.workers}")
        return {w.pid for w in workers} <= {r["pid"] for r in pids}

    async def start(self, name: str, count: int, concurrency: int) -> list[WorkerProcess]:
        """``count`` worker processes of workflow ``name``, once all are registered."""
        workers = [
            await self.children.start(name, self.opts.steps, concurrency) for _ in range(count)
        ]
        await _until("the workers to register", lambda: self.registered(workers), _WAIT)
        return workers

    async def stop(self, workers: list[WorkerProcess]) -> list[dict[str, Any]]:
        """SIGTERM each, as a supervisor would; their reports. (After an error or a
        cancellation :meth:`Children.close` kills them instead: no grace to wait for.)"""
        return [await w.stop(self.config.shutdown_grace + 30) for w in workers]

    async def queued(self, name: str, *, unclaimed: bool = False) -> int:
        """Instances of ``name`` in the queue (only the unclaimed ones)."""
        where = " AND claimed_by IS NULL" if unclaimed else ""
        query = f"SELECT count(*) FROM {self.tables.queue} WHERE workflow_name = $1{where}"
        return int(await self.conn.fetchval(query, name))

    async def drained(self, name: str, workers: list[WorkerProcess]) -> None:
        """Wait until every instance of ``name`` has left the queue (ended)."""

        async def empty() -> bool:
            await self.registered(workers)  # a worker that died is an error, not a stall
            return await self.queued(name) == 0

        within = max(_WAIT, self.opts.instances * self.opts.steps / 50)
        await _until(f"the {name} instances to end", empty, within)

    async def outcome(self, name: str) -> dict[str, Any]:
        """What the history of workflow ``name`` holds: rows, ends, gaps, the last write."""
        row = await self.conn.fetchrow(
            f"SELECT max(created_at) AS last, count(*) FILTER (WHERE seq > 0) AS transitions, "
            f"count(*) FILTER (WHERE status = 'completed') AS completed, "
            f"count(DISTINCT instance_id) AS instances FROM {self.tables.history} "
            f"WHERE workflow_name = $1",
            name,
        )
        gaps = await self.conn.fetchval(
            f"SELECT count(*) FROM (SELECT 1 FROM {self.tables.history} WHERE workflow_name = $1"
            f" GROUP BY instance_id HAVING count(*) <> max(seq) + 1) AS broken",
            name,
        )
        assert row is not None
        return {**dict(row), "histories_with_gaps": int(gaps)}

    async def now(self) -> datetime:
        """The server's clock (every window is timed on it)."""
        value: datetime = await self.conn.fetchval("SELECT clock_timestamp()")
        return value

    async def submit(self, name: str, count: int, prefix: str) -> float:
        """Submit ``count`` instances of ``name``, :data:`SUBMITTERS` at a time; seconds."""
        workflow = fleet_workflow(name, self.opts.steps)
        counter = itertools.count()
        store = self.submitter.store

        async def submitter() -> None:
            while (i := next(counter)) < count:
                await store.submit(workflow, self.context, instance_id=f"{prefix}-{i}")

        began = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(min(SUBMITTERS, count)):
                group.create_task(submitter())
        return time.perf_counter() - began

    # -- throughput --------------------------------------------------------------------

    async def baseline(self, name: str, instances: int) -> dict[str, Any]:
        """One process, ``run_workflow`` with the total concurrency in flight."""
        workflow = fleet_workflow(name, self.opts.steps)
        config = copy_config(self.config)
        try:
            await config.store.open()
            began = await self.now()
            run = await run_fsmflow(
                config, workflow.definition, workflow.steps, instances=instances,
                concurrency=self.opts.concurrency, context=self.context, prefix=name,
            )  # fmt: skip
        finally:
            await config.close()  # its connections are not held while workers run
        return self._window(await self.outcome(name), began, run.cpu_seconds, instances)

    async def workers_run(self, name: str, count: int) -> dict[str, Any]:
        """``count`` worker processes run the submitted instances; the window's figures."""
        each = math.ceil(self.opts.concurrency / count)
        workers = await self.start(name, count, each)
        cpu, own = _cpu(workers), _self_cpu()
        began = await self.now()
        submit_seconds = await self.submit(name, self.opts.instances, name)
        own = _self_cpu() - own
        await self.drained(name, workers)
        after = _cpu(workers)
        reports = await self.stop(workers)
        used = None if cpu is None or after is None else after - cpu
        result = self._window(await self.outcome(name), began, used, self.opts.instances)
        result.update(
            workers=count,
            concurrency_each=each,
            submit_seconds=submit_seconds,
            submitter_cpu_us_per_transition=own / max(result["transitions"], 1) * 1e6,
            completed_by_workers=sum(r["completed"] for r in reports),
            exit_codes=[r["exit_code"] for r in reports],
        )
        return result

    def _window(
        self, outcome: dict[str, Any], began: datetime, cpu: float | None, instances: int
    ) -> dict[str, Any]:
        seconds = (outcome["last"] - began).total_seconds()
        transitions = int(outcome["transitions"])
        return {
            "instances": instances,
            "completed": int(outcome["completed"]),
            "histories_with_gaps": outcome["histories_with_gaps"],
            "transitions": transitions,
            "seconds": seconds,
            "instances_per_s": instances / seconds,
            "transitions_per_s": transitions / seconds,
            "cpu_us_per_transition": None if cpu is None else cpu / max(transitions, 1) * 1e6,
        }

    async def throughput(self, counts: list[int]) -> dict[str, Any]:
        """Baseline and each worker count, interleaved over the rounds (order reversed
        every other round, so neither side always runs first)."""
        logger.info("workers: warming up the in-process baseline")
        await self.baseline("bench_fleet_warm", max(1, min(100, self.opts.instances // 10)))
        runs: dict[int, list[dict[str, Any]]] = {k: [] for k in [0, *counts]}
        for round_ in range(self.opts.rounds):
            order = [0, *counts] if round_ % 2 == 0 else [*reversed(counts), 0]
            for count in order:
                name = f"bench_fleet_{count}w_r{round_}"
                run = (
                    await self.baseline(name, self.opts.instances)
                    if count == 0
                    else await self.workers_run(name, count)
                )
                runs[count].append(run)
                logger.info(
                    "workers: round %d/%d, %s: %.0f transitions/s",
                    round_ + 1, self.opts.rounds,
                    "baseline (one process)" if count == 0 else f"{count} worker process(es)",
                    run["transitions_per_s"],
                )  # fmt: skip
        return {
            "baseline": _summary(runs[0]),
            "workers": [_summary(runs[k], runs[0]) | {"workers": k} for k in counts],
        }

    # -- takeover ----------------------------------------------------------------------

    async def in_flight(self, victim: WorkerProcess, name: str) -> list[tuple[str, int]]:
        """The victim's claimed instances that have not ended, with their last seq."""
        rows = await self.conn.fetch(
            f"SELECT q.instance_id, l.seq, l.status FROM {self.tables.queue} q "
            f"JOIN {self.tables.workers} w ON w.worker_id = q.claimed_by "
            f"CROSS JOIN LATERAL (SELECT h.seq, h.status FROM {self.tables.history} h "
            f"WHERE h.workflow_name = q.workflow_name AND h.instance_id = q.instance_id "
            f"ORDER BY h.seq DESC LIMIT 1) l WHERE w.pid = $1 AND q.workflow_name = $2",
            victim.pid,
            name,
        )
        return [(r["instance_id"], r["seq"]) for r in rows if r["status"] not in TERMINAL]

    async def freeze_loaded(
        self, victim: WorkerProcess, name: str, backlog: int
    ) -> list[tuple[str, int]]:
        """Top the queue up, then SIGSTOP the victim while it runs instances; those."""
        frozen: list[tuple[str, int]] = []

        async def loaded() -> bool:
            missing = backlog - await self.queued(name, unclaimed=True)
            if missing > 0:
                await self.submit(name, missing, f"t{next(self.batches)}")
            victim.pause()
            await asyncio.sleep(_SETTLE)
            frozen[:] = await self.in_flight(victim, name)
            if not frozen:
                victim.resume()
            return bool(frozen)

        await _until(f"worker {victim.pid} to run instances", loaded, _WAIT)
        return frozen

    async def kill_one(self, victim: WorkerProcess, name: str, backlog: int) -> list[float]:
        """SIGKILL ``victim`` while loaded; seconds until each of its instances moves on."""
        frozen = await self.freeze_loaded(victim, name, backlog)
        killed_at = await self.now()
        await victim.kill()
        query = (
            f"SELECT c.id, h.created_at FROM unnest($2::text[], $3::int[]) AS c(id, seq) "
            f"LEFT JOIN {self.tables.history} h ON h.workflow_name = $1 "
            f"AND h.instance_id = c.id AND h.seq = c.seq + 1"
        )
        args = (name, [i for i, _ in frozen], [s for _, s in frozen])
        found: list[Any] = []

        async def moved_on() -> bool:
            nonlocal found
            found = await self.conn.fetch(query, *args)
            return all(r["created_at"] is not None for r in found)

        await _until(f"the takeover of worker {victim.pid}'s instances", moved_on, _WAIT)
        return [(r["created_at"] - killed_at).total_seconds() for r in found]

    async def takeover(self) -> dict[str, Any]:
        """:data:`TAKEOVER_WORKERS` loaded workers; kill one, start another, ``kills`` times."""
        name, each = "bench_fleet_takeover", math.ceil(self.opts.concurrency / TAKEOVER_WORKERS)
        backlog = max(self.opts.instances // 2, each * TAKEOVER_WORKERS)
        workers = await self.start(name, TAKEOVER_WORKERS, each)
        per_kill: list[list[float]] = []
        for kill in range(self.opts.kills):
            slot = kill % TAKEOVER_WORKERS
            seconds = await self.kill_one(workers[slot], name, backlog)
            per_kill.append(seconds)
            logger.info(
                "workers: kill %d/%d: %d in-flight instance(s) taken over, max %.2f s",
                kill + 1, self.opts.kills, len(seconds), max(seconds),
            )  # fmt: skip
            workers[slot] = (await self.start(name, 1, each))[0]  # the supervisor's restart
        await self.drained(name, workers)
        reports = await self.stop(workers)
        outcome = await self.outcome(name)
        every = sorted(s for seconds in per_kill for s in seconds)
        return {
            "workers": TAKEOVER_WORKERS,
            "concurrency_each": each,
            "sweep_seconds": self.config.worker_sweep,
            "kills": len(per_kill),
            "taken_over": len(every),
            "p50_s": percentile(every, 0.5),
            "max_s": max(every) if every else 0.0,
            "per_kill": [{"in_flight": len(s), "max_s": max(s)} for s in per_kill],
            "instances": int(outcome["instances"]),
            "completed": int(outcome["completed"]),
            "histories_with_gaps": outcome["histories_with_gaps"],
            "exit_codes": [r["exit_code"] for r in reports],
        }


def _summary(runs: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None) -> Any:
    """Medians over the rounds (and the ratio of each round's rate to its baseline's)."""

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    out: dict[str, Any] = {
        key: median(key) for key in ("instances_per_s", "transitions_per_s", "seconds")
    }
    out["cpu_us_per_transition"] = median("cpu_us_per_transition")
    out["instances"] = runs[0]["instances"]
    out["completed"] = min(r["completed"] for r in runs)
    out["histories_with_gaps"] = sum(r["histories_with_gaps"] for r in runs)
    if baseline is not None:
        ratios = [
            r["transitions_per_s"] / b["transitions_per_s"]
            for r, b in zip(runs, baseline, strict=True)
        ]
        out.update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
        for key in ("concurrency_each", "submit_seconds", "submitter_cpu_us_per_transition"):
            out[key] = runs[0][key] if key == "concurrency_each" else median(key)
        out["completed_by_workers"] = min(r["completed_by_workers"] for r in runs)
        out["exit_codes"] = sorted({c for r in runs for c in r["exit_codes"]})
    out["runs"] = runs
    return out


# -- the entry point ----------------------------------------------------------------------


async def _free_connections(conn: asyncpg.Connection) -> int:
    """How many more client sessions the server accepts now."""
    value = await conn.fetchval(
        "SELECT current_setting('max_connections')::int - (SELECT count(*) "
        "FROM pg_stat_activity WHERE backend_type = 'client backend')"
    )
    return int(value)


def _budget(config: DBConfig, free: int, counts: list[int]) -> tuple[list[int], list[str]]:
    """The worker counts whose connections fit in ``free``; why the others do not."""
    each = config.pool_size + config.owner_connections + 2  # + listener + worker session
    fits, skipped = [], []
    for count in counts:
        if count * each + SUBMITTERS <= free:
            fits.append(count)
        else:
            skipped.append(
                f"{count} workers: up to {count * each + SUBMITTERS} connections (pool "
                f"{config.pool_size} + owner connections {config.owner_connections} + 2 per "
                f"worker, + {SUBMITTERS} submitting), the server has {free} free: raise "
                "max_connections or lower FSMFLOW_POOL_SIZE / FSMFLOW_OWNER_CONNECTIONS"
            )
    return fits, skipped


async def fleet_check(
    scratch_table: Callable[[str], Awaitable[DBConfig]],
    connect_kwargs: dict[str, Any],
    opts: FleetOptions,
) -> dict[str, Any]:
    """The three measurements (throughput, takeover, claim latency); the report part."""
    config = await scratch_table("_fleet")
    conn = await asyncpg.connect(**connect_kwargs)
    report: dict[str, Any] = {
        "pool_size": config.pool_size,
        "owner_connections": config.owner_connections,
        "sweep_seconds": config.worker_sweep,
    }
    try:
        counts, skipped = _budget(config, await _free_connections(conn), list(opts.counts))
        takeover_fits, _ = _budget(config, await _free_connections(conn), [TAKEOVER_WORKERS])
        with tempfile.TemporaryDirectory(prefix="fsmflow-bench-workers-") as logs:
            children = Children(Path(logs), child_settings(config))
            fleet = Fleet(config, conn, children, opts)
            try:
                report["throughput"] = await fleet.throughput(counts)
                report["throughput"]["skipped"] = skipped
                if takeover_fits and opts.kills:
                    logger.info("workers: takeover: %d SIGKILLs", opts.kills)
                    report["takeover"] = await fleet.takeover()
            finally:
                await children.close()
                await fleet.submitter.close()
    finally:
        await conn.close()
    report["claim"] = await claim_latency(
        await scratch_table("_claim"),
        connect_kwargs,
        queued=opts.claim_queued,
        history_rows=opts.claim_history_rows,
        samples=opts.claim_samples,
    )
    return report
