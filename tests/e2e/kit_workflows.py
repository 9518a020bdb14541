"""Workflows the test kit must judge right (``tests/e2e/test_testing_kit.py``).

* ``invoice``: ``send_invoice`` mails an invoice (appends a line to an outbox file, a
  stand-in for an outside system) and notes how many the customer received: a rerun
  after a crash mails it twice, so the kit must name it as non-idempotent. The outbox
  lives in ``FSMFLOW_TESTING_RUN_DIR``, the directory the kit gives each crash.
* ``stamped``: a step that records the clock, so no two runs end alike.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fsmflow import Transition, WorkflowContext, WorkflowDefinition

Outcome = tuple[WorkflowContext, str | None]


def outbox() -> Path:
    """The outside system's mailbox: a file that survives the crash of the process."""
    return Path(os.environ["FSMFLOW_TESTING_RUN_DIR"]) / "outbox.txt"


def prepare(ctx: WorkflowContext) -> Outcome:
    ctx.data["amount"] = 120
    return ctx, None


def send_invoice(ctx: WorkflowContext) -> Outcome:
    """Mail the invoice and note how many the customer got: NOT idempotent."""
    with outbox().open("a", encoding="utf-8") as mail:
        mail.write(f"invoice to {ctx.data['customer']}: {ctx.data['amount']} EUR\n")
    ctx.data["invoices_sent"] = len(outbox().read_text(encoding="utf-8").splitlines())
    return ctx, None


def archive(ctx: WorkflowContext) -> Outcome:
    ctx.data["archived"] = True
    return ctx, None


DEFINITION = WorkflowDefinition(
    name="invoice",
    steps=["prepare", "send_invoice", "archive"],
    transitions=[
        Transition(trigger="send", source="prepare", dest="send_invoice"),
        Transition(trigger="file", source="send_invoice", dest="archive"),
        Transition(trigger="done", source="archive", dest=None),
    ],
)
STEPS = {"prepare": prepare, "send_invoice": send_invoice, "archive": archive}


def stamp(ctx: WorkflowContext) -> Outcome:
    ctx.data["stamped_at_ns"] = time.time_ns()
    return ctx, None


def stamped() -> tuple[WorkflowDefinition, dict[str, object]]:
    """A factory: the ``stamped`` workflow and its one step."""
    definition = WorkflowDefinition(
        name="stamped",
        steps=["stamp"],
        transitions=[Transition(trigger="done", source="stamp", dest=None)],
    )
    return definition, {"stamp": stamp}


def awaiting() -> tuple[WorkflowDefinition, dict[str, object]]:
    """A factory: a workflow that waits for an ``approval`` event after its first step."""
    definition = WorkflowDefinition(
        name="awaiting",
        steps=["ask", "approval"],
        transitions=[
            Transition(trigger="wait", source="ask", dest="approval"),
            Transition(trigger="approved", source="approval", dest=None, event="approval"),
        ],
    )
    return definition, {"ask": prepare}
