"""``fsmflow submit``, ``fsmflow worker`` and ``fsmflow workers``, and what ``list`` and
``show`` say about workers, run as subprocesses against the test's database.

The workers are real ``python -m fsmflow worker`` processes, stopped by real signals. A
gated step (tests/integration/fleet_cli_workflows.py) keeps an instance observably running
until the test creates its release file; every wait is for a fact (a file, a row, a status),
bounded by a generous timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fsmflow import DBConfig
from fsmflow.cli.fleet import workers_table
from fsmflow.cli.main import build_parser
from fsmflow.cli.output import instances_table, worker_line
from fsmflow.model.records import SUBMIT_TRIGGER, InstanceSummary, WorkerInfo
from tests.conftest import ROOT, run_python
from tests.integration.reliability_support import Harness

from .fleet_cli_workflows import GATED, PIPELINE
from .test_cli import assert_one_error_line, fsmflow, table_text

MODULE = "tests.integration.fleet_cli_workflows"
PIPELINE_TARGET = f"{MODULE}:PIPELINE"
GATED_TARGET = f"{MODULE}:GATED"
DEFINITION_TARGET = f"{MODULE}:PIPELINE_DEFINITION"
TIMEOUT = 60.0  # bounds a hang only; nothing asserts how long anything took
WORKER_ENV = {"FSMFLOW_WORKER_SWEEP_SECONDS": "0.5"}  # heartbeats (RUNNING counts) come often


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def queue_text(postgresql: Any) -> list[str]:
    """Every row of the fleet's queue, as text, in a stable order."""
    with postgresql.cursor() as cur:
        cur.execute("SELECT q::text FROM fsmflow_transitions_queue q ORDER BY 1")
        rows = [text for (text,) in cur.fetchall()]
    postgresql.commit()
    return rows


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``condition()`` holds (AssertionError naming ``what`` after TIMEOUT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await condition():
        assert loop.time() < deadline, f"{what}: not within {TIMEOUT:g} s"
        await asyncio.sleep(0.05)


async def status_of(db: DBConfig, workflow: str, instance_id: str) -> str | None:
    last = await db.store.last_record(workflow, instance_id)
    return None if last is None else last.status


@dataclass
class WorkerProcess:
    """A ``fsmflow worker`` subprocess; its stdout and stderr go to ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"the worker exited early:\n{self.output()}"
        return True

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        """Send ``signum``; the exit code (a negative one for a signal that killed it)."""
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=TIMEOUT)


@contextlib.contextmanager
def worker_process(
    env: dict[str, str], log: Path, *targets: str, concurrency: int = 2
) -> Iterator[WorkerProcess]:
    """``python -m fsmflow worker targets... --concurrency N``, killed if still running."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fsmflow", "worker", *targets, "--concurrency",
             str(concurrency)],
            cwd=ROOT, env={**env, **WORKER_ENV}, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    worker = WorkerProcess(proc, log)
    try:
        yield worker
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


def gate_context(tmp_path: Path) -> dict[str, str]:
    """The context of a gated instance: its started and release files."""
    return {"started": str(tmp_path / "started"), "release": str(tmp_path / "release")}


def touch(path: Path) -> None:
    """Create ``path`` (a gate's release file)."""
    path.touch()


def remove(path: Path) -> None:
    """Delete ``path`` (a gate's started file, to see the step start again)."""
    path.unlink()


def listed(env: dict[str, str], instance_id: str) -> dict[str, Any]:
    """The ``fsmflow list --json`` item of one instance."""
    items = json.loads(ok(fsmflow(env, "list", "--json")))
    [item] = [i for i in items if i["instance_id"] == instance_id]
    return dict(item)


# -- submit ------------------------------------------------------------------------------


