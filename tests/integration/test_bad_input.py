"""Bad input through the public API against a real database (RELIABILITY.md, bad-input rows
8-15): refused before any SQL with the named error, or stored verbatim.

"Before any SQL" is checked by what the table holds afterwards: no row for an instance whose
initial context was refused, no row past the last good one when a step returns a bad context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsmflow import (
    ContextSerializationError,
    ContextTooLargeError,
    InvalidIdentifierError,
    StepFailedError,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
)
from fsmflow.model.context import encode_context
from fsmflow.model.definition import MAX_IDENTIFIER_LENGTH
from tests.unit.test_context import BAD, SENTINEL

from .reliability_support import Harness, Tracker, assert_gap_free, linear_definition

WORKFLOW = "bad_input_flow"
STATES = ("fetch", "think", "report")
DEFINITION = linear_definition(WORKFLOW, STATES)
CASES = [c[1:] for c in BAD]
IDS = [c[0] for c in BAD]


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


# -- contexts that cannot be stored ------------------------------------------------------------


@pytest.mark.parametrize(("data", "path", "reason"), CASES, ids=IDS)
async def test_unstorable_initial_context_is_refused_before_any_row(
    h: Harness, data: dict[Any, Any], path: str, reason: str
) -> None:
    tracker = Tracker()
    runner = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="c1")
    with pytest.raises(ContextSerializationError) as raised:
        await runner.run_workflow(context=data)
    assert raised.value.path == path and reason in raised.value.reason
    assert "initial context" in str(raised.value)
    assert SENTINEL not in str(raised.value)
    assert tracker.runs == {}
    assert h.rows(WORKFLOW, "c1") == []
    assert h.count() == 0


@pytest.mark.parametrize(("data", "path", "reason"), CASES, ids=IDS)
async def test_unstorable_context_returned_by_a_step_is_refused_before_its_row(
    h: Harness, data: dict[Any, Any], path: str, reason: str
) -> None:
    tracker = Tracker()
    steps: dict[str, Any] = tracker.steps(DEFINITION)

    async def think(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        ctx.data.update(data)
        return ctx, None

    steps["think"] = think
    with pytest.raises(ContextSerializationError) as raised:
        await h.runner(h.config(), DEFINITION, steps, instance_id="c2").run_workflow()
    assert raised.value.path == path and reason in raised.value.reason
    assert "step 'think'" in str(raised.value)
    assert SENTINEL not in str(raised.value)
    rows = h.rows(WORKFLOW, "c2")
    assert [(r["dest_state"], r["status"]) for r in rows] == [
        ("fetch", "running"),
        ("think", "running"),
        ("think", "failed"),  # a bug in the step fails the instance; nothing unstorable
    ]
    assert rows[-1]["context"] == rows[-2]["context"]
    assert rows[-1]["error"]["type"] == "ContextSerializationError"

    # The history is intact: retried with a fixed step, it resumes in "think".
    steps["think"] = tracker.step("think")
    runner = h.runner(h.config(), DEFINITION, steps, instance_id="c2", retry_failed=True)
    state = await runner.run_workflow()
    assert state.completed and state.context.data == {"visited": list(STATES)}
    assert tracker.runs == {"fetch": 1, "think": 1, "report": 1}


async def test_unstorable_value_put_in_a_condition_checked_context_is_refused(
    h: Harness,
) -> None:
    """The context is checked before the conditions are evaluated or anything is written."""
    definition = WorkflowDefinition(
        name=WORKFLOW,
        steps=["a", "b"],
        transitions=[Transition(trigger="go", source="a", dest="b")],
    )

    async def a(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        ctx.data["when"] = {"set"}
        return ctx, "no_such_trigger"

    steps = {"a": a, "b": Tracker().step("b")}
    with pytest.raises(ContextSerializationError, match=r"ctx\['when'\]"):
        await h.runner(h.config(), definition, steps, instance_id="c3").run_workflow()
    rows = h.rows(WORKFLOW, "c3")
    assert [(r["seq"], r["status"]) for r in rows] == [(0, "running"), (1, "failed")]
    assert rows[1]["error"]["type"] == "ContextSerializationError"  # not the trigger's error


# -- contexts over the size cap ----------------------------------------------------------------

LIMIT = 1024
FRAME = len(encode_context({"blob": ""}))


async def test_initial_context_over_the_cap_is_refused_with_sizes(h: Harness) -> None:
    config = h.config(max_context_bytes=LIMIT)
    tracker = Tracker()
    runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="big")
    with pytest.raises(ContextTooLargeError) as raised:
        await runner.run_workflow(context={"blob": "x" * (LIMIT - FRAME + 1)})
    assert (raised.value.size, raised.value.limit) == (LIMIT + 1, LIMIT)
    assert f"{LIMIT + 1} bytes" in str(raised.value) and f"{LIMIT} bytes" in str(raised.value)
    assert tracker.runs == {} and h.count() == 0

    # Exactly at the cap is fine (steps that leave the context as it is).
    async def same(ctx: WorkflowContext) -> WorkflowContext:
        return ctx

    at_cap = {"blob": "x" * (LIMIT - FRAME)}
    runner = h.runner(config, DEFINITION, dict.fromkeys(STATES, same), instance_id="big")
    state = await runner.run_workflow(context=at_cap)
    assert state.completed and state.context.data == at_cap
    assert [r["context"] for r in h.rows(WORKFLOW, "big")] == [at_cap] * 4


async def test_context_grown_over_the_cap_by_a_step_is_refused_before_its_row(
    h: Harness,
) -> None:
    config = h.config(max_context_bytes=LIMIT)
    steps: dict[str, Any] = Tracker().steps(DEFINITION)

    async def think(ctx: WorkflowContext) -> WorkflowContext:
        ctx.data["blob"] = "é" * LIMIT  # 2 bytes each in UTF-8
        return ctx

    steps["think"] = think
    with pytest.raises(ContextTooLargeError) as raised:
        await h.runner(config, DEFINITION, steps, instance_id="grow").run_workflow()
    assert raised.value.limit == LIMIT and raised.value.size > 2 * LIMIT
    assert "step 'think'" in str(raised.value)
    rows = h.rows(WORKFLOW, "grow")
    assert [(r["dest_state"], r["status"]) for r in rows][1:] == [
        ("think", "running"),
        ("think", "failed"),
    ]
    assert rows[-1]["context"] == rows[-2]["context"]  # the blob was never stored


# -- identifiers -----------------------------------------------------------------------------------

BAD_IDS: list[tuple[str, Any]] = [
    ("empty", ""),
    ("NUL", "order\x0042"),
    ("over-long", "x" * (MAX_IDENTIFIER_LENGTH + 1)),
    ("lone surrogate", "id-\ud800"),
    ("not a str", 42),
]


@pytest.mark.parametrize("instance_id", [v for _, v in BAD_IDS], ids=[i for i, _ in BAD_IDS])
async def test_bad_instance_id_is_refused_before_any_sql(h: Harness, instance_id: Any) -> None:
    with pytest.raises(InvalidIdentifierError, match="instance_id"):
        h.runner(h.config(), DEFINITION, Tracker().steps(DEFINITION), instance_id=instance_id)
    assert h.count() == 0


@pytest.mark.parametrize("name", [v for _, v in BAD_IDS[:4]], ids=[i for i, _ in BAD_IDS[:4]])
async def test_bad_workflow_name_is_refused_before_any_sql(h: Harness, name: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="workflow name"):
        linear_definition(name, STATES)
    assert h.count() == 0


async def test_longest_names_round_trip(h: Harness) -> None:
    name = "w" * (MAX_IDENTIFIER_LENGTH - 1) + "🙂"
    instance_id = "i" * (MAX_IDENTIFIER_LENGTH - 1) + "é"
    definition = linear_definition(name, STATES)
    tracker = Tracker()
    state = await h.runner(
        h.config(), definition, tracker.steps(definition), instance_id=instance_id
    ).run_workflow()
    assert (state.workflow_name, state.instance_id) == (name, instance_id)
    assert len(h.rows(name, instance_id)) == 4


# -- injection strings: stored verbatim, never executed -----------------------------------------

INJECTIONS = [
    "x'; DROP TABLE fsmflow_transitions; --",
    "Robert'); DELETE FROM fsmflow_transitions WHERE ('1'='1",
    "' OR '1'='1",
    '" OR ""="',
    "1; TRUNCATE fsmflow_transitions",
    "$1::text; SELECT pg_sleep(30)",
    "fsmflow_transitions",
    "$$ $tag$ E'\\x00' \\\\ %s %(x)s {0}",
    "*/ -- /* \n\r\t",
]


@pytest.mark.parametrize("text", INJECTIONS)
async def test_injection_strings_round_trip_verbatim(h: Harness, text: str) -> None:
    definition = linear_definition(text, STATES)
    received: list[dict[str, Any]] = []

    async def fetch(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        received.append(ctx.model_copy(deep=True).data)
        ctx.data["from_step"] = {text: [text, {"k": text}]}
        return ctx, None

    steps: dict[str, Any] = Tracker().steps(definition)
    steps["fetch"] = fetch
    seed = {text: text, "nested": {text: [text]}}
    state = await h.runner(h.config(), definition, steps, instance_id=text).run_workflow(
        context=seed
    )
    assert (state.workflow_name, state.instance_id) == (text, text)
    assert received == [seed]
    assert state.context.data[text] == text
    assert state.context.data["from_step"] == {text: [text, {"k": text}]}
    rows = h.rows(text, text)
    assert_gap_free(rows)
    assert rows[0]["context"] == seed
    assert rows[-1]["context"] == state.context.data
    assert h.count() == 4  # nothing deleted, truncated or added
    assert h.sql("SELECT to_regclass('fsmflow_transitions') IS NOT NULL") == [(True,)]

    # A failure message is stored verbatim too.
    async def failing(ctx: WorkflowContext) -> Any:
        raise RuntimeError(text)

    steps["fetch"] = failing
    runner = h.runner(h.config(), definition, steps, instance_id=f"{text}-2")
    with pytest.raises(StepFailedError):
        await runner.run_workflow()
    [_, failed] = h.rows(text, f"{text}-2")
    assert failed["status"] == "failed"
    assert failed["error"]["message"] == text
