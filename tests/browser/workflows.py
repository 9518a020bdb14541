"""The workflows and instances the dashboard's browser tests look at.

Three workflows: ``shop_orders`` (a branch: ``validate`` goes to ``pack`` or ``reject``),
``doc_review`` (waits in ``review`` for an ``approval`` event, or a day) and a workflow
whose name is hostile HTML. :func:`populate` creates the instances of :data:`INSTANCES`
with the real runner on a test database; ``fsmflow worker
tests.browser.workflows:SHOP`` runs the shop's steps in a worker process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

from fsmflow import (
    Condition,
    DBConfig,
    PersistentWorkflowStateMachine,
    RunnerEvent,
    StepFailedError,
    Transition,
    Workflow,
    WorkflowContext,
    WorkflowDefinition,
)

StepOutcome = tuple[WorkflowContext, str | None]

# Running any of these in a page sets a window variable the tests look for.
HOSTILE_WORKFLOW: Final = '<script>window.__fsmflowPwned="workflow"</script>"\'&amp;'
HOSTILE_ID: Final = "<img src=x onerror=\"window.__fsmflowPwned='id'\">/../%2F?#x"
HOSTILE_PAYLOAD: Final = '<script>window.__fsmflowPwned="payload"</script><b>bold?</b>'
SECRET: Final = "context-secret-7f3a"  # a context value: shown only when a row is asked for


async def receive(ctx: WorkflowContext) -> StepOutcome:
    """Take the order in."""
    ctx.data["received"] = True
    return ctx, None


async def validate(ctx: WorkflowContext) -> StepOutcome:
    """An order without items is rejected (the branch of the diagram)."""
    ctx.data["problems"] = [] if ctx.data.get("items") else ["no items"]
    return ctx, None


async def pack(ctx: WorkflowContext) -> StepOutcome:
    """Fails for an order marked ``fragile`` (the failed instance of the data set)."""
    if ctx.data.get("fragile"):
        raise RuntimeError("box too small for a fragile order")
    ctx.data["packed"] = len(ctx.data["items"])
    return ctx, None


async def ship(ctx: WorkflowContext) -> StepOutcome:
    """Hand the parcel over."""
    ctx.data["shipped"] = True
    return ctx, None


async def reject(ctx: WorkflowContext) -> StepOutcome:
    """Tell the customer."""
    ctx.data["rejected"] = True
    return ctx, None


SHOP_DEFINITION: Final = WorkflowDefinition(
    name="shop_orders",
    steps=["receive", "validate", "pack", "ship", "reject"],
    transitions=[
        Transition(trigger="check", source="receive", dest="validate"),
        Transition(
            trigger="accept",
            source="validate",
            dest="pack",
            conditions=[Condition(field="problems", operator="is_empty")],
        ),
        Transition(
            trigger="refuse",
            source="validate",
            dest="reject",
            conditions=[Condition(field="problems", operator="is_not_empty")],
        ),
        Transition(trigger="send", source="pack", dest="ship"),
    ],
)
SHOP_STEPS: Final = {"receive": receive, "validate": validate, "pack": pack, "ship": ship}
SHOP: Final = Workflow(SHOP_DEFINITION, {**SHOP_STEPS, "reject": reject})


async def draft(ctx: WorkflowContext) -> StepOutcome:
    """Write the document that waits for a review."""
    ctx.data["draft"] = f"announcement about {ctx.data.get('topic', 'nothing')}"
    return ctx, None


async def publish(ctx: WorkflowContext) -> StepOutcome:
    """Approved: out it goes."""
    ctx.data["published"] = True
    return ctx, None


async def escalate(ctx: WorkflowContext) -> StepOutcome:
    """Nobody answered within a day."""
    ctx.data["escalated"] = True
    return ctx, None


REVIEW_DEFINITION: Final = WorkflowDefinition(
    name="doc_review",
    steps=["draft", "review", "publish", "escalate"],
    transitions=[
        Transition(trigger="submit", source="draft", dest="review"),
        Transition(
            trigger="approved",
            source="review",
            dest="publish",
            conditions=[Condition(field="approval.ok", operator="eq", value=True)],
            event="approval",
        ),
        Transition(trigger="expired", source="review", dest="escalate", timeout=timedelta(days=1)),
    ],
)
REVIEW: Final = Workflow(
    REVIEW_DEFINITION, {"draft": draft, "publish": publish, "escalate": escalate}
)

HOSTILE_DEFINITION: Final = WorkflowDefinition(
    name=HOSTILE_WORKFLOW,
    steps=["receive", "ship"],
    transitions=[Transition(trigger="send", source="receive", dest="ship")],
)
HOSTILE: Final = Workflow(HOSTILE_DEFINITION, {"receive": receive, "ship": ship})

Outcome = Literal["completed", "failed", "running", "waiting", "delivered"]


@dataclass(frozen=True)
class Planned:
    """One instance of the data set: how it ends up and the context it starts with."""

    workflow: Workflow
    instance_id: str
    outcome: Outcome
    context: dict[str, Any]


ITEMS: Final = ["book", "lamp"]
INSTANCES: Final = (
    Planned(SHOP, "order-1001", "completed", {"items": ITEMS, "card": SECRET}),
    Planned(SHOP, "order-1002", "completed", {"items": []}),  # the reject branch
    Planned(SHOP, "order-1003", "failed", {"items": ITEMS, "fragile": True}),
    Planned(SHOP, "order-1004", "running", {"items": ITEMS}),  # stopped before ship
    Planned(REVIEW, "doc-1", "waiting", {"topic": "the release"}),
    Planned(REVIEW, "doc-2", "delivered", {"topic": "the outage"}),
    Planned(REVIEW, "doc-3", "waiting", {"topic": "pricing"}),  # gets a pending event
    Planned(HOSTILE, HOSTILE_ID, "completed", {"items": ITEMS}),
)


class Stopped(Exception):
    """Raised by a listener just before ``ship`` starts: the run ends as if it crashed."""


def _stop_before_ship(event: RunnerEvent) -> None:
    if event.point == "step_started" and event.state == "ship":
        raise Stopped(event.instance_id)


def _runner(config: DBConfig, planned: Planned) -> PersistentWorkflowStateMachine:
    listeners = [_stop_before_ship] if planned.outcome == "running" else []
    return planned.workflow.runner(
        config, instance_id=planned.instance_id, handle_signals=False, listeners=listeners
    )


async def create(config: DBConfig, planned: Planned) -> None:
    """Create one instance as :class:`Planned` says, with the real runner."""
    try:
        await _runner(config, planned).run_workflow(context=planned.context, suspend=True)
    except (Stopped, StepFailedError):
        assert planned.outcome in ("running", "failed"), planned
    name, instance = planned.workflow.name, planned.instance_id
    if planned.outcome == "delivered":
        payload = {"ok": True, "by": "ana", "note": HOSTILE_PAYLOAD}
        await config.store.send_event(name, instance, "approval", payload)
        await _runner(config, planned).run_workflow(suspend=True)
    if instance == "doc-3":
        await config.store.send_event(name, instance, "approval", {"ok": False, "by": "ben"})


async def populate(config: DBConfig, planned: tuple[Planned, ...] = INSTANCES) -> None:
    """Create every instance of ``planned`` on ``config``'s database, one after another
    (their start times, and so the list's order, follow this order)."""
    for one in planned:
        await create(config, one)


def populate_now(config: DBConfig, planned: tuple[Planned, ...] = INSTANCES) -> None:
    """:func:`populate` from synchronous code (the browser tests are synchronous)."""

    async def run() -> None:
        try:
            await populate(config, planned)
        finally:
            await config.close()

    asyncio.run(run())
