"""A workflow program for the "stopped while not in a step" scenarios.

Run as ``python -m tests.faults.waits_program LEDGER ID [ID ...]`` from the repository root
with the database in the environment. Each instance runs a two-state workflow
(``a`` -> ``b``) concurrently with the others, under ``run_program`` (exit codes 0, 1, 2,
75), waiting for an instance's lock if ``WAITS_WAIT`` is set. Step ``a`` sleeps
``WAITS_STEP_SECONDS``; instances named ``flaky*`` fail their first
attempt of ``a`` and retry it after ``WAITS_BACKOFF_SECONDS``. Every step execution appends
``start <instance> <state> <attempt>`` to the ledger (fsync'd), so a test can count them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from fsmflow import (
    DBConfig,
    PersistentWorkflowStateMachine,
    RetryPolicy,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowStep,
    run_program,
)

BACKOFF = float(os.environ.get("WAITS_BACKOFF_SECONDS", "6"))
STEP_SECONDS = float(os.environ.get("WAITS_STEP_SECONDS", "0.2"))
WAIT = bool(os.environ.get("WAITS_WAIT"))
STEADY_SECONDS = float(os.environ.get("WAITS_STEADY_SECONDS", str(STEP_SECONDS)))
DEFINITION = WorkflowDefinition(
    name="waits",
    steps=["a", "b"],
    transitions=[Transition(trigger="next", source="a", dest="b")],
)


def note(ledger: Path, line: str) -> None:
    """Append one line to the ledger and make it durable before going on."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def starts(ledger: Path, instance: str, state: str) -> int:
    """How many executions of ``state``'s step the ledger records for ``instance``."""
    if not ledger.exists():
        return 0
    return sum(
        1 for line in ledger.read_text().splitlines() if line.split()[1:3] == [instance, state]
    )


def steps(ledger: Path) -> dict[str, WorkflowStep]:
    """The two steps; ``a`` of a ``flaky*`` instance fails its first execution ever."""

    async def a(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        instance = ctx.data["instance"]
        attempt = starts(ledger, instance, "a") + 1
        note(ledger, f"start {instance} a {attempt}")
        flaky = instance.startswith("flaky")
        await asyncio.sleep(STEP_SECONDS if flaky else STEADY_SECONDS)
        if flaky and attempt == 1:
            raise ConnectionError("the model endpoint is overloaded")
        ctx.data["a"] = attempt
        return ctx, "next"

    async def b(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        note(ledger, f"start {ctx.data['instance']} b 1")
        ctx.data["b"] = True
        return ctx, None

    retry = RetryPolicy(max_attempts=2, initial_backoff=BACKOFF, jitter=0)
    return {
        "a": WorkflowStep(name="a", execute=a, retry=retry),
        "b": WorkflowStep(name="b", execute=b),
    }


async def main(ledger: Path, instances: list[str]) -> None:
    """Run every instance at once; the first error (or interruption) ends the program."""
    config = DBConfig()
    try:
        runs = [
            PersistentWorkflowStateMachine(
                config, DEFINITION, steps=steps(ledger), instance_id=i, wait=WAIT
            ).run_workflow(context={"instance": i})
            for i in instances
        ]
        await asyncio.gather(*runs)
        print("completed " + " ".join(instances), flush=True)
    finally:
        await config.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    # asyncpg's pool logs a traceback at WARNING each time it cannot refill itself while
    # the server is down: noise here, where a traceback means an fsmflow crash.
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    sys.exit(run_program(main(Path(sys.argv[1]), sys.argv[2:])))
