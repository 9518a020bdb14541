"""The store against a real PostgreSQL: the conditional append, schema set-up and reset,
and history read back.

``Store.append`` is driven directly here (no runner, no lock) so that two writers really
race; the runner-level conflicts are in ``test_runner.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from fsmflow import (
    ConcurrentTransitionError,
    HistoryCorruptError,
    Store,
    WorkflowContext,
)
from fsmflow.sql import SCHEMA_VERSION

from .reliability_support import (
    SAFETY_TIMEOUT,
    Harness,
    Tracker,
    assert_gap_free,
    linear_definition,
)

WORKFLOW = "store_flow"
DEFINITION = linear_definition(WORKFLOW, ("fetch", "think", "report"))


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


@pytest.fixture
def blocker(h: Harness) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection with autocommit off: its writes wait for an explicit commit."""
    conn = psycopg.connect(host=h.info.host, port=h.info.port, user=h.info.user, dbname=h.dbname)
    yield conn
    conn.close()


def new_attempt() -> str:
    return uuid.uuid4().hex


async def start(store: Store, instance_id: str, context: dict[str, Any] | None = None) -> str:
    attempt = new_attempt()
    await store.start(
        WORKFLOW,
        instance_id,
        "fetch",
        json.dumps(context or {}),
        fingerprint="fp",
        attempt_id=attempt,
        definition_json=json.dumps(DEFINITION.summary()),
    )
    return attempt


async def append(
    store: Store,
    instance_id: str,
    seq: int,
    *,
    attempt: str | None = None,
    context: dict[str, Any] | None = None,
    source: str = "fetch",
    dest: str | None = "think",
    trigger: str | None = "fetch_done",
    status: str = "running",
    workflow: str = WORKFLOW,
) -> None:
    await store.append(
        workflow,
        instance_id,
        seq,
        trigger=trigger,
        source=source,
        dest=dest,
        context_json=json.dumps(context if context is not None else {"seq": seq}),
        status=status,
        fingerprint="fp",
        attempt_id=attempt or new_attempt(),
        duration_ms=1.5,
    )


async def outcome(coro: Any) -> str:
    try:
        await coro
    except ConcurrentTransitionError:
        return "conflict"
    return "won"


# -- the conditional append ----------------------------------------------------------------


async def test_two_writers_racing_for_each_seq_one_wins_and_history_never_forks(
    h: Harness,
) -> None:
    first, second = h.config().store, h.config().store
    await start(first, "race")
    winners: list[str] = []
    for seq in range(1, 31):
        attempts = {"first": new_attempt(), "second": new_attempt()}
        results = await asyncio.gather(
            outcome(append(first, "race", seq, attempt=attempts["first"], context={"by": 1})),
            outcome(append(second, "race", seq, attempt=attempts["second"], context={"by": 2})),
        )
        assert sorted(results) == ["conflict", "won"], (seq, results)
        winner = "first" if results[0] == "won" else "second"
        winners.append(winner)
        stored = await first.record_at(WORKFLOW, "race", seq)
        assert stored is not None
        assert stored.attempt_id is not None
        assert uuid.UUID(stored.attempt_id).hex == attempts[winner]
        assert stored.context == {"by": 1 if winner == "first" else 2}
    rows = h.rows(WORKFLOW, "race")
    assert_gap_free(rows)
    assert len(rows) == 31


async def test_append_blocked_by_an_uncommitted_row_loses_when_it_commits(
    h: Harness, blocker: psycopg.Connection[Any]
) -> None:
    store = h.config().store
    await start(store, "i1")
    with blocker.cursor() as cur:  # another writer's seq 1, not committed yet
        cur.execute(
            "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, context) "
            "VALUES (%s, 'i1', 1, '{\"by\": \"other\"}')",
            (WORKFLOW,),
        )
    task = asyncio.ensure_future(append(store, "i1", 1, context={"by": "store"}))
    try:
        await wait_until_blocked_on_a_lock(h)
        assert not task.done()
        blocker.commit()
        with pytest.raises(ConcurrentTransitionError) as raised:
            await asyncio.wait_for(task, SAFETY_TIMEOUT)
    finally:
        blocker.rollback()
        if not task.done():
            task.cancel()
    assert raised.value.seq == 1
    assert raised.value.workflow == WORKFLOW and raised.value.instance_id == "i1"
    assert [r["context"] for r in h.rows(WORKFLOW, "i1")] == [{}, {"by": "other"}]


