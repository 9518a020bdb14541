"""The ``fsmflow`` command line, run as a subprocess (``python -m fsmflow``) against the
test's database through the ``db_env`` environment: output, exit codes, confirmations."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fsmflow import DBConfig
from fsmflow.cli.main import build_parser
from tests.conftest import ROOT, run_python

from .reliability_support import Tracker, running
from .test_history import DEFINITION, WORKFLOW, make_instance, run_to_end

SECRET_VALUE = "s3cr3t-context-value"
COMMANDS = (
    "init-db", "reset-db", "check", "list", "show", "history", "graph", "fork", "retry",
    "cancel", "prune", "bench",
)  # fmt: skip


def fsmflow(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m fsmflow args...`` with stdin closed (no TTY)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return run_python(["-m", "fsmflow", *args], env, **kwargs)


def table_text(postgresql: Any) -> list[str]:
    """Every row of the table, as text, in a stable order."""
    with postgresql.cursor() as cur:
        cur.execute("SELECT t::text FROM fsmflow_transitions t ORDER BY 1")
        rows = [text for (text,) in cur.fetchall()]
    postgresql.commit()  # hold no lock: reset-db's TRUNCATE would wait for it
    return rows


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """Exit ``code`` and exactly one ``fsmflow: error:`` line containing ``text``."""
    assert result.returncode == code, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fsmflow: error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
async def instances(db_config: DBConfig) -> DBConfig:
    """c1 completed (with a context value that must not be printed), f1 failed at 'think',
    r1 running (stopped before 'report')."""
    await make_instance(db_config, "c1", "completed", context={"secret": SECRET_VALUE})
    await make_instance(db_config, "f1", "failed", at="think")
    await make_instance(db_config, "r1", "running", at="report")
    return db_config


# -- help, settings, exit codes ----------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_names_the_environment_variables(command: str) -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    text = sub.format_help()
    for variable in ("DB_URL", "DB_HOST", "DB_PASSWORD", "FSMFLOW_TABLE", "FSMFLOW_LOG_LEVEL"):
        assert variable in text, f"{command} --help lacks {variable}"


def test_help_runs_as_a_subprocess_and_as_the_console_script(db_env: dict[str, str]) -> None:
    result = fsmflow(db_env, "--help")
    assert result.returncode == 0 and "DB_HOST" in result.stdout and "prune" in result.stdout
    result = fsmflow(db_env, "prune", "--help")
    assert result.returncode == 0 and "FSMFLOW_TABLE" in result.stdout
    script = Path(sys.executable).with_name("fsmflow")
    assert script.exists(), "the console script is installed with the package"
    done = subprocess.run(
        [str(script), "--version"], env=db_env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("fsmflow ")


@pytest.mark.parametrize(
    ("variable", "value", "text"),
    [
        ("DB_PORT", "not-a-port", "invalid setting DB_PORT"),
        ("FSMFLOW_POOL_SIZE", "0", "invalid setting FSMFLOW_POOL_SIZE"),
        ("FSMFLOW_TABLE", "fsm; DROP TABLE x", "FSMFLOW_TABLE="),
        ("FSMFLOW_LOG_LEVEL", "chatty", "FSMFLOW_LOG_LEVEL='chatty'"),
    ],
)
def test_invalid_settings_exit_2_naming_the_variable(
    db_env: dict[str, str], variable: str, value: str, text: str
) -> None:
    env = {**db_env, variable: value, "DB_PASSWORD": "hunter2-secret"}
    result = fsmflow(env, "list")
    assert_one_error_line(result, 2, text)
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_usage_errors_exit_2(db_env: dict[str, str]) -> None:
    assert fsmflow(db_env).returncode == 2
    assert fsmflow(db_env, "frobnicate").returncode == 2
    assert fsmflow(db_env, "list", "--status", "done").returncode == 2
    assert fsmflow(db_env, "prune", "--older-than", "soon", "--dry-run").returncode == 2
    assert fsmflow(db_env, "show", WORKFLOW).returncode == 2


def test_an_unreachable_database_is_one_error_line_and_exit_1(db_env: dict[str, str]) -> None:
    env = {**db_env, "DB_PORT": "1", "FSMFLOW_DB_RETRY_SECONDS": "0", "DB_PASSWORD": "pw-xyz-123"}
    result = fsmflow(env, "list")
    assert_one_error_line(result, 1, "DatabaseUnavailableError")
    assert "pw-xyz-123" not in result.stderr
    result = fsmflow(env, "check", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["healthy"] is False


def test_log_level_from_the_option_or_the_environment(db_env: dict[str, str]) -> None:
    # init-db logs at INFO only when it creates (or upgrades) a table: a fresh table each time.
    env = {**db_env, "FSMFLOW_TABLE": "logged_a"}
    assert "initialized table" in fsmflow(env, "init-db").stderr
    env = {**db_env, "FSMFLOW_TABLE": "logged_b"}
    assert "initialized table" not in fsmflow(env, "--log-level", "warning", "init-db").stderr
    quiet = {**db_env, "FSMFLOW_LOG_LEVEL": "WARNING", "FSMFLOW_TABLE": "logged_c"}
    assert "initialized table" not in fsmflow(quiet, "init-db").stderr


# -- init-db, check ----------------------------------------------------------------------


def test_init_db_then_check(db_env: dict[str, str]) -> None:
    env = {**db_env, "FSMFLOW_TABLE": "fresh_table"}
    before = fsmflow(env, "check")
    assert before.returncode == 1 and "UNHEALTHY" in before.stdout
    assert "does not exist: run `fsmflow init-db`" in before.stdout

    created = fsmflow(env, "init-db")
    assert created.returncode == 0 and "table fresh_table is ready" in created.stdout

    after = fsmflow(env, "check")
    assert after.returncode == 0 and after.stdout.startswith("healthy: table fresh_table")
    report = json.loads(fsmflow(env, "check", "--json").stdout)
    assert report["healthy"] is True and report["synchronous_commit"] == "on"


# -- list, show, graph -------------------------------------------------------------------


async def test_list_shows_status_state_and_filters(
    instances: DBConfig, db_env: dict[str, str]
) -> None:
    result = fsmflow(db_env, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["WORKFLOW", "INSTANCE", "STATUS", "STATE", "SEQ"]
    assert [line.split()[1:4] for line in lines[1:]] == [
        ["r1", "running", "report"],
        ["f1", "failed", "think"],
        ["c1", "completed", "report"],
    ]
    failed = json.loads(fsmflow(db_env, "list", "--status", "failed", "--json").stdout)
    assert [(i["instance_id"], i["status"], i["seq"]) for i in failed] == [("f1", "failed", 2)]
    limited = fsmflow(db_env, "list", "--limit", "1").stdout
    assert "r1" in limited and "c1" not in limited and "raise --limit" in limited
    assert "no instances" in fsmflow(db_env, "list", "--workflow", "other_flow").stdout


async def test_show_never_prints_context_values_unless_asked(
    instances: DBConfig, db_env: dict[str, str]
) -> None:
    table = fsmflow(db_env, "show", WORKFLOW, "c1")
    assert table.returncode == 0, table.stderr
    assert SECRET_VALUE not in table.stdout
    assert "completed, state 'report', seq 3" in table.stdout
    assert "context keys at seq 3: secret, visited" in table.stdout

    plain = json.loads(fsmflow(db_env, "history", WORKFLOW, "c1", "--json").stdout)
    assert [r["seq"] for r in plain["rows"]] == [0, 1, 2, 3]
    assert all("context" not in r for r in plain["rows"]) and SECRET_VALUE not in str(plain)
    assert plain["rows"][-1]["context_keys"] == ["secret", "visited"]

    full = json.loads(fsmflow(db_env, "show", WORKFLOW, "c1", "--json", "--context").stdout)
    assert full["rows"][-1]["context"]["secret"] == SECRET_VALUE

    failed = fsmflow(db_env, "show", WORKFLOW, "f1").stdout
    assert "seq 2 failed: RuntimeError (1 attempt(s))" in failed and "boom" not in failed
    assert "--errors shows it" in failed
    shown = fsmflow(db_env, "show", WORKFLOW, "f1", "--errors").stdout
    assert "seq 2 failed: RuntimeError: boom (1 attempt(s))" in shown
    rows = json.loads(fsmflow(db_env, "show", WORKFLOW, "f1", "--json").stdout)["rows"]
    assert rows[-1]["error"]["type"] == "RuntimeError" and "boom" not in str(rows)
    rows = json.loads(fsmflow(db_env, "history", WORKFLOW, "f1", "--json", "--errors").stdout)
    assert rows["rows"][-1]["error"]["message"] == "boom"
    assert_one_error_line(fsmflow(db_env, "show", WORKFLOW, "ghost"), 1, "InstanceNotFoundError")


async def test_hand_altered_rows_give_a_clear_error_or_a_normalized_note(
    instances: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    with postgresql.cursor() as cur:
        cur.execute(
            "UPDATE fsmflow_transitions SET error = to_jsonb('disk full'::text) "
            "WHERE instance_id = 'f1' AND seq = 2"
        )
        cur.execute(
            "UPDATE fsmflow_transitions SET context = '[1, 2]' WHERE instance_id = 'c1' AND seq = 2"
        )
    postgresql.commit()
    plain = fsmflow(db_env, "show", WORKFLOW, "f1", "--errors")
    assert plain.returncode == 0, plain.stderr
    assert "seq 2 failed: error: disk full" in plain.stdout
    for command in ("show", "history"):
        corrupt = fsmflow(db_env, command, WORKFLOW, "c1")
        assert_one_error_line(corrupt, 1, "HistoryCorruptError")
        assert (
            "seq 2" in corrupt.stderr and "fork the instance from an intact seq" in corrupt.stderr
        )


async def test_stored_control_characters_are_escaped_except_in_json(
    instances: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    spoof = "r1\n\x1b[2Kops_flow  c9  completed\u202e"
    with postgresql.cursor() as cur:
        cur.execute(
            "UPDATE fsmflow_transitions SET instance_id = %s WHERE instance_id = 'r1'", (spoof,)
        )
    postgresql.commit()
    listed = fsmflow(db_env, "list")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\u202e" not in listed.stdout
    assert len(listed.stdout.splitlines()) == 4  # header and three instances, no spoofed row
    assert "r1\\n\\x1b[2K" in listed.stdout
    exact = json.loads(fsmflow(db_env, "list", "--json").stdout)
    assert spoof in [i["instance_id"] for i in exact]
    shown = fsmflow(db_env, "show", WORKFLOW, spoof)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
    missing = fsmflow(db_env, "show", WORKFLOW, "ghost\x1b[31m")
    assert "\x1b" not in missing.stderr and "InstanceNotFoundError" in missing.stderr


async def test_graph_draws_the_definition_and_highlights_an_instance(
    instances: DBConfig, db_env: dict[str, str]
) -> None:
    example = fsmflow(db_env, "graph", "examples.support_ticket:DEFINITION")
    assert example.returncode == 0, example.stderr
    assert example.stdout.startswith("stateDiagram-v2\n    [*] --> receive")

    target = "tests.integration.test_history:DEFINITION"
    highlighted = fsmflow(db_env, "graph", target, "--instance", "r1")
    assert highlighted.returncode == 0, highlighted.stderr
    assert highlighted.stdout.rstrip().endswith("class report current")

    assert_one_error_line(fsmflow(db_env, "graph", target, "--instance", "ghost"), 1, "ghost")
    assert_one_error_line(fsmflow(db_env, "graph", "no_colon"), 2, "MODULE:ATTRIBUTE")
    assert_one_error_line(fsmflow(db_env, "graph", "no_such_module:X"), 2, "cannot load")
    wrong = "tests.integration.test_history:WORKFLOW"
    assert_one_error_line(fsmflow(db_env, "graph", wrong), 2, "not a WorkflowDefinition")


# -- fork, retry, cancel -----------------------------------------------------------------


async def test_fork_onto_a_state_of_the_current_code_then_the_fork_runs(
    db_config: DBConfig, db_env: dict[str, str]
) -> None:
    from fsmflow import PersistentWorkflowStateMachine

    from .test_fork import RENAMED, _noop

    await make_instance(db_config, "old", "running", at="think")  # 'think' is gone in RENAMED
    target = "tests.integration.test_fork:RENAMED"
    args = ("fork", WORKFLOW, "old", "--new-id", "new", "--state", "ponder")
    refused = fsmflow(db_env, *args, "--definition", target)
    assert_one_error_line(refused, 1, "DefinitionChangedError")
    assert "--allow-definition-change" in refused.stderr
    unknown = fsmflow(db_env, "fork", WORKFLOW, "old", "--state", "nowhere")
    assert_one_error_line(unknown, 1, "is not a state")

    done = fsmflow(db_env, *args, "--definition", target, "--allow-definition-change")
    assert done.returncode == 0, done.stderr
    assert "state 'ponder'" in done.stdout
    runner = PersistentWorkflowStateMachine(
        db_config, RENAMED, steps={s: _noop for s in RENAMED.steps}, instance_id="new",
        handle_signals=False,
    )  # fmt: skip
    assert (await runner.run_workflow()).completed


async def test_fork_cases(instances: DBConfig, db_env: dict[str, str], postgresql: Any) -> None:
    before = table_text(postgresql)
    pinned = fsmflow(
        db_env, "fork", WORKFLOW, "r1", "--new-id", "copy", "--set", "k=2", "--set", "note=hi",
        "--json",
    )  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    row = json.loads(pinned.stdout)
    assert (row["instance_id"], row["dest_state"], row["forked_from_instance"]) == (
        "copy",
        "report",
        "r1",
    )
    assert "context" not in row and {"k", "note"} <= set(row["context_keys"])
    assert set(before) < set(table_text(postgresql))  # only a row was added

    from_seq = fsmflow(db_env, "fork", WORKFLOW, "c1", "--seq", "1")
    assert from_seq.returncode == 0, from_seq.stderr
    assert "at seq 1 into instance" in from_seq.stdout and "state 'think'" in from_seq.stdout

    tracker = await run_to_end(instances, "copy")  # resume by id
    assert tracker.runs == {"report": 1}
    copy = await instances.store.history(WORKFLOW, "copy")
    assert copy[-1].context["k"] == 2 and copy[-1].context["note"] == "hi"

    assert_one_error_line(fsmflow(db_env, "fork", WORKFLOW, "ghost"), 1, "InstanceNotFoundError")
    again = fsmflow(db_env, "fork", WORKFLOW, "r1", "--new-id", "copy")
    assert_one_error_line(again, 1, "already exists")
    assert_one_error_line(fsmflow(db_env, "fork", WORKFLOW, "c1"), 1, "completed the instance")
    assert_one_error_line(fsmflow(db_env, "fork", WORKFLOW, "c1", "--seq", "9"), 1, "no seq 9")
    assert fsmflow(db_env, "fork", WORKFLOW, "c1", "--set", "novalue").returncode == 2


async def test_retry_then_the_next_run_resumes(instances: DBConfig, db_env: dict[str, str]) -> None:
    result = fsmflow(db_env, "retry", WORKFLOW, "f1")
    assert result.returncode == 0, result.stderr
    assert "runs the step of state 'think' again" in result.stdout
    tracker = await run_to_end(instances, "f1")
    assert tracker.runs == {"think": 1, "report": 1}
    assert_one_error_line(fsmflow(db_env, "retry", WORKFLOW, "f1"), 1, "nothing to retry")


async def test_cancel_and_its_refusals(instances: DBConfig, db_env: dict[str, str]) -> None:
    result = fsmflow(db_env, "cancel", WORKFLOW, "r1", "--reason", "duplicate", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert (row["status"], row["seq"], row["error"]["message"]) == ("cancelled", 3, "duplicate")
    assert_one_error_line(fsmflow(db_env, "cancel", WORKFLOW, "r1"), 1, "already cancelled")
    assert_one_error_line(fsmflow(db_env, "cancel", WORKFLOW, "c1"), 1, "already completed")


async def test_cancel_refuses_while_a_runner_owns_the_instance(
    db_config: DBConfig, db_env: dict[str, str]
) -> None:
    from fsmflow import PersistentWorkflowStateMachine

    tracker = Tracker()
    release = tracker.hold_first("think")
    runner = PersistentWorkflowStateMachine(
        db_config, DEFINITION, steps=tracker.steps(DEFINITION), instance_id="live",
        handle_signals=False,
    )  # fmt: skip
    async with running(runner.run_workflow()) as task:
        await tracker.started("think")
        refused = fsmflow(db_env, "cancel", WORKFLOW, "live")
        release.set()
        assert (await task).completed
    assert_one_error_line(refused, 1, "InstanceLockedError")
    assert "a live runner owns this instance" in refused.stderr


# -- reset-db and prune: confirmation ----------------------------------------------------


async def test_reset_db_refuses_without_a_tty_and_without_yes(
    instances: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    before = table_text(postgresql)
    refused = fsmflow(db_env, "reset-db")
    assert_one_error_line(refused, 2, "pass --yes")
    assert table_text(postgresql) == before

    done = fsmflow(db_env, "reset-db", "--yes")
    assert done.returncode == 0 and "deleted all history" in done.stdout
    assert table_text(postgresql) == []


@contextlib.contextmanager
def on_a_tty(env: dict[str, str], *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``fsmflow args`` with a pseudo-terminal as stdin: the process and the pty master.
    The process is killed on the way out if the test left it running."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsmflow", *args], cwd=ROOT, env=env, stdin=slave,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(slave)
    try:
        yield proc, master
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        os.close(master)


def _read_until(proc: subprocess.Popen[bytes], marker: str) -> str:
    """Read stdout (unbuffered, straight from the pipe) until ``marker`` appears."""
    assert proc.stdout is not None
    seen = b""
    while marker.encode() not in seen:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, f"no {marker!r} in {seen!r}"
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, f"output ended before {marker!r}: {seen!r}"
        seen += chunk
    return seen.decode()


def _interrupt(proc: subprocess.Popen[bytes]) -> str:
    """Ctrl-C until the process ends; its stderr. A SIGINT that lands between the prompt
    and the read is handled only once the read returns, so it is sent again, like a user
    pressing Ctrl-C twice."""
    for _ in range(60):
        proc.send_signal(signal.SIGINT)
        try:
            return proc.communicate(timeout=1)[1].decode()
        except subprocess.TimeoutExpired:
            continue
    raise AssertionError("fsmflow ignored Ctrl-C")


@pytest.mark.parametrize(("answer", "code"), [("n", 1), ("y", 0)])
async def test_reset_db_asks_on_a_tty(
    instances: DBConfig, db_env: dict[str, str], postgresql: Any, answer: str, code: int
) -> None:
    before = table_text(postgresql)
    with on_a_tty(db_env, "reset-db") as (proc, master):
        prompt = _read_until(proc, "[y/N] ")
        os.write(master, f"{answer}\n".encode())
        stderr = proc.communicate(timeout=60)[1].decode()
    assert "deletes ALL history" in prompt and "fsmflow_transitions" in prompt
    assert proc.returncode == code, stderr
    assert table_text(postgresql) == (before if answer == "n" else [])


def test_ctrl_c_at_the_prompt_exits_130(db_env: dict[str, str]) -> None:
    with on_a_tty(db_env, "prune", "--older-than", "1d") as (proc, _):
        _read_until(proc, "[y/N] ")
        stderr = _interrupt(proc)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr


async def test_prune_dry_run_deletes_nothing_then_prune_deletes_finished_ones(
    instances: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    before = table_text(postgresql)
    dry = fsmflow(db_env, "prune", "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would delete 2 instances (7 rows)" in dry.stdout
    assert "c1" in dry.stdout and "f1" in dry.stdout and "r1" not in dry.stdout
    assert table_text(postgresql) == before

    assert_one_error_line(fsmflow(db_env, "prune", "--older-than", "0s"), 2, "pass --yes")
    assert fsmflow(db_env, "prune", "--older-than", "30d", "--yes").stdout.startswith(
        "deleted 0 instances"
    )
    assert table_text(postgresql) == before

    done = fsmflow(db_env, "prune", "--older-than", "0s", "--yes", "--json", "--batch-size", "1")
    assert done.returncode == 0, done.stderr
    assert (json.loads(done.stdout)["instances"], json.loads(done.stdout)["rows"]) == (2, 7)
    assert [s.instance_id for s in await instances.store.list_instances()] == ["r1"]


async def test_reset_db_refuses_while_a_runner_owns_an_instance_unless_forced(
    db_config: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    from fsmflow import PersistentWorkflowStateMachine

    tracker = Tracker()
    release = tracker.hold_first("think")
    runner = PersistentWorkflowStateMachine(
        db_config, DEFINITION, steps=tracker.steps(DEFINITION), instance_id="live",
        handle_signals=False,
    )  # fmt: skip
    async with running(runner.run_workflow()) as task:
        await tracker.started("think")
        before = table_text(postgresql)
        refused = fsmflow(db_env, "reset-db", "--yes")
        kept = table_text(postgresql)
        release.set()
        assert (await task).completed
    assert_one_error_line(refused, 3, "ResetRefusedError")
    assert "1 instance" in refused.stderr and "--force" in refused.stderr
    assert kept == before
    forced = fsmflow(db_env, "reset-db", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert table_text(postgresql) == []


# -- edge cases --------------------------------------------------------------------------


def test_output_to_a_closed_pipe_exits_141_quietly(db_env: dict[str, str]) -> None:
    # --help and --version are printed by argparse, which ignores the error: exit 0.
    for args, code in ((["check"], 141), (["list", "--json"], 141), (["--help"], 0)):
        read_end, write_end = os.pipe()
        os.close(read_end)  # like `fsmflow check | head -0`: the reader is gone
        try:
            result = subprocess.run(
                [sys.executable, "-m", "fsmflow", *args], cwd=ROOT, env=db_env,
                stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True,
                timeout=120, check=False,
            )  # fmt: skip
        finally:
            os.close(write_end)
        assert result.returncode == code, result.stderr
        assert result.stderr == "", result.stderr


def test_graph_of_a_module_that_exits_at_import_is_a_usage_error(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(0)\n")
    path = os.pathsep.join([str(tmp_path), db_env.get("PYTHONPATH", str(ROOT))])
    result = fsmflow({**db_env, "PYTHONPATH": path}, "graph", "exits_at_import:DEFINITION")
    assert_one_error_line(result, 2, "importing 'exits_at_import' exited with code 0")
    assert result.stdout == ""


def test_fork_set_values_that_look_like_json_must_parse(
    instances: DBConfig, db_env: dict[str, str]
) -> None:
    broken = fsmflow(db_env, "fork", WORKFLOW, "r1", "--set", "k=[1,")
    assert broken.returncode == 2 and "'k'" in broken.stderr and "--set-str" in broken.stderr
    text = fsmflow(db_env, "fork", WORKFLOW, "r1", "--set-str", "k=[1,", "--json")
    assert text.returncode == 0, text.stderr
    assert "k" in json.loads(text.stdout)["context_keys"]
