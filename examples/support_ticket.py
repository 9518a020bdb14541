"""A support-ticket workflow: triage, an escalation loop, customer feedback, follow-up calls.

Run it, kill it, run it again::

    python examples/support_ticket.py                      # a critical ticket, 11 steps
    SUPPORT_TICKET_STEP_SECONDS=1 python examples/support_ticket.py
    # ... stop it mid-run: `kill <pid>` (SIGTERM: the running step finishes, exit code 75),
    # Ctrl-C, or `kill -9 <pid>`; then start it again: it resumes where it stopped, and
    # only a step that was cut off runs again.

Without ``--instance-id`` a run resumes the most recently started unfinished ticket, else
starts a new one; the log names the instance (``instance 'abc...' started``).

What it shows:

* ``triage`` sets a priority; built-in operators (``in``) pick the branch;
* ``escalate`` loops on itself until a level condition holds (bounded by
  ``MAX_ESCALATION_LEVEL``);
* ``collect_feedback`` is followed by a custom **sync** condition (is the customer
  satisfied?) and a custom **async** condition (did they ask for a call?);
* sync steps run in a worker thread, async steps on the event loop.

Everything is deterministic (no randomness, no clock in the context), so two runs of the
same ticket, crashed or not, end with the same context.

Environment:

* ``SUPPORT_TICKET_STEP_SECONDS`` (default ``0``): each step sleeps this long, so a human
  has time to interrupt it mid-step.
* the database settings of :class:`fsmflow.DBConfig` (``DB_URL`` ...); with none, a local
  embedded PostgreSQL is used.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from fsmflow import (
    Condition,
    DBConfig,
    PersistentWorkflowStateMachine,
    RunnerEvent,
    Transition,
    Workflow,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowState,
    run_program,
)

log = logging.getLogger("support_ticket")

StepOutcome = tuple[WorkflowContext, str | None]
StepFunction = Callable[[WorkflowContext], Any]  # sync or async, returns a StepOutcome

MAX_ESCALATION_LEVEL: Final = 3
MAX_FOLLOW_UPS: Final = 2
URGENT: Final = ["critical", "high"]
# Who handles the ticket at each escalation level.
ESCALATION_TEAMS: Final = ["support-l2", "engineering-oncall", "incident-commander"]
# Escalation level each priority needs before the customer gets an answer.
REQUIRED_LEVEL: Final = {"critical": 3, "high": 2, "normal": 0}
# The simulated customer's replies, per priority and feedback round.
CUSTOMER_REPLIES: Final[dict[str, list[dict[str, Any]]]] = {
    "critical": [
        {"score": 2, "comment": "Still failing for some users, please call me."},
        {"score": 5, "comment": "All good now, thank you!"},
    ],
    "high": [{"score": 4, "comment": "Works again, thanks."}],
    "normal": [{"score": 4, "comment": "Thanks, that answers it."}],
}
DEFAULT_TICKET: Final = {
    "id": "T-1042",
    "customer": "Acme GmbH",
    "plan": "enterprise",
    "subject": "Checkout is down for all EU customers",
    "body": "Since this morning every checkout fails with HTTP 500.",
}


def _step_seconds() -> float:
    raw = os.environ.get("SUPPORT_TICKET_STEP_SECONDS", "0")
    try:
        seconds = float(raw)
    except ValueError:
        raise SystemExit(f"SUPPORT_TICKET_STEP_SECONDS={raw!r} is not a number") from None
    return max(seconds, 0.0)


STEP_SECONDS: Final = _step_seconds()


# -- conditions ------------------------------------------------------------------------


def customer_is_satisfied(feedback: dict[str, Any]) -> bool:
    """Custom sync condition: a score of 4 or 5 out of 5."""
    return int(feedback.get("score", 0)) >= 4


async def customer_asks_for_call(feedback: dict[str, Any]) -> bool:
    """Custom async condition, e.g. a call to a sentiment or CRM service (stubbed here)."""
    await asyncio.sleep(0)
    return "call me" in str(feedback.get("comment", "")).lower()


# -- steps -----------------------------------------------------------------------------


async def receive(ctx: WorkflowContext) -> StepOutcome:
    """Normalize the incoming ticket (async step)."""
    await asyncio.sleep(STEP_SECONDS)
    ticket = ctx.data["ticket"]
    ticket["subject"] = " ".join(ticket["subject"].split())
    ctx.data["status"] = "open"
    log.info("received ticket %s from %s", ticket["id"], ticket["customer"])
    return ctx, None


def triage(ctx: WorkflowContext) -> StepOutcome:
    """Set the priority from the ticket's words and plan (sync step: runs in a thread)."""
    time.sleep(STEP_SECONDS)
    ticket = ctx.data["ticket"]
    text = f"{ticket['subject']} {ticket['body']}".lower()
    if any(word in text for word in ("down", "outage", "data loss")):
        priority = "critical"
    elif ticket["plan"] == "enterprise" and any(w in text for w in ("error", "fail")):
        priority = "high"
    else:
        priority = "normal"
    ctx.data["priority"] = priority
    ctx.data["escalation"] = {
        "level": 0,
        "required": REQUIRED_LEVEL[priority],
        "remaining": REQUIRED_LEVEL[priority],
        "teams": [],
    }
    ctx.data["responses"] = []
    ctx.data["feedback_history"] = []
    ctx.data["follow_ups"] = 0
    log.info("triage: priority %s", priority)
    return ctx, None  # the transitions' conditions choose: escalate or answer


