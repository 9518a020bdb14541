"""A program in the seed project's style: a nine-state support ticket with custom conditions.

Written the way the seed's own examples were (keyword arguments, ``DBConfig()`` from the
environment, ``workflow.steps = {...}``, ``await workflow.setup()``, printing
``workflow.workflow_state``, ending with ``if db_config.pool: await db_config.pool.close()``);
only its import line names fsmflow. The branches are chosen by custom **sync** conditions
(``Condition(field=..., operator="custom", custom_function=...)``):

new_ticket -> triage -+-> escalate -> assign     (urgent priority)
                      +-> assign                 (routine priority)
assign -> investigate -> propose_fix -> customer_review -+-> close_ticket  (satisfied)
                 ^                                      +-> reopen        (not satisfied)
                 +------------------ reopen <-----------+

``TICKET_PRIORITY`` (default ``high``) is the new ticket's priority; the customer's scores
come one per review from ``TICKET_SCORES`` (default ``2,5``: one reopen, then closed).
"""

from __future__ import annotations

import asyncio
import os

from fsmflow import (
    Condition,
    DBConfig,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowStep,
)

SATISFIED_SCORE = 4


def is_urgent(priority: str) -> bool:
    return priority in ("high", "critical")


def is_routine(priority: str) -> bool:
    return not is_urgent(priority)


def is_satisfied(score: int) -> bool:
    return score >= SATISFIED_SCORE


def is_unhappy(score: int) -> bool:
    return score < SATISFIED_SCORE


async def new_ticket(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["status"] = "open"
    context.data["history"] = ["opened"]
    return context, None


async def triage(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["priority"] = os.environ.get("TICKET_PRIORITY", "high")
    context.data["history"].append(f"triaged as {context.data['priority']}")
    return context, None


async def escalate(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["team"] = "senior-support"
    context.data["history"].append("escalated")
    return context, None


async def assign(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data.setdefault("team", "first-line")
    context.data["agent"] = f"{context.data['team']}-agent"
    context.data["history"].append(f"assigned to {context.data['agent']}")
    return context, None


async def investigate(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["investigations"] = context.data.get("investigations", 0) + 1
    context.data["history"].append(f"investigation #{context.data['investigations']}")
    return context, None


async def propose_fix(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["fix"] = f"fix #{context.data['investigations']}"
    context.data["history"].append(f"proposed {context.data['fix']}")
    return context, None


async def customer_review(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    scores = [int(s) for s in os.environ.get("TICKET_SCORES", "2,5").split(",")]
    reviews = context.data.get("reviews", [])
    context.data["score"] = scores[min(len(reviews), len(scores) - 1)]
    context.data["reviews"] = [*reviews, context.data["score"]]
    context.data["history"].append(f"customer scored {context.data['score']}")
    return context, None


async def reopen(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["status"] = "reopened"
    context.data["history"].append("reopened")
    return context, None


async def close_ticket(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["status"] = "closed"
    context.data["history"].append("closed")
    return context, None


async def main() -> None:
    db_config = DBConfig()
    await db_config.init_db()

    workflow_definition = WorkflowDefinition(
        name="support_ticket_seed",
        steps=[
            "new_ticket",
            "triage",
            "escalate",
            "assign",
            "investigate",
            "propose_fix",
            "customer_review",
            "reopen",
            "close_ticket",
        ],
        transitions=[
            Transition(trigger="start_triage", source="new_ticket", dest="triage"),
            Transition(
                trigger="escalate_ticket",
                source="triage",
                dest="escalate",
                conditions=[
                    Condition(
                        field="priority", operator="custom", value=None, custom_function=is_urgent
                    )
                ],
            ),
            Transition(
                trigger="assign_ticket",
                source="triage",
                dest="assign",
                conditions=[
                    Condition(field="priority", operator="custom", custom_function=is_routine)
                ],
            ),
            Transition(trigger="assign_senior", source="escalate", dest="assign"),
            Transition(trigger="start_work", source="assign", dest="investigate"),
            Transition(trigger="found_cause", source="investigate", dest="propose_fix"),
            Transition(trigger="ask_customer", source="propose_fix", dest="customer_review"),
            Transition(
                trigger="accept",
                source="customer_review",
                dest="close_ticket",
                conditions=[
                    Condition(field="score", operator="custom", custom_function=is_satisfied)
                ],
            ),
            Transition(
                trigger="reject",
                source="customer_review",
                dest="reopen",
                conditions=[
                    Condition(field="score", operator="custom", custom_function=is_unhappy)
                ],
            ),
            Transition(trigger="work_again", source="reopen", dest="investigate"),
            Transition(trigger="archive", source="close_ticket", dest=None),
        ],
    )

    workflow = PersistentWorkflowStateMachine(db_config, workflow_definition)
    workflow.steps = {
        name: WorkflowStep(name=name, execute=step)
        for name, step in {
            "new_ticket": new_ticket,
            "triage": triage,
            "escalate": escalate,
            "assign": assign,
            "investigate": investigate,
            "propose_fix": propose_fix,
            "customer_review": customer_review,
            "reopen": reopen,
            "close_ticket": close_ticket,
        }.items()
    }

    try:
        await workflow.setup()
        await workflow.run_workflow({"ticket": {"id": "T-7", "subject": "Login fails"}})
        print(workflow.workflow_state)
        state = workflow.workflow_state
        print(
            f"ticket workflow {state.workflow_id} ended in state {state.current_state} "
            f"(completed={state.completed}): {'; '.join(state.context.data['history'])}"
        )
    finally:
        if db_config.pool:
            await db_config.pool.close()


if __name__ == "__main__":
    asyncio.run(main())
