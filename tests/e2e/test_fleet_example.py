"""The README's worker-fleet walkthrough of the support-ticket example, run as written.

The ``$ ...`` lines of the console block in "The support tickets on a worker fleet" are
run from the repository root against the test's database: ``fsmflow init-db``, three
``fsmflow worker examples.support_ticket:WORKFLOW`` processes in the background (``&``),
``fsmflow submit`` of three tickets, ``fsmflow workers``, ``fsmflow list``, and ``kill``
(SIGTERM to the three workers, which must exit 0). Each ticket's stored history must be
the one the single-program example (``python examples/support_ticket.py``) records for
the same ticket, after the ``fsmflow:submit`` row that replaces its start row.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, run_python
from tests.e2e.support import SAFETY_TIMEOUT, Row, history, output_of
from tests.e2e.test_examples import SUPPORT_CRITICAL, SUPPORT_CRITICAL_FINAL

pytestmark = pytest.mark.timeout(300)

README_SECTION = "### The support tickets on a worker fleet"
WORKFLOW = "support_ticket"


def readme_commands() -> list[list[str]]:
    """The ``$ ...`` lines of the section's console block, as argument lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", section, re.DOTALL)
    assert block, "the section has a console walkthrough"
    lines = [line[2:] for line in block.group(1).splitlines() if line.startswith("$ ")]
    return [shlex.split(line, comments=True) for line in lines]


class Walkthrough:
    """The commands' processes: background workers and the foreground commands' results."""

    def __init__(self, env: dict[str, str], conn: psycopg.Connection[Any], logs: Path) -> None:
        self.env = env
        self.conn = conn
        self.logs = logs
        self.workers: list[subprocess.Popen[bytes]] = []
        self.submitted: dict[str, dict[str, Any]] = {}  # instance id -> its context
        self.outputs: dict[str, str] = {}  # command name -> stdout

    def run(self, words: list[str]) -> None:
        """Run one README command the way a shell would."""
        if words[0] == "kill":
            self.stop_workers()
            return
        assert words[0] == "fsmflow", words
        if words[-1] == "&":
            self.start_worker(words[1:-1])
            return
        if words[1] in ("workers", "list"):  # what they show: the tickets run by now
            self.wait_workers_registered()
            self.wait_completed()
        result = run_python(["-m", "fsmflow", *words[1:]], self.env)
        assert result.returncode == 0, f"{shlex.join(words)}\n{output_of(result)}"
        self.outputs[words[1]] = result.stdout
        if words[1] == "submit":
            instance = words[words.index("--id") + 1]
            assert result.stdout.strip() == instance, output_of(result)
            self.submitted[instance] = json.loads(words[words.index("--context") + 1])

    def start_worker(self, args: list[str]) -> None:
        """A background ``fsmflow worker`` (its output to a file)."""
        log = self.logs / f"worker{len(self.workers)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "fsmflow", *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(process)

    def log(self, n: int) -> str:
        """What background worker ``n`` wrote."""
        return (self.logs / f"worker{n}.log").read_text(errors="replace")

    def _until(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while not condition():
            for n, process in enumerate(self.workers):
                assert process.poll() is None, f"worker {n} exited:\n{self.log(n)}"
            assert time.monotonic() < deadline, f"never happened: {what}"
            time.sleep(0.05)

    def _rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        rows = self.conn.execute(query, params).fetchall()
        self.conn.commit()  # no snapshot kept while the workers write
        return rows

    def wait_workers_registered(self) -> None:
        """Until every background worker is on the workers table."""
        pids = {p.pid for p in self.workers}

        def registered() -> bool:
            rows = self._rows("SELECT pid FROM fsmflow_transitions_workers")
            return pids <= {row[0] for row in rows}

        self._until(registered, "the workers registered")

    def wait_completed(self) -> None:
        """Until every submitted ticket completed."""
        wanted = set(self.submitted)

        def completed() -> bool:
            rows = self._rows(
                "SELECT instance_id FROM fsmflow_transitions WHERE workflow_name = %s "
                "AND status = 'completed' AND instance_id = ANY(%s)",
                WORKFLOW,
                list(wanted),
            )
            return {row[0] for row in rows} == wanted

        self._until(completed, f"tickets {sorted(wanted)} completed")

    def stop_workers(self) -> list[int]:
        """SIGTERM every background worker; their exit codes."""
        for process in self.workers:
            process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=SAFETY_TIMEOUT) for process in self.workers]

    def kill_leftovers(self) -> None:
        """A failed test: no worker outlives it."""
        for process in self.workers:
            if process.poll() is None:
                process.kill()
                process.wait()


def single_program_run(
    db_env: dict[str, str], conn: psycopg.Connection[Any], ticket: dict[str, Any]
) -> list[Row]:
    """What ``python examples/support_ticket.py`` records for ``ticket``'s words and plan
    (its customer and id are the program's default ticket's)."""
    instance = f"program-{ticket['id']}"
    args = ["examples/support_ticket.py", "--instance-id", instance]
    args += ["--subject", ticket["subject"], "--body", ticket["body"], "--plan", ticket["plan"]]
    result = run_python(args, db_env)
    assert result.returncode == 0, output_of(result)
    return history(conn, WORKFLOW, instance)


def as_ticket(rows: list[Row], ticket_id: str) -> list[Row]:
    """``rows`` with the ticket id in every context replaced by ``ticket_id``."""
    return [
        Row(r.seq, r.trigger, r.source_state, r.dest_state, r.status,
            {**r.context, "ticket": {**r.context["ticket"], "id": ticket_id}})
        for r in rows
    ]  # fmt: skip


def test_the_readme_fleet_walkthrough_runs_the_tickets_in_three_workers(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any], tmp_path: Path
) -> None:
    commands = readme_commands()
    assert sum(1 for c in commands if c[-1] == "&") == 3, commands
    walk = Walkthrough(db_env, postgresql, tmp_path)
    try:
        for words in commands:
            walk.run(words)
        codes = [process.returncode for process in walk.workers]
    finally:
        walk.kill_leftovers()
    logs = [walk.log(n) for n in range(len(walk.workers))]
    print(f"[fleet example] workers exit {codes}\n{walk.outputs['workers']}{walk.outputs['list']}")
    assert codes == [0, 0, 0], "\n".join(logs)
    assert not [log for log in logs if "Traceback" in log], "\n".join(logs)
    for process in walk.workers:  # `fsmflow workers` listed each of them
        assert str(process.pid) in walk.outputs["workers"], walk.outputs["workers"]

    assert len(walk.submitted) == 3
    for instance, context in walk.submitted.items():
        ticket = context["ticket"]
        rows = history(postgresql, WORKFLOW, instance)
        assert instance in walk.outputs["list"]
        assert [r.seq for r in rows] == list(range(len(rows)))
        assert (rows[0].trigger, rows[0].dest_state) == ("fsmflow:submit", "receive")
        assert rows[0].context == context
        program = as_ticket(single_program_run(db_env, postgresql, ticket), ticket["id"])
        assert rows[1:] == program[1:], f"{instance}: the fleet's history differs"
        if instance == "t-1042":  # the example's own ticket: its known history
            assert [r.edge() for r in rows[1:]] == SUPPORT_CRITICAL[1:]
            assert rows[-1].context == SUPPORT_CRITICAL_FINAL
