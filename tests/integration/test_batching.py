"""Group commit against a real PostgreSQL: rows that several owned instances append at the
same moment on one owner connection go in one statement, each stored exactly as a lone
append would store it, each conditional on its own instance.

``Store.append`` is driven directly with owners (no runner): the appends of a burst on a
shared lane go together in one statement; a lane's only instance sends at once.
The lost-connection cases of batches are in ``tests/faults/test_batch_faults.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsmflow import ConcurrentTransitionError, Store
from fsmflow.store.ownership import Ownership

from .reliability_support import Harness

WORKFLOW = "batch_flow"
AWARE = datetime.datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=datetime.UTC)
NAIVE = datetime.datetime(2026, 3, 4, 5, 6, 7, 654321)  # asyncpg sends a naive one as UTC


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def row(instance_id: str, **changes: Any) -> dict[str, Any]:
    """The arguments of one append (seq 0 of ``instance_id``), with ``changes``."""
    values: dict[str, Any] = {
        "seq": 0,
        "trigger": None,
        "source": None,
        "dest": "a",
        "context_json": json.dumps({"id": instance_id}, separators=(",", ":")),
        "status": "running",
        "fingerprint": "fp",
        "attempt_id": uuid.uuid4().hex,
        "duration_ms": None,
    }
    return {**values, **changes}


# Every kind of value a row carries, one row each: what the batch must store unchanged.
ROWS = {
    "plain": {},
    "text": {
        "context_json": '{"ünï":"🙂 \\"q\\" \\\\ \\n \\u0001","n":-0.5,"big":12345678901234567890}'
    },
    "moved": {"trigger": "go", "source": "a", "dest": "b", "duration_ms": 0.1 + 0.2},
    "failed": {"status": "failed", "dest": None, "error_json": '{"type":"KeyError","m":"x\'y"}'},
    "waits aware": {"status": "waiting", "waiting_since": AWARE, "wait_seconds": 1.25},
    "waits naive": {"status": "waiting", "waiting_since": NAIVE, "wait_seconds": None},
    "typed": {"state_version": 3},
}


async def owners(store: Store, ids: list[str]) -> dict[str, Ownership]:
    return {i: await store.acquire(WORKFLOW, i) for i in ids}


async def append_all(
    store: Store, owned: dict[str, Ownership], rows: dict[str, dict[str, Any]]
) -> list[BaseException | None]:
    """Append every row at the same moment; each append's exception, or None."""

    async def one(instance_id: str, values: dict[str, Any]) -> None:
        seq = values.pop("seq")
        await store.append(WORKFLOW, instance_id, seq, owner=owned[instance_id], **values)

    results = await asyncio.gather(
        *(one(i, dict(v)) for i, v in rows.items()), return_exceptions=True
    )
    return [r if isinstance(r, BaseException) else None for r in results]


def stored(h: Harness, instance_id: str) -> tuple[Any, ...]:
    return h.sql(
        "SELECT seq, trigger, source_state, dest_state, context::text, status, fingerprint, "
        "replace(attempt_id::text, '-', ''), duration_ms, error, waiting_since, "
        "wake_at - waiting_since, state_version FROM fsmflow_transitions "
        "WHERE workflow_name = %s AND instance_id = %s",
        (WORKFLOW, instance_id),
    )[0]


def expected(values: dict[str, Any]) -> tuple[Any, ...]:
    since = values.get("waiting_since")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=datetime.UTC)
    seconds = values.get("wait_seconds")
    error = values.get("error_json")
    return (
        values["seq"],
        values["trigger"],
        values["source"],
        values["dest"],
        values["context_json"],
        values["status"],
        values["fingerprint"],
        values["attempt_id"],
        values["duration_ms"],
        None if error is None else json.loads(error),
        since,
        None if seconds is None or since is None else datetime.timedelta(seconds=seconds),
        values.get("state_version"),
    )


