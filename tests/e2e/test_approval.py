"""``examples/approval.py`` for real: processes that wait, are killed, stopped, cancelled and
restarted, with events sent by ``fsmflow send-event`` while no process (or one) runs.

What happened is always read back from the database (history rows, their ``event_id``,
``waiting_since`` and the server's clock), never inferred from timing. The LM calls that the
workflow recorded and the ones each process made are the proof that the draft step (the
expensive one) ran once: a process that continues a waiting instance makes none for it.
Waits for a condition poll the database against a generous deadline; nothing sleeps and
hopes.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, run_python
from tests.e2e.support import output_of

pytestmark = pytest.mark.timeout(300)

WORKFLOW = "approval"
EXAMPLE = "examples/approval.py"
SAFETY = 60.0  # bounds a hang only; no test passes or fails on how long something took
LM_CALLS_LINE = re.compile(r"LM calls: (\d+) recorded in the workflow, (\d+) made by this process")
APPROVE = '{"ok": true, "by": "ana", "note": ""}'
REJECT = '{"ok": false, "by": "ben", "note": "say what happens on a restart"}'

# -- the database ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One stored history row, with the columns waits add."""

    seq: int
    trigger: str | None
    source_state: str | None
    dest_state: str | None
    status: str
    context: dict[str, Any]
    created_at: datetime
    waiting_since: datetime | None
    wake_at: datetime | None
    event_id: int | None

    def edge(self) -> tuple[str | None, str | None, str | None, str]:
        return self.trigger, self.source_state, self.dest_state, self.status


def history(conn: psycopg.Connection[Any], instance: str) -> list[Row]:
    rows = conn.execute(
        "SELECT seq, trigger, source_state, dest_state, status, context, created_at, "
        "waiting_since, wake_at, event_id FROM fsmflow_transitions "
        "WHERE workflow_name = %s AND instance_id = %s ORDER BY seq",
        (WORKFLOW, instance),
    ).fetchall()
    conn.commit()  # no snapshot kept while children write
    return [Row(*row) for row in rows]


def events(conn: psycopg.Connection[Any], instance: str) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT id, event, key, payload, created_at FROM fsmflow_transitions_events "
        "WHERE workflow_name = %s AND instance_id = %s ORDER BY id",
        (WORKFLOW, instance),
    )
    names = [d.name for d in cur.description or ()]
    found = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    conn.commit()
    return found


def server_now(conn: psycopg.Connection[Any]) -> datetime:
    """The database server's clock (what deadlines are measured by)."""
    (now,) = conn.execute("SELECT clock_timestamp()").fetchone() or (None,)
    conn.commit()
    assert isinstance(now, datetime)
    return now


def poll(what: str, condition: Callable[[], bool], child: Child | None = None) -> None:
    """Until ``condition()`` holds (the child, if given, must stay alive meanwhile)."""
    deadline = time.monotonic() + SAFETY
    while not condition():
        if child is not None and child.process.poll() is not None:
            raise AssertionError(f"the program exited before {what}:\n{child.output()}")
        if time.monotonic() > deadline:
            extra = f":\n{child.output()}" if child is not None else ""
            raise AssertionError(f"never {what}{extra}")
        time.sleep(0.02)


def waiting(conn: psycopg.Connection[Any], instance: str) -> Callable[[], bool]:
    def check() -> bool:
        rows = history(conn, instance)
        return bool(rows) and rows[-1].status == "waiting"

    return check


def delivered_once(rows: list[Row], event_id: int) -> None:
    assert [r.event_id for r in rows].count(event_id) == 1, [r.edge() for r in rows]


# -- processes -------------------------------------------------------------------------


def example(env: dict[str, str], instance: str, *args: str, **extra: str) -> Any:
    return run_python([EXAMPLE, "--instance-id", instance, *args], {**env, **extra})


def fsmflow(env: dict[str, str], *args: str) -> Any:
    return run_python(["-m", "fsmflow", *args], env)


