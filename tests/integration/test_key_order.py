"""A step receives exactly the same context, key order included (nested dicts too),
whether or not the process died before it: the context column keeps the encoded text.

Real processes: the first one is SIGKILLed while its step runs; the second resumes the
instance from the database and runs that step again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fsmflow import DBConfig, PersistentWorkflowStateMachine, Transition, WorkflowDefinition
from fsmflow.model.context import WorkflowContext
from tests.conftest import ROOT

KEYS = ["topic", "first", "zzz_long_key_name", "b", "aa"]  # jsonb: b, aa, first, topic, zzz...
SAFETY_TIMEOUT = 60.0  # bounds a hang only; nothing asserts a duration

CHILD = """
import asyncio, json, os, sys, time
from pathlib import Path
from fsmflow import DBConfig, PersistentWorkflowStateMachine, Transition, WorkflowDefinition

KEYS = {keys!r}
ledger = Path(sys.argv[1])
definition = WorkflowDefinition(
    "key_order", ["fill", "slow", "report"],
    [Transition("next", "fill", "slow"), Transition("next", "slow", "report")],
)

def order(data):
    return [list(data), list(data["zzz_long_key_name"]), list(data["b"][0])]

def fill(ctx):
    for key in KEYS:
        ctx.data[key] = {{k: i for i, k in enumerate(KEYS)}} if key == "zzz_long_key_name" else 1
    ctx.data["b"] = [{{k: k for k in KEYS}}]
    return ctx, None

def slow(ctx):
    with ledger.open("a") as f:
        f.write(json.dumps(["slow", order(ctx.data)]) + "\\n")
    if sys.argv[2] == "hang":
        time.sleep(600)  # killed here
    return ctx, None

def report(ctx):
    with ledger.open("a") as f:
        f.write(json.dumps(["report", order(ctx.data)]) + "\\n")
    return ctx, None

async def main():
    db = DBConfig()
    runner = PersistentWorkflowStateMachine(
        db, definition, steps={{"fill": fill, "slow": slow, "report": report}},
        instance_id=sys.argv[3],
    )
    state = await runner.run_workflow()
    print("completed", state.completed, flush=True)
    await db.close()

asyncio.run(main())
"""


def spawn(script: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lines(ledger: Path, count: int, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while not (ledger.exists() and len(ledger.read_text().splitlines()) >= count):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)


def entries(ledger: Path) -> list[Any]:
    return [json.loads(line) for line in ledger.read_text().splitlines()]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "key_order_child.py"
    path.write_text(CHILD.format(keys=KEYS))
    return path


def test_a_step_after_a_crash_gets_the_exact_key_order(
    script: Path, db_env: dict[str, str], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    first = spawn(script, db_env, str(ledger), "hang", "crashed")
    wait_for_lines(ledger, 1, first)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=SAFETY_TIMEOUT)

    second = spawn(script, db_env, str(ledger), "go", "crashed")
    out, err = second.communicate(timeout=SAFETY_TIMEOUT)
    assert second.returncode == 0 and "completed True" in out, err

    expected = [KEYS, KEYS, KEYS]
    assert entries(ledger) == [["slow", expected], ["slow", expected], ["report", expected]]

    clean = tmp_path / "clean"
    uncrashed = spawn(script, db_env, str(clean), "go", "uncrashed")
    uncrashed.communicate(timeout=SAFETY_TIMEOUT)
    assert entries(clean) == [["slow", expected], ["report", expected]]


async def test_contexts_read_back_keep_their_text(db_config: DBConfig) -> None:
    """The store hands the stored text back as is: no jsonb round trip on the way."""
    definition = WorkflowDefinition("key_text", ["a", "b"], [Transition("next", "a", "b")])

    def a(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        ctx.data.update({k: {"zz": 1, "a": [{"yy": 0, "b": 1}]} for k in KEYS})
        return ctx, None

    runner = PersistentWorkflowStateMachine(
        db_config, definition, steps={"a": a, "b": a}, instance_id="k", handle_signals=False
    )
    await runner.run_workflow(context={"zz": 0, "a": 1})
    history = await db_config.store.history("key_text", "k")
    assert list(history[0].context) == ["zz", "a"]
    assert list(history[1].context) == ["zz", "a", *KEYS]
    assert list(history[1].context["topic"]) == ["zz", "a"]
    assert list(history[1].context["topic"]["a"][0]) == ["yy", "b"]
