"""Least privilege and durability checks (issue 3 item 6).

A migrator role that may CREATE in a schema runs ``init_db``; a runtime role with only USAGE on
the schema and SELECT, INSERT on the table runs workflows, and cannot change history. The SQL
used here is the SQL documented in the README's least-privilege section.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from fsmflow import DBConfig, PermissionDeniedError, StoreError

from .reliability_support import Harness, Tracker, assert_gap_free, linear_definition

WORKFLOW = "security_flow"
DEFINITION = linear_definition(WORKFLOW, ("fetch", "think", "report"))
SCHEMA = "fsm"
TABLE = f"{SCHEMA}.history"


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def least_privilege_roles(h: Harness) -> tuple[str, str]:
    """The documented setup: a migrator that owns the schema's tables, a runtime role."""
    migrator = h.create_role("migrator")
    runtime = h.create_role("runtime")
    h.sql(f"CREATE SCHEMA {SCHEMA}")
    h.sql(f"GRANT USAGE, CREATE ON SCHEMA {SCHEMA} TO {migrator}")
    h.sql(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {runtime}")
    return migrator, runtime


async def test_runtime_role_with_select_insert_runs_and_cannot_rewrite_history(
    h: Harness,
) -> None:
    migrator, runtime = least_privilege_roles(h)
    await h.config(user=migrator, table=TABLE).init_db()
    # The table's owner grants the runtime role exactly what the README lists.
    h.connect_as(migrator).execute(f"GRANT SELECT, INSERT ON {TABLE}, {TABLE}_events TO {runtime}")
    assert h.sql(
        "SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = 'history'",
        (SCHEMA,),
    ) == [(migrator,)]

    tracker = Tracker()
    config = h.config(user=runtime, table=TABLE)
    runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="s1")
    result = await runner.run_workflow()

    assert result.completed
    rows = h.rows(WORKFLOW, "s1", table=TABLE)
    assert_gap_free(rows)
    assert rows[-1]["status"] == "completed"
    # History is append-only in the database for the runtime role.
    runtime_sql = h.connect_as(runtime)
    for statement in (
        f"UPDATE {TABLE} SET status = 'running'",
        f"DELETE FROM {TABLE}",
        f"TRUNCATE {TABLE}",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            runtime_sql.execute(statement)
    with pytest.raises(PermissionDeniedError):
        await config.reset_db()
    assert h.rows(WORKFLOW, "s1", table=TABLE) == rows


async def test_runtime_role_cannot_create_a_table(h: Harness) -> None:
    migrator, runtime = least_privilege_roles(h)
    await h.config(user=migrator, table=TABLE).init_db()
    h.connect_as(migrator).execute(f"GRANT SELECT, INSERT ON {TABLE}, {TABLE}_events TO {runtime}")

    with pytest.raises(PermissionDeniedError) as denied:
        await h.config(user=runtime, table=f"{SCHEMA}.other_history").init_db()

    assert "CREATE" in str(denied.value)
    assert h.sql("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.other_history",)) == [(False,)]


async def test_runtime_role_may_init_db_an_up_to_date_table_and_it_changes_nothing(
    h: Harness,
) -> None:
    migrator, runtime = least_privilege_roles(h)
    await h.config(user=migrator, table=TABLE).init_db()
    h.connect_as(migrator).execute(f"GRANT SELECT, INSERT ON {TABLE}, {TABLE}_events TO {runtime}")
    catalog = (
        "SELECT c.relfilenode, obj_description(c.oid, 'pg_class'), "
        "(SELECT count(*) FROM pg_index WHERE indrelid = c.oid) FROM pg_class c "
        "WHERE c.oid = %s::regclass"
    )
    before = h.sql(catalog, (TABLE,))

    await h.config(user=runtime, table=TABLE).init_db()  # what a program does at start

    assert h.sql(catalog, (TABLE,)) == before


