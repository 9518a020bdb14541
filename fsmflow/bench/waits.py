"""``fsmflow bench --wait-check``: what durable waits cost while instances wait in-process.

Three measurements, each in its own scratch table (history and ``_events``, dropped
afterwards):

* **delivery latency**: one instance loops ``idle`` (a pure wait state for event ``go``)
  -> ``woken`` (a step that notes the time) -> ``idle`` again; each round the bench
  calls ``store.send_event`` and times from its return to the ``woken`` step's start.
* **idle statements**: ``--wait-instances`` instances wait in-process with no event for
  ``--idle-seconds``; every statement their connections send meanwhile is counted on the
  client, by connection (``application_name``) and statement, and on the server
  (``pg_stat_statements`` when loaded; ``pg_stat_database.xact_commit`` otherwise). The
  figures are per process: the owner connections' and the listener's heartbeats (one
  ``SELECT 1`` each every 5 s) do not grow with the number of instances.
* **memory**: ``--wait-memory-instances`` instances wait in-process in this one program:
  resident memory (and, with ``--tracemalloc``, the traced heap) per waiting instance, and
  how many listening sessions (``application_name = 'fsmflow-listener'``) serve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import asyncpg

from fsmflow.bench.checks import lock_capacity, rss_bytes, state_machines
from fsmflow.bench.counting import Monitor, statement_label
from fsmflow.bench.measure import percentile
from fsmflow.engine.machine import WorkflowMachine
from fsmflow.engine.runner import PersistentWorkflowStateMachine, RunnerEvent
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import Transition, WorkflowDefinition, WorkflowStep
from fsmflow.settings import DBConfig

logger = logging.getLogger("fsmflow.bench")

WAIT_WORKFLOW: Final = "bench_wait"
EVENT: Final = "go"
LISTENER_APP: Final = "fsmflow-listener"
HEARTBEAT: Final = "SELECT 1"
_SETTLE: Final = 0.01  # the waiter is asleep on its subscription before each send
_LOCKS_SPARE: Final = 100
_COMMENT: Final = re.compile(r"--[^\n]*")  # named queries start with their description


def wait_definition() -> WorkflowDefinition:
    """``start -> idle``; ``idle`` waits for ``go`` -> ``woken`` -> ``idle`` again, or
    completes when the event's payload says ``{"last": true}``."""
    return WorkflowDefinition(
        name=WAIT_WORKFLOW,
        steps=["start", "idle", "woken"],
        transitions=[
            Transition("ready", "start", "idle"),
            Transition("woke", "idle", "woken", event=EVENT),
            Transition("again", "woken", "idle"),
            Transition("finished", "woken", None),
        ],
    )


def _steps(woken: Callable[[], None]) -> dict[str, WorkflowStep]:
    async def start(context: WorkflowContext) -> tuple[WorkflowContext, str]:
        return context, "ready"

    async def wake(context: WorkflowContext) -> tuple[WorkflowContext, str]:
        woken()
        last = bool((context.data.get(EVENT) or {}).get("last"))
        return context, "finished" if last else "again"

    return {
        "start": WorkflowStep(name="start", execute=start),
        "woken": WorkflowStep(name="woken", execute=wake),
    }


def _on_wait(waiting: Callable[[], None]) -> Callable[[RunnerEvent], None]:
    """A listener calling ``waiting`` whenever the instance's waiting row is committed
    (the rows out of ``start`` and ``woken`` move it into ``idle``)."""

    def listen(event: RunnerEvent) -> None:
        if event.point == "transition_recorded" and event.state in ("start", "woken"):
            waiting()

    return listen


# -- connections the bench can see ------------------------------------------------------


