"""``fsmflow.step_info()`` in-process against the real database (issue 14, idempotency keys).

Each step records what :func:`fsmflow.step_info` told it; the tests compare that with the
stored history: the key is equal across reruns of one state entry (a retry attempt, a
resumed crash) and differs for the next entry of the same state and for a fork.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import fsmflow
from fsmflow import (
    DBConfig,
    NotInStepError,
    PersistentWorkflowStateMachine,
    RetryPolicy,
    StepFailedError,
    StepInfo,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowStep,
)

from .reliability_support import linear_definition

WORKFLOW = "step_info_flow"
LINEAR = linear_definition(WORKFLOW, ("first", "second"))
LOOP = WorkflowDefinition(
    name="step_info_loop",
    steps=["work", "done"],
    transitions=[
        Transition(trigger="again", source="work", dest="work"),
        Transition(trigger="finish", source="work", dest="done"),
    ],
)


class Crash(BaseException):
    """Stands for the process dying: nothing in fsmflow catches it."""


def key(workflow: str, instance_id: str, seq: int) -> str:
    return f"{workflow}:{instance_id}:{seq}"


async def run(
    config: DBConfig, definition: WorkflowDefinition, steps: dict[str, Any], instance_id: str
) -> fsmflow.WorkflowState:
    runner = PersistentWorkflowStateMachine(
        config, definition, steps=steps, instance_id=instance_id, handle_signals=False
    )
    return await runner.run_workflow()


async def test_async_and_sync_steps_see_their_state_entry(db_config: DBConfig) -> None:
    seen: list[tuple[StepInfo, bool]] = []

    async def first(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        seen.append((fsmflow.step_info(), threading.current_thread() is threading.main_thread()))
        return ctx, None

    def second(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:  # runs on a thread
        seen.append((fsmflow.step_info(), threading.current_thread() is threading.main_thread()))
        return ctx, None

    await run(db_config, LINEAR, {"first": first, "second": second}, "i1")

    rows = await db_config.store.history(WORKFLOW, "i1")
    assert [(r.seq, r.dest_state) for r in rows] == [(0, "first"), (1, "second"), (2, None)]
    assert seen == [
        (StepInfo(WORKFLOW, "i1", "first", 0, 1), True),
        (StepInfo(WORKFLOW, "i1", "second", 1, 1), False),
    ]
    assert [info.idempotency_key for info, _ in seen] == [
        key(WORKFLOW, "i1", 0),
        key(WORKFLOW, "i1", 1),
    ]


async def test_outside_a_step_it_raises(db_config: DBConfig) -> None:
    with pytest.raises(NotInStepError, match="inside a step"):
        fsmflow.step_info()
    after_errors: list[BaseException] = []

    def after(ctx: WorkflowContext) -> None:
        try:
            fsmflow.step_info()
        except NotInStepError as exc:
            after_errors.append(exc)

    definition = WorkflowDefinition(
        name=WORKFLOW,
        steps=["first", "second"],
        transitions=[Transition(trigger="go", source="first", dest="second", after=after)],
    )

    async def step(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        return ctx, None

    await run(db_config, definition, {"first": step, "second": step}, "i1")

    assert len(after_errors) == 1  # an `after` callback is not a step
    with pytest.raises(NotInStepError, match="outside a step"):
        fsmflow.step_info()  # reset once the step returned


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_retry_attempts_count_up_and_share_one_key(db_config: DBConfig, sync: bool) -> None:
    seen: list[StepInfo] = []

    def flaky(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        seen.append(fsmflow.step_info())
        if len(seen) <= 2:
            raise ConnectionError("the card processor hung up")
        return ctx, None

    async def flaky_async(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        return flaky(ctx)

    async def first(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        return ctx, None

    policy = RetryPolicy(
        max_attempts=3, initial_backoff=0.01, jitter=0.0, retry_on=(ConnectionError,)
    )
    second = WorkflowStep(name="second", execute=flaky if sync else flaky_async, retry=policy)
    await run(db_config, LINEAR, {"first": first, "second": second}, "i1")

    assert [info.attempt for info in seen] == [1, 2, 3]
    assert {(info.state, info.seq) for info in seen} == {("second", 1)}
    assert {info.idempotency_key for info in seen} == {key(WORKFLOW, "i1", 1)}


async def test_a_resumed_crash_reruns_the_step_with_the_same_key(db_config: DBConfig) -> None:
    seen: list[StepInfo] = []

    async def first(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        return ctx, None

    async def second(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        seen.append(fsmflow.step_info())
        if len(seen) == 1:
            raise Crash  # the process dies inside the step
        return ctx, None

    steps = {"first": first, "second": second}
    with pytest.raises(Crash):
        await run(db_config, LINEAR, steps, "i1")
    await run(db_config, LINEAR, steps, "i1")  # a new runner resumes the instance

    assert [(info.seq, info.attempt) for info in seen] == [(1, 1), (1, 1)]
    assert seen[0].idempotency_key == seen[1].idempotency_key == key(WORKFLOW, "i1", 1)


async def test_each_entry_of_a_loop_gets_its_own_key(db_config: DBConfig) -> None:
    seen: list[StepInfo] = []

    async def work(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        seen.append(fsmflow.step_info())
        return ctx, "again" if len(seen) < 3 else "finish"

    async def done(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        return ctx, None

    await run(db_config, LOOP, {"work": work, "done": done}, "i1")

    rows = await db_config.store.history(LOOP.name, "i1")
    entries = [r.seq for r in rows if r.dest_state == "work"]
    assert [info.seq for info in seen] == entries == [0, 1, 2]
    keys = [info.idempotency_key for info in seen]
    assert keys == [key(LOOP.name, "i1", seq) for seq in entries]
    assert len(set(keys)) == 3


async def test_a_fork_gets_another_key_for_the_same_state(db_config: DBConfig) -> None:
    seen: list[StepInfo] = []

    async def first(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        return ctx, None

    async def second(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        seen.append(fsmflow.step_info())
        return ctx, None

    steps = {"first": first, "second": second}
    await run(db_config, LINEAR, steps, "src")
    fork = await db_config.store.fork_instance(WORKFLOW, "src", seq=1, new_instance_id="copy")
    assert fork.dest_state == "second"
    await run(db_config, LINEAR, steps, "copy")

    source, forked = seen
    assert (source.instance_id, forked.instance_id) == ("src", "copy")
    assert source.state == forked.state == "second"
    assert source.idempotency_key == key(WORKFLOW, "src", 1)
    assert forked.idempotency_key == key(WORKFLOW, "copy", 0)


async def test_concurrent_instances_each_see_their_own_step(db_config: DBConfig) -> None:
    both_inside = threading.Barrier(2, timeout=30)
    seen: dict[str, StepInfo] = {}

    async def first(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        return ctx, None

    def second(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        both_inside.wait()  # both instances' steps are running at once
        info = fsmflow.step_info()
        seen[info.instance_id] = info
        return ctx, None

    steps = {"first": first, "second": second}
    await asyncio.gather(*(run(db_config, LINEAR, steps, name) for name in ("a", "b")))

    assert {name: info.idempotency_key for name, info in seen.items()} == {
        "a": key(WORKFLOW, "a", 1),
        "b": key(WORKFLOW, "b", 1),
    }


async def test_a_failed_instance_run_again_gets_a_new_key(db_config: DBConfig) -> None:
    seen: list[StepInfo] = []

    async def first(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        return ctx, None

    async def second(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        seen.append(fsmflow.step_info())
        if len(seen) == 1:
            raise ValueError("card declined")
        return ctx, None

    steps = {"first": first, "second": second}
    with pytest.raises(StepFailedError):
        await run(db_config, LINEAR, steps, "i1")
    runner = PersistentWorkflowStateMachine(
        db_config, LINEAR, steps=steps, instance_id="i1", retry_failed=True, handle_signals=False
    )
    await runner.run_workflow()

    rows = await db_config.store.history(WORKFLOW, "i1")
    assert [(r.seq, r.status) for r in rows][1:3] == [(1, "running"), (2, "failed")]
    assert [info.seq for info in seen] == [1, 2]  # the retry stands at the failed row
    assert seen[0].idempotency_key != seen[1].idempotency_key
