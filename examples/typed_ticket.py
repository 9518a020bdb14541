"""A support ticket with typed state: the steps get and return a pydantic model.

The state is ``TicketState`` (version 2). Version 1 kept the customer's name in ``customer``
and the ticket's tags as one comma-separated string; version 2 renamed the field and made
the tags a list, and ``upgrades[1]`` turns a stored version-1 state into a version-2 one, so
instances stored by the old program resume under this one. Every row records the version
it was written with (``fsmflow show`` has a V column); the stored context is the model's
JSON, readable in SQL.

Run it with no settings at all (the embedded PostgreSQL), or with ``DB_URL`` set::

    python examples/typed_ticket.py --instance-id t-7 --subject "Invoice is wrong"

``mypy --strict examples/typed_ticket.py`` type-checks the steps against the model.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from pydantic import BaseModel, Field

from fsmflow import (
    Condition,
    DBConfig,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowDefinition,
    run_program,
)

logger = logging.getLogger("typed_ticket")


class TicketState(BaseModel):
    """What the workflow carries from step to step (version 2)."""

    subject: str
    requester: str = "unknown"
    tags: list[str] = Field(default_factory=list)
    priority: int = 0  # 0 (low) .. 9 (critical)
    answer: str | None = None
    escalated: bool = False


def v1_to_v2(stored: dict[str, object]) -> dict[str, object]:
    """Version 1 -> 2: ``customer`` became ``requester``, comma-separated tags a list."""
    upgraded = dict(stored)
    upgraded["requester"] = upgraded.pop("customer", "unknown")
    tags = upgraded.get("tags", "")
    upgraded["tags"] = [t.strip() for t in str(tags).split(",") if t.strip()]
    return upgraded


DEFINITION = WorkflowDefinition(
    name="typed_ticket",
    steps=["triage", "escalate", "respond"],
    transitions=[
        # Conditions read the state's JSON form by dotted field names, as for dict contexts.
        Transition("triaged", "triage", "escalate", conditions=[Condition("priority", "ge", 7)]),
        Transition("triaged", "triage", "respond"),
        Transition("escalated", "escalate", "respond"),
        Transition("answered", "respond", None),
    ],
    state_model=TicketState,
    state_version=2,
    upgrades={1: v1_to_v2},
)


def triage(state: TicketState) -> tuple[TicketState, str]:
    """Sync (runs on a thread): tag the ticket and set its priority."""
    words = state.subject.lower()
    if "down" in words or "outage" in words:
        state.priority = 9
        state.tags.append("outage")
    elif "invoice" in words:
        state.priority = 3
        state.tags.append("billing")
    logger.info("triaged: priority %d", state.priority)
    return state, "triaged"


async def escalate(state: TicketState) -> tuple[TicketState, str]:
    """Async (runs on the loop): hand critical tickets to the on-call engineer."""
    await asyncio.sleep(0)  # stands for a call to a paging service
    return state.model_copy(update={"escalated": True}), "escalated"


async def respond(state: TicketState) -> tuple[TicketState, str | None]:
    """Write the answer; returning the model alone would let the transitions choose."""
    who = "the on-call engineer" if state.escalated else "support"
    state.answer = f"Dear {state.requester}, {who} is on it: {state.subject!r}."
    return state, "answered"


STEPS = {"triage": triage, "escalate": escalate, "respond": respond}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="A typed support ticket that survives crashes.")
    parser.add_argument("--instance-id", help="resume (or create) this instance")
    parser.add_argument("--subject", default="Checkout is down for all EU customers")
    parser.add_argument("--requester", default="Acme GmbH")
    return parser.parse_args(argv)


async def main(options: argparse.Namespace) -> TicketState:
    """Run (or resume) one ticket and print its outcome."""
    db = DBConfig()  # DB_URL / DB_HOST ... from the environment or .env; none: embedded
    try:
        await db.init_db()  # idempotent
        workflow = PersistentWorkflowStateMachine(
            db, DEFINITION, steps=STEPS, instance_id=options.instance_id
        )
        seed = TicketState(subject=options.subject, requester=options.requester)
        result = await workflow.run_workflow(context=seed)  # seeds a new instance only
    finally:
        await db.close()
    state = result.state
    assert isinstance(state, TicketState)  # a typed workflow's result holds its model
    print(
        f"ticket {result.instance_id}: priority {state.priority}, "
        f"escalated {state.escalated}, tags {state.tags}: {state.answer}"
    )
    return state


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")
    raise SystemExit(run_program(main(parse_args())))
