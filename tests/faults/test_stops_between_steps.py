"""Signals and lost sessions that arrive while no step runs: during a step's retry backoff,
and while the runner recovers from a database that went away.

A shutdown always wins: the program exits 75 (resume by starting it again) without a
traceback, whatever the runner was waiting for; a lost session during a backoff is
recovered like one between steps. Real processes, a real server stopped and restarted.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

from .support import SAFETY_TIMEOUT, external_server
from .test_server_restart import server_restored, start_server, stop_server
from .waits_program import starts

UNCLEAN = ("Traceback", "CancelledError", "Exception ignored", "Task was destroyed")


class Program:
    """``tests/faults/waits_program.py`` running in a child process."""

    def __init__(self, tmp_path: Path, env: dict[str, str], instances: list[str]) -> None:
        self.ledger = tmp_path / "ledger"
        run = len(list(tmp_path.glob("stderr-*")))
        self.out, self.err = tmp_path / f"stdout-{run}", tmp_path / f"stderr-{run}"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.waits_program", str(self.ledger), *instances],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    async def until(self, text: str) -> None:
        """Wait until the program's log says ``text``."""
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while text not in self.stderr:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.stderr}"
            assert time.monotonic() < deadline, f"never logged {text!r}: {self.stderr}"
            await asyncio.sleep(0.05)

    async def wait(self) -> int:
        return await asyncio.to_thread(self.proc.wait, SAFETY_TIMEOUT)


async def _until_owner_sessions(postgresql: Any, count: int) -> None:
    """Wait until ``count`` fsmflow owner connections are open on this test's database."""
    deadline = time.monotonic() + SAFETY_TIMEOUT
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'fsmflow-owner'"
    )
    while True:
        with postgresql.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone()
        postgresql.rollback()  # statistics are a snapshot per transaction: take a new one
        if row is not None and row[0] >= count:
            return
        assert time.monotonic() < deadline, "the waiter never connected"
        await asyncio.sleep(0.05)


def _env(db_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**db_env, "FSMFLOW_SHUTDOWN_GRACE_SECONDS": "20", **extra}


@pytest.mark.timeout(300)
async def test_sigterm_during_a_retry_backoff_stops_at_once(
    tmp_path: Path, db_env: dict[str, str]
) -> None:
    program = Program(tmp_path, _env(db_env, WAITS_BACKOFF_SECONDS="30"), ["flaky1"])
    await program.until("retrying in")  # attempt 1 failed; a 30 s backoff has begun
    program.proc.send_signal(signal.SIGTERM)
    code = await program.wait()

    print(f"[SIGTERM in backoff] exit {code}")
    assert code == 75, program.stderr
    assert not [m for m in UNCLEAN if m in program.stderr], program.stderr
    assert "WorkflowInterruptedError" in program.stderr
    assert starts(program.ledger, "flaky1", "a") == 1  # the retry never started

    again = Program(tmp_path, _env(db_env, WAITS_BACKOFF_SECONDS="0"), ["flaky1"])
    assert await again.wait() == 0, again.stderr
    assert (starts(again.ledger, "flaky1", "a"), starts(again.ledger, "flaky1", "b")) == (2, 1)


@pytest.mark.timeout(300)
async def test_lost_session_during_a_retry_backoff_is_recovered(
    tmp_path: Path, db_env: dict[str, str], pg_server: Any
) -> None:
    if external_server():
        pytest.skip("restarts the embedded server; FSMFLOW_TEST_DATABASE_URL names another one")
    instances = ["flaky1", "steady1", "steady2"]
    env = _env(db_env, WAITS_BACKOFF_SECONDS="6", WAITS_STEP_SECONDS="1", WAITS_STEADY_SECONDS="4")
    program = Program(tmp_path, env, instances)
    await program.until("retrying in")  # flaky1 sleeps 6 s; the others are in their step
    with server_restored(pg_server.server):
        await asyncio.to_thread(stop_server, pg_server.server)  # every session is lost
        await asyncio.sleep(0.5)
        await asyncio.to_thread(start_server, pg_server.server)
    code = await program.wait()

    print(f"[restart in backoff] exit {code}, executions of a: "
          f"{[starts(program.ledger, i, 'a') for i in instances]}")  # fmt: skip
    assert code == 0, program.stderr
    assert not [m for m in UNCLEAN if m in program.stderr], program.stderr
    assert program.stdout.split() == ["completed", *instances]
    assert starts(program.ledger, "flaky1", "a") == 2  # the failure and its one retry
    for instance in ("steady1", "steady2"):  # in their step at the restart: run again
        assert starts(program.ledger, instance, "a") == 2
    for instance in instances:
        assert starts(program.ledger, instance, "b") == 1


