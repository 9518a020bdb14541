"""Signal handling outside a run: fsmflow's handlers stay installed between runs (installing
them per instance is costly), so a signal that finds no runner must get the handling the
process had before fsmflow: SIGTERM terminates, Ctrl-C cancels ``asyncio.run``'s task."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT

# Runs one workflow to completion (handlers now installed), says so, then idles.
PROGRAM = """
import asyncio, sys
from fsmflow import DBConfig, PersistentWorkflowStateMachine, Transition, WorkflowDefinition

DEFINITION = WorkflowDefinition(
    name="idle_after_run",
    steps=["a", "b"],
    transitions=[Transition(trigger="go", source="a", dest="b")],
)

async def step(ctx):
    return ctx, None

async def main():
    db = DBConfig()
    runner = PersistentWorkflowStateMachine(db, DEFINITION, steps={"a": step, "b": step})
    assert (await runner.run_workflow()).completed
    print("completed", flush=True)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        print("cancelled by Ctrl-C", flush=True)
        raise
    finally:
        await db.close()

try:
    asyncio.run(main())
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize(
    ("signum", "returncode", "said"),
    [
        (signal.SIGTERM, -signal.SIGTERM, ""),  # the default action: terminated by the signal
        (signal.SIGINT, 130, "cancelled by Ctrl-C"),  # asyncio.run's own handling
    ],
    ids=["sigterm-terminates", "sigint-cancels-asyncio-run"],
)
def test_a_signal_with_no_runner_gets_its_previous_handling(
    db_env: dict[str, str], postgresql: Any, signum: signal.Signals, returncode: int, said: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env=db_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "completed"
        child.send_signal(signum)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == returncode, err
    assert said in out
    assert "received: finishing running steps" not in err  # no runner was asked to stop


# A first SIGTERM stops the run; the program catches that, says so, and idles.
INTERRUPTED_PROGRAM = """
import asyncio
from fsmflow import (DBConfig, PersistentWorkflowStateMachine, Transition, WorkflowDefinition,
                     WorkflowInterruptedError)

DEFINITION = WorkflowDefinition(
    name="idle_after_stop",
    steps=["a", "b"],
    transitions=[Transition(trigger="go", source="a", dest="b")],
)

async def slow(ctx):
    print("in step", flush=True)
    await asyncio.sleep(60)
    return ctx, None

async def step(ctx):
    return ctx, None

async def main():
    db = DBConfig(FSMFLOW_SHUTDOWN_GRACE_SECONDS=0.2)
    runner = PersistentWorkflowStateMachine(db, DEFINITION, steps={"a": slow, "b": step})
    try:
        await runner.run_workflow()
    except WorkflowInterruptedError:
        print("interrupted", flush=True)
    await asyncio.sleep(60)
    await db.close()

asyncio.run(main())
"""


def test_a_signal_after_every_runner_stopped_gets_its_previous_handling(
    db_env: dict[str, str], postgresql: Any
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_PROGRAM],
        cwd=ROOT,
        env=db_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "in step"
        child.send_signal(signal.SIGTERM)  # fsmflow's: the run stops
        assert child.stdout.readline().strip() == "interrupted"
        child.send_signal(signal.SIGTERM)  # no runner left: the default action
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGTERM, err
