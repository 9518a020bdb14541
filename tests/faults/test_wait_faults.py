"""Deliveries under SIGKILL, racing senders, and many events in order: real processes.

The runner (``tests/faults/wait_program.py``) dies by ``os._exit`` (no cleanup, like
``kill -9``) at each point of a delivery, or is SIGKILLed while its delivery INSERT waits
uncommitted; after a restart the event must be delivered exactly once (one history row
with its ``event_id``), the step before the wait must have run once (ledger), and the
instance must complete. Everything is read back from the database and the ledger; waits
poll for a condition against a generous deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

from .support import Admin

pytestmark = pytest.mark.timeout(300)

SAFETY = 90.0  # bounds a hang only
PROGRAM = "tests.faults.wait_program"
EXIT_CODE = 70


@dataclass
class Proc:
    """A ``wait_program`` process; output to files."""

    process: subprocess.Popen[str]
    out: Path
    err: Path

    def output(self) -> str:
        return f"--- stdout\n{self.out.read_text()}\n--- stderr\n{self.err.read_text()[-4000:]}"

    def finish(self) -> int:
        try:
            return self.process.wait(timeout=SAFETY)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"hung:\n{self.output()}") from None


class Lab:
    """Processes, the ledger and superuser SQL of one test."""

    def __init__(self, postgresql: Any, env: dict[str, str], tmp_path: Path) -> None:
        self.admin = Admin(postgresql.info)
        self.env = env
        self.tmp = tmp_path
        self.ledger = tmp_path / "ledger"
        self.procs: list[Proc] = []

    def start(self, *args: str, **extra_env: str) -> Proc:
        name = f"p{len(self.procs)}"
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        with out.open("w") as o, err.open("w") as e:
            process = subprocess.Popen(
                [sys.executable, "-m", PROGRAM, *args], cwd=ROOT, env={**self.env, **extra_env},
                stdout=o, stderr=e, stdin=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        self.procs.append(Proc(process, out, err))
        return self.procs[-1]

    def review(self, instance: str, **extra_env: str) -> Proc:
        return self.start("review", str(self.ledger), instance, **extra_env)

    def starts(self, instance: str, state: str) -> int:
        if not self.ledger.exists():
            return 0
        lines = self.ledger.read_text().splitlines()
        return sum(1 for line in lines if line.split()[1:] == [instance, state])

    def rows(self, workflow: str, instance: str) -> list[dict[str, Any]]:
        return self.admin.sql(
            "SELECT seq, trigger, source_state, dest_state, status, context, event_id "
            "FROM fsmflow_transitions WHERE workflow_name = %s AND instance_id = %s "
            "ORDER BY seq",
            (workflow, instance),
        )

    def events(self, workflow: str, instance: str) -> list[dict[str, Any]]:
        return self.admin.sql(
            "SELECT id, key, payload FROM fsmflow_transitions_events "
            "WHERE workflow_name = %s AND instance_id = %s ORDER BY id",
            (workflow, instance),
        )

    def send(self, workflow: str, instance: str, event: str, payload: Any) -> int:
        """Send like ``fsmflow send-event`` does (INSERT via the library, in a process)."""
        code = (
            "import asyncio, json, sys\n"
            "from fsmflow import DBConfig\n"
            "async def main():\n"
            "    db = DBConfig()\n"
            "    try:\n"
            "        sent = await db.store.send_event(*sys.argv[1:4], json.loads(sys.argv[4]))\n"
            "        print(sent.event.event_id)\n"
            "    finally:\n"
            "        await db.close()\n"
            "asyncio.run(main())\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, workflow, instance, event, json.dumps(payload)],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=SAFETY, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    def close(self) -> None:
        for proc in self.procs:
            if proc.process.poll() is None:
                proc.process.kill()
                proc.process.wait()
        self.admin.close()


@pytest.fixture
def lab(postgresql: Any, db_env: dict[str, str], tmp_path: Path) -> Iterator[Lab]:
    found = Lab(postgresql, db_env, tmp_path)
    yield found
    found.close()


def poll(what: str, condition: Callable[[], bool], proc: Proc | None = None) -> None:
    deadline = time.monotonic() + SAFETY
    while not condition():
        if proc is not None and proc.process.poll() is not None:
            raise AssertionError(f"exited (rc {proc.process.returncode}) before {what}:\n"
                                 f"{proc.output()}")  # fmt: skip
        if time.monotonic() > deadline:
            raise AssertionError(f"never {what}" + (f":\n{proc.output()}" if proc else ""))
        time.sleep(0.02)


def last_status(lab: Lab, workflow: str, instance: str) -> Callable[[], str | None]:
    def status() -> str | None:
        rows = lab.rows(workflow, instance)
        return rows[-1]["status"] if rows else None

    return status


def assert_delivered_once(lab: Lab, instance: str, event_id: int) -> None:
    """Completed, the event in exactly one row (the approval), prepare run exactly once."""
    rows = lab.rows("review", instance)
    edges = [(r["trigger"], r["source_state"], r["dest_state"], r["status"]) for r in rows]
    assert edges == [
        (None, None, "prepare", "running"),
        ("ready", "prepare", "review", "waiting"),
        ("approved", "review", "publish", "running"),
        ("done", "publish", None, "completed"),
    ], edges
    assert [r["event_id"] for r in rows].count(event_id) == 1
    assert rows[2]["event_id"] == event_id
    assert rows[-1]["context"]["published"] == {"ok": True}
    assert lab.starts(instance, "prepare") == 1  # the step before the wait: once
    assert [e["id"] for e in lab.events("review", instance)] == [event_id]


# -- SIGKILL at each point of a delivery ---------------------------------------------


def test_killed_after_the_event_is_stored_before_the_runner_reads_it(lab: Lab) -> None:
    gate = lab.tmp / "gate"
    first = lab.review("a-1", WAIT_EXIT_AT="transition_recorded:prepare", WAIT_HOLD_FILE=str(gate))
    poll("prepare ran", lambda: lab.starts("a-1", "prepare") == 1, first)
    event_id = lab.send("review", "a-1", "approval", {"ok": True})  # stored during the step
    gate.touch()
    assert first.finish() == EXIT_CODE, first.output()  # died once the wait was recorded
    assert last_status(lab, "review", "a-1")() == "waiting"
    assert [r["event_id"] for r in lab.rows("review", "a-1")] == [None, None]  # not read

    again = lab.review("a-1")
    assert again.finish() == 0, again.output()
    assert_delivered_once(lab, "a-1", event_id)


def test_killed_after_the_runner_read_the_event_before_the_delivery_row(lab: Lab) -> None:
    first = lab.review("b-1", WAIT_EXIT_AT="condition")
    poll("the wait began", lambda: last_status(lab, "review", "b-1")() == "waiting", first)
    event_id = lab.send("review", "b-1", "approval", {"ok": True})
    assert first.finish() == EXIT_CODE, first.output()  # died judging the payload
    assert len(lab.rows("review", "b-1")) == 2  # nothing recorded

    again = lab.review("b-1")
    assert again.finish() == 0, again.output()
    assert_delivered_once(lab, "b-1", event_id)


@pytest.mark.parametrize("backend", ["terminated", "left_to_finish"])
def test_sigkill_while_the_delivery_insert_waits_uncommitted(lab: Lab, backend: str) -> None:
    """The delivery row (seq 2) is written but its commit waits on a row lock the test
    holds; the runner is SIGKILLed then. Its backend is either terminated (the row rolls
    back) or left to finish the statement once the test lets go."""
    first = lab.review("b-2")
    poll("the wait began", lambda: last_status(lab, "review", "b-2")() == "waiting", first)
    blocker = lab.admin.connect(autocommit=False)
    blocker.execute(
        "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, context) "
        "VALUES ('review', 'b-2', 2, '{}')"
    )
    blocker_pid = blocker.info.backend_pid
    event_id = lab.send("review", "b-2", "approval", {"ok": True})
    blocked: list[int] = []

    def delivery_in_flight() -> bool:
        found = lab.admin.sql(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (blocker_pid,),
        )
        blocked[:] = [int(r["pid"]) for r in found]
        return bool(blocked)

    try:
        poll("the delivery INSERT waited on the test's row", delivery_in_flight, first)
        first.process.send_signal(signal.SIGKILL)
        assert first.finish() == -signal.SIGKILL
        if backend == "terminated":
            assert lab.admin.terminate(blocked[0])
    finally:
        blocker.rollback()
        blocker.close()
    orphan = blocked[0]
    poll(
        "the killed runner's backend ended",
        lambda: not lab.admin.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (orphan,)),
    )
    stored = [r["event_id"] for r in lab.rows("review", "b-2")]
    # Terminated: rolled back. Left alone: the statement may finish (and commit) after
    # its client died, or roll back; either way the history is whole.
    assert stored in ([None, None], [None, None, event_id]), stored
    if backend == "terminated":
        assert stored == [None, None]
    print(f"\nbackend {backend}: delivery row {'committed' if len(stored) == 3 else 'rolled back'}")

    again = lab.review("b-2")
    assert again.finish() == 0, again.output()
    assert_delivered_once(lab, "b-2", event_id)


@pytest.mark.parametrize(
    "point", ["transition_recorded:review", "step_started:publish"], ids=["row", "before-next-step"]
)
def test_killed_right_after_the_delivery_row_commits(lab: Lab, point: str) -> None:
    first = lab.review("c-1", WAIT_EXIT_AT=point)
    poll("the wait began", lambda: last_status(lab, "review", "c-1")() == "waiting", first)
    event_id = lab.send("review", "c-1", "approval", {"ok": True})
    assert first.finish() == EXIT_CODE, first.output()
    rows = lab.rows("review", "c-1")
    assert [r["event_id"] for r in rows] == [None, None, event_id]  # delivered, committed

    again = lab.review("c-1")
    assert again.finish() == 0, again.output()
    assert_delivered_once(lab, "c-1", event_id)
    # step_started comes before the step's body: the killed process never ran publish.
    assert lab.starts("c-1", "publish") == 1


# -- senders ---------------------------------------------------------------------------


def test_two_senders_racing_with_one_key_store_and_deliver_once(lab: Lab) -> None:
    keys = 20
    counter = lab.start("counter", str(lab.ledger), "race-1", str(keys))
    poll("the counter waited", lambda: last_status(lab, "counter", "race-1")() == "waiting")
    gate = lab.tmp / "go"
    senders = [
        lab.start("send", "counter", "race-1", "item", "0", str(keys), str(gate)) for _ in "ab"
    ]
    poll("both senders connected", lambda: all("connected" in s.out.read_text() for s in senders))
    gate.touch()
    for sender in senders:
        assert sender.finish() == 0, sender.output()
    assert counter.finish() == 0, counter.output()

    reports = [[json.loads(line) for line in s.out.read_text().splitlines()[1:]] for s in senders]
    for i in range(keys):
        a, b = reports[0][i], reports[1][i]
        assert a["n"] == b["n"] == i
        assert a["event_id"] == b["event_id"], (a, b)  # both report the one stored event
        assert sorted([a["duplicate"], b["duplicate"]]) == [False, True], (a, b)
    wins = Counter(r["duplicate"] for r in reports[0])
    print(f"\nsender a stored {wins[False]} of {keys} keys, sender b {wins[True]}")
    stored = lab.events("counter", "race-1")
    assert Counter(e["key"] for e in stored) == {f"k{i}": 1 for i in range(keys)}
    rows = lab.rows("counter", "race-1")
    delivered = [r["event_id"] for r in rows if r["event_id"] is not None]
    assert sorted(delivered) == [e["id"] for e in stored]  # each stored event once
    assert len(set(delivered)) == len(delivered)
    assert rows[-1]["status"] == "completed"
    assert sorted(rows[-1]["context"]["seen"]) == list(range(keys))


def test_fifty_sequential_events_are_delivered_in_order(lab: Lab) -> None:
    count = 50
    counter = lab.start("counter", str(lab.ledger), "fifo-1", str(count))
    poll("the counter waited", lambda: last_status(lab, "counter", "fifo-1")() == "waiting")
    sender = lab.start("send", "counter", "fifo-1", "item", "0", str(count))
    assert sender.finish() == 0, sender.output()
    assert counter.finish() == 0, counter.output()

    rows = lab.rows("counter", "fifo-1")
    assert rows[-1]["status"] == "completed"
    assert rows[-1]["context"]["seen"] == list(range(count))  # the order they were sent
    delivered = [r["event_id"] for r in rows if r["event_id"] is not None]
    assert delivered == [e["id"] for e in lab.events("counter", "fifo-1")]
    assert lab.starts("fifo-1", "count") == count
