"""A cancelled statement (SQLSTATE 57014: ``statement_timeout``, ``pg_cancel_backend``) on
a shared owner connection is not a lost session: the lane and the other instances' locks
stay; only the cancelled append is retried (within the budget), then fails clearly.

Five instances share one owner connection. One append is made to wait on a row lock held
by the test, and the waiting statement is cancelled with ``pg_cancel_backend``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from fsmflow import StoreError, WorkflowState
from tests.conftest import config_for

from .ownership_support import SAFETY_TIMEOUT, Admin, Steps, linear, row_lock, runner, wait_until

WORKFLOW = "cancelled_statement"
STATES = ("s0", "s1")
DEFINITION = linear(WORKFLOW, STATES)
BLOCKED = "i0"
OTHERS = ["i1", "i2", "i3", "i4"]


@pytest.fixture
def admin(postgresql: Any) -> Any:
    info = postgresql.info
    a = Admin(info.host, info.port, info.user, info.dbname)
    yield a
    a.close()


def _steps() -> tuple[Steps, Steps, asyncio.Event]:
    """Steps of the blocked instance (free), and of the others (s0 waits on the gate, so
    their steps are in flight while the blocked append is cancelled)."""
    others = Steps(STATES)
    return Steps(STATES), others, others.gate("s0")


async def _start(config: Any, blocked: Steps, others: Steps) -> list[asyncio.Task[Any]]:
    tasks = [asyncio.ensure_future(runner(config, DEFINITION, blocked, BLOCKED).run_workflow())]
    tasks += [
        asyncio.ensure_future(runner(config, DEFINITION, others, i).run_workflow()) for i in OTHERS
    ]
    await wait_until(lambda: others.count("s0") == len(OTHERS), "the other steps to start")
    return tasks


async def test_cancelled_append_is_retried_and_other_instances_are_untouched(
    postgresql: Any, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fsmflow")
    config = config_for(postgresql.info, owner_connections=1, retry_budget=30.0)
    blocked, others, gate = _steps()
    try:
        with row_lock(admin, WORKFLOW, BLOCKED, 1) as holder:
            tasks = await _start(config, blocked, others)
            first = await wait_until(lambda: admin.blocked_by(holder), "the append to wait")
            admin.sql("SELECT pg_cancel_backend(%s)", (first,))
            # The cancelled append is retried on the same session and waits again.
            again = await wait_until(lambda: admin.blocked_by(holder), "the retried append")
            await asyncio.sleep(0.3)  # a lost lane would interrupt the other steps now
            gate.set()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), SAFETY_TIMEOUT
        )
    finally:
        await config.close()

    assert all(isinstance(o, WorkflowState) and o.completed for o in outcomes), outcomes
    assert others.runs == {(i, s): 1 for i in OTHERS for s in STATES}
    assert blocked.runs == {(BLOCKED, s): 1 for s in STATES}
    assert again == first, "the owner connection was replaced"
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    assert await admin.locks_left() == []


async def test_append_cancelled_every_time_fails_with_a_clear_error(
    postgresql: Any, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fsmflow")
    config = config_for(postgresql.info, owner_connections=1, retry_budget=1.5)
    blocked, others, gate = _steps()
    cancels = 0
    try:
        with row_lock(admin, WORKFLOW, BLOCKED, 1) as holder:
            tasks = await _start(config, blocked, others)
            while not tasks[0].done():
                waiting = admin.blocked_by(holder)
                if waiting is not None:
                    admin.sql("SELECT pg_cancel_backend(%s)", (waiting,))
                    cancels += 1
                await asyncio.sleep(0.02)
        gate.set()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), SAFETY_TIMEOUT
        )
    finally:
        await config.close()

    failure = outcomes[0]
    assert cancels >= 2
    assert isinstance(failure, StoreError), outcomes
    message = str(failure)
    assert "cancel" in message and "57014" in message and f"'{BLOCKED}'" in message
    assert all(isinstance(o, WorkflowState) and o.completed for o in outcomes[1:]), outcomes
    assert others.runs == {(i, s): 1 for i in OTHERS for s in STATES}
    assert blocked.runs == {(BLOCKED, "s0"): 1}
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    assert await admin.locks_left() == []
