"""Declaring waits: event and timeout transitions, their validation and fingerprint."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fsmflow import (
    Condition,
    DefinitionError,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowStep,
)
from fsmflow.engine.steps import check_steps


def build(*transitions: Transition, steps: list[str] | None = None) -> WorkflowDefinition:
    return WorkflowDefinition(
        name="w", steps=steps or ["a", "b", "c"], transitions=list(transitions)
    )


def problems(*transitions: Transition, steps: list[str] | None = None) -> list[str]:
    with pytest.raises(DefinitionError) as raised:
        build(*transitions, steps=steps)
    return raised.value.problems


def test_timeout_is_seconds_from_a_timedelta_or_a_number() -> None:
    assert Transition("t", "a", "b", timeout=timedelta(hours=48)).timeout == 172800.0
    assert Transition("t", "a", "b", timeout=5).timeout == 5.0
    with pytest.raises(TypeError, match=r"timeout must be a datetime\.timedelta"):
        Transition("t", "a", "b", timeout="48h")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Transition("t", "a", "b", timeout=True)


@pytest.mark.parametrize(
    ("transition", "fragment"),
    [
        (Transition("t", "a", "b", event="e", timeout=1), "has both event='e' and timeout=1"),
        (Transition("t", "a", "b", timeout=-1), "timeout=-1.0 must be a finite number"),
        (Transition("t", "a", "b", timeout=float("nan")), "must be a finite number"),
        (Transition("t", "a", "b", timeout=float("inf")), "must be a finite number"),
        (Transition("t", "a", "b", event=""), "event name must not be empty"),
        (Transition("t", "a", "b", event="a\x00b"), "NUL"),
        (Transition("t", "a", "b", event="payment.ok"), "contains '.'"),
        (Transition("t", "a", "b", event="x" * 201), "limit is 200"),
        (Transition("t", "a", "b", event=7), "event must be a str, not int"),  # type: ignore[arg-type]
    ],
)
def test_bad_waits_are_definition_errors(transition: Transition, fragment: str) -> None:
    found = problems(Transition("go", "b", "c"), transition)
    assert any(fragment in p for p in found), found


def test_a_trigger_of_one_source_is_of_one_kind() -> None:
    found = problems(
        Transition("next", "a", "b"),
        Transition("next", "a", "c", event="e"),
        Transition("go", "b", "c"),
    )
    assert any("trigger 'next' from state 'a' is used by" in p for p in found), found
    found = problems(
        Transition("next", "a", "b", event="e"),
        Transition("next", "a", "c", event="f"),
        Transition("go", "b", "c"),
    )
    assert any("event 'e' and event 'f'" in p for p in found), found


def test_event_transitions_may_share_an_event_name_and_a_trigger() -> None:
    ok = Condition(field="e.ok", operator="eq", value=True)
    no = Condition(field="e.ok", operator="eq", value=False)
    definition = build(
        Transition("yes", "a", "b", event="e", conditions=[ok]),
        Transition("no", "a", "c", event="e", conditions=[no]),
        Transition("later", "a", "c", timeout=10),
        Transition("go", "b", "c"),
    )
    assert definition.awaited_events("a") == ("e",)
    assert definition.declared_events == ("e",)
    assert definition.is_wait_state("a") and not definition.is_wait_state("b")
    assert [t.trigger for t in definition.waits_from("a")] == ["yes", "no", "later"]
    assert definition.ordinary_from("a") == ()


def test_a_pure_wait_state_needs_no_step_and_others_still_do() -> None:
    definition = build(
        Transition("go", "a", "b"),
        Transition("woke", "b", "c", timeout=1),
    )
    check_steps(definition, {"a": _step("a"), "c": _step("c")})
    with pytest.raises(DefinitionError, match="state 'a' has no step"):
        check_steps(definition, {"c": _step("c")})


def test_fingerprints_of_definitions_without_waits_are_unchanged() -> None:
    # The fingerprint of a definition without waits is what fsmflow stored before waits
    # existed (no "event"/"timeout" keys), so running instances keep resuming.
    definition = build(Transition("go", "a", "b"), Transition("on", "b", "c"))
    summary = definition.summary()
    assert all("event" not in t and "timeout" not in t for t in summary["transitions"])
    waiting = build(Transition("go", "a", "b"), Transition("on", "b", "c", event="e"))
    assert waiting.fingerprint != definition.fingerprint
    assert waiting.summary()["transitions"][1]["event"] == "e"


def test_describe_names_the_wait() -> None:
    assert Transition("t", "a", "b", event="approval").describe() == (
        "t: a -> b on event 'approval'"
    )
    assert Transition("t", "a", None, timeout=90).describe() == "t: a -> (complete) after 90 s"


def _step(name: str) -> WorkflowStep:
    def run(ctx: WorkflowContext) -> WorkflowContext:
        return ctx

    return WorkflowStep(name, run)
