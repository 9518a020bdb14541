"""A workflow whose condition holds a set resumes under any PYTHONHASHSEED.

Real processes: each is started with its own hash seed (so each iterates the set in
another order) and SIGKILLed while its step runs; the next one, under another seed,
resumes the instance and must not see a definition change. The last one completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

SEEDS = (1, 3, 7)  # 1 and 3 order this set differently; each seed is one process
SAFETY_TIMEOUT = 60.0  # bounds a hang only; nothing asserts a duration

CHILD = """
import asyncio, json, sys, time
from pathlib import Path
from fsmflow import (Condition, DBConfig, PersistentWorkflowStateMachine, Transition,
                     WorkflowDefinition)

URGENT = {"critical", "high", "urgent", "p0", "p1", "sev1", "sev2", "blocker"}
definition = WorkflowDefinition(
    "triage_seeds", ["inbox", "work", "page", "queue"],
    [
        Transition("next", "inbox", "work"),
        Transition("route", "work", "page", [Condition("severity", "in", URGENT)]),
        Transition("route", "work", "queue"),
    ],
)
ledger, hang = Path(sys.argv[1]), sys.argv[2] == "hang"

def inbox(ctx):
    ctx.data["severity"] = "high"
    return ctx, None

def work(ctx):
    with ledger.open("a") as f:
        f.write(json.dumps({"fingerprint": definition.fingerprint}) + "\\n")
    if hang:
        time.sleep(600)  # SIGKILLed here
    return ctx, None

def done(ctx):
    return ctx, None

async def main():
    db = DBConfig()
    runner = PersistentWorkflowStateMachine(
        db, definition, steps={"inbox": inbox, "work": work, "page": done, "queue": done},
        instance_id="ticket-1",
    )
    state = await runner.run_workflow()
    print("final", state.current_state, state.completed, flush=True)
    await db.close()

asyncio.run(main())
"""


def spawn(script: Path, env: dict[str, str], seed: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env={**env, "PYTHONHASHSEED": str(seed)},
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


def test_an_instance_with_a_set_condition_resumes_under_other_hash_seeds(
    db_env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "seeds_child.py"
    script.write_text(CHILD)
    ledger = tmp_path / "ledger"
    *killed, last = SEEDS
    for count, seed in enumerate(killed, start=1):
        child = spawn(script, db_env, seed, str(ledger), "hang")
        wait_for_lines(ledger, count, child)  # its step is running: kill it there
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=SAFETY_TIMEOUT)
        print(f"[seed {seed}] SIGKILLed mid-step")

    final = spawn(script, db_env, last, str(ledger), "go")
    out, err = final.communicate(timeout=SAFETY_TIMEOUT)
    assert final.returncode == 0, err
    assert "final page True" in out, (out, err)
    assert "DefinitionChangedError" not in err
    fingerprints = {json.loads(line)["fingerprint"] for line in ledger.read_text().splitlines()}
    assert len(fingerprints) == 1  # the same in every process
    assert len(ledger.read_text().splitlines()) == len(SEEDS)  # the step ran once per process
