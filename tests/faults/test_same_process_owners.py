"""Runners of one instance started together in one process: exactly one owns it.

Session advisory locks are re-entrant, so two runners whose lock queries go over the same
owner connection would both "get" the lock: the in-process registry must be claimed
before the lock is taken. Real runners under ``asyncio.gather``, a real server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fsmflow import InstanceLockedError, WorkflowState
from tests.conftest import config_for

from .ownership_support import SAFETY_TIMEOUT, Admin, Steps, linear, runner

WORKFLOW = "same_process"
STATES = ("a", "b")
DEFINITION = linear(WORKFLOW, STATES)


@pytest.fixture
def admin(postgresql: Any) -> Any:
    info = postgresql.info
    a = Admin(info.host, info.port, info.user, info.dbname)
    yield a
    a.close()


@pytest.mark.parametrize(
    ("owner_connections", "runners"),
    [(1, 2), (None, 30)],
    ids=["one owner connection, two runners", "default lanes, 30 runners"],
)
async def test_concurrent_runners_of_one_instance_run_each_step_once(
    postgresql: Any, admin: Admin, owner_connections: int | None, runners: int
) -> None:
    overrides = {} if owner_connections is None else {"owner_connections": owner_connections}
    config = config_for(postgresql.info, **overrides)
    steps = Steps(STATES)
    steps.sleep = 0.2  # step "a" is in flight while the other runners try to own it
    try:
        outcomes = await _gather(
            [runner(config, DEFINITION, steps, "one").run_workflow() for _ in range(runners)]
        )
        store = config.store
        assert not store.owned_here(WORKFLOW, "one")
    finally:
        await config.close()

    completed = [o for o in outcomes if isinstance(o, WorkflowState)]
    refused = [o for o in outcomes if isinstance(o, InstanceLockedError)]
    assert steps.runs == {("one", "a"): 1, ("one", "b"): 1}, outcomes
    assert len(completed) == 1 and len(refused) == runners - 1, outcomes
    assert completed[0].completed
    assert admin.history(WORKFLOW, "one") == [(0, "running"), (1, "running"), (2, "completed")]
    assert await admin.locks_left() == []


async def test_waiting_runners_of_one_instance_run_each_step_once(
    postgresql: Any, admin: Admin
) -> None:
    config = config_for(postgresql.info, owner_connections=1)
    steps = Steps(STATES)
    steps.sleep = 0.1
    try:
        outcomes = await _gather(
            [
                runner(config, DEFINITION, steps, "waited", wait=True).run_workflow()
                for _ in range(5)
            ]
        )
    finally:
        await config.close()

    assert steps.runs == {("waited", "a"): 1, ("waited", "b"): 1}, outcomes
    assert all(isinstance(o, WorkflowState) and o.completed for o in outcomes), outcomes
    assert await admin.locks_left() == []


async def _gather(coros: list[Any]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*coros, return_exceptions=True), SAFETY_TIMEOUT)
