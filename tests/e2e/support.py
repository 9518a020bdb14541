"""Helpers for the end-to-end tests: example processes, stored history, execution ledgers.

The examples run as real child processes against the test's database; what they did is
read back from the ``fsmflow_transitions`` table (never from their output alone), and how
often each step actually ran is read from a ledger file that
``tests/e2e/ledger_run.py`` writes (fsync'd) outside the database.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import ROOT

LEDGER_RUN = ROOT / "tests" / "e2e" / "ledger_run.py"
SAFETY_TIMEOUT = 60.0  # only ever bounds a hang; no test asserts how long anything took

# -- history ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One stored transition, as the tests compare them."""

    seq: int
    trigger: str | None
    source_state: str | None
    dest_state: str | None
    status: str
    context: dict[str, Any]

    def edge(self) -> tuple[str | None, str | None, str | None]:
        """``(trigger, source_state, dest_state)``."""
        return self.trigger, self.source_state, self.dest_state


def history(conn: psycopg.Connection[Any], workflow: str, instance_id: str) -> list[Row]:
    """Every stored row of one instance, in seq order."""
    rows = conn.execute(
        "SELECT seq, trigger, source_state, dest_state, status, context "
        "FROM fsmflow_transitions WHERE workflow_name = %s AND instance_id = %s ORDER BY seq",
        (workflow, instance_id),
    ).fetchall()
    conn.commit()  # no snapshot or transaction kept open while children write
    return [Row(*row) for row in rows]


def instance_ids(conn: psycopg.Connection[Any], workflow: str) -> list[str]:
    """The instances of ``workflow`` in start order."""
    rows = conn.execute(
        "SELECT instance_id FROM fsmflow_transitions WHERE workflow_name = %s AND seq = 0 "
        "ORDER BY created_at",
        (workflow,),
    ).fetchall()
    conn.commit()
    return [row[0] for row in rows]


def assert_complete(rows: list[Row]) -> None:
    """seq 0..n without gaps, one start row, running rows, then one completed row."""
    assert [r.seq for r in rows] == list(range(len(rows))), [r.seq for r in rows]
    assert rows[0].trigger is None and rows[0].source_state is None
    assert [r.status for r in rows] == ["running"] * (len(rows) - 1) + ["completed"]
    for before, after in pairwise(rows):
        assert after.source_state == before.dest_state, (before, after)


# -- processes -------------------------------------------------------------------------


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    """A child's stdout and stderr, for assertion messages."""
    return f"--- exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


@dataclass
class Child:
    """A running ``ledger_run.py`` process and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def spawn_ledger_run(
    env: dict[str, str], ledger: Path, log_path: Path, args: list[str], **extra_env: str
) -> Child:
    """Start ``support_ticket`` under the ledger wrapper; output goes to ``log_path``."""
    child_env = {**env, "E2E_LEDGER": str(ledger), **extra_env}
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, str(LEDGER_RUN), *args],
            cwd=ROOT,
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Child(process, log_path)


def finish(child: Child) -> int:
    """Wait for ``child`` to exit by itself (killing it only if it hangs); its exit code."""
    try:
        return child.process.wait(timeout=SAFETY_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.process.kill()
        child.process.wait()
        raise AssertionError(f"pid {child.pid} hung; its output:\n{child.log()}") from None


def sigkill(child: Child) -> None:
    """SIGKILL ``child`` (by its pid) and reap it."""
    child.process.send_signal(signal.SIGKILL)
    child.process.wait()


# -- ledger ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One line of a ledger: process ``pid`` started ``state``'s step after row ``seq``."""

    pid: int
    seq: int
    state: str


def read_ledger(path: Path) -> list[Execution]:
    """The executions recorded in ``path`` (empty if the file does not exist yet)."""
    if not path.exists():
        return []
    executions = []
    for line in path.read_text().splitlines():
        pid, seq, state = line.split()
        executions.append(Execution(int(pid), int(seq), state))
    return executions


def wait_for_execution(path: Path, child: Child, state: str | None = None) -> Execution:
    """Block until ``child`` has started a step (``state``'s, if given); return it."""
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while time.monotonic() < deadline:
        for execution in read_ledger(path):
            if execution.pid == child.pid and state in (None, execution.state):
                return execution
        if child.process.poll() is not None:
            raise AssertionError(f"pid {child.pid} exited early:\n{child.log()}")
        time.sleep(0.005)
    raise AssertionError(f"pid {child.pid} never started {state or 'a step'}:\n{child.log()}")


def wait_for_output(child: Child, text: str) -> None:
    """Block until ``child`` has written ``text`` to its output."""
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while text not in child.log():
        if child.process.poll() is not None:
            raise AssertionError(f"pid {child.pid} exited before {text!r}:\n{child.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {child.pid} never wrote {text!r}:\n{child.log()}")
        time.sleep(0.01)


@dataclass
class LedgerCheck:
    """What :func:`check_executions` found."""

    executions: int
    reruns: list[Execution] = field(default_factory=list)  # executions whose row never came


def check_executions(
    executions: list[Execution], rows: list[Row], interrupted: set[int]
) -> LedgerCheck:
    """Check the at-least-once contract against the stored history.

    * every execution ran the state the history has at its position
      (``rows[seq + 1].source_state``), and one process ran consecutive positions;
    * every step in the history ran at least once;
    * a position ran more than once only because a process in ``interrupted`` (killed, or
      whose step was cancelled) died with that step in flight: each extra execution is the
      *last* execution of an interrupted process, so at most one per interruption.
    """
    last = len(rows) - 1
    by_pid: dict[int, list[Execution]] = defaultdict(list)
    by_seq: dict[int, list[Execution]] = defaultdict(list)
    for execution in executions:
        assert 0 <= execution.seq < last, f"{execution} is outside history seq 0..{last}"
        expected = rows[execution.seq + 1].source_state
        assert execution.state == expected, f"{execution}: history has {expected!r} there"
        by_pid[execution.pid].append(execution)
        by_seq[execution.seq].append(execution)
    for pid, runs in by_pid.items():
        seqs = [e.seq for e in runs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"pid {pid} ran seqs {seqs}"
    missing = [seq for seq in range(last) if seq not in by_seq]
    assert not missing, f"steps after seq {missing} are in the history but never ran"
    reruns = []
    for runs in by_seq.values():
        for extra in runs[:-1]:  # the last execution of a position is the one recorded
            assert extra.pid in interrupted, f"{extra} ran again but its process was not killed"
            assert by_pid[extra.pid][-1] == extra, f"{extra} re-ran but was not its last step"
            reruns.append(extra)
    return LedgerCheck(len(executions), reruns)


def without_database_settings(env: dict[str, str]) -> dict[str, str]:
    """``env`` minus everything that points fsmflow at a database."""
    return {k: v for k, v in env.items() if not k.startswith(("DB_", "DATABASE_URL", "FSMFLOW_"))}
