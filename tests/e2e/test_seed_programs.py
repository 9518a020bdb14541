"""Programs written against the seed API run unchanged but for their import line.

The programs in ``tests/e2e/seed_programs/`` are written the way the seed project's own
examples were, ending with ``if db_config.pool: await db_config.pool.close()``. Each runs
as a real process, twice (the second run starts a new instance: the first one completed),
and the test reads back what it stored, checks its output, that its stderr carries no
"unclosed"/"Task was destroyed" warning, and that no session of it is left on the server.

The seed-compatible members (``DBConfig.pool``/``setup()``/``close()``,
``PersistentWorkflowStateMachine.setup()``, ``WorkflowState.workflow_id``) are checked
in-process too: closing ``pool`` closes every fsmflow connection, the owner connections
included, and a later ``setup()`` connects again.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import psycopg
import pytest

from fsmflow import (
    DBConfig,
    PersistentWorkflowStateMachine,
    StoreError,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
)
from tests.conftest import run_python
from tests.e2e.support import SAFETY_TIMEOUT, Row, assert_complete, history, instance_ids, output_of

pytestmark = pytest.mark.timeout(180)

PROGRAMS = "tests/e2e/seed_programs"
# What a leaked connection, a pending task or a forgotten await prints at exit.
LEAK_WARNINGS = ("nclosed", "Task was destroyed", "ResourceWarning", "never awaited")

Edge = tuple[str | None, str | None, str | None]


def run_seed_program(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python <program>`` with ResourceWarnings shown; assert a clean exit 0."""
    result = run_python(["-W", "default", f"{PROGRAMS}/{name}"], env, timeout=SAFETY_TIMEOUT)
    assert result.returncode == 0, output_of(result)
    for warning in LEAK_WARNINGS:
        assert warning not in result.stderr, output_of(result)
    return result


