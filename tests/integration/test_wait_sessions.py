"""A waiting runner whose sessions die: the owner's (the lock) and the listener's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fsmflow import DBConfig

from .reliability_support import Harness
from .test_waits import Counts, approval_definition, runner, wait_until_waiting


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> Any:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def terminate(h: Harness, application_name: str) -> int:
    rows = h.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s AND datname = current_database()",
        (application_name,),
    )
    return int(rows[0][0])


async def wait_for_session(h: Harness, application_name: str) -> None:
    for _ in range(500):
        found = h.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database()",
            (application_name,),
        )
        if found[0][0]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {application_name} session")


async def test_a_lost_owner_session_while_waiting_is_retaken_and_the_wait_goes_on(
    h: Harness,
) -> None:
    db: DBConfig = h.config()
    counts = Counts()
    task = asyncio.create_task(runner(db, approval_definition(), counts).run_workflow())
    await wait_until_waiting(db, "approval", "doc-1")
    assert terminate(h, "fsmflow-owner") == 1
    await wait_for_session(h, "fsmflow-owner")  # retaken at once, not at the next event
    await db.store.send_event("approval", "doc-1", "approval", {"ok": True})
    final = await asyncio.wait_for(task, 20)
    assert final.completed and counts.calls == {"draft": 1, "publish": 1}


async def test_a_lost_listener_reconnects_and_no_event_is_missed(h: Harness) -> None:
    db: DBConfig = h.config()
    counts = Counts()
    task = asyncio.create_task(runner(db, approval_definition(), counts).run_workflow())
    await wait_until_waiting(db, "approval", "doc-1")
    await wait_for_session(h, "fsmflow-listener")
    assert terminate(h, "fsmflow-listener") == 1
    # Sent while nobody listens: the reconnection wakes the runner to look again.
    await db.store.send_event("approval", "doc-1", "approval", {"ok": True})
    final = await asyncio.wait_for(task, 20)
    assert final.completed and counts.calls == {"draft": 1, "publish": 1}
    listeners = h.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fsmflow-listener' "
        "AND datname = current_database()"
    )
    assert listeners == [(1,)]


async def test_many_waiters_share_one_listening_connection(h: Harness) -> None:
    db: DBConfig = h.config()
    counts = Counts()
    tasks = [
        asyncio.create_task(runner(db, approval_definition(), counts, f"doc-{i}").run_workflow())
        for i in range(20)
    ]
    for i in range(20):
        await wait_until_waiting(db, "approval", f"doc-{i}")
    listeners = h.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fsmflow-listener' "
        "AND datname = current_database()"
    )
    assert listeners == [(1,)]
    for i in range(20):
        await db.store.send_event("approval", f"doc-{i}", "approval", {"ok": i % 2 == 0})
    # Odd ones were rejected: revised, and waiting again; approve them now.
    for i in range(1, 20, 2):
        for _ in range(500):  # draft, waiting, rejected, back in review (waiting)
            history = await db.store.history("approval", f"doc-{i}")
            if len(history) == 4 and history[-1].status == "waiting":
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"doc-{i} did not wait again after the rejection")
        await db.store.send_event("approval", f"doc-{i}", "approval", {"ok": True})
    finals = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert all(f.completed for f in finals)
    assert counts.calls == {"draft": 20, "publish": 20, "revise": 10}
