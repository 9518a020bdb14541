"""Durable waits in one process: events, timeouts, suspend, cancel, refusals (real server)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from fsmflow import (
    Condition,
    DBConfig,
    InstanceCancelledError,
    InstanceNotFoundError,
    InstanceStateError,
    PersistentWorkflowStateMachine,
    Transition,
    UnknownEventError,
    WorkflowContext,
    WorkflowDefinition,
)
from fsmflow.errors import ContextSerializationError, ContextTooLargeError, InvalidIdentifierError


def approval_definition(timeout: float = 3600.0) -> WorkflowDefinition:
    return WorkflowDefinition(
        name="approval",
        steps=["draft", "review", "publish", "revise", "escalate"],
        transitions=[
            Transition("drafted", "draft", "review"),
            Transition(
                "approved",
                "review",
                "publish",
                event="approval",
                conditions=[Condition(field="approval.ok", operator="eq", value=True)],
            ),
            Transition(
                "rejected",
                "review",
                "revise",
                event="approval",
                conditions=[Condition(field="approval.ok", operator="eq", value=False)],
            ),
            Transition("expired", "review", "escalate", timeout=timeout),
            Transition("redrafted", "revise", "review"),
            Transition("published", "publish", None),
            Transition("escalated", "escalate", None),
        ],
    )


class Counts:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def steps(self) -> dict[str, Any]:
        def make(name: str, trigger: str | None) -> Any:
            async def step(ctx: WorkflowContext) -> tuple[WorkflowContext, str | None]:
                self.calls[name] = self.calls.get(name, 0) + 1
                ctx.data.setdefault("trail", []).append(name)
                return ctx, trigger

            return step

        return {
            "draft": make("draft", "drafted"),
            "publish": make("publish", "published"),
            "revise": make("revise", "redrafted"),
            "escalate": make("escalate", "escalated"),
        }


def runner(
    db: DBConfig, definition: WorkflowDefinition, counts: Counts, instance_id: str = "doc-1"
) -> PersistentWorkflowStateMachine:
    return PersistentWorkflowStateMachine(
        db, definition, steps=counts.steps(), instance_id=instance_id, handle_signals=False
    )


async def test_suspend_then_event_then_resume(db_config: DBConfig) -> None:
    counts = Counts()
    definition = approval_definition()
    state = await runner(db_config, definition, counts).run_workflow(suspend=True)
    assert state.status == "waiting"
    assert state.current_state == "review"
    assert state.waiting_for == ("approval",)
    assert state.wake_at is not None
    sent = await db_config.store.send_event("approval", "doc-1", "approval", {"ok": True})
    assert not sent.duplicate
    final = await runner(db_config, definition, counts).run_workflow()
    assert final.completed
    assert final.context.data["approval"] == {"ok": True}
    assert counts.calls == {"draft": 1, "publish": 1}
    history = await db_config.store.history("approval", "doc-1")
    statuses = [r.status for r in history]
    assert statuses == ["running", "waiting", "running", "completed"]
    assert history[2].event_id == sent.event.event_id


async def test_in_process_waiter_wakes_on_event(db_config: DBConfig) -> None:
    counts = Counts()
    task = asyncio.create_task(runner(db_config, approval_definition(), counts).run_workflow())
    for _ in range(200):
        last = await db_config.store.last_record("approval", "doc-1")
        if last is not None and last.status == "waiting":
            break
        await asyncio.sleep(0.02)
    await db_config.store.send_event("approval", "doc-1", "approval", {"ok": False})
    await asyncio.sleep(0.3)
    assert counts.calls.get("revise") == 1
    await db_config.store.send_event("approval", "doc-1", "approval", {"ok": True})
    final = await asyncio.wait_for(task, 10)
    assert final.completed
    assert counts.calls == {"draft": 1, "revise": 1, "publish": 1}


async def test_timeout_fires(db_config: DBConfig) -> None:
    counts = Counts()
    final = await asyncio.wait_for(
        runner(db_config, approval_definition(timeout=0.5), counts).run_workflow(), 10
    )
    assert final.completed
    assert counts.calls == {"draft": 1, "escalate": 1}


async def test_unmatched_event_is_consumed_and_wait_goes_on(db_config: DBConfig) -> None:
    counts = Counts()
    definition = approval_definition()
    await runner(db_config, definition, counts).run_workflow(suspend=True)
    await db_config.store.send_event("approval", "doc-1", "approval", {"ok": "maybe"})
    state = await runner(db_config, definition, counts).run_workflow(suspend=True)
    assert state.status == "waiting"
    history = await db_config.store.history("approval", "doc-1")
    assert history[-1].trigger == "fsmflow:unmatched-event"
    assert history[-1].waiting_since == history[-2].waiting_since
    assert "approval" not in history[-1].context
    pending = await db_config.store.instance_events("approval", "doc-1", pending_only=True)
    assert pending == []


async def test_key_makes_a_second_send_a_no_op(db_config: DBConfig) -> None:
    counts = Counts()
    await runner(db_config, approval_definition(), counts).run_workflow(suspend=True)
    first = await db_config.store.send_event(
        "approval", "doc-1", "approval", {"ok": True}, key="hook-7"
    )
    again = await db_config.store.send_event(
        "approval", "doc-1", "approval", {"ok": False}, key="hook-7"
    )
    assert again.duplicate and again.event.event_id == first.event.event_id
    assert again.event.payload == {"ok": True}
    events = await db_config.store.instance_events("approval", "doc-1")
    assert len(events) == 1


async def test_refusals_write_nothing(db_config: DBConfig) -> None:
    store = db_config.store
    with pytest.raises(InstanceNotFoundError):
        await store.send_event("approval", "nope", "approval", {})
    counts = Counts()
    await runner(db_config, approval_definition(), counts).run_workflow(suspend=True)
    with pytest.raises(UnknownEventError, match="declared events: 'approval'"):
        await store.send_event("approval", "doc-1", "approve", {})
    with pytest.raises(ContextSerializationError):
        await store.send_event("approval", "doc-1", "approval", {"a": float("nan")})
    with pytest.raises(ContextSerializationError):
        await store.send_event("approval", "doc-1", "approval", "nul\x00")
    with pytest.raises(ContextTooLargeError):
        await store.send_event("approval", "doc-1", "approval", "x" * (17 * 1024 * 1024))
    with pytest.raises(InvalidIdentifierError):
        await store.send_event("approval", "doc-1", "appr\x00oval", {})
    with pytest.raises(InvalidIdentifierError):
        await store.send_event("approval", "doc-1", "approval", {}, key="")
    assert await store.instance_events("approval", "doc-1") == []
    await store.cancel_instance("approval", "doc-1")
    with pytest.raises(InstanceStateError, match="cancelled"):
        await store.send_event("approval", "doc-1", "approval", {})


async def test_cancel_while_waiting_in_process(db_config: DBConfig) -> None:
    counts = Counts()
    task = asyncio.create_task(runner(db_config, approval_definition(), counts).run_workflow())
    for _ in range(200):
        last = await db_config.store.last_record("approval", "doc-1")
        if last is not None and last.status == "waiting":
            break
        await asyncio.sleep(0.02)
    await db_config.store.cancel_instance("approval", "doc-1", reason="not needed")
    with pytest.raises(InstanceCancelledError):
        await asyncio.wait_for(task, 10)


async def test_pure_wait_state_and_durable_sleep(db_config: DBConfig) -> None:
    definition = WorkflowDefinition(
        name="sleeper",
        steps=["start", "nap", "done"],
        transitions=[
            Transition("go", "start", "nap"),
            Transition("woke", "nap", "done", timeout=timedelta(seconds=0.3)),
            Transition("end", "done", None),
        ],
    )
    calls: list[str] = []

    def step(name: str, trigger: str) -> Any:
        def run(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
            calls.append(name)
            return ctx, trigger

        return run

    machine = PersistentWorkflowStateMachine(
        db_config,
        definition,
        steps={"start": step("start", "go"), "done": step("done", "end")},
        instance_id="s-1",
        handle_signals=False,
    )
    state = await machine.run_workflow(suspend=True)
    assert state.status == "waiting" and state.current_state == "nap"
    history = await db_config.store.history("sleeper", "s-1")
    assert [r.status for r in history] == ["running", "waiting"]  # one row enters the wait
    await asyncio.sleep(0.4)
    machine = PersistentWorkflowStateMachine(
        db_config,
        definition,
        steps={"start": step("start", "go"), "done": step("done", "end")},
        instance_id="s-1",
        handle_signals=False,
    )
    final = await machine.run_workflow(suspend=True)
    assert final.completed
    assert calls == ["start", "done"]
