"""An owner backend stalled (SIGSTOP) for 12 s: its runner ends its own old session and
retakes the lock, instead of blaming "another runner"; a lock really held by another
session is reported with that session's pid and application_name.

The test runs as root on the embedded server's machine, so it can signal the backend
process of the owner connection (its pid from ``pg_stat_activity``).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

import fsmflow.store.lanes
from fsmflow import OwnershipLostError, WorkflowState
from fsmflow.store.ownership import lock_key
from tests.conftest import config_for

from .ownership_support import (
    ADMIN_APPLICATION_NAME,
    SAFETY_TIMEOUT,
    Admin,
    Steps,
    linear,
    runner,
    wait_until,
)
from .support import external_server

WORKFLOW = "stalled_owner"
STATES = ("fetch", "think", "report")
DEFINITION = linear(WORKFLOW, STATES)
STALL_SECONDS = 12.0


@pytest.fixture
def admin(postgresql: Any) -> Any:
    info = postgresql.info
    a = Admin(info.host, info.port, info.user, info.dbname)
    yield a
    a.close()


@pytest.fixture(autouse=True)
def quick_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    # Notice the stall within ~2 s of it starting (the default notices it within ~10 s).
    monkeypatch.setattr(fsmflow.store.lanes, "HEARTBEAT_SECONDS", 1.0)


async def test_stalled_owner_backend_is_ended_and_the_lock_retaken(
    postgresql: Any, admin: Admin
) -> None:
    if external_server() or os.geteuid() != 0:
        pytest.skip("signals the embedded server's backend process (needs root, same host)")
    config = config_for(postgresql.info, owner_connections=1, retry_budget=30.0)
    steps = Steps(STATES)
    release = steps.gate("think")
    stopped: int | None = None
    try:
        task = asyncio.ensure_future(runner(config, DEFINITION, steps, "i1").run_workflow())
        await wait_until(lambda: steps.count("think") == 1, "step think to start")
        [stopped] = admin.owner_pids()
        os.kill(stopped, signal.SIGSTOP)
        await asyncio.sleep(STALL_SECONDS)
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        release.set()
        outcome = await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 60)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await config.close()

    [result] = outcome
    assert isinstance(result, WorkflowState) and result.completed, result
    # The stall interrupted the step in flight (the lock could not be proven): it ran
    # again once, after the old session was gone; nothing else ran twice.
    assert steps.runs[("i1", "fetch")] == 1 and steps.runs[("i1", "report")] == 1
    assert steps.runs[("i1", "think")] in (1, 2)
    assert [seq for seq, _ in admin.history(WORKFLOW, "i1")] == [0, 1, 2, 3]
    assert await admin.locks_left() == []


async def test_lock_taken_by_another_session_names_that_session(
    postgresql: Any, admin: Admin
) -> None:
    config = config_for(postgresql.info, owner_connections=1, retry_budget=5.0)
    steps = Steps(STATES)
    steps.gate("think")  # never released: the step is interrupted by the lost session
    key = lock_key("public.fsmflow_transitions", WORKFLOW, "i2")
    thief = admin.connect()
    thief_pid = thief.info.backend_pid
    try:
        task = asyncio.ensure_future(runner(config, DEFINITION, steps, "i2").run_workflow())
        await wait_until(lambda: steps.count("think") == 1, "step think to start")
        [owner] = admin.owner_pids()
        # End the owner session and take its lock at once (one statement: the runner
        # cannot get there first).
        thief.execute(
            "SELECT pg_terminate_backend(%s, 10000), pg_advisory_lock(%s::int8)", (owner, key)
        )
        [outcome] = await asyncio.wait_for(
            asyncio.gather(task, return_exceptions=True), SAFETY_TIMEOUT
        )
    finally:
        thief.close()
        await config.close()

    assert isinstance(outcome, OwnershipLostError), outcome
    message = str(outcome)
    assert f"pid {thief_pid}" in message and ADMIN_APPLICATION_NAME in message, message
    assert steps.runs == {("i2", "fetch"): 1, ("i2", "think"): 1}
