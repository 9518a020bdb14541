"""The schema and its migrations: ``schema.sql`` is version 1 plus every migration, init_db
upgrades a real version-1 table (with rows) in place, and a table of another version is
refused with the command that fixes it.

Real PostgreSQL: the catalogs are compared, never the SQL text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsmflow import (
    PermissionDeniedError,
    PersistentWorkflowStateMachine,
    SchemaMismatchError,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
)
from fsmflow import sql as fsql
from tests.integration.reliability_support import Harness

WORKFLOW = "migrated_flow"
DEFINITION = WorkflowDefinition(
    "migrated_flow",
    ["fill", "check", "done"],
    [Transition("next", "fill", "check"), Transition("next", "check", "done")],
)
ORDERED = {"topic": "t", "first": 1, "zzz_long_key_name": {"b": 1, "aa": 2}, "b": 2, "aa": 3}


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="fsmflow")
    return caplog


def create_version_1(h: Harness, table: str) -> None:
    h.sql(fsql.bind_table(fsql.read("migrations/0001_initial.sql"), None, table))


def shape(h: Harness, table: str) -> dict[str, Any]:
    """What the catalogs say about ``table``, with its name replaced by ``T``."""

    def named(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(str(v).replace(table, "T") for v in row) for row in rows)

    columns = h.sql(
        "SELECT attnum, attname, format_type(atttypid, atttypmod), attnotnull, attgenerated, "
        "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table,),
    )
    indexes = h.sql(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
        (table,),
    )
    constraints = h.sql(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass",
        (table,),
    )
    comment = h.sql("SELECT obj_description(%s::regclass, 'pg_class')", (table,))
    return {
        "columns": named(columns),
        "indexes": named(indexes),
        "constraints": named(constraints),
        "comment": comment,
    }


def test_schema_sql_is_version_1_plus_every_migration(h: Harness) -> None:
    assert sorted(fsql.migration_files()) == list(range(1, fsql.SCHEMA_VERSION + 1))
    h.sql(fsql.schema_ddl(None, "canonical"))
    create_version_1(h, "migrated")
    for migration in fsql.migrations(None, "migrated", 1):
        for statement in migration.statements:
            h.sql(statement)
    canonical, migrated = shape(h, "canonical"), shape(h, "migrated")
    assert canonical == migrated
    events = shape(h, "canonical_events")
    assert events == shape(h, "migrated_events")
    assert ("6", "payload", "json", "True", "", "None") in events["columns"]
    for helper in ("_queue", "_workers"):  # the worker fleet's tables (version 5)
        fleet = shape(h, f"canonical{helper}")
        assert fleet["columns"] and fleet == shape(h, f"migrated{helper}")
    assert canonical["comment"] == [(f"fsmflow schema_version={fsql.SCHEMA_VERSION}",)]
    assert ("7", "context", "json", "True", "", "None") in canonical["columns"]


def insert_v1_instance(h: Harness, table: str, instance_id: str) -> None:
    """An instance that fsmflow 0.1 left in state ``check`` (seq 1), context as jsonb."""
    row = (
        f"INSERT INTO {table} (workflow_name, instance_id, seq, trigger, source_state, "
        "dest_state, context, status, fingerprint, definition) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, 'running', %s, %s::jsonb)"
    )
    summary = json.dumps(DEFINITION.summary())
    fp = DEFINITION.fingerprint
    h.sql(row, (WORKFLOW, instance_id, 0, None, None, "fill", "{}", fp, summary))
    h.sql(row, (WORKFLOW, instance_id, 1, "next", "fill", "check", json.dumps(ORDERED), fp, None))


async def test_init_db_upgrades_a_version_1_table_with_rows_and_it_resumes(
    h: Harness, logs: pytest.LogCaptureFixture
) -> None:
    create_version_1(h, "old_history")
    insert_v1_instance(h, "old_history", "i-1")
    config = h.config(table="old_history")
    runner = PersistentWorkflowStateMachine(
        config, DEFINITION, steps=steps_recording([]), instance_id="i-1", handle_signals=False
    )
    with pytest.raises(SchemaMismatchError) as refused:
        await runner.run_workflow()
    message = str(refused.value)
    assert "schema version 1" in message and f"needs version {fsql.SCHEMA_VERSION}" in message
    assert "`fsmflow migrate`" in message and "ALTER" in message, message
    assert [r["seq"] for r in h.rows(WORKFLOW, "i-1", "old_history")] == [0, 1]  # nothing written

    await asyncio.gather(*(h.config(table="old_history").init_db() for _ in range(3)))
    upgraded = [r.getMessage() for r in logs.records if r.levelno == logging.INFO]
    assert sum(f"from schema version 1 to {fsql.SCHEMA_VERSION}" in m for m in upgraded) == 1, (
        upgraded
    )
    context_type = h.sql(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'old_history'::regclass AND attname = 'context'"
    )
    assert context_type == [("json",)]
    # Old rows keep the order jsonb gave them; nothing else changed.
    stored = h.sql("SELECT context::text FROM old_history WHERE seq = 1")[0][0]
    assert list(json.loads(stored)) == ["b", "aa", "first", "topic", "zzz_long_key_name"]

    seen: list[Any] = []
    fresh = h.config(table="old_history")
    state = await PersistentWorkflowStateMachine(
        fresh, DEFINITION, steps=steps_recording(seen), instance_id="i-1", handle_signals=False
    ).run_workflow()
    assert state.completed and [s for s, _ in seen] == ["check", "done"]
    assert seen[0][1] == json.loads(stored)
    assert [r["seq"] for r in h.rows(WORKFLOW, "i-1", "old_history")] == [0, 1, 2, 3]


def steps_recording(seen: list[Any]) -> dict[str, Any]:
    def record(name: str) -> Any:
        def step(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
            seen.append((name, dict(ctx.data)))
            return ctx, None

        return step

    return {name: record(name) for name in DEFINITION.steps}


async def test_init_db_logs_at_info_only_when_it_creates_or_upgrades(
    h: Harness, logs: pytest.LogCaptureFixture
) -> None:
    await h.config(table="logged").init_db()
    await h.config(table="logged").init_db()
    infos = [r.getMessage() for r in logs.records if r.levelno >= logging.INFO]
    debugs = [r.getMessage() for r in logs.records if r.levelno == logging.DEBUG]
    version = fsql.SCHEMA_VERSION
    assert sum(f"created at schema version {version}" in m for m in infos) == 1, infos
    assert sum("initialized" in m for m in infos) == 1, infos
    assert any("logged" in m and f"schema version {version} already" in m for m in debugs), debugs


async def test_a_newer_schema_version_says_to_upgrade_fsmflow(h: Harness) -> None:
    h.sql(fsql.schema_ddl(None, "future"))
    h.sql("COMMENT ON TABLE future IS 'fsmflow schema_version=99'")
    for attempt in (h.config(table="future").init_db(), h.config(table="future").store.open()):
        with pytest.raises(SchemaMismatchError, match=r"version 99, newer .* upgrade fsmflow"):
            await attempt
    assert h.sql("SELECT obj_description('future'::regclass, 'pg_class')") == [
        ("fsmflow schema_version=99",)
    ]


async def test_check_reports_the_schema_version(h: Harness) -> None:
    create_version_1(h, "old_history")
    report = await h.config(table="old_history").store.check_health()
    assert not report.healthy and report.schema_version == 1
    assert "schema version 1" in report.problems[0] and "fsmflow migrate" in report.problems[0]
    report = await h.config().store.check_health()
    assert report.healthy and report.schema_version == fsql.SCHEMA_VERSION


TABLE_63 = "t" * 63


async def test_a_63_character_table_gets_its_started_index(h: Harness) -> None:
    await h.config(table=TABLE_63).init_db()
    indexes = h.sql(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
        (TABLE_63,),
    )
    started = [name for name, definition in indexes if "WHERE (seq = 0)" in definition]
    assert started == [fsql.object_name(TABLE_63, "_started_idx")]
    assert len(started[0]) <= 63 and started[0].endswith("_started_idx")
    assert len(indexes) == 5  # and the primary key's, the terminal, event and wake ones


async def test_init_db_creates_the_index_a_63_character_table_lacks(
    h: Harness, logs: pytest.LogCaptureFixture
) -> None:
    create_version_1(h, TABLE_63)  # as fsmflow 0.1 left it: without its started index
    h.sql(f"DROP INDEX {fsql.object_name(TABLE_63, '_started_idx')}")
    await h.config(table=TABLE_63).init_db()
    infos = [r.getMessage() for r in logs.records if r.levelno == logging.INFO]
    index = fsql.object_name(TABLE_63, "_started_idx")
    assert any("upgraded from schema version 1" in m for m in infos), infos
    assert h.sql("SELECT to_regclass(%s) IS NOT NULL", (index,)) == [(True,)]


def test_object_names_fit_and_stay_apart() -> None:
    assert fsql.object_name("history", "_started_idx") == "history_started_idx"
    # Shorter than 63: PostgreSQL's own truncation, the index fsmflow 0.1 created.
    assert fsql.object_name("x" * 55, "_started_idx") == "x" * 55 + "_started"
    names = {fsql.object_name(t, "_started_idx") for t in ("a" * 63, "a" * 62 + "b", "a" * 60)}
    assert len(names) == 3 and all(len(n) <= 63 for n in names)
    # A 62-character table: truncating both suffixes would give `<table>_` twice, and
    # IF NOT EXISTS would then silently skip the second index.
    for length in range(45, 64):
        table = "t" * length
        own = [fsql.object_name(table, suffix) for suffix in fsql.FSMFLOW_INDEX_SUFFIXES]
        assert len(set(own)) == len(own) and table not in own, length
        assert all(len(name.encode()) <= 63 for name in own)


# -- fsmflow migrate: resumable, one at a time, least privilege ---------------------------


def index_facts(h: Harness, table: str) -> list[tuple[Any, ...]]:
    return h.sql(
        "SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass "
        "ORDER BY c.relname",
        (table,),
    )


async def test_migrate_drops_an_invalid_index_an_interrupted_build_left_and_rebuilds_it(
    h: Harness,
) -> None:
    create_version_1(h, "interrupted")
    h.sql(fsql.migration(2, None, "interrupted").statements[0])  # version 2 committed
    insert_v1_instance(h, "interrupted", "i-1")
    h.sql("INSERT INTO interrupted (workflow_name, instance_id, seq, context, status) "
          "VALUES ('w', 'x', 0, '{}', 'failed'), ('w', 'y', 0, '{}', 'failed')")  # fmt: skip
    index = fsql.object_name("interrupted", "_terminal_idx")
    # A concurrent build that failed half-way leaves an INVALID index of that name behind.
    with pytest.raises(Exception, match="could not create unique index"):
        h.sql(f"CREATE UNIQUE INDEX CONCURRENTLY {index} ON interrupted (workflow_name) "
              "WHERE status <> 'running'")  # fmt: skip
    assert (index, False) in [(n, v) for n, v, _ in index_facts(h, "interrupted")]

    store = h.config(table="interrupted").store
    pending = await store.migrate(dry_run=True)
    assert [m.name for m in pending] == [
        "0003_list_by_status.sql", "0004_durable_waits.sql", "0005_worker_fleet.sql",
        "0006_state_version.sql", "0007_trace_context.sql",
    ]  # fmt: skip
    # 5 adds tables only, 6 and 7 one nullable column each
    assert [m.in_transaction for m in pending] == [False, False, True, True, True]
    applied = await store.migrate()

    assert [m.version for m in applied] == [3, 4, 5, 6, 7]
    h.sql(fsql.schema_ddl(None, "canonical"))
    assert shape(h, "interrupted") == shape(h, "canonical")
    assert all(valid for _, valid, _ in index_facts(h, "interrupted"))
    assert await store.migrate() == []  # nothing pending: nothing done


async def test_two_migrators_never_run_at_once(h: Harness) -> None:
    create_version_1(h, "locked")
    holder = h.connect_as(h.info.user)
    holder.execute("SELECT pg_advisory_lock(%s)", (0x0F5A1,))
    migrating = asyncio.ensure_future(h.config(table="locked").store.migrate())
    try:
        for _ in range(600):  # bounds a hang only: the migrator polls the lock
            waiting = h.sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE '%%pg_try_advisory_lock%%' AND pid <> pg_backend_pid()"
            )
            if waiting[0][0]:
                break
            await asyncio.sleep(0.05)
        assert not migrating.done()
        assert fsql.schema_version(shape(h, "locked")["comment"][0][0]) == 1  # untouched
    finally:
        holder.execute("SELECT pg_advisory_unlock(%s)", (0x0F5A1,))
    applied = await asyncio.wait_for(migrating, 60)
    assert [m.version for m in applied] == [2, 3, 4, 5, 6, 7]


async def test_a_pending_migration_under_a_role_that_may_not_alter_names_the_way_out(
    h: Harness,
) -> None:
    create_version_1(h, "owned")  # owned by the superuser (the migrator here)
    insert_v1_instance(h, "owned", "i-1")
    runtime = h.create_role("runtime")
    h.sql(f"GRANT SELECT, INSERT ON owned TO {runtime}")
    before = shape(h, "owned")
    for attempt in (h.config(user=runtime, table="owned").init_db,
                    h.config(user=runtime, table="owned").store.migrate):  # fmt: skip
        with pytest.raises(PermissionDeniedError) as denied:
            await attempt()
        message = str(denied.value)
        assert "schema version 1" in message and "fsmflow migrate" in message, message
        assert runtime in message and "migrator role" in message and h.info.user in message
    assert shape(h, "owned") == before
    assert len(h.rows(WORKFLOW, "i-1", "owned")) == 2


async def test_migration_4_interrupted_half_way_resumes(h: Harness) -> None:
    create_version_1(h, "halfway")
    insert_v1_instance(h, "halfway", "i-1")
    for migration in fsql.migrations(None, "halfway", 1)[:2]:  # versions 2 and 3
        for statement in migration.statements:
            h.sql(statement)
    four = fsql.migration(4, None, "halfway")
    for statement in four.statements[:4]:  # columns, the check swapped, validated, events table
        h.sql(statement)
    assert fsql.schema_version(shape(h, "halfway")["comment"][0][0]) == 3
    applied = await h.config(table="halfway").store.migrate()
    assert [m.version for m in applied] == [4, 5, 6, 7]
    h.sql(fsql.schema_ddl(None, "canonical"))
    assert shape(h, "halfway") == shape(h, "canonical")
    assert shape(h, "halfway_events") == shape(h, "canonical_events")
    with pytest.raises(Exception, match="check constraint"):
        h.sql("INSERT INTO halfway (workflow_name, instance_id, seq, context, status) "
              "VALUES ('w', 'z', 0, '{}', 'sleeping')")  # fmt: skip