async def test_submit_prints_the_id_and_stores_seq_0_for_the_workers(
    db_config: DBConfig, db_env: dict[str, str], postgresql: Any, tmp_path: Path
) -> None:
    out = ok(fsmflow(db_env, "submit", PIPELINE_TARGET, "--id", "doc-1", "--context", '{"n": 1}'))
    assert out == "doc-1\n"
    [first] = await db_config.store.history("cli_pipeline", "doc-1")  # submitting runs nothing
    assert (first.seq, first.trigger, first.status) == (0, SUBMIT_TRIGGER, "running")
    assert first.dest_state == "fetch" and first.context == {"n": 1}
    assert len(queue_text(postgresql)) == 1  # queued for the workers

    # --json, a WorkflowDefinition as the target, no --id (a new one), no --context ({}).
    made = json.loads(ok(fsmflow(db_env, "submit", DEFINITION_TARGET, "--json")))
    assert set(made) == {"workflow", "instance_id"} and made["workflow"] == "cli_pipeline"
    assert len(made["instance_id"]) == 32
    generated = await db_config.store.record_at("cli_pipeline", made["instance_id"], 0)
    assert generated is not None and generated.context == {}

    (tmp_path / "context.json").write_text('{"from": "file", "n": [1, 2]}')
    context_file = f"@{tmp_path / 'context.json'}"
    ok(fsmflow(db_env, "submit", PIPELINE_TARGET, "--id", "doc-2", "--context", context_file))
    from_file = await db_config.store.record_at("cli_pipeline", "doc-2", 0)
    assert from_file is not None and from_file.context == {"from": "file", "n": [1, 2]}

    piped = run_python(
        ["-m", "fsmflow", "submit", PIPELINE_TARGET, "--id", "doc-3", "--context", "-"],
        db_env, input='{"from": "stdin"}',
    )  # fmt: skip
    assert ok(piped) == "doc-3\n"
    from_stdin = await db_config.store.record_at("cli_pipeline", "doc-3", 0)
    assert from_stdin is not None and from_stdin.context == {"from": "stdin"}
    assert len(queue_text(postgresql)) == 4


