"""An in-place upgrade from fsmflow 0.1's schema (version 1) with real processes: a child
running the last version-1 fsmflow (from this repository's history) is SIGKILLed mid-step,
``fsmflow migrate`` upgrades the table, and the instance resumes under the new code with its
context; the step that had finished does not run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from fsmflow import sql as fsql
from tests.conftest import ROOT, run_python
from tests.e2e.support import output_of

pytestmark = pytest.mark.timeout(300)

# The last commit whose fsmflow creates and runs schema version 1 tables (0.1's schema).
V1_COMMIT = "cca8d1f724dbb2b795b806d0d3e44f2437d70fef"
TABLE = "upgraded_flow"
SAFETY_TIMEOUT = 120.0  # bounds a hang only

CHILD = """
import asyncio, json, os, sys
from fsmflow import DBConfig, PersistentWorkflowStateMachine, Transition, WorkflowDefinition

MARKS = sys.argv[1]
DEFINITION = WorkflowDefinition(
    "upgrade_flow", ["fill", "check", "done"],
    [Transition("next", "fill", "check"), Transition("next", "check", "done")],
)

def step(name):
    async def run(ctx):
        with open(MARKS, "a") as marks:
            marks.write(json.dumps([name, ctx.data]) + "\\n")
        if name == os.environ.get("HANG_IN"):
            await asyncio.sleep(3600)
        ctx.data[name] = {"zz": 1, "a": 2}
        return ctx, None
    return run

async def main():
    db = DBConfig()
    try:
        if not os.environ.get("SKIP_INIT_DB"):
            await db.init_db()
        runner = PersistentWorkflowStateMachine(
            db, DEFINITION, steps={s: step(s) for s in DEFINITION.steps}, instance_id="u-1"
        )
        state = await runner.run_workflow()
        print("completed" if state.completed else "not completed")
    finally:
        await db.close()

asyncio.run(main())
"""


def v1_fsmflow(target: Path) -> Path:
    """The fsmflow package as of :data:`V1_COMMIT`, extracted under ``target``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", V1_COMMIT, "fsmflow"],
        capture_output=True, check=False,
    )  # fmt: skip
    if archive.returncode != 0:
        pytest.skip(f"needs this repository's git history (commit {V1_COMMIT[:7]})")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def marks(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def test_an_instance_killed_under_version_1_resumes_after_fsmflow_migrate(
    db_env: dict[str, str], postgresql: Any, tmp_path: Path
) -> None:
    postgresql.autocommit = True  # an open transaction would hold up CREATE INDEX CONCURRENTLY
    old_code = v1_fsmflow(tmp_path / "v1")
    script, record = tmp_path / "child.py", tmp_path / "marks.jsonl"
    script.write_text(CHILD)
    env = {**db_env, "FSMFLOW_TABLE": TABLE}
    old_env = {**env, "PYTHONPATH": str(old_code), "HANG_IN": "check"}
    child = subprocess.Popen([sys.executable, str(script), str(record)], env=old_env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while [name for name, _ in marks(record)] != ["fill", "check"]:
            assert child.poll() is None and time.monotonic() < deadline, marks(record)
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    with postgresql.cursor() as cur:
        cur.execute(f"SELECT obj_description('{TABLE}'::regclass, 'pg_class')")
        assert cur.fetchone()[0] == "fsmflow schema_version=1"
        cur.execute(f"SELECT seq, dest_state FROM {TABLE} ORDER BY seq")
        assert cur.fetchall() == [(0, "fill"), (1, "check")]  # check was in flight

    env["SKIP_INIT_DB"] = "1"  # `fsmflow migrate` upgrades, as the migrator role would
    refused = run_python([str(script), str(record)], env)  # new code, table not migrated
    assert refused.returncode != 0 and "fsmflow migrate" in refused.stderr, output_of(refused)
    migrated = run_python(["-m", "fsmflow", "migrate"], env)
    assert migrated.returncode == 0, output_of(migrated)
    resumed = run_python([str(script), str(record)], env)
    assert resumed.returncode == 0 and "completed" in resumed.stdout, output_of(resumed)

    ran = marks(record)
    assert [name for name, _ in ran] == ["fill", "check", "check", "done"]
    assert ran[2][1] == {"fill": {"zz": 1, "a": 2}}  # the context fill left, under v1
    assert ran[3][1] == {"fill": {"zz": 1, "a": 2}, "check": {"zz": 1, "a": 2}}
    assert list(ran[3][1]["check"]) == ["zz", "a"]  # written after the upgrade: order kept
    with postgresql.cursor() as cur:
        cur.execute(f"SELECT obj_description('{TABLE}'::regclass, 'pg_class')")
        assert cur.fetchone()[0] == fsql.SCHEMA_COMMENT
        cur.execute(f"SELECT seq, status FROM {TABLE} ORDER BY seq")
        assert [s for _, s in cur.fetchall()] == ["running"] * 3 + ["completed"]
