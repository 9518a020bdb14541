"""Least privilege for the worker fleet: what a worker and a submitter need, and nothing more.

The runtime role keeps SELECT, INSERT on the history and events (append-only in the database
itself) and gets SELECT, INSERT, UPDATE, DELETE on the queue and workers tables only, as the
README's least-privilege section and the deploy files' setup comments say.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from fsmflow import PermissionDeniedError, Worker, Workflow

from .reliability_support import Harness, Tracker, linear_definition

WORKFLOW = "fleet_privileges"
DEFINITION = linear_definition(WORKFLOW, ("fetch", "report"))
SCHEMA = "fsm"
TABLE = f"{SCHEMA}.history"
FLEET_GRANT = f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE}_queue, {TABLE}_workers TO {{role}}"


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


async def setup_roles(h: Harness, *, fleet_grant: bool) -> str:
    migrator = h.create_role("migrator")
    runtime = h.create_role("runtime")
    h.sql(f"CREATE SCHEMA {SCHEMA}")
    h.sql(f"GRANT USAGE, CREATE ON SCHEMA {SCHEMA} TO {migrator}")
    h.sql(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {runtime}")
    await h.config(user=migrator, table=TABLE).init_db()
    owner = h.connect_as(migrator)
    owner.execute(f"GRANT SELECT, INSERT ON {TABLE}, {TABLE}_events TO {runtime}")
    if fleet_grant:
        owner.execute(FLEET_GRANT.format(role=runtime))
    return runtime


async def test_a_worker_runs_with_the_documented_grants_and_cannot_rewrite_history(
    h: Harness,
) -> None:
    runtime = await setup_roles(h, fleet_grant=True)
    config = h.config(user=runtime, table=TABLE)
    tracker = Tracker()
    workflow = Workflow(DEFINITION, tracker.steps(DEFINITION))
    await config.store.submit(workflow, instance_id="p-1")
    health = await config.store.check_health(workers=True)
    assert health.healthy and health.can_run_workers, health.problems
    worker = Worker(config, [workflow], handle_signals=False)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(400):
            last = await config.store.last_record(WORKFLOW, "p-1")
            if last is not None and last.status == "completed":
                break
            await asyncio.sleep(0.05)
        assert last is not None and last.status == "completed"
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    runtime_conn = h.connect_as(runtime)
    for statement in (f"UPDATE {TABLE} SET status = 'failed'", f"DELETE FROM {TABLE}"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            runtime_conn.execute(statement)


async def test_without_the_fleet_grant_a_worker_refuses_to_start_naming_it(h: Harness) -> None:
    runtime = await setup_roles(h, fleet_grant=False)
    config = h.config(user=runtime, table=TABLE)
    workflow = Workflow(DEFINITION, Tracker().steps(DEFINITION))
    with pytest.raises(PermissionDeniedError) as denied:
        await Worker(config, [workflow], handle_signals=False).run()
    message = str(denied.value)
    assert "GRANT SELECT, INSERT, UPDATE, DELETE" in message and "history_queue" in message
    health = await config.store.check_health()
    assert health.healthy and not health.can_run_workers  # programs need no fleet grant
    strict = await config.store.check_health(workers=True)
    assert not strict.healthy and any("workers cannot run" in p for p in strict.problems)


async def test_a_program_role_without_the_fleet_grant_lists_instances(h: Harness) -> None:
    runtime = await setup_roles(h, fleet_grant=False)
    config = h.config(user=runtime, table=TABLE)
    tracker = Tracker()
    runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="p-2")
    assert (await runner.run_workflow()).completed
    [summary] = await config.store.list_instances(WORKFLOW)
    assert summary.instance_id == "p-2"
    with pytest.raises(PermissionDeniedError, match=r"history_queue and fsm\.history_workers"):
        await config.store.instance_workers([(WORKFLOW, "p-2")])