class SessionLog:
    """Statements sent on connections of :meth:`connection_class`, by
    (``application_name``, statement), while :attr:`counting`; and their server pids."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.pids: set[int] = set()
        self.counting = False

    def connection_class(self) -> type[asyncpg.Connection]:
        """An asyncpg connection class that reports to this log."""
        log = self

        class LoggedConnection(asyncpg.Connection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                log.pids.add(self.get_server_pid())
                app = str(getattr(self.get_settings(), "application_name", "") or "")
                self.add_query_logger(lambda entry: log.record(app, entry.query))

        return LoggedConnection

    def record(self, app: str, query: str) -> None:
        """One statement sent by a connection named ``app``."""
        if self.counting:
            self.counts[(app or "pool", statement_label(_COMMENT.sub("", query)))] += 1


class _LoggedConfig(DBConfig):
    _connection_class: Any = None

    def connect_kwargs(self) -> dict[str, Any]:
        return {**super().connect_kwargs(), "connection_class": self._connection_class}


def logged_config(config: DBConfig, log: SessionLog) -> DBConfig:
    """A copy of ``config`` whose connections (pool, owner lanes, listener) report to ``log``."""
    logged = _LoggedConfig(**config.model_dump())
    logged._connection_class = log.connection_class()
    return logged


async def _sessions(conn: asyncpg.Connection, pids: set[int]) -> dict[str, int]:
    """The open sessions among ``pids``, by ``application_name``."""
    rows = await conn.fetch(
        "SELECT coalesce(nullif(application_name, ''), 'pool') AS app, count(*) AS n "
        "FROM pg_stat_activity WHERE pid = any($1::int[]) GROUP BY 1",
        list(pids),
    )
    return {str(r["app"]): int(r["n"]) for r in rows}


# -- latency ----------------------------------------------------------------------------


async def delivery_latency(config: DBConfig, *, rounds: int) -> dict[str, Any]:
    """``rounds`` events to one in-process waiter: send returned -> next step started."""
    stamps: list[float] = []
    waiting = asyncio.Event()
    runner = PersistentWorkflowStateMachine(
        config,
        wait_definition(),
        steps=_steps(lambda: stamps.append(time.perf_counter())),
        instance_id="latency",
        listeners=[_on_wait(waiting.set)],
    )
    task = asyncio.create_task(runner.run_workflow())
    latencies: list[float] = []
    sends: list[float] = []
    try:
        for i in range(rounds + 1):  # round 0 warms up (prepared statements, listener)
            await _until_set(waiting, task)
            waiting.clear()
            await asyncio.sleep(_SETTLE)
            seen = len(stamps)
            began = time.perf_counter()
            await config.store.send_event(WAIT_WORKFLOW, "latency", EVENT, {"last": i == rounds})
            sent = time.perf_counter()
            while len(stamps) == seen:
                await asyncio.wait([task], timeout=0.0005)
                if task.done() and len(stamps) == seen:
                    raise task.exception() or RuntimeError("the waiter ended early")
            if i:
                latencies.append(stamps[-1] - sent)
                sends.append(sent - began)
        final = await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return {
        "rounds": rounds,
        "completed": final.completed,
        "latency_p50_ms": percentile(latencies, 0.5) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
        "latency_max_ms": max(latencies) * 1000,
        "send_event_p50_ms": percentile(sends, 0.5) * 1000,
    }


async def _until_set(event: asyncio.Event, task: asyncio.Task[Any]) -> None:
    waiter = asyncio.create_task(event.wait())
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not event.is_set():
        raise task.exception() or RuntimeError("the waiter ended before waiting")


# -- many waiters -----------------------------------------------------------------------


class Waiters:
    """``count`` instances waiting in-process (started by :meth:`start`, until :meth:`stop`)."""

    def __init__(
        self, config: DBConfig, definition: WorkflowDefinition, count: int, prefix: str
    ) -> None:
        self.config = config
        self.definition = definition
        self.count = count
        self.prefix = prefix
        self.arrived = 0
        self.all_in = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    def _arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.count:
            self.all_in.set()

    async def start(self) -> float:
        """Start them; return once every one waits (seconds it took)."""
        definition, listen = self.definition, _on_wait(self._arrive)
        steps = _steps(lambda: None)
        began = time.perf_counter()
        self.tasks = [
            asyncio.create_task(
                PersistentWorkflowStateMachine(
                    self.config,
                    definition,
                    steps=steps,
                    instance_id=f"{self.prefix}-{i}",
                    listeners=[listen],
                ).run_workflow()
            )
            for i in range(self.count)
        ]
        while not self.all_in.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_in.wait(), 2.0)
            logger.info("wait check: %d/%d instances waiting", self.arrived, self.count)
            ended = next((t for t in self.tasks if t.done()), None)
            if ended is not None:
                raise ended.exception() or RuntimeError("a waiting instance ended early")
        return time.perf_counter() - began

    async def stop(self) -> list[str]:
        """Cancel them (each releases its lock); the unexpected failures."""
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        return [
            f"{type(r).__name__}: {r}"
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        ][:3]


async def idle_statements(
    config: DBConfig, monitor: Monitor, *, instances: int, seconds: float
) -> dict[str, Any]:
    """What ``instances`` instances waiting in-process with no event send in ``seconds``."""
    log = SessionLog()
    logged = logged_config(config, log)
    waiters = Waiters(logged, wait_definition(), instances, "idle")
    try:
        await waiters.start()
        await asyncio.sleep(1.0)  # the last lock/lookup/waiting-row statements are done
        before = await monitor.snapshot()
        log.counting = True
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        log.counting = False
        elapsed = time.perf_counter() - began
        after = await monitor.snapshot()
        sessions = await _sessions(monitor.conn, log.pids)
        failures = await waiters.stop()
    finally:
        await logged.close()
    server = None  # database-wide: other sessions on the database count too
    if before.calls is not None and after.calls is not None:
        server = sum(n - before.calls.get(key, 0) for key, n in after.calls.items())
    xacts = after.xact_commit - before.xact_commit
    xacts -= after.monitor_statements - before.monitor_statements
    client = sum(log.counts.values())
    per_minute = 60.0 / elapsed
    others = sum(n for (_, label), n in log.counts.items() if label != HEARTBEAT)
    return {
        "instances": instances,
        "seconds": elapsed,
        "statements": client,
        "statements_per_minute": client * per_minute,
        "per": "process (not per instance)",
        "server_statements_per_minute_database_wide": None
        if server is None
        else server * per_minute,
        "server_transactions_per_minute_database_wide": xacts * per_minute,
        "beyond_heartbeats": others,
        "by_connection": {
            f"{app}: {label}": round(n * per_minute, 1) for (app, label), n in log.counts.items()
        },
        "sessions": sessions,
        "expected_heartbeats_per_minute": sessions.get(LISTENER_APP, 0) * 12
        + sessions.get("fsmflow-owner", 0) * 12,
        "unexpected_failures": failures,
    }


async def waiting_memory(
    config: DBConfig, monitor: Monitor, *, instances: int, trace: bool
) -> dict[str, Any]:
    """``instances`` instances waiting in-process in this program: memory, listeners."""
    log = SessionLog()
    logged = logged_config(config, log)
    definition = wait_definition()
    warm = Waiters(logged, definition, 1, "warm")  # the machine, listener, prepared statements
    try:
        await warm.start()
        gc.collect()
        rss_before, machines_before = rss_bytes(), state_machines()
        if trace:
            tracemalloc.start()
        waiters = Waiters(logged, definition, instances, "waiting")
        try:
            seconds = await waiters.start()
            gc.collect()
            rss_after, machines_after = rss_bytes(), state_machines()
            traced = tracemalloc.get_traced_memory() if trace else None
            models = len(WorkflowMachine.of(definition).machine.models)
            sessions = await _sessions(monitor.conn, log.pids)
        finally:
            if trace:
                tracemalloc.stop()
            failures = await waiters.stop() + await warm.stop()
    finally:
        await logged.close()
    delta = None if rss_before is None or rss_after is None else rss_after - rss_before
    return {
        "instances": instances,
        "seconds_to_wait_all": seconds,
        "rss_delta_mb": None if delta is None else delta / 2**20,
        "rss_per_instance_kb": None if delta is None else delta / instances / 1024,
        "tracemalloc_current_mb": None if traced is None else traced[0] / 2**20,
        "tracemalloc_per_instance_kb": None if traced is None else traced[0] / instances / 1024,
        "state_machines_before": machines_before,
        "state_machines_after": machines_after,
        "models_on_the_machine": models,
        "listening_connections": sessions.get(LISTENER_APP, 0),
        "sessions": sessions,
        "unexpected_failures": failures,
    }


async def wait_check(
    scratch_table: Callable[[str], Any],
    monitor: Monitor,
    connect_kwargs: dict[str, Any],
    *,
    rounds: int,
    instances: int,
    idle_seconds: float,
    memory_instances: int,
    trace: bool,
) -> dict[str, Any]:
    """The three measurements, each in a fresh scratch table from ``scratch_table``."""
    logger.info("wait check: delivery latency over %d events", rounds)
    report: dict[str, Any] = {
        "latency": await delivery_latency(await scratch_table("_wlat"), rounds=rounds)
    }
    logger.info("wait check: %d idle waiters for %.0f s", instances, idle_seconds)
    report["idle"] = await idle_statements(
        await scratch_table("_widle"), monitor, instances=instances, seconds=idle_seconds
    )
    capacity = await lock_capacity(connect_kwargs)
    if capacity < memory_instances + _LOCKS_SPARE:
        report["memory"] = {
            "skipped": f"the server's lock table holds about {capacity} locks and each instance "
            f"waiting in-process holds one; raise max_locks_per_transaction (needs "
            f"{memory_instances + _LOCKS_SPARE} or more) or lower --wait-memory-instances"
        }
    else:
        logger.info("wait check: %d instances waiting in one program", memory_instances)
        report["memory"] = await waiting_memory(
            await scratch_table("_wmem"), monitor, instances=memory_instances, trace=trace
        )
    return report
