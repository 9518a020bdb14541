"""Idempotency keys survive a real crash: a process SIGKILLed inside a step, then restarted.

``tests/e2e/idempotency_program.py`` charges two installments (the ``charge`` state is
entered twice) and writes down, durably, the key ``fsmflow.step_info()`` gave each
execution. The first process is killed inside the second installment's charge; the
restarted process charges it again, and must use the same key as the killed one, while the
two installments keep two different keys.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, run_python
from tests.e2e.support import SAFETY_TIMEOUT, assert_complete, history, output_of

pytestmark = pytest.mark.timeout(120)
PROGRAM = "tests.e2e.idempotency_program"
WORKFLOW = "payments"


def read_keys(path: Path) -> list[tuple[int, int, int, int, str]]:
    """``(pid, seq, listener_seq, attempt, key)`` per step execution, in order."""
    if not path.exists():
        return []
    lines = [line.split(" ", 4) for line in path.read_text().splitlines()]
    return [(int(p), int(s), int(ls), int(a), k) for p, s, ls, a, k in lines]


def wait_for_key(path: Path, process: subprocess.Popen[bytes], seq: int, log: Path) -> None:
    """Block until ``process`` has written the line of the step entered after row ``seq``."""
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while not any(p == process.pid and s == seq for p, s, *_ in read_keys(path)):
        if process.poll() is not None:
            raise AssertionError(f"pid {process.pid} exited early:\n{log.read_text()}")
        assert time.monotonic() < deadline, f"no key line for seq {seq}:\n{log.read_text()}"
        time.sleep(0.01)


def test_a_step_killed_mid_charge_reruns_with_the_same_key(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any], tmp_path: Path
) -> None:
    keys, log = tmp_path / "keys", tmp_path / "first.log"
    args = ["-m", PROGRAM, "--keys", str(keys), "--instance-id", "order-7"]
    with log.open("wb") as out:
        first = subprocess.Popen(
            [sys.executable, *args, "--hang-at-seq", "1"],
            cwd=ROOT,
            env=db_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_key(keys, first, 1, log)  # inside the second installment's charge
    finally:
        first.kill()  # SIGKILL
        first.wait()
    rows = history(postgresql, WORKFLOW, "order-7")
    assert [(r.seq, r.dest_state, r.status) for r in rows] == [
        (0, "charge", "running"),
        (1, "charge", "running"),
    ]  # the killed charge left no row

    second = run_python(args, db_env, timeout=SAFETY_TIMEOUT)
    assert second.returncode == 0, output_of(second)

    rows = history(postgresql, WORKFLOW, "order-7")
    assert_complete(rows)
    executions = read_keys(keys)
    assert [(p == first.pid, s, ls, a) for p, s, ls, a, _ in executions] == [
        (True, 0, 0, 1),  # first installment
        (True, 1, 1, 1),  # second installment: killed mid-step
        (False, 1, 1, 1),  # second installment again, in the restarted process
    ]
    first_key, killed_key, rerun_key = (key for *_, key in executions)
    assert killed_key == rerun_key == "payments:order-7:1"
    assert first_key == "payments:order-7:0" != killed_key
    # What the stored history says was charged: each installment once, under its own key.
    assert rows[-1].context["charged_keys"] == [first_key, rerun_key]
