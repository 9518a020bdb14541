"""A payment workflow that writes down the idempotency key each step execution was given.

``python -m tests.e2e.idempotency_program --keys PATH --instance-id ID [--hang-at-seq N]``

``charge`` is entered twice (two installments, a loop), then ``receipt`` completes the
instance. Before charging, the (sync) ``charge`` step appends one line
``<pid> <seq> <listener_seq> <attempt> <idempotency_key>`` to ``PATH``, flushed and fsync'd
so it survives a SIGKILL that follows. ``seq``, ``attempt`` and the key come from
``fsmflow.step_info()``; ``listener_seq`` is what the runner's ``step_started`` event said,
an independent witness of the state entry. With ``--hang-at-seq N`` the step entered after
row ``N`` hangs after its line, so that the test can SIGKILL the process inside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import fsmflow
from fsmflow import (
    DBConfig,
    PersistentWorkflowStateMachine,
    RunnerEvent,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    run_program,
)

INSTALLMENTS = 2
DEFINITION = WorkflowDefinition(
    name="payments",
    steps=["charge", "receipt"],
    transitions=[
        Transition(trigger="next_installment", source="charge", dest="charge"),
        Transition(trigger="paid", source="charge", dest="receipt"),
    ],
)


class Program:
    """The steps and the listener of one process."""

    def __init__(self, keys_path: str, hang_at_seq: int | None) -> None:
        self.keys_path = keys_path
        self.hang_at_seq = hang_at_seq
        self.listener_seq = -1

    def listener(self, event: RunnerEvent) -> None:
        if event.point == "step_started":
            self.listener_seq = event.seq

    def charge(self, ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        info = fsmflow.step_info()
        line = f"{os.getpid()} {info.seq} {self.listener_seq} {info.attempt} "
        self._append(f"{line}{info.idempotency_key}\n")
        if info.seq == self.hang_at_seq:
            time.sleep(120)  # the test SIGKILLs the process here, mid-charge
        # Here a real step would call the card processor with
        # idempotency_key=info.idempotency_key.
        charged = ctx.data.setdefault("charged_keys", [])
        charged.append(info.idempotency_key)
        done = len(charged) >= INSTALLMENTS
        return ctx, "paid" if done else "next_installment"

    def _append(self, text: str) -> None:
        fd = os.open(self.keys_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


async def receipt(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
    """The last state: nothing to do."""
    return ctx, None


async def main(options: argparse.Namespace) -> None:
    """Run (or resume) one payment instance."""
    program = Program(options.keys, options.hang_at_seq)
    config = DBConfig()
    try:
        runner = PersistentWorkflowStateMachine(
            config,
            DEFINITION,
            steps={"charge": program.charge, "receipt": receipt},
            instance_id=options.instance_id,
            listeners=[program.listener],
        )
        await runner.run_workflow()
    finally:
        await config.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--hang-at-seq", type=int)
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sys.exit(run_program(main(parse_args())))