@pytest.mark.timeout(300)
async def test_sigterm_while_recovering_from_a_stopped_database_wins(
    tmp_path: Path, db_env: dict[str, str], pg_server: Any
) -> None:
    if external_server():
        pytest.skip("stops the embedded server; FSMFLOW_TEST_DATABASE_URL names another one")
    env = _env(db_env, WAITS_STEP_SECONDS="3", FSMFLOW_DB_RETRY_SECONDS="120")
    program = Program(tmp_path, env, ["steady1"])
    await program.until("started in state 'a'")
    with server_restored(pg_server.server):
        await asyncio.to_thread(stop_server, pg_server.server)
        await program.until("retrying in")  # reconnecting, with a budget of 120 s
        program.proc.send_signal(signal.SIGTERM)
        code = await program.wait()
    print(f"[SIGTERM in recovery] exit {code}")
    assert code == 75, program.stderr
    assert not [m for m in UNCLEAN if m in program.stderr], program.stderr
    assert "WorkflowInterruptedError" in program.stderr

    start_server(pg_server.server)
    again = Program(tmp_path, _env(db_env), ["steady1"])
    assert await again.wait() == 0, again.stderr
    assert starts(again.ledger, "steady1", "b") == 1


@pytest.mark.timeout(300)
async def test_sigterm_while_waiting_for_the_lock_at_start_up_exits_75(
    tmp_path: Path, db_env: dict[str, str], postgresql: Any
) -> None:
    holder = Program(tmp_path, _env(db_env, WAITS_STEADY_SECONDS="60"), ["steady1"])
    await holder.until("started in state 'a'")  # it owns steady1 for a minute
    waiter = Program(tmp_path, _env(db_env, WAITS_WAIT="1"), ["steady1"])
    await _until_owner_sessions(postgresql, 2)  # the waiter connected: it waits for the lock
    waiter.proc.send_signal(signal.SIGTERM)
    code = await waiter.wait()
    holder.proc.kill()
    await holder.wait()

    print(f"[SIGTERM at start-up] exit {code}")
    assert code == 75, waiter.stderr  # not -15: the signal is fsmflow's from the start
    assert "WorkflowInterruptedError" in waiter.stderr
    assert not [m for m in UNCLEAN if m in waiter.stderr], waiter.stderr


@pytest.mark.timeout(300)
async def test_a_second_signal_is_reported_as_such(tmp_path: Path, db_env: dict[str, str]) -> None:
    program = Program(tmp_path, _env(db_env, WAITS_STEADY_SECONDS="60"), ["steady1"])
    await program.until("started in state 'a'")
    program.proc.send_signal(signal.SIGINT)
    await program.until("finishing running steps")
    program.proc.send_signal(signal.SIGINT)
    code = await program.wait()
    print(f"[second signal] exit {code}")
    assert code == 75, program.stderr
    assert "cancelled because a second signal arrived" in program.stderr
    assert "grace period" not in program.stderr.split("SIGINT again")[-1]


def _spawn_hung_step(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (tmp_path / "out").open("w") as stdout, (tmp_path / "err").open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.faults.hung_step_program"],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )


@pytest.mark.timeout(300)
async def test_sigterm_while_waiting_for_a_hung_sync_step_exits_at_once(
    tmp_path: Path, db_env: dict[str, str]
) -> None:
    """A timed-out sync step's thread cannot be stopped; the runner waits for it before
    the retry. A stop during that wait must not be held up by the thread at exit."""
    out = tmp_path / "out"
    proc = _spawn_hung_step(tmp_path, _env(db_env))
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while "step started" not in out.read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # past the 0.3 s timeout: waiting for the abandoned thread
    proc.send_signal(signal.SIGTERM)
    try:
        # The thread sleeps for 120 s; the program must be gone long before that.
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        proc.kill()
    err = (tmp_path / "err").read_text()
    print(f"[SIGTERM while a hung sync step is abandoned] exit {code}")
    assert code == 75, err
    assert "WorkflowInterruptedError" in err