async def test_append_blocked_by_an_uncommitted_row_wins_when_it_rolls_back(
    h: Harness, blocker: psycopg.Connection[Any]
) -> None:
    store = h.config().store
    await start(store, "i1")
    with blocker.cursor() as cur:
        cur.execute(
            "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, context) "
            "VALUES (%s, 'i1', 1, '{}')",
            (WORKFLOW,),
        )
    task = asyncio.ensure_future(append(store, "i1", 1, context={"by": "store"}))
    try:
        await wait_until_blocked_on_a_lock(h)
        blocker.rollback()
        await asyncio.wait_for(task, SAFETY_TIMEOUT)
    finally:
        if not task.done():
            task.cancel()
    assert [r["context"] for r in h.rows(WORKFLOW, "i1")] == [{}, {"by": "store"}]


async def wait_until_blocked_on_a_lock(h: Harness) -> None:
    """Until a session of this database waits on a row lock inside an INSERT."""
    query = (
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO%'"
    )

    async def poll() -> None:
        while True:
            if h.sql(query):
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), SAFETY_TIMEOUT)


@pytest.mark.parametrize(
    ("seq", "why"), [(1, "already taken"), (3, "skips seq 2"), (5, "far ahead")]
)
async def test_append_of_a_taken_or_non_next_seq_is_a_conflict(
    h: Harness, seq: int, why: str
) -> None:
    store = h.config().store
    await start(store, "i1")
    await append(store, "i1", 1)
    before = h.rows(WORKFLOW, "i1")
    with pytest.raises(ConcurrentTransitionError) as raised:
        await append(store, "i1", seq)
    assert raised.value.seq == seq
    assert f"seq {seq}" in str(raised.value)
    assert h.rows(WORKFLOW, "i1") == before


async def test_start_of_an_existing_instance_is_a_conflict(h: Harness) -> None:
    store = h.config().store
    attempt = await start(store, "i1", {"first": True})
    with pytest.raises(ConcurrentTransitionError) as raised:
        await start(store, "i1", {"second": True})
    assert raised.value.seq == 0
    # Starting again with the same attempt id (an unknown outcome retried) is not an error.
    await store.start(
        WORKFLOW,
        "i1",
        "fetch",
        "{}",
        fingerprint="fp",
        attempt_id=attempt,
        definition_json=None,
    )
    assert [r["context"] for r in h.rows(WORKFLOW, "i1")] == [{"first": True}]


async def test_concurrent_starts_of_one_instance_one_wins(h: Harness) -> None:
    stores = [h.config().store for _ in range(4)]
    results = await asyncio.gather(
        *(outcome(start(s, "i1", {"by": n})) for n, s in enumerate(stores))
    )
    assert sorted(results) == ["conflict"] * 3 + ["won"]
    [row] = h.rows(WORKFLOW, "i1")
    assert row["context"] == {"by": results.index("won")}


# -- reading back --------------------------------------------------------------------------


async def test_history_records_and_last_record(h: Harness) -> None:
    store = h.config().store
    assert await store.last_record(WORKFLOW, "i1") is None
    assert await store.history(WORKFLOW, "i1") == []
    await start(store, "i1", {"n": 0})
    await append(store, "i1", 1, context={"n": 1})
    await append(
        store, "i1", 2, context={"n": 2}, source="think", dest=None, trigger=None,
        status="completed",
    )  # fmt: skip
    history = await store.history(WORKFLOW, "i1")
    assert [(r.seq, r.trigger, r.source_state, r.dest_state, r.status) for r in history] == [
        (0, None, None, "fetch", "running"),
        (1, "fetch_done", "fetch", "think", "running"),
        (2, None, "think", None, "completed"),
    ]
    assert [r.context for r in history] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert history[0].definition == DEFINITION.summary()
    assert [r.completed for r in history] == [False, False, True]
    assert [r.terminal for r in history] == [False, False, True]
    assert history[1].duration_ms == 1.5 and history[1].fingerprint == "fp"
    last = await store.last_record(WORKFLOW, "i1")
    assert last == history[-1]
    assert await store.record_at(WORKFLOW, "i1", 1) == history[1]
    assert await store.record_at(WORKFLOW, "i1", 3) is None
    assert await store.latest_unfinished(WORKFLOW) is None  # completed


