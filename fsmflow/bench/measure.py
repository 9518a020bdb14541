"""What ``fsmflow bench`` times: the workloads and the timed runs.

Three kinds of run share one row shape and one scratch table: the *baseline* (raw asyncpg
single-row INSERTs, autocommit, nothing else), the *hand-rolled* loop
(:mod:`fsmflow.bench.handrolled`) and *fsmflow* (real
:class:`~fsmflow.runner.PersistentWorkflowStateMachine` instances of a linear workflow
whose steps do nothing but note the time). A run is sequential (``concurrency=1``) or
keeps ``concurrency`` instances (or INSERT tasks) in flight.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import resource
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from fsmflow import sql
from fsmflow.engine.runner import Listener, PersistentWorkflowStateMachine
from fsmflow.model.context import WorkflowContext, compact_json
from fsmflow.model.definition import Transition, WorkflowDefinition, WorkflowStep
from fsmflow.settings import DBConfig
from fsmflow.store.database import no_reset

BASELINE_WORKFLOW: Final = "bench_baseline"
# The baselines' connections when concurrent (issue 13's table: "pool of 10"); sequential
# runs use one connection.
BASELINE_CONNECTIONS: Final = 10
_BASELINE_INSERT: Final = (
    "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, trigger, source_state, "
    "dest_state, context, status, fingerprint, attempt_id, duration_ms, error) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8, $9, $10::uuid, $11, $12)"
)
# Each trivial step notes when it started; the runner's task carries the list.
_STAMPS: contextvars.ContextVar[list[float]] = contextvars.ContextVar("fsmflow_bench_stamps")

Execute = Callable[..., Awaitable[str]]


# -- workloads ---------------------------------------------------------------------------


def linear_definition(name: str, steps: int) -> WorkflowDefinition:
    """A workflow ``s0 -> s1 -> ... -> s<steps-1>`` (the last state completes it)."""
    states = [f"s{i}" for i in range(steps)]
    transitions = [
        Transition(trigger="next", source=a, dest=b) for a, b in itertools.pairwise(states)
    ]
    return WorkflowDefinition(name=name, steps=states, transitions=transitions)


async def _stamp_step(context: WorkflowContext) -> tuple[WorkflowContext, None]:
    stamps = _STAMPS.get(None)
    if stamps is not None:
        stamps.append(time.perf_counter())
    return context, None


def trivial_steps(definition: WorkflowDefinition) -> dict[str, WorkflowStep]:
    """Async steps that only note the time (built once, shared by every instance)."""
    return {s: WorkflowStep(name=s, execute=_stamp_step) for s in definition.steps}


def sample_context(size: int) -> dict[str, Any]:
    """A plausible context whose JSON text is about ``size`` bytes."""
    data: dict[str, Any] = {
        "order": {
            "id": 4242,
            "customer": "c-000042",
            "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
            "total": 129.5,
        },
        "pad": "",
    }
    used = len(compact_json(data, ensure_ascii=True))
    data["pad"] = "x" * max(0, size - used)
    return data


def baseline_insert(config: DBConfig) -> str:
    """The baseline's plain INSERT, bound to ``config``'s table."""
    schema, _, table = config.table.rpartition(".")
    return sql.bind_table(_BASELINE_INSERT, schema or None, table)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank; 0.0 for none)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


# -- timed runs ----------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run: ``transitions`` rows (baseline) or recorded transitions (fsmflow)."""

    transitions: int
    seconds: float
    cpu_seconds: float  # this process (user + system): the client's own cost
    latencies: list[float]  # seconds, one per transition
    starts: list[float] = field(default_factory=list)  # fsmflow: call -> first step

    @property
    def rate(self) -> float:
        """Transitions (or rows) per second."""
        return self.transitions / self.seconds if self.seconds > 0 else 0.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def in_parallel(
    concurrency: int, worker: Callable[[], Coroutine[Any, Any, None]]
) -> tuple[float, float]:
    """Run ``concurrency`` copies of ``worker`` together: (wall seconds, client CPU seconds)."""
    began, cpu = time.perf_counter(), _cpu_seconds()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    except BaseExceptionGroup as failed:  # the first error itself, as a plain loop would
        raise failed.exceptions[0] from None
    return time.perf_counter() - began, _cpu_seconds() - cpu


async def run_fsmflow(
    target: DBConfig,
    definition: WorkflowDefinition,
    steps: Mapping[str, WorkflowStep],
    *,
    instances: int,
    concurrency: int,
    context: dict[str, Any],
    prefix: str,
    listeners: Sequence[Listener] = (),
) -> Run:
    """Run ``instances`` fresh instances to completion, ``concurrency`` at a time
    (``listeners``: given to every runner).

    A transition's latency runs from the start of its step to the start of the next one
    (the last: to ``run_workflow`` returning), so it covers the step, encoding, choosing
    the transition, the INSERT and moving the machine.
    """
    latencies: list[float] = []
    starts: list[float] = []
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < instances:
            stamps: list[float] = []
            _STAMPS.set(stamps)
            began = time.perf_counter()
            runner = PersistentWorkflowStateMachine(
                target, definition, steps=steps, instance_id=f"{prefix}-{i}", listeners=listeners
            )
            await runner.run_workflow(context)
            stamps.append(time.perf_counter())
            starts.append(stamps[0] - began)
            latencies.extend(b - a for a, b in itertools.pairwise(stamps))

    seconds, cpu = await in_parallel(min(concurrency, instances), worker)
    return Run(instances * len(definition.steps), seconds, cpu, latencies, starts)


async def run_baseline(
    execute: Execute,
    query: str,
    *,
    rows: int,
    steps: int,
    concurrency: int,
    context_json: str,
    fingerprint: str,
    prefix: str,
) -> Run:
    """Insert ``rows`` rows of the fsmflow row shape, one autocommit INSERT each."""
    latencies: list[float] = []
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < rows:
            began = time.perf_counter()
            seq = i % steps + 1
            await execute(
                query,
                BASELINE_WORKFLOW,
                f"{prefix}-{i // steps}",
                seq,
                "next",
                f"s{seq - 1}",
                f"s{seq}",
                context_json,
                "running",
                fingerprint,
                uuid.uuid4().hex,
                0.0,
                None,
            )
            latencies.append(time.perf_counter() - began)

    seconds, cpu = await in_parallel(min(concurrency, rows), worker)
    return Run(rows, seconds, cpu, latencies)


async def baseline_pool(
    connect_kwargs: dict[str, Any], size: int = BASELINE_CONNECTIONS
) -> asyncpg.Pool:
    """A pool like fsmflow's (``size`` connections, no reset on release), all opened."""
    pool = await asyncpg.create_pool(min_size=size, max_size=size, reset=no_reset, **connect_kwargs)
    assert pool is not None
    return pool


def copy_config(config: DBConfig, **changes: Any) -> DBConfig:
    """A fresh DBConfig (its own store and connections) with ``changes`` applied."""
    return DBConfig(**{**config.model_dump(), **changes})