async def escalate(ctx: WorkflowContext) -> StepOutcome:
    """Hand the ticket one level up; loops until the required level is reached."""
    await asyncio.sleep(STEP_SECONDS)
    escalation = ctx.data["escalation"]
    escalation["level"] += 1
    escalation["remaining"] = escalation["required"] - escalation["level"]
    team = ESCALATION_TEAMS[escalation["level"] - 1]
    escalation["teams"].append(team)
    log.info("escalated to level %d (%s)", escalation["level"], team)
    return ctx, None


def respond(ctx: WorkflowContext) -> StepOutcome:
    """Write the answer the customer receives (sync step)."""
    time.sleep(STEP_SECONDS)
    teams = ctx.data["escalation"]["teams"]
    owner = teams[-1] if teams else "support-l1"
    attempt = len(ctx.data["responses"]) + 1
    ctx.data["responses"].append(
        f"Answer #{attempt} to {ctx.data['ticket']['customer']} from {owner}: "
        f"{'fix deployed' if attempt > 1 else 'mitigation in place'}."
    )
    log.info("response #%d sent by %s", attempt, owner)
    return ctx, None


async def collect_feedback(ctx: WorkflowContext) -> StepOutcome:
    """Record what the customer answered (the simulated replies are deterministic)."""
    await asyncio.sleep(STEP_SECONDS)
    replies = CUSTOMER_REPLIES[ctx.data["priority"]]
    rounds = len(ctx.data["feedback_history"])
    feedback = dict(replies[min(rounds, len(replies) - 1)])
    ctx.data["feedback"] = feedback
    ctx.data["feedback_history"].append(feedback)
    log.info("customer feedback: %d/5", feedback["score"])
    return ctx, None


def follow_up(ctx: WorkflowContext) -> StepOutcome:
    """Call the customer back (sync step)."""
    time.sleep(STEP_SECONDS)
    ctx.data["follow_ups"] += 1
    log.info("follow-up call #%d with %s", ctx.data["follow_ups"], ctx.data["ticket"]["customer"])
    return ctx, None


async def close_ticket(ctx: WorkflowContext) -> StepOutcome:
    """Close the ticket, resolved or not."""
    await asyncio.sleep(STEP_SECONDS)
    satisfied = customer_is_satisfied(ctx.data.get("feedback", {}))
    ctx.data["status"] = "resolved" if satisfied else "closed_unresolved"
    log.info("ticket %s %s", ctx.data["ticket"]["id"], ctx.data["status"])
    return ctx, None