async def test_grants_named_in_the_error_are_enough(h: Harness) -> None:
    role = h.create_role("bare")
    tracker = Tracker()
    runner = h.runner(h.config(user=role), DEFINITION, tracker.steps(DEFINITION), instance_id="s2")
    with pytest.raises(PermissionDeniedError) as denied:
        await runner.run_workflow()
    grants = re.findall(r"GRANT [^;]+ TO <role>", str(denied.value))
    assert len(grants) == 2, str(denied.value)

    for grant in grants:
        h.sql(grant.replace("<role>", role))
    retry = h.runner(h.config(user=role), DEFINITION, tracker.steps(DEFINITION), instance_id="s2")
    assert (await retry.run_workflow()).completed
    assert tracker.runs == {"fetch": 1, "think": 1, "report": 1}


# -- durability --------------------------------------------------------------------------


def durability_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "synchronous_commit" in r.getMessage()
    ]


@pytest.mark.parametrize("where", ["ALTER DATABASE", "ALTER ROLE", "DSN (this session)"])
async def test_synchronous_commit_off_is_warned_about(
    h: Harness, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="fsmflow")
    role = h.create_role("durable")
    h.sql(f"GRANT SELECT, INSERT ON fsmflow_transitions, fsmflow_transitions_events TO {role}")
    config = h.config(user=role)
    if where == "ALTER DATABASE":
        h.sql(f"ALTER DATABASE {h.dbname} SET synchronous_commit = off")
    elif where == "ALTER ROLE":
        h.sql(f"ALTER ROLE {role} SET synchronous_commit = off")
    else:
        # asyncpg sends unknown DSN parameters as session settings.
        url = h.dsn(role, "&synchronous_commit=off")
        config = h.track(DBConfig(_env_file=None, url=url))  # type: ignore[call-arg]
    tracker = Tracker()
    runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="d1")

    assert (await runner.run_workflow()).completed

    [warning] = durability_warnings(caplog)
    assert "synchronous_commit=off" in warning and "ALTER ROLE" in warning


async def test_synchronous_commit_on_gives_no_warning(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fsmflow")
    tracker = Tracker()
    runner = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="d2")
    assert (await runner.run_workflow()).completed
    assert durability_warnings(caplog) == []


async def test_strict_durability_refuses_before_writing(h: Harness) -> None:
    h.sql(f"ALTER DATABASE {h.dbname} SET synchronous_commit = off")
    tracker = Tracker()
    config = h.config(strict_durability=True)
    runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="d3")

    with pytest.raises(StoreError) as refused:
        await runner.run_workflow()

    assert "synchronous_commit=off" in str(refused.value)
    assert "FSMFLOW_STRICT_DURABILITY" in str(refused.value)
    assert tracker.runs == {}
    assert h.count() == 0


async def test_runtime_role_sends_delivers_and_times_out_with_select_insert_only(
    h: Harness,
) -> None:
    from datetime import timedelta

    from fsmflow import Transition, WorkflowContext, WorkflowDefinition

    migrator, runtime = least_privilege_roles(h)
    await h.config(user=migrator, table=TABLE).init_db()
    h.connect_as(migrator).execute(f"GRANT SELECT, INSERT ON {TABLE}, {TABLE}_events TO {runtime}")
    definition = WorkflowDefinition(
        name="waits_flow",
        steps=["ask", "wait", "done"],
        transitions=[
            Transition("asked", "ask", "wait"),
            Transition("answered", "wait", "done", event="answer"),
            Transition("gave_up", "wait", "done", timeout=timedelta(seconds=1.5)),
            Transition("end", "done", None),
        ],
    )

    def step(trigger: str) -> Any:
        def run(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
            return ctx, trigger

        return run

    steps = {"ask": step("asked"), "done": step("end")}
    config = h.config(user=runtime, table=TABLE)
    for instance, send in (("by-event", True), ("by-timeout", False)):
        runner = h.runner(config, definition, steps, instance_id=instance)
        assert (await runner.run_workflow(suspend=True)).status == "waiting"
        if send:  # the identity column needs no grant beyond INSERT
            await config.store.send_event("waits_flow", instance, "answer", {"ok": True}, key="k")
        else:
            await asyncio.sleep(1.7)
        runner = h.runner(config, definition, steps, instance_id=instance)
        assert (await runner.run_workflow()).completed
    for statement in (f"UPDATE {TABLE}_events SET key = 'x'", f"DELETE FROM {TABLE}_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            h.connect_as(runtime).execute(statement)
