"""The smallest complete fsmflow program: five tasks and a condition-based branch.

    python examples/basic.py                        # valid orders: report sent
    python examples/basic.py --with-invalid-order   # the failure branch: ops alerted
    python examples/basic.py --instance-id daily-2026-11-22   # resume or create that instance

fetch_orders -> validate_orders -+-> compute_totals -> send_report   (no validation errors)
                                 +-> alert_ops                       (validation errors)

Amounts are integer cents (floats are fine in a context too, but money is not a float).
The database comes from :class:`fsmflow.DBConfig` (``DB_URL`` ... in the environment or
``.env``); with nothing configured, a local embedded PostgreSQL is used.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

from fsmflow import (
    Condition,
    DBConfig,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowState,
    run_program,
)

log = logging.getLogger("basic")

StepOutcome = tuple[WorkflowContext, str | None]

ORDERS: Final[list[dict[str, Any]]] = [
    {"id": "A-1", "customer": "alice", "amount_cents": 1250},
    {"id": "A-2", "customer": "bob", "amount_cents": 4999},
    {"id": "A-3", "customer": "carol", "amount_cents": 300},
]
INVALID_ORDER: Final[dict[str, Any]] = {"id": "A-4", "customer": "", "amount_cents": -5}


async def fetch_orders(ctx: WorkflowContext) -> StepOutcome:
    """Load the orders to report on (async step: runs on the event loop)."""
    await asyncio.sleep(0)  # e.g. an HTTP call
    orders = list(ORDERS)
    if ctx.data.get("include_invalid_order"):
        orders.append(INVALID_ORDER)
    ctx.data["orders"] = orders
    log.info("fetched %d orders", len(orders))
    return ctx, None


def validate_orders(ctx: WorkflowContext) -> StepOutcome:
    """Check every order (sync step: runs in a worker thread)."""
    errors = []
    for order in ctx.data["orders"]:
        if order["amount_cents"] < 0:
            errors.append(f"order {order['id']}: negative amount")
        elif not order["customer"]:
            errors.append(f"order {order['id']}: no customer")
    ctx.data["validation_errors"] = errors
    log.info("validated: %d error(s)", len(errors))
    return ctx, None  # None: the first transition whose conditions hold is taken


def compute_totals(ctx: WorkflowContext) -> StepOutcome:
    """Sum the orders."""
    ctx.data["total_cents"] = sum(order["amount_cents"] for order in ctx.data["orders"])
    log.info("total: %d cents", ctx.data["total_cents"])
    return ctx, None


async def send_report(ctx: WorkflowContext) -> StepOutcome:
    """Publish the report (idempotent: a rerun after a crash sends the same report)."""
    await asyncio.sleep(0)
    total = ctx.data["total_cents"]
    ctx.data["outcome"] = (
        f"report sent: {len(ctx.data['orders'])} orders, total {total // 100}.{total % 100:02d}"
    )
    return ctx, None


async def alert_ops(ctx: WorkflowContext) -> StepOutcome:
    """The failure branch: tell a human what is wrong."""
    await asyncio.sleep(0)
    ctx.data["outcome"] = f"ops alerted: {len(ctx.data['validation_errors'])} invalid order(s)"
    log.warning("%s", "; ".join(ctx.data["validation_errors"]))
    return ctx, None


DEFINITION: Final = WorkflowDefinition(
    name="basic_orders",
    steps=["fetch_orders", "validate_orders", "compute_totals", "send_report", "alert_ops"],
    transitions=[
        Transition(trigger="validate", source="fetch_orders", dest="validate_orders"),
        Transition(
            trigger="accept",
            source="validate_orders",
            dest="compute_totals",
            conditions=[Condition(field="validation_errors", operator="is_empty")],
        ),
        Transition(
            trigger="reject",
            source="validate_orders",
            dest="alert_ops",
            conditions=[Condition(field="validation_errors", operator="is_not_empty")],
        ),
        Transition(trigger="report", source="compute_totals", dest="send_report"),
        # send_report and alert_ops have no outgoing transition: they complete the instance.
    ],
)

STEPS: Final = {
    "fetch_orders": fetch_orders,
    "validate_orders": validate_orders,
    "compute_totals": compute_totals,
    "send_report": send_report,
    "alert_ops": alert_ops,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Five tasks with a success/failure branch.")
    parser.add_argument(
        "--instance-id",
        help="resume (or create) this instance; default: resume the most recently started "
        "unfinished one, else start a new one",
    )
    parser.add_argument(
        "--with-invalid-order", action="store_true", help="add an invalid order (failure branch)"
    )
    return parser.parse_args(argv)


async def main(options: argparse.Namespace) -> WorkflowState:
    """Run (or resume) the workflow and print its outcome."""
    db = DBConfig()  # DB_URL / DB_HOST ... from the environment or .env; none: embedded
    try:
        await db.init_db()  # creates the table if missing (idempotent)
        workflow = PersistentWorkflowStateMachine(
            db, DEFINITION, steps=STEPS, instance_id=options.instance_id
        )
        state = await workflow.run_workflow(
            context={"include_invalid_order": options.with_invalid_order}
        )
    finally:
        await db.close()
    print(f"{state.context.data['outcome']} (instance {state.instance_id})")
    return state


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    raise SystemExit(run_program(main(parse_args())))