DEFINITION: Final = WorkflowDefinition(
    name="support_ticket",
    steps=[
        "receive",
        "triage",
        "escalate",
        "respond",
        "collect_feedback",
        "follow_up",
        "close_ticket",
    ],
    transitions=[
        Transition(trigger="triage_ticket", source="receive", dest="triage"),
        # Built-in operators choose the branch; the first transition that holds is taken.
        Transition(
            trigger="escalate",
            source="triage",
            dest="escalate",
            conditions=[Condition(field="priority", operator="in", value=URGENT)],
        ),
        # A bounded loop: escalate again until the required level is reached.
        Transition(
            trigger="escalate",
            source="escalate",
            dest="escalate",
            conditions=[
                Condition(field="escalation.remaining", operator="gt", value=0),
                Condition(field="escalation.level", operator="lt", value=MAX_ESCALATION_LEVEL),
            ],
        ),
        Transition(trigger="answer", source=["triage", "escalate"], dest="respond"),
        Transition(trigger="ask_feedback", source="respond", dest="collect_feedback"),
        Transition(
            trigger="resolve",
            source="collect_feedback",
            dest="close_ticket",
            conditions=[
                Condition(
                    field="feedback", operator="custom", custom_function=customer_is_satisfied
                )
            ],
        ),
        Transition(
            trigger="call_back",
            source="collect_feedback",
            dest="follow_up",
            conditions=[
                Condition(
                    field="feedback", operator="custom", custom_function=customer_asks_for_call
                ),
                Condition(field="follow_ups", operator="lt", value=MAX_FOLLOW_UPS),
            ],
        ),
        Transition(trigger="give_up", source="collect_feedback", dest="close_ticket"),
        Transition(trigger="answer_again", source="follow_up", dest="respond"),
        Transition(trigger="archive", source="close_ticket", dest=None),  # completes
    ],
)

STEPS: Final[dict[str, StepFunction]] = {
    "receive": receive,
    "triage": triage,
    "escalate": escalate,
    "respond": respond,
    "collect_feedback": collect_feedback,
    "follow_up": follow_up,
    "close_ticket": close_ticket,
}

# The definition and its steps as one object, for the worker fleet: submit tickets with
# `fsmflow submit examples.support_ticket:WORKFLOW --context '{"ticket": {...}}'` and run
# them in any number of `fsmflow worker examples.support_ticket:WORKFLOW` processes (see
# the README's Examples). Running this file as a program does not need it.
WORKFLOW: Final = Workflow(DEFINITION, STEPS)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="A support-ticket workflow that resumes after a crash."
    )
    parser.add_argument(
        "--instance-id",
        help="resume (or create) this instance; default: resume the most recently started "
        "unfinished ticket, else start a new one",
    )
    parser.add_argument("--subject", default=DEFAULT_TICKET["subject"], help="ticket subject")
    parser.add_argument("--body", default=DEFAULT_TICKET["body"], help="ticket text")
    parser.add_argument("--plan", default=DEFAULT_TICKET["plan"], help="customer plan")
    return parser.parse_args(argv)


async def main(
    options: argparse.Namespace,
    *,
    steps: Mapping[str, StepFunction] = STEPS,
    listeners: Sequence[Callable[[RunnerEvent], None]] = (),
) -> WorkflowState:
    """Run (or resume) one ticket and print its outcome."""
    ticket = {
        **DEFAULT_TICKET,
        "subject": options.subject,
        "body": options.body,
        "plan": options.plan,
    }
    db = DBConfig()  # DB_URL / DB_HOST ... from the environment or .env; none: embedded
    try:
        await db.init_db()  # idempotent
        workflow = PersistentWorkflowStateMachine(
            db, DEFINITION, steps=steps, instance_id=options.instance_id, listeners=listeners
        )
        # The context seeds a new instance; a resumed one keeps its stored context.
        state = await workflow.run_workflow(context={"ticket": ticket})
    finally:
        await db.close()
    data = state.context.data
    teams = ", ".join(data["escalation"]["teams"]) or "nobody"
    print(
        f"ticket {data['ticket']['id']} {data['status']}: priority {data['priority']}, "
        f"escalated to {teams}, {data['follow_ups']} follow-up call(s) "
        f"(instance {state.instance_id})"
    )
    return state


def configure_logging() -> None:
    """Progress goes to stderr as log lines; the result line goes to stdout."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )


if __name__ == "__main__":
    configure_logging()
    raise SystemExit(run_program(main(parse_args())))
