"""The worker fleet's waits and races, with real worker processes.

A waiting instance is suspended by worker A (its lock released, its claim given back with
its deadline); A stops; worker B, the only live one, runs it when its event is sent or
when its deadline passes. A plain program and a worker started together on one submitted
instance: one of them runs every step, the other backs off. Both sweeps are set to a
minute, so whatever B does within the bounded waits below it does because it was woken
(a notification, its own timer for the next deadline), never because a sweep came by.
"""

from __future__ import annotations

from typing import Any

import pytest

from fsmflow import DBConfig, WorkflowDefinition

from .fleet_program import (
    DEADLINE_SECONDS,
    WAIT_DEADLINE_DEFINITION,
    WAIT_EVENT_DEFINITION,
    FleetConfig,
)
from .support import Scenario
from .test_fleet_kills import (
    NO_SWEEP,
    PROMPTLY,
    Fleet,
    FleetProcess,
    _until,
    assert_clean,
    executions,
    seeded,
)

pytestmark = pytest.mark.timeout(300)


def wait_history(fleet: Fleet, workflow: str, instance: str) -> list[dict[str, Any]]:
    """The stored rows of a waiting workflow's instance, in seq order."""
    return fleet.scenario.admin.sql(
        "SELECT seq, trigger, source_state, dest_state, status FROM fsmflow_transitions "
        "WHERE workflow_name = %s AND instance_id = %s ORDER BY seq",
        (workflow, instance),
    )


def suspended(fleet: Fleet, workflow: str, instance: str) -> dict[str, Any] | None:
    """The instance's queue row once it waits and nobody has it claimed."""
    rows = wait_history(fleet, workflow, instance)
    if not rows or rows[-1]["status"] != "waiting":
        return None
    for row in fleet.queue():
        if (row["workflow_name"], row["instance_id"]) == (workflow, instance):
            return row if row["claimed_by"] is None else None
    return None


async def suspend_in_a(
    fleet: Fleet, db: DBConfig, definition: WorkflowDefinition, instance: str
) -> tuple[FleetProcess, dict[str, Any]]:
    """Submit ``instance``; worker A runs ``ask`` and suspends it; A stops (exit 0). A's
    process and the queue row A left."""
    await fleet.submit(db, [instance], definition)
    a = fleet.worker(concurrency=2)
    row = await _until(lambda: suspended(fleet, definition.name, instance), "A suspends it")
    assert await fleet.stop(a) == 0, a.stderr_tail()
    assert (a.summary() or {}).get("suspended") == 1, a.summary()
    return a, row


def step_runs(fleet: Fleet, instance: str) -> dict[str, list[int]]:
    """The pids that started each step of ``instance``."""
    runs: dict[str, list[int]] = {}
    for event in fleet.scenario.events():
        if event.kind == "start" and event.instance == instance:
            runs.setdefault(event.state, []).append(event.pid)
    return runs


async def test_an_instance_suspended_by_one_worker_wakes_in_another_on_its_event(
    scenario: Scenario, db_config: DBConfig
) -> None:
    fleet = Fleet(scenario, FleetConfig(sleep=(0.02, 0.05)), **NO_SWEEP)
    workflow = WAIT_EVENT_DEFINITION.name
    a, row = await suspend_in_a(fleet, db_config, WAIT_EVENT_DEFINITION, "ev-1")
    assert row["ready_at"] == "infinity", row  # ready only once an event comes
    b = fleet.worker(concurrency=2)
    await fleet.wait_registered(b)
    assert fleet.completed(["ev-1"], workflow) == set()  # B has nothing to do yet
    await db_config.store.send_event(workflow, "ev-1", "approval", {"ok": True})
    await fleet.wait_completed(["ev-1"], limit=PROMPTLY, workflow=workflow)
    assert await fleet.stop(b) == 0, b.stderr_tail()

    rows = wait_history(fleet, workflow, "ev-1")
    print(f"[fleet wait: event] history {[r['trigger'] for r in rows]}, steps "
          f"{step_runs(fleet, 'ev-1')} (A pid {a.pid}, B pid {b.pid})")  # fmt: skip
    assert [r["trigger"] for r in rows] == ["fsmflow:submit", "asked", "approved", "finished"]
    assert step_runs(fleet, "ev-1") == {"ask": [a.pid], "done": [b.pid]}
    assert (b.summary() or {}).get("completed") == 1, b.summary()