def other_sessions(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Sessions on the test database other than ``conn``'s own."""
    rows = conn.execute(
        "SELECT pid, application_name, state FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    conn.commit()
    return rows


def assert_no_sessions_left(conn: psycopg.Connection[Any]) -> None:
    """No session but ``conn``'s on the test database (a closed session's backend takes a
    moment to leave ``pg_stat_activity``: bounded polling, never a timing assertion)."""
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while (left := other_sessions(conn)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []


def the_only_new_instance(conn: psycopg.Connection[Any], workflow: str, known: list[str]) -> str:
    ids = instance_ids(conn, workflow)
    assert ids[: len(known)] == known
    assert len(ids) == len(known) + 1, ids
    return ids[-1]


def check_run(
    conn: psycopg.Connection[Any],
    workflow: str,
    known: list[str],
    edges: list[Edge],
    output: str,
) -> tuple[str, list[Row]]:
    """The run stored one new, complete instance with ``edges`` and printed its state."""
    instance = the_only_new_instance(conn, workflow, known)
    rows = history(conn, workflow, instance)
    assert_complete(rows)
    assert [r.edge() for r in rows] == edges
    final_state = rows[-1].source_state
    # print(workflow.workflow_state) shows the seed's fields (context keys only).
    assert f"WorkflowState(workflow_name={workflow!r}, instance_id={instance!r}" in output
    assert f"current_state={final_state!r}" in output
    assert "completed=True" in output
    assert f"workflow {instance} ended in state {final_state} (completed=True)" in output
    assert_no_sessions_left(conn)
    return instance, rows


# -- five tasks, one branch ------------------------------------------------------------

GENERIC = "Generic Workflow"


def generic_edges(branch: str, dest: str) -> list[Edge]:
    return [
        (None, None, "task1"),
        ("next", "task1", "task2"),
        (branch, "task2", dest),
        ("next", dest, "task4"),
        ("complete", "task4", None),
    ]


def test_generic_seed_program_runs_twice(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    first = run_seed_program("generic_workflow.py", {**db_env, "TASK2_RESULT": "success"})
    one, rows = check_run(postgresql, GENERIC, [], generic_edges("success", "task3a"), first.stdout)
    assert rows[0].context == {"started_by": "seed program"}
    assert rows[-1].context == {
        "started_by": "seed program",
        "task1_result": "completed",
        "task2_result": "success",
        "task3_result": "success_path_completed",
        "task4_result": "completed",
    }
    assert "via success_path_completed" in first.stdout

    # The first instance completed: running again without an instance id starts a new one.
    second = run_seed_program("generic_workflow.py", {**db_env, "TASK2_RESULT": "failure"})
    _, rows = check_run(
        postgresql, GENERIC, [one], generic_edges("failure", "task3b"), second.stdout
    )
    assert rows[-1].context["task3_result"] == "failure_path_completed"
    assert "via failure_path_completed" in second.stdout


# -- nine states, custom sync conditions -----------------------------------------------

TICKET = "support_ticket_seed"
TICKET_STATES = {
    "new_ticket", "triage", "escalate", "assign", "investigate", "propose_fix",
    "customer_review", "reopen", "close_ticket",
}  # fmt: skip
TICKET_TAIL: list[Edge] = [
    ("start_work", "assign", "investigate"),
    ("found_cause", "investigate", "propose_fix"),
    ("ask_customer", "propose_fix", "customer_review"),
    ("reject", "customer_review", "reopen"),  # score 2: is_unhappy
    ("work_again", "reopen", "investigate"),
    ("found_cause", "investigate", "propose_fix"),
    ("ask_customer", "propose_fix", "customer_review"),
    ("accept", "customer_review", "close_ticket"),  # score 5: is_satisfied
    ("archive", "close_ticket", None),
]
TICKET_URGENT: list[Edge] = [
    (None, None, "new_ticket"),
    ("start_triage", "new_ticket", "triage"),
    ("escalate_ticket", "triage", "escalate"),  # is_urgent("high")
    ("assign_senior", "escalate", "assign"),
    *TICKET_TAIL,
]
TICKET_ROUTINE: list[Edge] = [
    (None, None, "new_ticket"),
    ("start_triage", "new_ticket", "triage"),
    ("assign_ticket", "triage", "assign"),  # is_routine("low")
    *TICKET_TAIL,
]


def test_ticket_seed_program_runs_twice(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    first = run_seed_program("ticket_workflow.py", {**db_env, "TICKET_PRIORITY": "high"})
    one, rows = check_run(postgresql, TICKET, [], TICKET_URGENT, first.stdout)
    final = rows[-1].context
    assert final["status"] == "closed"
    assert final["team"] == "senior-support"
    assert final["reviews"] == [2, 5]
    assert final["investigations"] == 2
    assert {r.dest_state for r in rows} - {None} == TICKET_STATES  # all nine visited

    second = run_seed_program("ticket_workflow.py", {**db_env, "TICKET_PRIORITY": "low"})
    _, rows = check_run(postgresql, TICKET, [one], TICKET_ROUTINE, second.stdout)
    assert rows[-1].context["team"] == "first-line"
    assert "triaged as low; assigned to first-line-agent" in second.stdout


# -- the members, in-process -----------------------------------------------------------

TWO_STEPS = WorkflowDefinition(
    name="seed_members",
    steps=["first", "second"],
    transitions=[Transition(trigger="go", source="first", dest="second")],
)


def step(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
    ctx.data["ran"] = ctx.data.get("ran", 0) + 1
    return ctx, None


def runner(config: DBConfig) -> PersistentWorkflowStateMachine:
    machine = PersistentWorkflowStateMachine(config, TWO_STEPS, handle_signals=False)
    machine.steps = {"first": step, "second": step}
    return machine


async def test_pool_is_none_until_setup_and_after_close(
    db_config: DBConfig, postgresql: psycopg.Connection[Any]
) -> None:
    assert db_config.pool is None
    await db_config.setup()
    pool = db_config.pool
    assert pool is not None
    # The asyncpg pool's common methods, by delegation.
    assert await pool.fetchval("SELECT 1") == 1
    assert await pool.execute("SELECT 1") == "SELECT 1"
    assert [tuple(r) for r in await pool.fetch("SELECT 2 AS two")] == [(2,)]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 3") == 3
    assert pool.get_size() >= 1
    await db_config.close()
    assert db_config.pool is None
    assert_no_sessions_left(postgresql)


async def test_pool_close_closes_the_owner_connections_too(
    db_config: DBConfig, postgresql: psycopg.Connection[Any]
) -> None:
    machine = runner(db_config)
    await machine.setup()
    state = await machine.run_workflow({})
    assert state.completed and state.workflow_id == state.instance_id
    assert machine.workflow_state.workflow_id == state.instance_id
    names = {row[1] for row in other_sessions(postgresql)}
    assert "fsmflow-owner" in names  # the lane that held the instance's lock is open

    pool = db_config.pool
    assert pool is not None
    await pool.close()  # the seed's ending
    assert db_config.pool is None
    assert_no_sessions_left(postgresql)
    await pool.close()  # closing again is harmless

    # A later setup() connects again, and a new runner works on the new connections.
    await db_config.setup()
    assert db_config.pool is not None
    again = runner(db_config)
    await again.setup()
    second = await again.run_workflow({})
    assert second.completed and second.instance_id != state.instance_id
    await pool.close()  # a stale wrapper leaves the new connections alone
    assert db_config.pool is not None
    assert await db_config.pool.fetchval("SELECT 1") == 1
    await db_config.pool.close()
    assert db_config.pool is None
    assert_no_sessions_left(postgresql)

    # The runner built before the close says what to do instead of hanging.
    with pytest.raises(StoreError, match="closed") as caught:
        await machine.setup()
    assert "DBConfig" in str(caught.value)
    assert_no_sessions_left(postgresql)


async def test_async_with_pool_closes_the_store(
    db_config: DBConfig, postgresql: psycopg.Connection[Any]
) -> None:
    await db_config.setup()
    pool = db_config.pool
    assert pool is not None
    async with pool as entered:
        assert await entered.fetchval("SELECT 1") == 1
    assert db_config.pool is None
    assert_no_sessions_left(postgresql)


async def test_workflow_state_has_the_seed_fields(db_config: DBConfig) -> None:
    machine = runner(db_config)
    await machine.run_workflow({})
    state = machine.workflow_state
    seed_fields = {
        "workflow_id": state.instance_id,
        "workflow_name": "seed_members",
        "current_state": "second",
        "context": state.context,
        "completed": True,
    }
    assert {name: getattr(state, name) for name in seed_fields} == seed_fields
    assert state.context.data == {"ran": 2}
