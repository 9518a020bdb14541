"""Declaring a workflow: every DefinitionError case, raised directly and listing every problem.

No database. The run-time check (a state with no step) goes through ``run_workflow`` with
settings that point nowhere and a zero retry budget: it must fail before any SQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest

from fsmflow import (
    Condition,
    DBConfig,
    DefinitionError,
    InvalidIdentifierError,
    PersistentWorkflowStateMachine,
    RetryPolicy,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowStep,
)
from fsmflow.model.definition import MAX_IDENTIFIER_LENGTH, RESERVED_NAMES


def step(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
    return ctx, None


def build(**kwargs: Any) -> WorkflowDefinition:
    values: dict[str, Any] = {
        "name": "flow",
        "steps": ["a", "b"],
        "transitions": [Transition(trigger="next", source="a", dest="b")],
    }
    values.update(kwargs)
    return WorkflowDefinition(**values)


def problems_of(**kwargs: Any) -> list[str]:
    with pytest.raises(DefinitionError) as raised:
        build(**kwargs)
    # Raised as itself, never wrapped in pydantic's ValidationError.
    assert type(raised.value) is DefinitionError
    assert not isinstance(raised.value, pydantic.ValidationError)
    assert raised.value.workflow == "flow"
    for problem in raised.value.problems:
        assert problem in str(raised.value)
    return raised.value.problems


def test_a_sound_definition() -> None:
    definition = build(
        steps=["a", "b", "c"],
        transitions=[
            Transition(trigger="next", source="a", dest="b"),
            Transition(trigger="skip", source="a", dest="c"),
            Transition(trigger="next", source=["b"], dest="c"),
            Transition(trigger="done", source="c", dest=None),
        ],
    )
    assert definition.initial_state == "a"
    assert definition.triggers_from("a") == ["next", "skip"]
    assert definition.triggers_from("c") == ["done"]
    assert [t.describe() for t in definition.outgoing("b")] == ["next: b -> c"]
    assert (
        definition.fingerprint
        == build(steps=["a", "b", "c"], transitions=definition.transitions).fingerprint
    )


def _t(trigger: str, source: str, dest: str, *conditions: Condition) -> Transition:
    return Transition(trigger=trigger, source=source, dest=dest, conditions=list(conditions))


# (name, definition keyword arguments, fragment every expected problem contains)
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "unknown source": (
        {"transitions": [_t("next", "a", "b"), _t("back", "x", "a")]},
        ["source 'x' is not a state", "'back'"],
    ),
    "unknown source in a list": (
        {"transitions": [Transition(trigger="next", source=["a", "y"], dest="b")]},
        ["source 'y' is not a state"],
    ),
    "no source": (
        {"transitions": [_t("next", "a", "b"), Transition(trigger="back", source=[], dest="a")]},
        ["no source state"],
    ),
    "unknown dest": (
        {
            "transitions": [
                Transition(trigger="next", source="a", dest="b"),
                Transition(trigger="jump", source="b", dest="zzz"),
            ]
        },
        ["dest 'zzz' is not a state", "'jump'"],
    ),
    "duplicate state": ({"steps": ["a", "b", "a"]}, ["duplicate state 'a'"]),
    "no states": ({"steps": [], "transitions": []}, ["no states"]),
    "initial not a state": ({"initial": "q"}, ["initial state 'q' is not among the states"]),
    "unknown operator": (
        {
            "transitions": [
                Transition(
                    trigger="next",
                    source="a",
                    dest="b",
                    conditions=[Condition(field="x", operator="equals", value=1)],
                )
            ]
        },
        ["unknown operator 'equals'", "condition on 'x'"],
    ),
    "custom without function": (
        {
            "transitions": [
                Transition(
                    trigger="next",
                    source="a",
                    dest="b",
                    conditions=[Condition(field="x", operator="custom")],
                )
            ]
        },
        ["custom_function"],
    ),
    "invalid regex": (
        {
            "transitions": [
                Transition(
                    trigger="next",
                    source="a",
                    dest="b",
                    conditions=[Condition(field="x", operator="matches", value="(unclosed")],
                )
            ]
        },
        ["invalid regex"],
    ),
    "unreachable state": (
        {"steps": ["a", "b", "orphan"]},
        ["state 'orphan' is unreachable from initial state 'a'"],
    ),
    "unreachable from a given initial": (
        {"initial": "b"},
        ["state 'a' is unreachable from initial state 'b'"],
    ),
    "state not an identifier": (
        {
            "steps": ["a", "b-c"],
            "transitions": [Transition(trigger="next", source="a", dest="b-c")],
        },
        ["state 'b-c' is not a Python identifier"],
    ),
    "state is a keyword": (
        {
            "steps": ["a", "class"],
            "transitions": [Transition(trigger="next", source="a", dest="class")],
        },
        ["state 'class' is not a Python identifier"],
    ),
    "state starts with underscore": (
        {
            "steps": ["a", "_b"],
            "transitions": [Transition(trigger="next", source="a", dest="_b")],
        },
        ["state '_b' must not start with '_'"],
    ),
    "trigger not an identifier": (
        {"transitions": [Transition(trigger="go on", source="a", dest="b")]},
        ["trigger 'go on' is not a Python identifier"],
    ),
    "trigger is empty": (
        {"transitions": [Transition(trigger="", source="a", dest="b")]},
        ["trigger '' is not a Python identifier"],
    ),
    "trigger is a keyword": (
        {"transitions": [Transition(trigger="pass", source="a", dest="b")]},
        ["trigger 'pass' is not a Python identifier"],
    ),
    "trigger starts with underscore": (
        {"transitions": [Transition(trigger="_next", source="a", dest="b")]},
        ["must not start with '_'"],
    ),
    "trigger clashes with is_<state>": (
        {"transitions": [Transition(trigger="is_b", source="a", dest="b")]},
        ["clashes"],
    ),
    "trigger clashes with may_<trigger>": (
        {"transitions": [Transition(trigger="may_go", source="a", dest="b")]},
        ["clashes"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_definition_error(case: str) -> None:
    kwargs, fragments = CASES[case]
    problems = problems_of(**kwargs)
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0]


def runner_attributes() -> list[str]:
    """Every public attribute of a runner instance: a trigger named so would clash."""
    config = DBConfig(_env_file=None, host="/nonexistent")  # type: ignore[call-arg]
    runner = PersistentWorkflowStateMachine(config, build(), handle_signals=False)
    return sorted({n for n in dir(runner) if not n.startswith("_")} | set(RESERVED_NAMES))


@pytest.mark.parametrize("name", runner_attributes())
def test_trigger_clashing_with_a_runner_attribute(name: str) -> None:
    problems = problems_of(transitions=[Transition(trigger=name, source="a", dest="b")])
    assert any("clash" in p and repr(name) in p for p in problems), problems


def test_every_problem_is_listed_at_once() -> None:
    problems = problems_of(
        steps=["a", "b", "a", "orphan", "bad-name"],
        initial=None,
        transitions=[
            Transition(trigger="next", source="a", dest="b"),
            Transition(trigger="next", source="nowhere", dest="b"),
            Transition(trigger="jump", source="b", dest="void"),
            Transition(trigger="state", source="b", dest="a"),
            Transition(
                trigger="check",
                source="b",
                dest="a",
                conditions=[
                    Condition(field="x", operator="bogus"),
                    Condition(field="y", operator="custom"),
                    Condition(field="z", operator="matches", value="[unclosed"),
                ],
            ),
        ],
    )
    expected = [
        "duplicate state 'a'",
        "state 'bad-name' is not a Python identifier",
        "source 'nowhere' is not a state",
        "dest 'void' is not a state",
        "trigger 'state' clashes",
        "unknown operator 'bogus'",
        "operator 'custom' needs custom_function",
        "invalid regex",
        "state 'orphan' is unreachable",
        "state 'bad-name' is unreachable",
    ]
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected)


def test_definition_error_from_model_validate_is_not_wrapped() -> None:
    with pytest.raises(DefinitionError) as raised:
        WorkflowDefinition.model_validate(
            {
                "name": "flow",
                "steps": ["a"],
                "transitions": [{"trigger": "next", "source": "a", "dest": "b"}],
            }
        )
    assert raised.value.problems == ["transition #0 ('next'): dest 'b' is not a state"]


@pytest.mark.parametrize(
    "name",
    ["", "a\x00b", "x" * (MAX_IDENTIFIER_LENGTH + 1), "lone \ud800 surrogate"],
    ids=["empty", "NUL", "over-long", "lone surrogate"],
)
def test_invalid_workflow_name(name: str) -> None:
    with pytest.raises(InvalidIdentifierError) as raised:
        build(name=name)
    assert "workflow name" in str(raised.value)


@pytest.mark.parametrize(
    "name", ["x" * MAX_IDENTIFIER_LENGTH, "order flow (v2)", "'; DROP TABLE x; --", "ünï 🙂"]
)
def test_workflow_names_need_not_be_identifiers(name: str) -> None:
    assert build(name=name).name == name


def test_definitions_are_frozen() -> None:
    definition = build()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        definition.name = "other"  # type: ignore[misc]


def test_fingerprint_changes_with_the_graph_only() -> None:
    base = build()
    assert build().fingerprint == base.fingerprint
    changed = [
        build(steps=["a", "b", "c"], transitions=[*base.transitions, _t("more", "b", "c")]),
        build(transitions=[_t("go", "a", "b")]),
        build(transitions=[_t("next", "a", "b", Condition(field="f", operator="is_none"))]),
        build(
            transitions=[Transition(trigger="next", source="a", dest="b")],
            steps=["b", "a"],
            initial="a",
        ),
    ]
    assert len({base.fingerprint, *(d.fingerprint for d in changed)}) == len(changed) + 1


# -- at run time -----------------------------------------------------------------------


@pytest.fixture
async def nowhere() -> AsyncIterator[DBConfig]:
    """Settings for a server that does not exist: any SQL would fail (not retried)."""
    config = DBConfig(  # type: ignore[call-arg]
        _env_file=None, host="/nonexistent-fsmflow-socket-dir", retry_budget=0
    )
    yield config
    await config.close()


@pytest.mark.parametrize(
    ("steps", "fragments"),
    [
        ({"a": step}, ["state 'b' has no step"]),
        ({}, ["state 'a' has no step", "state 'b' has no step"]),
        ({"a": step, "b": step, "c": step}, ["step 'c' is not a state of the workflow"]),
        (
            {"a": step, "b": WorkflowStep(name="a", execute=step)},
            ["step for state 'b' is named 'a'"],
        ),
        ([WorkflowStep(name="a", execute=step)], ["state 'b' has no step"]),
    ],
    ids=["one missing", "none", "extra step", "misnamed step", "list of steps"],
)
async def test_steps_checked_before_any_sql(
    nowhere: DBConfig, steps: Any, fragments: list[str]
) -> None:
    runner = PersistentWorkflowStateMachine(
        nowhere, build(), steps=steps, instance_id="i1", handle_signals=False
    )
    with pytest.raises(DefinitionError) as raised:
        await runner.run_workflow()
    assert type(raised.value) is DefinitionError
    # Any SQL against "nowhere" would have raised a StoreError instead.
    assert sorted(raised.value.problems) == sorted(fragments)


def test_steps_accept_functions_step_objects_and_lists() -> None:
    config = DBConfig(_env_file=None, host="/nonexistent")  # type: ignore[call-arg]
    runner = PersistentWorkflowStateMachine(config, build(), steps={"a": step, "b": step})
    assert {n: s.name for n, s in runner.steps.items()} == {"a": "a", "b": "b"}
    runner.steps = [WorkflowStep(name="b", execute=step), WorkflowStep(name="a", execute=step)]
    assert set(runner.steps) == {"a", "b"}
    assert all(s.execute is step for s in runner.steps.values())


# -- positional arguments, as the README documents them ---------------------------------


def test_documented_positional_arguments_are_accepted() -> None:
    retry = RetryPolicy(max_attempts=3)
    assert WorkflowStep("a", step, retry) == WorkflowStep(name="a", execute=step, retry=retry)
    condition = Condition("order.total", "gt", 0)
    assert condition == Condition(field="order.total", operator="gt", value=0)
    transition = Transition("next", "a", "b", [condition])
    assert transition == Transition(trigger="next", source="a", dest="b", conditions=[condition])
    definition = WorkflowDefinition("flow", ["a", "b"], [transition])
    assert definition.summary() == build(transitions=[transition]).summary()
    assert definition.name == "flow" and definition.initial_state == "a"


def test_keywords_and_defaults_still_work() -> None:
    assert Condition(field="f").operator == "eq"
    assert Condition("f", "is_none").value is None
    assert Transition("done", source="a").dest is None
    assert Transition("done", source="a").conditions == []
    assert WorkflowStep("a", step).retry is None
    definition = WorkflowDefinition("flow", steps=["a"])
    assert definition.transitions == [] and definition.default_retry == RetryPolicy()


def test_positional_arguments_are_still_validated() -> None:
    with pytest.raises(pydantic.ValidationError):
        Condition(3, "eq")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="dest 'z' is not a state"):
        WorkflowDefinition("flow", ["a"], [Transition("next", "a", "z")])


# -- the loop limit ------------------------------------------------------------------------


def test_max_transitions_has_a_generous_default() -> None:
    assert build().max_transitions == 10_000
    assert build(max_transitions=1).max_transitions == 1


@pytest.mark.parametrize("limit", [0, -5])
def test_max_transitions_must_be_positive(limit: int) -> None:
    with pytest.raises(DefinitionError, match="max_transitions"):
        build(max_transitions=limit)


def test_max_transitions_is_not_part_of_the_fingerprint() -> None:
    assert build(max_transitions=3).fingerprint == build().fingerprint
    assert "max_transitions" not in json.dumps(build(max_transitions=3).summary())


# -- a workflow name that is not a str ----------------------------------------------------


@pytest.mark.parametrize("name", [123, None, b"flow", ["flow"]], ids=repr)
def test_a_non_str_workflow_name_is_an_invalid_identifier(name: Any) -> None:
    with pytest.raises(InvalidIdentifierError, match="workflow name must be a str"):
        WorkflowDefinition(name=name, steps=["a"])
    with pytest.raises(InvalidIdentifierError, match="workflow name must be a str"):
        WorkflowDefinition.model_validate({"name": name, "steps": ["a"]})