def send(env: dict[str, str], instance: str, data: str, *extra: str) -> dict[str, Any]:
    """``fsmflow send-event approval INSTANCE approval --data DATA --json``; what it stored."""
    args = ["send-event", WORKFLOW, instance, "approval", "--data", data, "--json", *extra]
    result = fsmflow(env, *args)
    assert result.returncode == 0, output_of(result)
    sent: dict[str, Any] = json.loads(result.stdout)
    return sent


def event_id_of(sent: dict[str, Any]) -> int:
    found = sent["event_id"]
    assert isinstance(found, int), sent
    return found


def lm_calls(output: str) -> tuple[int, int]:
    """(recorded in the workflow, made by this process) from a finished run's log."""
    match = LM_CALLS_LINE.search(output)
    assert match, output
    return int(match[1]), int(match[2])


@dataclass
class Child:
    """An example process running in the background; its output goes to a file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def finish(self) -> int:
        try:
            return self.process.wait(timeout=SAFETY)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the program hung:\n{self.output()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Any:
    """Start ``examples/approval.py`` in the background; every child is reaped after."""
    children: list[Child] = []

    def start(env: dict[str, str], instance: str, *args: str, **extra: str) -> Child:
        log_path = tmp_path / f"{instance}-{len(children)}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, EXAMPLE, "--instance-id", instance, *args],
                cwd=ROOT, env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        children.append(Child(process, log_path))
        return children[-1]

    yield start
    for child in children:
        child.kill()


# -- the README walkthrough ------------------------------------------------------------

README_SECTION = "## Waiting for people, systems and time"


def walkthrough_commands() -> list[list[str]]:
    """The ``$ ...`` lines of the section's first console block, as argument lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", section, re.DOTALL)
    assert block, "the section has a console walkthrough"
    lines = [line[2:] for line in block.group(1).splitlines() if line.startswith("$ ")]
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        if words[0] == "python":
            commands.append(words[1:])
        else:
            assert words[0] == "fsmflow", line
            commands.append(["-m", "fsmflow", *words[1:]])
    return commands