async def test_rows_appended_at_once_share_one_statement_and_are_stored_exactly(
    h: Harness,
) -> None:
    config = h.config(owner_connections=1)
    rows = {name.replace(" ", "-"): row(name.replace(" ", "-"), **c) for name, c in ROWS.items()}
    async with config.store as store:
        owned = await owners(store, list(rows))
        before = store._owners.batch_counts
        assert await append_all(store, owned, rows) == [None] * len(rows)
        statements, sent = diff(store._owners.batch_counts, before)
        for owner in owned.values():
            await owner.release()
    # Appended in one pass of the event loop on a shared lane: all seven in one statement.
    assert (statements, sent) == (1, len(rows))
    for instance_id, values in rows.items():
        got = stored(h, instance_id)
        assert got == expected(values), instance_id
    for name in ("waits-aware", "waits-naive"):  # the server clock did not stand in
        assert stored(h, name)[10] == (AWARE if name == "waits-aware" else expected(rows[name])[10])


async def test_a_conflict_in_a_batch_fails_only_its_own_instance(h: Harness) -> None:
    config = h.config(owner_connections=1)
    ids = ["lead", "ok-1", "late", "ok-2"]
    rows = {i: row(i) for i in ids}
    rows["late"]["seq"] = 5  # its last row is not seq 4: this row must not land
    async with config.store as store:
        owned = await owners(store, ids)
        before = store._owners.batch_counts
        results = await append_all(store, owned, rows)
        statements = store._owners.batch_counts[0] - before[0]
        for owner in owned.values():
            await owner.release()
    assert statements == 1  # one batch of four
    assert [type(r).__name__ if r else None for r in results] == [
        None,
        None,
        ConcurrentTransitionError.__name__,
        None,
    ]
    late = results[2]
    assert isinstance(late, ConcurrentTransitionError) and "late" in str(late)
    assert h.sql(
        "SELECT instance_id FROM fsmflow_transitions WHERE workflow_name = %s ORDER BY 1",
        (WORKFLOW,),
    ) == [("lead",), ("ok-1",), ("ok-2",)]


async def test_a_lanes_only_instance_sends_at_once_from_its_own_task(h: Harness) -> None:
    config = h.config(owner_connections=1)
    async with config.store as store:
        owner = await store.acquire(WORKFLOW, "alone")
        before = store._owners.batch_counts
        values = row("alone")
        del values["seq"]
        append = asyncio.create_task(store.append(WORKFLOW, "alone", 0, owner=owner, **values))
        await asyncio.sleep(0)  # the append has run up to its statement
        # No flusher task: the caller's own task holds the lane, its statement is out.
        assert owner.batcher._flusher is None and owner.batcher.lane.lock.locked()
        await append
        assert diff(store._owners.batch_counts, before) == (1, 1)
        await owner.release()


async def test_a_row_on_a_shared_lane_goes_by_the_flusher_and_waits_for_no_co_owner(
    h: Harness,
) -> None:
    """The co-owner never appends: the row is handed to the flusher, and goes alone once
    the loop has run what was ready (no timer, no waiting for an instance busy elsewhere)."""
    config = h.config(owner_connections=1)
    async with config.store as store:
        owned = await owners(store, ["busy", "idle"])
        before = store._owners.batch_counts
        values = row("busy")
        del values["seq"]
        append = asyncio.create_task(
            store.append(WORKFLOW, "busy", 0, owner=owned["busy"], **values)
        )
        await asyncio.sleep(0)  # the append has queued its row
        assert owned["busy"].batcher._flusher is not None  # not sent from the caller's task
        await asyncio.wait_for(append, 30)
        assert diff(store._owners.batch_counts, before) == (1, 1)
        for owner in owned.values():
            await owner.release()
    count = "SELECT count(*) FROM fsmflow_transitions WHERE workflow_name = %s"
    assert h.sql(count, (WORKFLOW,)) == [(1,)]


def diff(after: tuple[int, int], before: tuple[int, int]) -> tuple[int, int]:
    return after[0] - before[0], after[1] - before[1]