async def test_latest_unfinished_is_the_most_recently_started(h: Harness) -> None:
    store = h.config().store
    assert await store.latest_unfinished(WORKFLOW) is None
    # Started in this order; ids sort the other way round.
    for instance in ("z_first", "m_second", "a_third"):
        await start(store, instance)
    assert await store.latest_unfinished(WORKFLOW) == "a_third"
    await append(store, "z_first", 1)  # recent activity does not count: start time does
    assert await store.latest_unfinished(WORKFLOW) == "a_third"
    await append(store, "a_third", 1, source="fetch", dest=None, status="completed")
    assert await store.latest_unfinished(WORKFLOW) == "m_second"
    await append(store, "m_second", 1, source="fetch", dest="fetch", status="failed")
    assert await store.latest_unfinished(WORKFLOW) == "z_first"
    assert await store.latest_unfinished("another_workflow") is None


@pytest.mark.parametrize("deleted", [1, 2])
async def test_a_gap_in_history_is_reported_naming_the_missing_seq(
    h: Harness, deleted: int
) -> None:
    store = h.config().store
    await start(store, "i1")
    for seq in (1, 2, 3):
        await append(store, "i1", seq)
    h.sql(
        "DELETE FROM fsmflow_transitions WHERE workflow_name = %s AND seq = %s",
        (WORKFLOW, deleted),
    )
    with pytest.raises(HistoryCorruptError, match=f"seq {deleted} is missing"):
        await store.history(WORKFLOW, "i1")


async def test_a_gap_before_the_last_row_stops_a_resume(h: Harness) -> None:
    config = h.config()
    tracker = Tracker()
    await start(config.store, "i1")
    await append(config.store, "i1", 1, context={"visited": ["fetch"]})
    await append(config.store, "i1", 2, source="think", dest="report", trigger="think_done")
    h.sql("DELETE FROM fsmflow_transitions WHERE workflow_name = %s AND seq = 1", (WORKFLOW,))
    runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="i1")
    with pytest.raises(HistoryCorruptError, match="seq 1 is missing"):
        await runner.run_workflow()
    assert tracker.runs == {}
    assert [r["seq"] for r in h.rows(WORKFLOW, "i1")] == [0, 2]


# -- init_db and reset_db ------------------------------------------------------------------


async def run_to_end(h: Harness, instance_id: str, **config: Any) -> dict[str, int]:
    tracker = Tracker()
    runner = h.runner(
        h.config(**config), DEFINITION, tracker.steps(DEFINITION), instance_id=instance_id
    )
    state = await runner.run_workflow(context={"id": instance_id})
    assert state.completed
    return dict(tracker.runs)


async def test_init_db_twice_is_idempotent_and_keeps_data(h: Harness) -> None:
    await run_to_end(h, "kept")
    before = h.rows(WORKFLOW, "kept")
    config = h.config()
    await config.init_db()
    await config.init_db()
    await asyncio.gather(h.config().init_db(), h.config().init_db(), h.config().init_db())
    assert h.rows(WORKFLOW, "kept") == before
    indexes = h.sql("SELECT indexname FROM pg_indexes WHERE tablename = 'fsmflow_transitions'")
    assert sorted(i for (i,) in indexes) == [
        "fsmflow_transitions_event_idx",
        "fsmflow_transitions_pkey",
        "fsmflow_transitions_started_idx",
        "fsmflow_transitions_terminal_idx",
        "fsmflow_transitions_wake_idx",
    ]
    # The completed instance is still complete: nothing runs again.
    assert await run_to_end(h, "kept") == {}


@pytest.mark.parametrize("table", ["custom_history", "wf.history"])
async def test_init_db_creates_a_configured_table(h: Harness, table: str) -> None:
    if "." in table:
        h.sql(f"CREATE SCHEMA {table.split('.')[0]}")
    config = h.config(table=table)
    await config.init_db()
    await config.init_db()
    comment = h.sql("SELECT obj_description(%s::regclass, 'pg_class')", (table,))
    assert comment == [(f"fsmflow schema_version={SCHEMA_VERSION}",)]
    assert await run_to_end(h, "i1", table=table) == {"fetch": 1, "think": 1, "report": 1}
    assert h.count(table) == 4
    assert h.count() == 0  # the default table is untouched