def test_the_readme_walkthrough_works_as_written(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    commands = walkthrough_commands()
    outputs = []
    for command in commands:
        result = run_python(command, db_env)
        assert result.returncode == 0, f"{shlex.join(command)}\n{output_of(result)}"
        outputs.append(result)
    instance = commands[0][commands[0].index("--instance-id") + 1]
    rows = history(postgresql, instance)
    assert [r.edge() for r in rows] == [
        (None, None, "draft", "running"),
        ("submit", "draft", "review", "waiting"),
        ("rejected", "review", "revise", "running"),
        ("resubmit", "revise", "review", "waiting"),
        ("approved", "review", "publish", "running"),
        ("done", "publish", None, "completed"),
    ]
    sent = events(postgresql, instance)
    assert [e["key"] for e in sent] == ["review-1", "review-2"]
    assert [rows[2].event_id, rows[4].event_id] == [e["id"] for e in sent]
    final = rows[-1].context
    assert final["lm_calls"] == {"draft": 1, "revise": 1}
    assert final["rejections"] == [{"by": "ben", "note": "say what happens on a restart"}]
    assert final["published"]["approved_by"] == "ana"
    # The first run printed the commands that continue it; the last one finished it.
    assert "fsmflow send-event approval doc-1 approval --data '{" in outputs[0].stdout
    assert "published, approved by ana (instance doc-1)" in outputs[-1].stdout
    assert lm_calls(outputs[-1].stderr) == (2, 0)  # neither draft nor revise ran again
    listed = [r for r in outputs if "--status" in r.args]
    assert listed and "waiting" in listed[0].stdout and "doc-1" in listed[0].stdout


# -- the three paths -------------------------------------------------------------------


def test_approve_path_suspended(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    first = example(db_env, "ok-1", "--suspend")
    assert first.returncode == 0, output_of(first)
    assert "instance ok-1 waits in state 'review' for approval" in first.stdout
    assert (
        """approve: fsmflow send-event approval ok-1 approval --data '{"ok": true""" in first.stdout
    )
    rows = history(postgresql, "ok-1")
    assert rows[-1].status == "waiting" and rows[-1].waiting_since is not None

    sent = send(db_env, "ok-1", APPROVE)
    again = example(db_env, "ok-1", "--suspend")
    assert again.returncode == 0, output_of(again)
    assert "published, approved by ana (instance ok-1)" in again.stdout
    assert lm_calls(again.stderr) == (1, 0)
    rows = history(postgresql, "ok-1")
    assert [r.edge() for r in rows][1:] == [
        ("submit", "draft", "review", "waiting"),
        ("approved", "review", "publish", "running"),
        ("done", "publish", None, "completed"),
    ]
    assert rows[2].event_id == event_id_of(sent)
    assert rows[2].context["approval"] == json.loads(APPROVE)


def test_reject_then_approve_in_process(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any], spawn: Any
) -> None:
    child = spawn(db_env, "loop-1")  # waits in-process: one process does it all
    poll("the wait began", waiting(postgresql, "loop-1"), child)
    send(db_env, "loop-1", REJECT)
    poll(
        "the revised draft waited again",
        lambda: (
            [r.status for r in history(postgresql, "loop-1")][-2:] == ["running", "waiting"]
            and len(history(postgresql, "loop-1")) == 4
        ),
        child,
    )
    send(db_env, "loop-1", APPROVE)
    assert child.finish() == 0, child.output()
    assert "published, approved by ana (instance loop-1)" in child.output()
    assert lm_calls(child.output()) == (2, 2)  # one draft, one revision
    rows = history(postgresql, "loop-1")
    assert [r.trigger for r in rows] == [None, "submit", "rejected", "resubmit", "approved", "done"]
    # Each wait has its own start; a revision restarts the review's clock.
    assert rows[1].waiting_since is not None and rows[3].waiting_since is not None
    assert rows[3].waiting_since > rows[1].waiting_since


def test_timeout_escalates(db_env: dict[str, str], postgresql: psycopg.Connection[Any]) -> None:
    result = example(db_env, "late-1", "--timeout", "1")  # in-process: the deadline wakes it
    assert result.returncode == 0, output_of(result)
    assert "escalated: no review in time (instance late-1)" in result.stdout
    rows = history(postgresql, "late-1")
    assert [r.edge() for r in rows][1:] == [
        ("submit", "draft", "review", "waiting"),
        ("expired", "review", "escalate", "running"),
        ("handed_over", "escalate", None, "completed"),
    ]
    since = rows[1].waiting_since
    assert since is not None and rows[1].wake_at == since + timedelta(seconds=1)
    assert rows[2].created_at >= since + timedelta(seconds=1)  # not early, by the server clock


# -- crashes, stops and cancels while waiting ------------------------------------------


def test_kill_9_while_waiting_then_event_with_no_process_then_restart(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any], spawn: Any
) -> None:
    child = spawn(db_env, "kill-1")
    poll("the wait began", waiting(postgresql, "kill-1"), child)
    child.process.send_signal(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    before = history(postgresql, "kill-1")

    sent = send(db_env, "kill-1", APPROVE)  # no process runs the instance now
    assert history(postgresql, "kill-1") == before  # stored, not delivered yet
    assert [e["id"] for e in events(postgresql, "kill-1")] == [event_id_of(sent)]

    restarted = example(db_env, "kill-1")
    assert restarted.returncode == 0, output_of(restarted)
    assert "published, approved by ana (instance kill-1)" in restarted.stdout
    assert lm_calls(restarted.stderr) == (1, 0)  # the draft was not made again
    rows = history(postgresql, "kill-1")
    assert rows[: len(before)] == before
    assert [r.source_state for r in rows].count("draft") == 1  # one draft row, ever
    assert rows[-1].status == "completed"
    delivered_once(rows, event_id_of(sent))


def test_sigterm_during_in_process_wait_exits_75_and_loses_nothing(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any], spawn: Any
) -> None:
    child = spawn(db_env, "term-1")
    poll("the wait began", waiting(postgresql, "term-1"), child)
    before = history(postgresql, "term-1")
    stopped_at = time.monotonic()
    child.process.send_signal(signal.SIGTERM)
    assert child.finish() == 75, child.output()
    # Promptly: a wait is not a step, it does not use the 20 s grace period (generous bound).
    assert time.monotonic() - stopped_at < 15, child.output()
    assert history(postgresql, "term-1") == before  # nothing appended, nothing lost

    sent = send(db_env, "term-1", APPROVE)
    rerun = example(db_env, "term-1")
    assert rerun.returncode == 0, output_of(rerun)
    assert lm_calls(rerun.stderr) == (1, 0)
    rows = history(postgresql, "term-1")
    assert rows[: len(before)] == before and rows[-1].status == "completed"
    delivered_once(rows, event_id_of(sent))


