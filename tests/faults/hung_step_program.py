"""A program whose sync step hangs past its timeout: ``python -m tests.faults.hung_step_program``.

The step (120 s) times out after 0.3 s; before its retry the runner waits for the
abandoned thread. A SIGTERM then must end the program at once (exit 75), not after the
thread: the test checks exactly that.
"""

from __future__ import annotations

import logging
import sys
import time

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

DEFINITION = WorkflowDefinition(
    name="hung", steps=["a", "b"], transitions=[Transition(trigger="go", source="a", dest="b")]
)


def hangs(ctx: WorkflowContext) -> WorkflowContext:
    print("step started", flush=True)
    time.sleep(120)
    return ctx


def done(ctx: WorkflowContext) -> WorkflowContext:
    return ctx


async def main() -> None:
    """Run one instance of the hanging workflow."""
    config = DBConfig()
    retry = RetryPolicy(max_attempts=2, timeout=0.3, initial_backoff=0)
    steps = {"a": WorkflowStep(name="a", execute=hangs, retry=retry), "b": done}
    try:
        runner = PersistentWorkflowStateMachine(config, DEFINITION, steps=steps, instance_id="h1")
        await runner.run_workflow()
    finally:
        await config.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sys.exit(run_program(main()))