async def test_reset_db_deletes_every_row_of_every_workflow(h: Harness) -> None:
    store = h.config().store
    for instance in ("i1", "i2"):
        await run_to_end(h, instance)
    for workflow in ("other", "'; DROP TABLE x; --"):
        await append(store, "i1", 0, workflow=workflow, source="a", dest="b")
    assert h.count() == 10
    config = h.config()
    await config.reset_db()
    assert h.count() == 0
    assert await config.store.history(WORKFLOW, "i1") == []
    await config.reset_db()  # resetting an empty table is fine
    # The table is intact: the same instance id starts afresh.
    assert await run_to_end(h, "i1") == {"fetch": 1, "think": 1, "report": 1}
    assert [r["seq"] for r in h.rows(WORKFLOW, "i1")] == [0, 1, 2, 3]


async def test_reset_db_only_touches_its_own_table(h: Harness) -> None:
    await run_to_end(h, "default_table")
    other = h.config(table="other_history")
    await other.init_db()
    await run_to_end(h, "other_table", table="other_history")
    await other.reset_db()
    assert h.count("other_history") == 0
    assert h.count() == 4


# -- stored verbatim -----------------------------------------------------------------------


INJECTIONS = [
    "x'; DROP TABLE fsmflow_transitions; --",
    "Robert'); DELETE FROM fsmflow_transitions WHERE ('1'='1",
    '" OR 1=1 --',
    "$1 $2 ::jsonb",
    "fsmflow_transitions",
    "%s %(x)s {0} \\N",
    "$$; SELECT pg_sleep(30); $$",
    "*/ /* -- \\' \\\\",
]


@pytest.mark.parametrize("text", INJECTIONS)
async def test_injection_strings_in_every_text_column_round_trip(h: Harness, text: str) -> None:
    store = h.config().store
    await store.start(
        text, text, text, json.dumps({text: text}), fingerprint=text, attempt_id=new_attempt(),
        definition_json=json.dumps({"states": [text]}),
    )  # fmt: skip
    await append(
        store, text, 1, workflow=text, trigger=text, source=text, dest=text,
        context={text: [text]},
    )  # fmt: skip
    history = await store.history(text, text)
    assert [(r.workflow_name, r.instance_id) for r in history] == [(text, text)] * 2
    assert history[0].dest_state == text and history[0].context == {text: text}
    assert history[0].definition == {"states": [text]}
    assert (history[1].trigger, history[1].source_state, history[1].dest_state) == (text,) * 3
    assert history[1].context == {text: [text]}
    assert history[1].fingerprint == "fp" and history[0].fingerprint == text
    assert await store.latest_unfinished(text) == text
    assert h.count() == 2
    assert h.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'fsmflow_transitions'") == [(1,)]


async def test_context_returned_by_a_step_is_what_a_resume_sees(h: Harness) -> None:
    """A context read back from jsonb is equal to (and typed like) the one that was stored."""
    values = {
        "int": 2**62,
        "neg": -(10**20),
        "float": 0.1 + 0.2,
        "tiny": 5e-324,
        "near_cap": 9.999999999999998e15,
        "one": 1.0,
        "bool": True,
        "none": None,
        "text": "ünïcødé 🙂 \u2028 \t\n \\ \" '",
        "nested": {"list": [1, [2.5, {"k": []}], {}], "": ""},
    }

    async def produce(ctx: WorkflowContext) -> WorkflowContext:
        ctx.data.update(values)
        return ctx

    seen: list[dict[str, Any]] = []

    async def consume(ctx: WorkflowContext) -> WorkflowContext:
        seen.append(ctx.data)
        return ctx

    definition = linear_definition(WORKFLOW, ("produce", "consume"))
    runner = h.runner(h.config(), definition, {"produce": produce, "consume": consume})
    await runner.run_workflow()
    [received] = seen
    assert received == values
    for key, value in values.items():
        assert type(received[key]) is type(value), key
