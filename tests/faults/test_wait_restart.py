"""PostgreSQL restarted while instances wait in-process: every session (the locks, the
listener) is gone for a moment, and every waiter must take its lock back, listen again and
deliver each event exactly once.

Restarts the session's embedded server in place, so it is skipped against an external one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import config_for
from tests.integration.test_waits import Counts, approval_definition, runner, wait_until_waiting

from .support import external_server
from .test_server_restart import server_restored, start_server, stop_server


@pytest.mark.timeout(300)
async def test_waiters_survive_a_server_restart(postgresql: Any, pg_server: Any) -> None:
    if external_server():
        pytest.skip("restarts the embedded server; FSMFLOW_TEST_DATABASE_URL names another one")
    server = pg_server.server
    db = config_for(postgresql.info, retry_budget=60.0)
    counts = Counts()
    ids = [f"doc-{i}" for i in range(10)]
    try:
        tasks = [asyncio.create_task(runner(db, approval_definition(), counts, i).run_workflow())
                 for i in ids]  # fmt: skip
        for instance in ids:
            await wait_until_waiting(db, "approval", instance)
        with server_restored(server):
            await asyncio.to_thread(stop_server, server)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(start_server, server)
        for instance in ids:  # the sends retry until the server answers again
            await db.store.send_event("approval", instance, "approval", {"ok": True})
        finals = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        await db.close()
    assert all(f.completed for f in finals)
    assert counts.calls == {"draft": 10, "publish": 10}
    check = config_for(postgresql.info)
    try:
        for instance in ids:
            history = await check.store.history("approval", instance)
            delivered = [r.event_id for r in history if r.event_id is not None]
            assert len(delivered) == 1, history
    finally:
        await check.close()
