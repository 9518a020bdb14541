"""The bench's second baseline: the workflow loop a careful user writes by hand.

A ``transitions`` :class:`~transitions.extensions.asyncio.AsyncMachine` (one machine for
the run, one model per instance, added and removed like fsmflow does) walks the same
linear workflow of trivial async steps; after each step one conditional INSERT records
the transition: the fsmflow row shape, inserted only if the instance's last row is
``seq - 1`` (the condition of fsmflow's append), autocommit. Nothing else: no lock, no
lookup, no start row (seq 0 is the first step's row), no fsmflow code at run time. That
is the floor fsmflow's own per-step work is compared with (issue 13: fsmflow >= 0.95 x
this loop sequentially, its client CPU within 1.2 x).
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any, Final

from transitions.extensions.asyncio import AsyncMachine

from fsmflow import sql
from fsmflow.bench.measure import Execute, Run, in_parallel
from fsmflow.model.context import compact_json
from fsmflow.settings import DBConfig

HANDROLLED_WORKFLOW: Final = "bench_handrolled"
_CONDITIONAL_INSERT: Final = (
    "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, trigger, source_state, "
    "dest_state, context, status, fingerprint, attempt_id, duration_ms, error) "
    "SELECT $1::text, $2::text, $3::integer, $4::text, $5::text, $6::text, $7::json, "
    "$8::text, $9::text, $10::uuid, $11::float8, $12::jsonb "
    "WHERE coalesce((SELECT max(seq) FROM fsmflow_transitions "
    "WHERE workflow_name = $1 AND instance_id = $2), -1) = $3 - 1"
)
_INSERTED: Final = "INSERT 0 1"


def handrolled_insert(config: DBConfig) -> str:
    """The hand-rolled loop's conditional INSERT, bound to ``config``'s table."""
    schema, _, table = config.table.rpartition(".")
    return sql.bind_table(_CONDITIONAL_INSERT, schema or None, table)


class _Instance:
    """A model: the machine gives it ``state``."""

    state: str


async def _trivial_step(context: dict[str, Any]) -> dict[str, Any]:
    return context


class HandRolled:
    """The hand-rolled loop over a linear workflow of ``steps`` states."""

    def __init__(self, query: str, steps: int) -> None:
        self.query = query
        self.states = [f"s{i}" for i in range(steps)]
        self.machine = AsyncMachine(
            model=None,
            states=self.states,
            transitions=[
                {"trigger": "next", "source": a, "dest": b}
                for a, b in itertools.pairwise(self.states)
            ],
            initial=self.states[0],
            auto_transitions=False,
        )
        self._next = self.machine.events["next"]  # the Event itself: no lookup per step

    async def run_instance(
        self, execute: Execute, instance_id: str, context: dict[str, Any], stamps: list[float]
    ) -> None:
        """Run one instance to completion; ``stamps`` gets each step's start time."""
        model = _Instance()
        self.machine.add_model(model, initial=self.states[0])
        last = self.states[-1]
        try:
            for seq in itertools.count():
                state = model.state
                began = time.perf_counter()
                stamps.append(began)
                context = await _trivial_step(context)
                done = state == last
                status = await execute(
                    self.query,
                    HANDROLLED_WORKFLOW,
                    instance_id,
                    seq,
                    "finish" if done else "next",
                    state,
                    None if done else self.states[seq + 1],
                    compact_json(context),  # json.dumps without spaces, as fsmflow stores it
                    "completed" if done else "running",
                    "handrolled",
                    uuid.uuid4().hex,
                    (time.perf_counter() - began) * 1000,
                    None,
                )
                if status != _INSERTED:  # lost the race: a plain loop stops too
                    raise RuntimeError(f"hand-rolled {instance_id!r}: seq {seq} not inserted")
                if done:
                    return
                await self._next.trigger(model)
        finally:
            self.machine.remove_model(model)

    async def run(
        self,
        execute: Execute,
        *,
        instances: int,
        concurrency: int,
        context: dict[str, Any],
        prefix: str,
    ) -> Run:
        """Run ``instances`` instances, ``concurrency`` at a time, each of its INSERTs
        through ``execute`` (one connection's, or a pool's)."""
        latencies: list[float] = []
        counter = itertools.count()

        async def worker() -> None:
            while (i := next(counter)) < instances:
                stamps: list[float] = []
                await self.run_instance(execute, f"{prefix}-{i}", context, stamps)
                stamps.append(time.perf_counter())
                latencies.extend(b - a for a, b in itertools.pairwise(stamps))

        seconds, cpu = await in_parallel(min(concurrency, instances), worker)
        return Run(instances * len(self.states), seconds, cpu, latencies)
