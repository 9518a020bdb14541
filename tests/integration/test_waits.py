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
    await wait_until_waiting(db_config, "approval", "doc-1")
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
    await wait_until_waiting(db_config, "approval", "doc-1")
    await db_config.store.cancel_instance("approval", "doc-1", reason="not needed")
    with pytest.raises(InstanceCancelledError):
        await asyncio.wait_for(task, 10)


async def test_pure_wait_state_and_durable_sleep(db_config: DBConfig) -> None:
    definition = WorkflowDefinition(
        name="sleeper",
        steps=["start", "nap", "done"],
        transitions=[
            Transition("go", "start", "nap"),
            Transition("woke", "nap", "done", timeout=timedelta(seconds=2)),
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
    await asyncio.sleep(2.2)
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


async def wait_until_waiting(db: DBConfig, workflow: str, instance_id: str) -> None:
    for _ in range(500):
        last = await db.store.last_record(workflow, instance_id)
        if last is not None and last.status == "waiting":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{instance_id} never waited")


async def test_an_event_sent_before_the_deadline_wins_over_the_timeout(db_config: DBConfig) -> None:
    counts, definition = Counts(), approval_definition(timeout=3.0)
    await runner(db_config, definition, counts).run_workflow(suspend=True)
    sent = await db_config.store.send_event("approval", "doc-1", "approval", {"ok": True})
    last = await db_config.store.last_record("approval", "doc-1")
    assert last is not None and last.wake_at is not None
    assert sent.event.created_at < last.wake_at  # sent before the deadline, by the server clock
    await asyncio.sleep(3.2)  # the deadline passes with no process running
    final = await runner(db_config, definition, counts).run_workflow()
    assert final.completed and counts.calls == {"draft": 1, "publish": 1}


async def test_a_deadline_passed_before_the_event_was_sent_fires_first(db_config: DBConfig) -> None:
    counts, definition = Counts(), approval_definition(timeout=0.2)
    await runner(db_config, definition, counts).run_workflow(suspend=True)
    await asyncio.sleep(0.4)
    await db_config.store.send_event("approval", "doc-1", "approval", {"ok": True})
    final = await runner(db_config, definition, counts).run_workflow()
    assert final.completed and counts.calls == {"draft": 1, "escalate": 1}
    # The event arrived too late and was never delivered: it stays on record, pending.
    pending = await db_config.store.instance_events("approval", "doc-1", pending_only=True)
    assert [e.payload for e in pending] == [{"ok": True}]


async def test_the_deadline_is_measured_from_the_start_of_the_wait(db_config: DBConfig) -> None:
    # Long enough for four short runs on a loaded machine, all before the deadline.
    counts, definition = Counts(), approval_definition(timeout=4.0)
    await runner(db_config, definition, counts).run_workflow(suspend=True)
    first = (await db_config.store.history("approval", "doc-1"))[-1]
    assert first.waiting_since is not None and first.wake_at is not None
    assert (first.wake_at - first.waiting_since).total_seconds() == pytest.approx(4.0)
    for _ in range(3):  # runs that start and stop again never move the deadline
        state = await runner(db_config, definition, counts).run_workflow(suspend=True)
        assert state.status == "waiting" and state.wake_at == first.wake_at
    assert len(await db_config.store.history("approval", "doc-1")) == first.seq + 1
    final = await asyncio.wait_for(runner(db_config, definition, counts).run_workflow(), 10)
    assert final.completed and counts.calls == {"draft": 1, "escalate": 1}
    fired = (await db_config.store.history("approval", "doc-1"))[first.seq + 1]
    assert fired.trigger == "expired" and fired.created_at >= first.wake_at


async def test_events_are_delivered_in_the_order_they_were_sent(db_config: DBConfig) -> None:
    definition = WorkflowDefinition(
        name="collector",
        steps=["collect", "count"],
        transitions=[
            Transition("item", "collect", "count", event="item"),
            Transition("more", "count", "collect"),
            Transition("enough", "count", None, conditions=[
                Condition(field="n", operator="ge", value=20)
            ]),
        ],
    )  # fmt: skip

    def count(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        ctx.data.setdefault("seen", []).append(ctx.data["item"])
        ctx.data["n"] = len(ctx.data["seen"])
        return ctx, "enough" if ctx.data["n"] >= 20 else "more"

    machine = PersistentWorkflowStateMachine(
        db_config, definition, steps={"count": count}, instance_id="c-1", handle_signals=False
    )
    await machine.run_workflow(suspend=True)
    for i in range(20):
        await db_config.store.send_event("collector", "c-1", "item", i)
    machine = PersistentWorkflowStateMachine(
        db_config, definition, steps={"count": count}, instance_id="c-1", handle_signals=False
    )
    final = await asyncio.wait_for(machine.run_workflow(), 20)
    assert final.completed and final.context.data["seen"] == list(range(20))


async def test_two_senders_racing_with_one_key_store_one_event(
    db_config: DBConfig, postgresql: Any
) -> None:
    from tests.conftest import config_for

    counts = Counts()
    await runner(db_config, approval_definition(), counts).run_workflow(suspend=True)
    others = [config_for(postgresql.info) for _ in range(4)]
    try:
        sent = await asyncio.gather(*(
            other.store.send_event("approval", "doc-1", "approval", {"ok": True}, key="once")
            for other in others
        ))  # fmt: skip
    finally:
        for other in others:
            await other.close()
    assert len({s.event.event_id for s in sent}) == 1
    assert sum(not s.duplicate for s in sent) == 1
    assert len(await db_config.store.instance_events("approval", "doc-1")) == 1


async def test_an_event_sent_while_the_step_runs_is_delivered_right_after(
    db_config: DBConfig,
) -> None:
    counts, started, release = Counts(), asyncio.Event(), asyncio.Event()
    steps = counts.steps()
    draft = steps["draft"]

    async def slow_draft(ctx: WorkflowContext) -> Any:
        started.set()
        await release.wait()
        return await draft(ctx)

    steps["draft"] = slow_draft
    machine = PersistentWorkflowStateMachine(
        db_config, approval_definition(), steps=steps, instance_id="doc-1", handle_signals=False
    )
    task = asyncio.create_task(machine.run_workflow())
    await asyncio.wait_for(started.wait(), 10)
    await db_config.store.send_event("approval", "doc-1", "approval", {"ok": True})
    release.set()
    final = await asyncio.wait_for(task, 10)
    assert final.completed and counts.calls == {"draft": 1, "publish": 1}


HOSTILE = "x'); DROP TABLE fsmflow_transitions_events; --"


async def test_hostile_event_names_keys_and_payloads_are_stored_verbatim(
    db_config: DBConfig,
) -> None:
    definition = WorkflowDefinition(
        name="hostile",
        steps=["w", "done"],
        transitions=[
            Transition("got", "w", "done", event=HOSTILE),
            Transition("end", "done", None),
        ],
    )

    def done(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        return ctx, "end"

    payload = {HOSTILE: [HOSTILE, "ünïcødé ✓", "\\u0000 is text", 2**53]}
    machine = PersistentWorkflowStateMachine(
        db_config, definition, steps={"done": done}, instance_id=HOSTILE, handle_signals=False
    )
    await machine.run_workflow(suspend=True)
    sent = await db_config.store.send_event("hostile", HOSTILE, HOSTILE, payload, key=HOSTILE)
    assert sent.event.key == HOSTILE and sent.event.payload == payload
    machine = PersistentWorkflowStateMachine(
        db_config, definition, steps={"done": done}, instance_id=HOSTILE, handle_signals=False
    )
    final = await machine.run_workflow()
    assert final.completed and final.context.data[HOSTILE] == payload
    with pytest.raises(InvalidIdentifierError):
        await db_config.store.send_event("hostile", HOSTILE, HOSTILE, {}, key="k\x00")
    with pytest.raises(InvalidIdentifierError):
        await db_config.store.send_event("hostile", HOSTILE, HOSTILE, {}, key="k" * 201)


async def test_prune_and_reset_take_the_events_with_the_instances(db_config: DBConfig) -> None:
    counts = Counts()
    await runner(db_config, approval_definition(), counts).run_workflow(suspend=True)
    await db_config.store.send_event("approval", "doc-1", "approval", {"ok": "?"})
    await runner(db_config, approval_definition(), counts, "doc-2").run_workflow(suspend=True)
    await db_config.store.send_event("approval", "doc-2", "approval", {"ok": True})
    await db_config.store.cancel_instance("approval", "doc-1")
    result = await db_config.store.prune_instances(timedelta(0))
    assert result.instances == 1
    assert await db_config.store.instance_events("approval", "doc-1") == []
    assert len(await db_config.store.instance_events("approval", "doc-2")) == 1
    await db_config.reset_db(force=True)
    assert await db_config.store.instance_events("approval", "doc-2") == []


async def test_an_initial_state_may_only_wait(db_config: DBConfig) -> None:
    definition = WorkflowDefinition(
        name="inbox",
        steps=["idle", "handle"],
        transitions=[
            Transition("got", "idle", "handle", event="mail"),
            Transition("done", "handle", None),
        ],
    )

    def handle(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        return ctx, "done"

    def machine() -> PersistentWorkflowStateMachine:
        return PersistentWorkflowStateMachine(
            db_config, definition, steps={"handle": handle}, instance_id="m", handle_signals=False
        )

    state = await machine().run_workflow({"box": 1}, suspend=True)
    assert (state.status, state.current_state, state.waiting_for) == ("waiting", "idle", ("mail",))
    assert state.wake_at is None  # no deadline: it waits for the event only
    history = await db_config.store.history("inbox", "m")
    assert [(r.seq, r.status, r.trigger) for r in history] == [
        (0, "running", None),
        (1, "waiting", "fsmflow:wait"),
    ]
    await db_config.store.send_event("inbox", "m", "mail", ["hello"])
    final = await machine().run_workflow(suspend=True)
    assert final.completed and final.context.data == {"box": 1, "mail": ["hello"]}


async def test_unmatched_events_count_towards_max_transitions(db_config: DBConfig) -> None:
    from fsmflow import TransitionLimitError

    base = approval_definition()
    definition = WorkflowDefinition(
        name=base.name, steps=base.steps, transitions=base.transitions, max_transitions=4
    )
    counts = Counts()
    await runner(db_config, definition, counts).run_workflow(suspend=True)  # seq 1 waits
    for _ in range(5):
        await db_config.store.send_event("approval", "doc-1", "approval", {"ok": "?"})
    with pytest.raises(TransitionLimitError):
        await runner(db_config, definition, counts).run_workflow(suspend=True)
    history = await db_config.store.history("approval", "doc-1")
    assert [r.status for r in history][-1] == "failed" and len(history) == 6
