"""Every allowed field type of a typed state against a real PostgreSQL: a workflow whose
state holds them all is seeded, changed by a step, resumed by a new runner, and the stored
jsonb and the final model are exactly what was saved."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from fsmflow import DBConfig, PersistentWorkflowStateMachine, Transition, WorkflowDefinition
from tests.unit.test_state_types import Card, Color, Every, Item, Level, Size, Tree


class Stop(BaseException):
    """Stands for the process dying after the first step: nothing in fsmflow catches it."""


DEFINITION = WorkflowDefinition(
    "every_type",
    ["change", "check"],
    [Transition("changed", "change", "check"), Transition("done", "check", None)],
    state_model=Every,
)
CHANGED = uuid.UUID("87654321-4321-4876-8432-876543218765")


def change(state: Every) -> tuple[Every, str]:
    state.color, state.size, state.level = Color.RED, Size.S, Level.LOW
    state.uid = CHANGED
    state.pair = (2, "y")
    state.items.append(Item(sku="e", qty=3))
    state.tree.children[0].children.append(Tree(label="deeper"))
    state.payments.append(Card(last4="0000"))
    state.maybe, state.either, state.number = 0, "0", 1.0
    return state, "changed"


def stop(state: Every) -> Any:
    raise Stop


def check(state: Every) -> tuple[Every, str]:
    return state, "done"


async def test_a_state_of_every_allowed_type_is_stored_and_loaded_exactly(
    db_config: DBConfig,
) -> None:
    seed = Every()
    first = PersistentWorkflowStateMachine(
        db_config, DEFINITION, steps={"change": change, "check": stop},
        instance_id="all", handle_signals=False,
    )  # fmt: skip
    with pytest.raises(Stop):  # the "process" dies in check: the next runner loads the rows
        await first.run_workflow(seed)
    resumed = PersistentWorkflowStateMachine(
        db_config, DEFINITION, steps={"change": change, "check": check},
        instance_id="all", handle_signals=False,
    )  # fmt: skip
    result = await resumed.run_workflow()

    expected = change(Every())[0]
    assert isinstance(result.state, Every)
    assert result.state == expected and repr(result.state) == repr(expected)
    history = await db_config.store.history("every_type", "all")
    assert [r.status for r in history][-1] == "completed"
    assert history[0].context == seed.model_dump(mode="json")  # the jsonb, read back
    assert history[-1].context == expected.model_dump(mode="json") == result.context.data
    assert history[-1].context["pair"] == [2, "y"] and history[-1].context["count"] == 2**70
    assert history[-1].context["uid"] == str(CHANGED) and history[-1].context["number"] == 1.0
    assert type(history[-1].context["number"]) is float  # 1.0 came back from jsonb a float
