"""Typed state against a real PostgreSQL: a workflow with a pydantic ``state_model``, its
steps (sync and async), seeds, refusals of invalid states (nothing of them stored), and
versioned upgrades of instances stored under older versions, on resume, fork and the fleet.

A "crash" is in-process, as in test_runner: a step raises a BaseException that no library
code catches, and a runner on fresh settings (a new "process") resumes the instance.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from pydantic import BaseModel

from fsmflow import (
    Condition,
    ContextSerializationError,
    DBConfig,
    PersistentWorkflowStateMachine,
    StateValidationError,
    StateVersionError,
    Transition,
    Worker,
    Workflow,
    WorkflowDefinition,
)
from fsmflow.cli.output import history_table, record_json

SECRET = "s3cr3t-value"  # a value no message may show


class Crash(BaseException):
    """Stands for the process dying: nothing in fsmflow catches it."""


class Ticket(BaseModel):
    subject: str
    priority: int = 0
    notes: list[str] = []
    resolved: bool = False


TRANSITIONS = [
    Transition("urgent", "triage", "escalate", conditions=[Condition("priority", "ge", 5)]),
    Transition("normal", "triage", "answer"),
    Transition("escalated", "escalate", "answer"),
    Transition("done", "answer", None),
]
STATES = ["triage", "escalate", "answer"]


def ticket_definition(**typed: Any) -> WorkflowDefinition:
    return WorkflowDefinition(
        "typed_ticket", STATES, TRANSITIONS, **{"state_model": Ticket, **typed}
    )


def ticket_steps(calls: list[str]) -> dict[str, Any]:
    def triage(state: Ticket) -> Ticket:  # sync: runs on a thread; conditions choose
        assert isinstance(state, Ticket)
        calls.append("triage")
        state.notes.append("triaged")
        return state

    async def escalate(state: Ticket) -> tuple[Ticket, str | None]:
        calls.append("escalate")
        return state.model_copy(update={"notes": [*state.notes, "escalated"]}), "escalated"

    async def answer(state: Ticket) -> tuple[Ticket, str]:
        calls.append("answer")
        state.resolved = True
        return state, "done"

    return {"triage": triage, "escalate": escalate, "answer": answer}


def runner(db: DBConfig, definition: WorkflowDefinition, steps: Any, instance_id: str) -> Any:
    return PersistentWorkflowStateMachine(
        db, definition, steps=steps, instance_id=instance_id, handle_signals=False
    )


async def test_typed_steps_sync_and_async_conditions_and_the_final_model(
    db_config: DBConfig,
) -> None:
    calls: list[str] = []
    seed = Ticket(subject="printer on fire", priority=7)
    result = await runner(db_config, ticket_definition(), ticket_steps(calls), "t-1").run_workflow(
        seed
    )
    assert calls == ["triage", "escalate", "answer"]  # priority >= 5 read from the JSON form
    assert isinstance(result.state, Ticket)
    assert result.state == Ticket(
        subject="printer on fire", priority=7, notes=["triaged", "escalated"], resolved=True
    )
    assert result.context.data == result.state.model_dump(mode="json")
    history = await db_config.store.history("typed_ticket", "t-1")
    assert [r.state_version for r in history] == [1, 1, 1, 1]
    assert history[0].context == seed.model_dump(mode="json")  # the model's JSON, stored

    low = await runner(db_config, ticket_definition(), ticket_steps(calls), "t-2").run_workflow(
        {"subject": "question"}  # a dict seed is validated and stored with the defaults
    )
    assert isinstance(low.state, Ticket) and low.state.notes == ["triaged"]
    first = await db_config.store.record_at("typed_ticket", "t-2", 0)
    assert first is not None and first.context == Ticket(subject="question").model_dump()

    done = await runner(db_config, ticket_definition(), ticket_steps(calls), "t-1").run_workflow()
    assert done.state == result.state  # an ended instance: its final model again


async def test_untyped_rows_store_no_state_version(db_config: DBConfig) -> None:
    definition = WorkflowDefinition("plain", ["only"], [Transition("end", "only", None)])
    result = await runner(db_config, definition, {"only": lambda c: (c, "end")}, "p").run_workflow(
        {"a": 1}
    )
    assert result.state is None and result.context.data == {"a": 1}
    history = await db_config.store.history("plain", "p")
    assert [r.state_version for r in history] == [None, None]


async def test_an_invalid_seed_is_refused_and_nothing_is_written(db_config: DBConfig) -> None:
    machine = runner(db_config, ticket_definition(), ticket_steps([]), "bad-seed")
    with pytest.raises(StateValidationError) as refused:
        await machine.run_workflow({"priority": SECRET})
    message = str(refused.value)
    assert "subject: missing" in message and "priority: int_parsing" in message
    assert SECRET not in message and "Ticket" in message
    assert await db_config.store.last_record("typed_ticket", "bad-seed") is None

    class Other(BaseModel):
        subject: str = "x"

    with pytest.raises(ContextSerializationError, match="an instance of Ticket"):
        await machine.run_workflow(Other())
    with pytest.raises(StateValidationError, match="subject: missing"):
        await machine.run_workflow()  # no seed: the model's defaults must do, and do not
    assert await db_config.store.last_record("typed_ticket", "bad-seed") is None


@pytest.mark.parametrize("how", ["invalid field", "not the model", "bad trigger"])
async def test_a_step_returning_an_invalid_state_fails_before_it_is_stored(
    db_config: DBConfig, how: str
) -> None:
    steps = ticket_steps([])

    def triage(state: Ticket) -> Any:
        if how == "invalid field":
            state.priority = SECRET  # type: ignore[assignment]  # assignment is not validated
            return state
        if how == "not the model":
            return state.model_dump()
        return state, 42

    steps["triage"] = triage
    machine = runner(db_config, ticket_definition(), steps, "bad-step")
    with pytest.raises(StateValidationError) as refused:
        await machine.run_workflow(Ticket(subject="s"))
    message = str(refused.value)
    assert "'typed_ticket'" in message and "'bad-step'" in message and "'triage'" in message
    assert SECRET not in message
    expected = {"invalid field": "priority: int_parsing", "not the model": "a dict, not a Ticket",
                "bad trigger": "(the trigger): a int"}[how]  # fmt: skip
    assert expected in message
    history = await db_config.store.history("typed_ticket", "bad-step")
    assert [r.status for r in history] == ["running", "failed"]
    assert all(SECRET not in str(r.context) for r in history)
    assert history[1].context == history[0].context  # the failed row keeps the last good state
    assert history[1].error is not None and SECRET not in str(history[1].error)


# -- versioned upgrades --------------------------------------------------------------------


class TicketV1(BaseModel):
    name: str  # renamed to subject in version 2
    priority: int = 0
    notes: str = ""  # comma-separated; a list from version 3
    resolved: bool = False


class TicketV2(BaseModel):
    subject: str
    priority: int = 0
    notes: str = ""
    resolved: bool = False


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["subject"] = data.pop("name")
    return data


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "notes": [n for n in data["notes"].split(",") if n]}


def versioned(version: int) -> WorkflowDefinition:
    if version == 1:
        return ticket_definition(state_model=TicketV1)
    if version == 2:
        return ticket_definition(state_model=TicketV2, state_version=2, upgrades={1: v1_to_v2})
    return ticket_definition(state_version=3, upgrades={1: v1_to_v2, 2: v2_to_v3})


def string_steps(calls: list[str], crash_in: str | None) -> dict[str, Any]:
    """Steps of versions 1 and 2 (notes a string); ``crash_in`` dies at its start."""

    def make(name: str, trigger: str | None) -> Any:
        def step(state: Any) -> Any:
            if name == crash_in:
                raise Crash
            calls.append(name)
            state.notes = f"{state.notes},{name}" if state.notes else name
            return state, trigger

        return step

    return {"triage": make("triage", None), "escalate": make("escalate", "escalated"),
            "answer": make("answer", "done")}  # fmt: skip


async def crash_under(db: DBConfig, version: int, crash_in: str, seed: Any = None) -> None:
    machine = runner(db, versioned(version), string_steps([], crash_in), "up")
    with pytest.raises(Crash):
        await asyncio.wait_for(machine.run_workflow(seed), 60)


async def test_rows_of_versions_1_and_2_resume_under_version_3(db_config: DBConfig) -> None:
    await crash_under(db_config, 1, "escalate", TicketV1(name="disk full", priority=9))
    await crash_under(db_config, 2, "answer")
    before = await db_config.store.history("typed_ticket", "up")
    assert [r.state_version for r in before] == [1, 1, 2]
    assert before[2].context["subject"] == "disk full" and "name" not in before[2].context

    calls: list[str] = []
    result = await runner(db_config, versioned(3), ticket_steps(calls), "up").run_workflow()
    assert calls == ["answer"]
    assert result.state == Ticket(
        subject="disk full", priority=9, notes=["triage", "escalate"], resolved=True
    )
    after = await db_config.store.history("typed_ticket", "up")
    assert [r.state_version for r in after] == [1, 1, 2, 3]
    assert [r.context for r in after[:3]] == [r.context for r in before]  # never rewritten

    shown = history_table(after).splitlines()  # fsmflow show: a V column, one version a row
    assert shown[0].split()[-2:] == ["V", "CONTEXT"]
    assert [line.split()[-5] for line in shown[1:]] == ["1", "1", "2", "3"]
    assert [record_json(r, with_context=False)["state_version"] for r in after] == [1, 1, 2, 3]
    plain = await db_config.store.history("typed_ticket", "up")
    assert " V " not in history_table([replace(r, state_version=None) for r in plain])


async def test_a_newer_stored_version_or_a_broken_upgrade_is_refused_with_nothing_written(
    db_config: DBConfig,
) -> None:
    await crash_under(db_config, 2, "escalate", TicketV2(subject="s", priority=9))
    rows = len(await db_config.store.history("typed_ticket", "up"))
    with pytest.raises(StateVersionError) as newer:
        await runner(db_config, versioned(1), string_steps([], None), "up").run_workflow()
    assert "state_version 2, the code's is 1" in str(newer.value) and "'up'" in str(newer.value)

    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(SECRET)

    for upgrade, expected in [(broken, "upgrades[2] (version 2 -> 3) raised ValueError"),
                              (lambda d: [d], "upgrades[2] returned a list, not a dict"),
                              (lambda d: {**d, "notes": 3}, "notes: list_type")]:  # fmt: skip
        definition = ticket_definition(state_version=3, upgrades={1: v1_to_v2, 2: upgrade})
        machine = runner(db_config, definition, ticket_steps([]), "up")
        with pytest.raises(StateVersionError) as refused:
            await machine.run_workflow()
        assert expected in str(refused.value) and SECRET not in str(refused.value)
    assert len(await db_config.store.history("typed_ticket", "up")) == rows


async def test_a_fork_onto_version_3_upgrades_the_state(db_config: DBConfig) -> None:
    await crash_under(db_config, 1, "escalate", TicketV1(name="old", priority=9, notes="a,b"))
    store = db_config.store
    copied = await store.fork_instance("typed_ticket", "up", new_instance_id="copy")
    assert copied.state_version == 1 and copied.context["name"] == "old"  # as stored
    forked = await store.fork_instance(
        "typed_ticket", "up", new_instance_id="moved", definition=versioned(3),
        overrides={"priority": 1},
    )  # fmt: skip
    assert forked.state_version == 3
    assert (
        forked.context == Ticket(subject="old", priority=1, notes=["a", "b", "triage"]).model_dump()
    )
    result = await runner(db_config, versioned(3), ticket_steps([]), "moved").run_workflow()
    assert isinstance(result.state, Ticket) and result.state.notes[-1] == "escalated"
    with pytest.raises(StateValidationError, match="priority: int_parsing"):
        await store.fork_instance("typed_ticket", "up", definition=versioned(3),
                                  overrides={"priority": SECRET})  # fmt: skip


async def test_the_fleet_runs_a_typed_workflow_submitted_with_its_model(
    db_config: DBConfig,
) -> None:
    calls: list[str] = []
    workflow = Workflow(ticket_definition(), ticket_steps(calls))
    store = db_config.store
    await store.submit(workflow, Ticket(subject="fleet", priority=9), instance_id="f-1")
    with pytest.raises(StateValidationError, match="subject: missing"):
        await store.submit(workflow, {"priority": 1}, instance_id="f-2")
    assert await store.last_record("typed_ticket", "f-2") is None

    worker = Worker(db_config, [workflow], concurrency=1)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(600):  # bounds a hang only: waits for the observable completion
            last = await store.last_record("typed_ticket", "f-1")
            if last is not None and last.status == "completed":
                break
            assert not task.done(), task.result()
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
    await asyncio.wait_for(task, 30)
    history = await store.history("typed_ticket", "f-1")
    assert history[-1].status == "completed" and {r.state_version for r in history} == {1}
    assert history[-1].context["resolved"] is True and calls == ["triage", "escalate", "answer"]
