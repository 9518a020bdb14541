"""A program in the seed project's style: five tasks and a branch on task2's result.

It is written the way the seed's own examples were (keyword arguments, ``DBConfig()``
from the environment, ``workflow.steps = {...}``, ``await workflow.setup()``, printing
``workflow.workflow_state``, and ending with ``if db_config.pool: await
db_config.pool.close()``); only its import line names fsmflow. The seed picked task2's
result at random; here ``TASK2_RESULT`` (``success`` or ``failure``) picks it, so that
``tests/e2e/test_seed_programs.py`` can take both branches.
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


async def task1(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["task1_result"] = "completed"
    return context, None


async def task2(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["task2_result"] = os.environ.get("TASK2_RESULT", "success")
    return context, None


async def task3a(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["task3_result"] = "success_path_completed"
    return context, None


async def task3b(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["task3_result"] = "failure_path_completed"
    return context, None


async def task4(context: WorkflowContext) -> tuple[WorkflowContext, str | None]:
    context.data["task4_result"] = "completed"
    return context, None


async def main() -> None:
    db_config = DBConfig()
    await db_config.init_db()

    workflow_definition = WorkflowDefinition(
        name="Generic Workflow",
        steps=["task1", "task2", "task3a", "task3b", "task4"],
        transitions=[
            Transition(trigger="next", source="task1", dest="task2"),
            Transition(
                trigger="success",
                source="task2",
                dest="task3a",
                conditions=[Condition(field="task2_result", operator="eq", value="success")],
            ),
            Transition(
                trigger="failure",
                source="task2",
                dest="task3b",
                conditions=[Condition(field="task2_result", operator="eq", value="failure")],
            ),
            Transition(trigger="next", source="task3a", dest="task4"),
            Transition(trigger="next", source="task3b", dest="task4"),
            Transition(trigger="complete", source="task4", dest=None),
        ],
    )

    workflow = PersistentWorkflowStateMachine(db_config, workflow_definition)
    workflow.steps = {
        "task1": WorkflowStep(name="task1", execute=task1),
        "task2": WorkflowStep(name="task2", execute=task2),
        "task3a": WorkflowStep(name="task3a", execute=task3a),
        "task3b": WorkflowStep(name="task3b", execute=task3b),
        "task4": WorkflowStep(name="task4", execute=task4),
    }

    try:
        await workflow.setup()
        await workflow.run_workflow({"started_by": "seed program"})
        print(workflow.workflow_state)
        state = workflow.workflow_state
        print(
            f"workflow {state.workflow_id} ended in state {state.current_state} "
            f"(completed={state.completed}) via {state.context.data['task3_result']}"
        )
    finally:
        if db_config.pool:
            await db_config.pool.close()


if __name__ == "__main__":
    asyncio.run(main())