@pytest.mark.parametrize("suspend", [False, True], ids=["in-process", "suspended"])
def test_event_sent_while_the_draft_step_runs_is_delivered_right_after(
    db_env: dict[str, str],
    postgresql: psycopg.Connection[Any],
    spawn: Any,
    tmp_path: Path,
    suspend: bool,
) -> None:
    gate = tmp_path / "release-draft"
    hold = {"FSMFLOW_HOLD_IN": "draft", "FSMFLOW_HOLD_FILE": str(gate)}
    args = ["--suspend"] if suspend else []
    child = spawn(db_env, "early-1", *args, **hold)
    poll("the draft step held", lambda: "holding the step" in child.output(), child)
    sent = send(db_env, "early-1", APPROVE)  # the instance does not wait yet
    assert [r.status for r in history(postgresql, "early-1")] == ["running"]  # seq 0 only
    gate.touch()

    assert child.finish() == 0, child.output()
    assert "published, approved by ana (instance early-1)" in child.output()
    rows = history(postgresql, "early-1")
    assert [r.edge() for r in rows][1:] == [
        ("submit", "draft", "review", "waiting"),
        ("approved", "review", "publish", "running"),
        ("done", "publish", None, "completed"),
    ]
    assert events(postgresql, "early-1")[0]["created_at"] < rows[1].created_at  # sent first
    assert rows[2].event_id == event_id_of(sent)  # the very next row delivers it


def test_deadline_across_restarts_fires_once_on_time_never_reset(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    timeout = 6.0
    args = ("--suspend", "--timeout", str(timeout))
    first = example(db_env, "clock-1", *args)
    assert first.returncode == 0, output_of(first)
    rows = history(postgresql, "clock-1")
    since = rows[-1].waiting_since
    assert since is not None and rows[-1].status == "waiting"
    deadline = since + timedelta(seconds=timeout)
    assert rows[-1].wake_at == deadline

    runs_before = runs_after = 0
    fired: list[Row] = []
    while runs_after < 3:
        started = server_now(postgresql)
        result = example(db_env, "clock-1", *args)
        ended = server_now(postgresql)
        assert result.returncode == 0, output_of(result)
        rows = history(postgresql, "clock-1")
        timeouts = [r for r in rows if r.trigger == "expired"]
        if ended < deadline:  # the whole run was before the deadline: it must still wait
            runs_before += 1
            assert not timeouts and rows[-1].status == "waiting", [r.edge() for r in rows]
            assert len(rows) == 2  # a run that finds nothing to do appends nothing
            assert rows[-1].waiting_since == since  # never reset by a restart
        elif started >= deadline:  # the whole run was after it: it has fired, exactly once
            runs_after += 1
            assert len(timeouts) == 1 and rows[-1].status == "completed"
            fired = timeouts
    print(f"\n{runs_before} restarts before the deadline, {runs_after} after it")
    assert runs_before >= 1, "no restart ran before the deadline (raise the timeout)"
    assert len(fired) == 1
    assert fired[0].created_at >= deadline  # on time by the server clock, never early
    assert [r.edge() for r in history(postgresql, "clock-1")][1:] == [
        ("submit", "draft", "review", "waiting"),
        ("expired", "review", "escalate", "running"),
        ("handed_over", "escalate", None, "completed"),
    ]


def test_cancel_while_waiting_in_process(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any], spawn: Any
) -> None:
    child = spawn(db_env, "stop-1")
    poll("the wait began", waiting(postgresql, "stop-1"), child)
    cancelled = fsmflow(db_env, "cancel", WORKFLOW, "stop-1", "--reason", "not needed")
    assert cancelled.returncode == 0, output_of(cancelled)
    assert child.finish() == 1, child.output()  # run_program: an error is exit 1
    assert "InstanceCancelledError" in child.output()
    rows = history(postgresql, "stop-1")
    assert [r.status for r in rows] == ["running", "waiting", "cancelled"]
    refused = fsmflow(db_env, "send-event", WORKFLOW, "stop-1", "approval", "--data", APPROVE)
    assert refused.returncode == 1 and "cancelled" in refused.stderr, output_of(refused)