async def test_submit_refusals_exit_1_or_2_and_write_nothing(
    db_config: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    ok(fsmflow(db_env, "submit", PIPELINE_TARGET, "--id", "doc-1", "--context", '{"n": 1}'))
    before = (table_text(postgresql), queue_text(postgresql))

    taken = fsmflow(db_env, "submit", PIPELINE_TARGET, "--id", "doc-1", "--context", '{"n": 2}')
    assert_one_error_line(taken, 1, "InstanceExistsError")
    assert "'doc-1'" in taken.stderr and taken.stdout == ""

    for target, text in [
        ("no_colon", "name the workflow as MODULE:ATTRIBUTE"),
        ("no_such_module_xyz:WORKFLOW", "importable from the current directory"),
        (f"{MODULE}:MISSING", "AttributeError"),
        (f"{MODULE}:NOT_A_WORKFLOW", "is a str, not a WorkflowDefinition or a fsmflow.Workflow"),
    ]:
        assert_one_error_line(fsmflow(db_env, "submit", target), 2, text)

    for context, text in [
        ("[1, 2]", "a context is a JSON object, not an array"),
        ("7", "a context is a JSON object, not a number"),
        ('{"n": ', "the text is not valid JSON"),
        ('{"n": NaN}', "JSON has no NaN or Infinity"),
    ]:
        refused = fsmflow(db_env, "submit", PIPELINE_TARGET, "--context", context)
        assert refused.returncode == 2, refused.stderr
        assert "argument --context" in refused.stderr and text in refused.stderr
    assert (table_text(postgresql), queue_text(postgresql)) == before


# -- worker, workers, list, show ---------------------------------------------------------


async def test_a_worker_process_runs_submitted_instances_and_stops_on_sigterm(
    db_config: DBConfig, db_env: dict[str, str], postgresql: Any, tmp_path: Path
) -> None:
    store = db_config.store
    quick = [ok(fsmflow(db_env, "submit", PIPELINE_TARGET)).strip() for _ in range(3)]
    gated = await store.submit(GATED, gate_context(tmp_path), instance_id="gated-1")
    with worker_process(db_env, tmp_path / "worker.log", PIPELINE_TARGET, GATED_TARGET) as worker:

        async def quick_ones_done() -> bool:
            found = [await status_of(db_config, "cli_pipeline", i) for i in quick]
            return worker.alive() and found == ["completed"] * 3

        await until(quick_ones_done, "the submitted instances complete")
        await until(
            lambda: _true(worker.alive() and Path(gate_context(tmp_path)["started"]).exists()),
            "the gated step starts",
        )
        [info] = json.loads(ok(fsmflow(db_env, "workers", "--json")))
        assert info["pid"] == worker.proc.pid and info["host"] == socket.gethostname()
        assert sorted(info["workflows"]) == ["cli_gated", "cli_pipeline"]
        assert info["concurrency"] == 2 and len(info["worker_id"]) == 32
        assert info["stopping"] is False

        async def counted() -> bool:  # running/finished as of the worker's last heartbeat
            [live] = await store.list_workers()
            return worker.alive() and (live.running, live.finished) == (1, 3)

        await until(counted, "the worker heartbeats its counts")
        lines = ok(fsmflow(db_env, "workers")).splitlines()
        assert lines[0].split() == [
            "WORKER", "HOST", "PID", "WORKFLOWS", "RUNNING", "FINISHED", "STARTED", "HEARTBEAT",
        ]  # fmt: skip
        assert lines[1].split()[:3] == [info["worker_id"][:8], info["host"], str(info["pid"])]
        assert "cli_pipeline, cli_gated" in lines[1] and " 1/2 " in lines[1]

        item = listed(db_env, gated)
        assert item["status"] == "running" and item["worker"] == info | {
            "running": 1, "finished": 3, "heartbeat_at": item["worker"]["heartbeat_at"],
        }  # fmt: skip
        assert all(listed(db_env, i)["worker"] is None for i in quick)
        table = ok(fsmflow(db_env, "list")).splitlines()
        assert "WORKER" in table[0].split()
        [row] = [line for line in table if " gated-1 " in line]
        assert f"{info['host']}:{info['pid']}" in row
        shown = ok(fsmflow(db_env, "show", "cli_gated", gated))
        assert f"run by worker {info['host']}:{info['pid']} (id {info['worker_id']})" in shown
        shown_json = json.loads(ok(fsmflow(db_env, "show", "cli_gated", gated, "--json")))
        assert shown_json["worker"]["worker_id"] == info["worker_id"]

        touch(Path(gate_context(tmp_path)["release"]))
        await until(
            lambda: _status_is(db_config, worker, "cli_gated", gated, "completed"),
            "the gated instance completes",
        )
        assert "run by worker" not in ok(fsmflow(db_env, "show", "cli_gated", gated))
        assert worker.stop(signal.SIGTERM) == 0, worker.output()

    log = worker.output()
    assert "serving 'cli_pipeline' (tests.integration.fleet_cli_workflows:PIPELINE)" in log
    assert "'cli_gated' (tests.integration.fleet_cli_workflows:GATED), concurrency 2" in log
    assert "Traceback" not in log
    assert ok(fsmflow(db_env, "workers")) == "no live workers for table fsmflow_transitions\n"
    assert json.loads(ok(fsmflow(db_env, "workers", "--json"))) == []
    assert queue_text(postgresql) == []  # ended instances leave the queue
    trail = await store.last_record("cli_gated", gated)
    assert trail is not None and trail.context["trail"] == ["hold", "finish"]


async def _true(value: bool) -> bool:
    return value


async def _status_is(
    db: DBConfig, worker: WorkerProcess, workflow: str, instance_id: str, status: str
) -> bool:
    return worker.alive() and await status_of(db, workflow, instance_id) == status


async def test_sigterm_past_the_grace_period_exits_75_and_a_killed_worker_is_named_nowhere(
    db_config: DBConfig, db_env: dict[str, str], tmp_path: Path
) -> None:
    store = db_config.store
    context = gate_context(tmp_path)
    started = Path(context["started"])
    gated = await store.submit(GATED, context, instance_id="gated-1")
    env = {**db_env, "FSMFLOW_SHUTDOWN_GRACE_SECONDS": "1"}
    with worker_process(env, tmp_path / "first.log", GATED_TARGET) as first:
        await until(lambda: _true(first.alive() and started.exists()), "the gated step starts")
        # The step never ends by itself: the grace period runs out, the step is cancelled.
        assert first.stop(signal.SIGTERM) == 75, first.output()
    assert "Traceback" not in first.output()
    assert await store.list_workers() == []
    item = listed(db_env, gated)
    assert (item["status"], item["current_state"], item["worker"]) == ("running", "hold", None)

    remove(started)
    with worker_process(env, tmp_path / "second.log", GATED_TARGET) as second:
        await until(lambda: _true(second.alive() and started.exists()), "the step runs again")
        [info] = json.loads(ok(fsmflow(db_env, "workers", "--json")))
        assert info["pid"] == second.proc.pid
        assert listed(db_env, gated)["worker"]["pid"] == second.proc.pid
        assert second.stop(signal.SIGKILL) == -signal.SIGKILL

    async def gone() -> bool:  # its session ends once the server sees the process die
        return await store.list_workers() == []

    await until(gone, "the killed worker leaves the list")
    # Its claim stays in the queue until another worker's sweep takes it over; list and
    # show must not name a dead worker meanwhile.
    assert listed(db_env, gated)["worker"] is None
    assert "run by worker" not in ok(fsmflow(db_env, "show", "cli_gated", gated))
    assert ok(fsmflow(db_env, "workers")).startswith("no live workers")


async def test_worker_refuses_what_it_cannot_run_with_exit_2(
    db_config: DBConfig, db_env: dict[str, str]
) -> None:
    assert_one_error_line(
        fsmflow(db_env, "worker", DEFINITION_TARGET), 2,
        "is a WorkflowDefinition: a worker needs its steps too; wrap it as "
        "fsmflow.Workflow(DEFINITION, STEPS)",
    )  # fmt: skip
    for target, text in [
        ("no_colon", "name the workflow as MODULE:ATTRIBUTE"),
        ("no_such_module_xyz:WORKFLOW", "cannot load"),
        (f"{MODULE}:NOT_A_WORKFLOW", "is a str, not a fsmflow.Workflow"),
    ]:
        assert_one_error_line(fsmflow(db_env, "worker", target), 2, text)
    assert_one_error_line(
        fsmflow(db_env, "worker", PIPELINE_TARGET, PIPELINE_TARGET), 2, "given twice"
    )
    for value in ("0", "-1", "many"):
        zero = fsmflow(db_env, "worker", PIPELINE_TARGET, "--concurrency", value)
        assert zero.returncode == 2 and "argument --concurrency" in zero.stderr, zero.stderr
    assert fsmflow(db_env, "worker").returncode == 2  # no target at all
    assert await db_config.store.list_workers() == []  # none of them registered


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The ``fsmflow`` sub-command parsers, by name."""
    [found] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found.choices)


def test_worker_help_explains_signals_and_the_sweep() -> None:
    commands = subcommands()
    text = " ".join(commands["worker"].format_help().split())
    for needed in (
        "SIGTERM", "FSMFLOW_SHUTDOWN_GRACE_SECONDS", "gives its claims back", "exits 0",
        "75 if a step had to be cancelled", "A second signal cancels running steps at once",
        "FSMFLOW_WORKER_SWEEP_SECONDS",
    ):  # fmt: skip
        assert needed in text, needed
    for command in ("submit", "workers"):
        assert "FSMFLOW_TABLE" in commands[command].format_help()


# -- the tables, without a database ------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def worker_info(**changes: Any) -> WorkerInfo:
    base: dict[str, Any] = {
        "worker_id": "0123456789abcdef" * 2, "host": "vm-1", "pid": 4242,
        "workflows": ("tickets", "docs"), "concurrency": 4, "running": 3, "finished": 17,
        "started_at": NOW - timedelta(hours=2), "heartbeat_at": NOW - timedelta(seconds=1),
    }  # fmt: skip
    return WorkerInfo(**{**base, **changes})


def test_workers_table_shortens_ids_and_escapes_stored_text() -> None:
    spoof = "vm-1\n\x1b[2Kfake  1  x"
    lines = workers_table([worker_info(), worker_info(host=spoof, pid=7)], now=NOW).splitlines()
    assert len(lines) == 3 and "\x1b" not in "\n".join(lines)
    assert lines[1].split() == [
        "01234567", "vm-1", "4242", "tickets,", "docs", "3/4", "17", "2h", "ago", "1s", "ago",
    ]  # fmt: skip
    assert "vm-1\\n\\x1b[2Kfake" in lines[2]


def test_list_table_has_a_worker_column_and_show_a_worker_line() -> None:
    summaries = [
        InstanceSummary(
            workflow_name="tickets",
            instance_id=i,
            status="running",
            current_state="triage",
            seq=1,
            started_at=NOW,
            updated_at=NOW,
        )
        for i in ("t-1", "t-2")
    ]
    lines = instances_table(summaries, {("tickets", "t-2"): worker_info()}).splitlines()
    assert lines[0].split()[7] == "WORKER"
    assert "vm-1:4242" not in lines[1] and "vm-1:4242" in lines[2]
    bare = instances_table(summaries).splitlines()  # no worker known: the column is empty
    assert bare[0].split() == lines[0].split() and "vm-1" not in "\n".join(bare)
    assert worker_line(worker_info(host="h\x1b")) == (
        f"run by worker h\\x1b:4242 (id {'0123456789abcdef' * 2})"
    )


# -- least privilege ---------------------------------------------------------------------


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


async def test_list_and_show_work_for_a_role_without_fleet_grants(
    h: Harness, db_config: DBConfig, db_env: dict[str, str]
) -> None:
    # A deployment without workers grants only the history's SELECT, INSERT (README).
    role = h.create_role("program")
    h.sql(f"GRANT SELECT, INSERT ON fsmflow_transitions, fsmflow_transitions_events TO {role}")
    await db_config.store.submit(PIPELINE, {"n": 1}, instance_id="doc-1")
    env = {**db_env, "DB_USER": role, "FSMFLOW_DB_RETRY_SECONDS": "0"}
    env.pop("DB_PASSWORD", None)
    listed_text = fsmflow(env, "list")
    assert " doc-1 " in ok(listed_text) and "GRANT SELECT ON them" in listed_text.stderr
    assert json.loads(ok(fsmflow(env, "list", "--json")))[0]["worker"] is None
    shown = fsmflow(env, "show", "cli_pipeline", "doc-1")
    assert "run by worker" not in ok(shown) and "GRANT SELECT ON them" in shown.stderr
    denied = fsmflow(env, "workers")
    assert_one_error_line(denied, 1, "PermissionDeniedError: the database role may not read")
    assert "fsmflow_transitions_queue and fsmflow_transitions_workers" in denied.stderr
