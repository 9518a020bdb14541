"""One trace across a crash: a run SIGKILLed mid-step, resumed by another process.

Both processes export their spans through the SDK to one JSON-lines file
(``tests/faults/trace_program.py``). The first process is killed inside the step of ``b``:
its run span and that step's span never end and are lost with it, but the instance's
``fsmflow.start`` span (ended once seq 0 was written) and the step span of ``a`` were
exported. The second process resumes the instance and its run span is a child of that
stored start span: the same trace id, one logical trace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.e2e.support import Child, finish, sigkill, wait_for_output

PROGRAM = ROOT / "tests" / "faults" / "trace_program.py"


def spawn(env: dict[str, str], log: Path, **extra: str) -> Child:
    import subprocess
    import sys

    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, str(PROGRAM)],
            cwd=ROOT,
            env={**env, **extra},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Child(process, log)


def spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resumed_run_continues_the_trace_of_the_killed_one(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    trace_file, log = tmp_path / "spans.jsonl", tmp_path / "run.log"
    env = {**db_env, "TRACE_FILE": str(trace_file), "TRACE_INSTANCE": "crash-1"}
    first = spawn(env, log, TRACE_HANG_IN="b")
    wait_for_output(first, "entered b")
    sigkill(first)
    before = spans(trace_file)

    second = spawn(env, log)
    assert finish(second) == 0, log.read_text()
    assert "finished: completed" in log.read_text()

    after = spans(trace_file)[len(before) :]
    by_pid = {first.pid: before, second.pid: after}
    assert {s["pid"] for s in before} == {first.pid} and {s["pid"] for s in after} == {second.pid}
    assert [s["name"] for s in by_pid[first.pid]] == [
        "fsmflow.start trace_resume",
        "fsmflow.step a",
    ]  # fmt: skip: the killed run's own span and b's step span died with it
    assert [s["name"] for s in after] == [
        "fsmflow.step b", "fsmflow.step c", "fsmflow.run trace_resume",
    ]  # fmt: skip
    start = before[0]
    run = after[-1]
    # One logical trace: the resumed run is a child of the instance's stored start span.
    assert {s["trace_id"] for s in before + after} == {start["trace_id"]}
    assert run["parent_id"] == start["span_id"]
    assert run["attributes"]["fsmflow.resumed"] is True
    assert run["attributes"]["fsmflow.outcome"] == "completed"
    # b ran again in the second process: attempt 1 of the same entry (seq 1).
    step_b = after[0]["attributes"]
    assert (step_b["fsmflow.seq"], step_b["fsmflow.attempt"]) == (1, 1)
    assert after[0]["parent_id"] == run["span_id"]