def test_cancel_while_suspended(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    first = example(db_env, "stop-2", "--suspend")
    assert first.returncode == 0, output_of(first)
    cancelled = fsmflow(db_env, "cancel", WORKFLOW, "stop-2")
    assert cancelled.returncode == 0, output_of(cancelled)
    again = example(db_env, "stop-2", "--suspend")
    assert again.returncode == 1 and "InstanceCancelledError" in again.stderr, output_of(again)
    assert [r.status for r in history(postgresql, "stop-2")] == ["running", "waiting", "cancelled"]


def test_an_event_sent_before_the_deadline_wins_over_it_even_when_run_after(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    args = ("--suspend", "--timeout", "2")
    first = example(db_env, "race-1", *args)
    assert first.returncode == 0, output_of(first)
    since = history(postgresql, "race-1")[-1].waiting_since
    assert since is not None
    deadline = since + timedelta(seconds=2)
    sent = send(db_env, "race-1", APPROVE)
    if events(postgresql, "race-1")[0]["created_at"] > deadline:
        pytest.skip("the machine was too slow to send before the 2 s deadline")
    poll("the server clock passed the deadline", lambda: server_now(postgresql) > deadline)

    late = example(db_env, "race-1", *args)  # no process ran at the deadline
    assert late.returncode == 0, output_of(late)
    assert "published, approved by ana (instance race-1)" in late.stdout
    rows = history(postgresql, "race-1")
    assert [r.trigger for r in rows] == [None, "submit", "approved", "done"]  # no timeout
    assert rows[2].event_id == event_id_of(sent)


def test_an_unmatched_event_is_consumed_and_does_not_reset_the_deadline(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    first = example(db_env, "odd-1", "--suspend")
    assert first.returncode == 0, output_of(first)
    waited = history(postgresql, "odd-1")[-1]
    sent = send(db_env, "odd-1", '{"ok": "maybe", "by": "cat"}')  # neither true nor false

    again = example(db_env, "odd-1", "--suspend")
    assert again.returncode == 0, output_of(again)
    assert "instance odd-1 waits in state 'review'" in again.stdout
    rows = history(postgresql, "odd-1")
    assert len(rows) == 3
    consumed = rows[-1]
    assert consumed.trigger == "fsmflow:unmatched-event" and consumed.status == "waiting"
    assert consumed.event_id == event_id_of(sent)
    assert consumed.context == waited.context  # the payload was not kept
    assert (consumed.waiting_since, consumed.wake_at) == (waited.waiting_since, waited.wake_at)
    shown = fsmflow(db_env, "show", WORKFLOW, "odd-1")
    assert shown.returncode == 0 and "pending events: none" in shown.stdout, output_of(shown)