async def test_an_instance_suspended_by_one_worker_times_out_in_another(
    scenario: Scenario, db_config: DBConfig
) -> None:
    fleet = Fleet(scenario, FleetConfig(sleep=(0.02, 0.05)), **NO_SWEEP)
    workflow = WAIT_DEADLINE_DEFINITION.name
    a, _ = await suspend_in_a(fleet, db_config, WAIT_DEADLINE_DEFINITION, "dl-1")
    # A is gone before the deadline (DEADLINE_SECONDS after ``ask``): it cannot have
    # taken the timeout itself. The queue row waits for the deadline, unclaimed.
    [row] = [q for q in fleet.queue() if q["instance_id"] == "dl-1"]
    assert row["claimed_by"] is None and row["later"], (
        f"worker A took longer than {DEADLINE_SECONDS} s to stop: {row}"
    )
    b = fleet.worker(concurrency=2)  # B's next wake-up: its timer for that deadline
    await fleet.wait_completed(["dl-1"], limit=DEADLINE_SECONDS + PROMPTLY, workflow=workflow)
    assert await fleet.stop(b) == 0, b.stderr_tail()

    rows = wait_history(fleet, workflow, "dl-1")
    print(f"[fleet wait: deadline] history {[r['trigger'] for r in rows]}, steps "
          f"{step_runs(fleet, 'dl-1')} (A pid {a.pid}, B pid {b.pid})")  # fmt: skip
    assert [r["trigger"] for r in rows] == ["fsmflow:submit", "asked", "expired", "finished"]
    assert step_runs(fleet, "dl-1") == {"ask": [a.pid], "done": [b.pid]}


# -- a plain program and a worker racing on one instance ----------------------------------

ROUNDS = 4
RACE_STATES = 3


async def test_a_plain_program_and_a_worker_racing_on_one_instance(
    scenario: Scenario, db_config: DBConfig
) -> None:
    """Both connect, then start at the same moment (a barrier) -- or, every other round,
    the program starts the moment the worker has claimed the instance, before or after
    its runner took the lock (the worker's start-up is longer: at once, the program
    mostly wins). The first step of whoever took the instance waits at a gate until the
    loser has shown it lost: the program with ``InstanceLockedError`` (exit 1), the worker
    by giving its claim back. Then the winner runs every step, once; a worker that lost
    comes back after its back-off, finds the instance completed and drops it from the
    queue without running anything."""
    seed = seeded(scenario)
    instances = [f"race{n}" for n in range(ROUNDS)]
    gated = frozenset((i, "s00") for i in instances)
    config = FleetConfig(states=RACE_STATES, sleep=(0.02, 0.05), seed=seed, gated=gated)
    fleet = Fleet(scenario, config)
    outcomes = []
    for n, instance in enumerate(instances):
        outcomes.append(await _race(fleet, db_config, instance, at_once=n % 2 == 0))
    exact = {(i, seq): 1 for i in instances for seq in range(RACE_STATES)}
    figures = assert_clean(scenario, fleet, instances, exact=exact)
    print(f"[fleet race] winners {outcomes}; {figures}")


async def _race(fleet: Fleet, db: DBConfig, instance: str, *, at_once: bool) -> str:
    await fleet.submit(db, [instance])
    worker = fleet.worker(concurrency=2, barrier=True)
    program = fleet.program(instance, barrier=True)
    for process in (worker, program):
        assert await process.wait_ready(), process.stderr_tail()
    worker.go()
    if not at_once:
        await _until(lambda: any(q["claimed_by"] for q in fleet.queue()), "the worker claims")
    program.go()
    first = await _until(lambda: executions(fleet.scenario.events()).get((instance, 0)), "s00")
    winner = program if first[0].pid == program.pid else worker
    if winner is program:
        await _until(lambda: "another runner holds it" in worker.stderr_text(), "worker backs off")
    else:
        assert await fleet.scenario.reap(program) == 1, program.stderr_tail()
        assert "InstanceLockedError" in program.stderr_text(), program.stderr_tail()
    fleet.open_gate()
    await fleet.wait_completed([instance])
    if winner is program:
        assert await fleet.scenario.reap(program) == 0, program.stderr_tail()
        await _until(lambda: not [q for q in fleet.queue() if q["instance_id"] == instance],
                     "the worker drops the completed instance")  # fmt: skip
    assert await fleet.stop(worker) == 0, worker.stderr_tail()
    fleet.gate.unlink()  # closed again for the next round
    runs = {e.pid for e in fleet.scenario.events() if e.kind == "start" and e.instance == instance}
    assert runs == {winner.pid}, f"{instance}: steps run by {runs}, winner {winner.pid}"
    return "program" if winner is program else "worker"
