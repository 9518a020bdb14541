"""The definition fingerprint: the same definition gives the same fingerprint in every
process (whatever PYTHONHASHSEED), and instances stored with the 0.1 fingerprint resume.

No database. The cross-seed checks run real interpreters with different hash seeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from fsmflow import Condition, Transition, WorkflowDefinition
from fsmflow.engine.resuming import same_definition, summaries_match
from fsmflow.model.definition import diff_summaries
from fsmflow.model.records import TransitionRecord
from tests.conftest import ROOT

# Builds, in a child process, a definition whose conditions hold sets (whose iteration order
# depends on the hash seed), nested in tuples and dicts; prints fingerprint and summary.
CHILD = """
import json
from fsmflow import Condition, Transition, WorkflowDefinition
from fsmflow.model.definition import diff_summaries
values = {"critical", "high", "urgent", "p0", "p1", "sev1", "sev2", "blocker"}
definition = WorkflowDefinition(
    name="triage",
    steps=["inbox", "page", "queue"],
    transitions=[
        Transition(trigger="route", source="inbox", dest="page", conditions=[
            Condition(field="severity", operator="in", value=values),
            Condition(field="tags", operator="not_in", value=(frozenset(values), {"k": values})),
        ]),
        Transition(trigger="route", source="inbox", dest="queue"),
    ],
)
print(json.dumps({"fingerprint": definition.fingerprint, "summary": definition.summary()}))
"""


def in_child(seed: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_fingerprint_and_summary_are_the_same_under_every_hash_seed() -> None:
    results = [in_child(seed) for seed in (0, 1, 2, 3, 7, 42)]
    assert len({r["fingerprint"] for r in results}) == 1, results
    assert len({json.dumps(r["summary"]) for r in results}) == 1


def test_sets_are_summarized_sorted_and_tuples_as_lists() -> None:
    condition = Condition(field="f", operator="in", value=({"b", "a"}, ("x", 1)))
    assert condition.summary() == {
        "field": "f",
        "operator": "in",
        "value": [{"$set": ["a", "b"]}, ["x", 1]],
    }
    assert condition.describe() == "f in [{'a', 'b'}, ['x', 1]]"


def test_equal_sets_give_equal_fingerprints_and_different_sets_differ() -> None:
    def with_value(value: Any) -> WorkflowDefinition:
        condition = Condition(field="f", operator="in", value=value)
        return WorkflowDefinition(
            name="w",
            steps=["a", "b"],
            transitions=[Transition(trigger="go", source="a", dest="b", conditions=[condition])],
        )

    one = with_value({"x", "y", "z"})
    assert with_value({"z", "y", "x"}).fingerprint == one.fingerprint
    assert with_value({"x", "y"}).fingerprint != one.fingerprint
    assert with_value(["x", "y", "z"]).fingerprint != one.fingerprint


# -- instances stored by fsmflow 0.1 -------------------------------------------------------


def legacy_fingerprint(definition: WorkflowDefinition) -> str:
    """fsmflow 0.1's algorithm, re-implemented here: sha256 of the summary whose conditions
    are ``field operator repr(value)`` strings."""
    return hashlib.sha256(
        json.dumps(legacy_summary(definition), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:16]


def legacy_summary(definition: WorkflowDefinition, *, order: Any = None) -> dict[str, Any]:
    def describe(c: Condition) -> str:
        if c.operator in {"is_none", "is_not_none", "is_empty", "is_not_empty"}:
            return f"{c.field} {c.operator}"
        value = c.value if order is None else order(c.value)
        return f"{c.field} {c.operator} {value!r}"

    return {
        "states": list(definition.steps),
        "initial": definition.initial_state,
        "transitions": [
            {
                "trigger": t.trigger,
                "source": list(t.sources),
                "dest": t.dest,
                "conditions": [describe(c) for c in t.conditions],
            }
            for t in definition.transitions
        ],
    }


class Shuffled(set[str]):
    """A set whose repr lists its items reversed-sorted, as another hash seed may have."""

    def __repr__(self) -> str:
        return "{" + ", ".join(repr(v) for v in sorted(self, reverse=True)) + "}"


def triage(value: Any) -> WorkflowDefinition:
    return WorkflowDefinition(
        name="triage",
        steps=["inbox", "page", "queue"],
        transitions=[
            Transition(
                trigger="route",
                source="inbox",
                dest="page",
                conditions=[
                    Condition(field="severity", operator="in", value=value),
                    Condition(field="owner", operator="is_not_none"),
                ],
            ),
            Transition(trigger="route", source="inbox", dest="queue"),
        ],
    )


def first_row(fingerprint: str, summary: dict[str, Any] | None) -> TransitionRecord:
    return TransitionRecord(
        workflow_name="triage",
        instance_id="i-1",
        seq=0,
        trigger=None,
        source_state=None,
        dest_state="inbox",
        context={},
        status="running",
        created_at=datetime.now(UTC),
        fingerprint=fingerprint,
        definition=summary,
    )


async def no_first_row(workflow: str, instance_id: str, seq: int) -> TransitionRecord | None:
    raise AssertionError("seq 0 must not be read when the fingerprint decides")


async def test_a_legacy_fingerprint_of_the_same_definition_is_accepted() -> None:
    definition = triage(["critical", "high"])  # no set: the 0.1 fingerprint is reproducible
    legacy = legacy_fingerprint(definition)
    assert legacy != definition.fingerprint
    assert await same_definition(definition, first_row(legacy, None), no_first_row)


async def test_a_legacy_summary_with_another_set_order_is_accepted() -> None:
    definition = triage({"critical", "high"})
    stored = json.loads(json.dumps(legacy_summary(definition, order=Shuffled)))
    assert "severity in {'high', 'critical'}" in stored["transitions"][0]["conditions"]
    row = first_row("0123456789abcdef", stored)  # a fingerprint from another hash seed
    assert summaries_match(stored, definition)
    assert await same_definition(definition, row, no_first_row)


async def test_a_legacy_summary_is_read_from_seq_0_for_a_later_row() -> None:
    definition = triage({"critical", "high"})
    stored = json.loads(json.dumps(legacy_summary(definition, order=Shuffled)))
    first = first_row("0123456789abcdef", stored)
    later = TransitionRecord(**{**_fields(first), "seq": 3, "definition": None})

    async def read_first(workflow: str, instance_id: str, seq: int) -> TransitionRecord | None:
        assert (workflow, instance_id, seq) == ("triage", "i-1", 0)
        return first

    assert await same_definition(definition, later, read_first)


@pytest.mark.parametrize(
    "changed",
    [{"critical"}, {"critical", "high", "low"}, ["critical", "high"]],
    ids=["fewer", "more", "a list"],
)
async def test_a_really_changed_definition_is_still_refused(changed: Any) -> None:
    stored = json.loads(json.dumps(legacy_summary(triage({"critical", "high"}), order=Shuffled)))
    definition = triage(changed)
    row = first_row("0123456789abcdef", stored)
    assert not summaries_match(stored, definition)
    assert not await same_definition(definition, row, no_first_row)


def _fields(record: TransitionRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}  # type: ignore[attr-defined]


def test_a_new_summary_matches_itself_after_a_json_round_trip() -> None:
    definition = triage({"critical", "high"})
    assert summaries_match(json.loads(json.dumps(definition.summary())), definition)
    assert not summaries_match(None, definition)


def test_the_change_message_reads_the_same_from_a_legacy_and_a_new_summary() -> None:
    old = triage({"critical", "high"})
    new = triage({"critical"})
    legacy = json.loads(json.dumps(legacy_summary(old, order=Shuffled)))
    changes = diff_summaries(legacy, new.summary())
    assert changes == [
        "transition removed: route: inbox -> page if severity in {'high', 'critical'} "
        "and owner is_not_none",
        "transition added: route: inbox -> page if severity in {'critical'} and owner is_not_none",
    ]
    assert diff_summaries(old.summary(), new.summary())[0].endswith(
        "if severity in {'critical', 'high'} and owner is_not_none"
    )
