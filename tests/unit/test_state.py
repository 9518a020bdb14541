"""Typed state without a database: the definition's checks of state_model, state_version and
upgrades; the upgrade chain; validation errors that name fields, never values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from fsmflow import DefinitionError, StateValidationError, StateVersionError, WorkflowDefinition
from fsmflow.model.context import seed_json
from fsmflow.model.state import StateSpec

SECRET = "hunter2-secret"


class Item(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    customer: str
    items: list[Item] = []


def definition(**typed: Any) -> WorkflowDefinition:
    return WorkflowDefinition("orders", ["take"], **typed)


def problems(**typed: Any) -> list[str]:
    with pytest.raises(DefinitionError) as refused:
        definition(**typed)
    return refused.value.problems


def test_the_definition_refuses_what_does_not_fit() -> None:
    assert problems(state_model=Order, state_version=3, upgrades={1: dict}) == [
        "upgrades has no entry for version 2: state_version=3 needs upgrades[2] (version 2 -> 3); "
        "the chain must have no gap"
    ]
    assert "only versions 1 to 1" in problems(state_model=Order, state_version=2,
                                               upgrades={1: dict, 2: dict})[0]  # fmt: skip
    assert "no state_model" in problems(upgrades={1: dict})[0]
    assert "BaseModel subclass" in problems(state_model=dict)[0]
    assert "must be an int, not bool" in problems(state_model=Order, state_version=True)[0]
    assert "at least 1" in problems(state_model=Order, state_version=0)[0]
    assert "not callable" in problems(state_model=Order, state_version=2, upgrades={1: 5})[0]


def test_typed_state_is_not_part_of_the_fingerprint() -> None:
    plain = definition()
    typed = definition(state_model=Order, state_version=2, upgrades={1: dict})
    assert typed.fingerprint == plain.fingerprint and typed.summary() == plain.summary()
    assert plain.state_spec is None
    assert typed.state_spec is not None and typed.state_spec.version == 2


def test_upgrades_run_in_order_on_a_copy_and_the_result_is_validated() -> None:
    seen: list[int] = []

    def one(data: dict[str, Any]) -> dict[str, Any]:
        seen.append(1)
        data["customer"] = data.pop("name")
        return data

    def two(data: dict[str, Any]) -> dict[str, Any]:
        seen.append(2)
        return {**data, "items": [{"sku": s, "qty": 1} for s in data.pop("skus")]}

    spec = StateSpec(Order, 3, {1: one, 2: two})
    stored = {"name": "ada", "skus": ["a"]}
    expected = {"customer": "ada", "items": [{"sku": "a", "qty": 1}]}
    assert spec.upgrade(stored, None, "orders", "i") == expected
    assert seen == [1, 2] and stored == {"name": "ada", "skus": ["a"]}  # the stored dict kept
    assert spec.upgrade({"customer": "x"}, 3, "orders", "i") is None  # already current
    seen.clear()
    assert spec.upgrade({"customer": "b", "skus": []}, 2, "orders", "i") == {
        "customer": "b", "items": []
    }  # fmt: skip
    assert seen == [2]


def test_upgrade_refusals_name_versions_not_values() -> None:
    spec = StateSpec(Order, 2, {1: lambda d: {**d, "items": [{"sku": SECRET, "qty": SECRET}]}})
    with pytest.raises(StateVersionError) as invalid:
        spec.upgrade({"customer": "c"}, 1, "orders", "i-9")
    message = str(invalid.value)
    assert "'i-9'" in message and "state_version 1, the code's is 2" in message
    assert "items.0.qty: int_parsing" in message and SECRET not in message
    with pytest.raises(StateVersionError, match="newer program"):
        spec.upgrade({"customer": "c"}, 5, "orders", "i-9")


def test_validation_errors_name_fields_not_values() -> None:
    spec = StateSpec(Order, 1)
    order = Order(customer="c", items=[Item(sku="a", qty=1)])
    assert spec.dump(order, "orders", "i", "x") == {
        "customer": "c",
        "items": [{"sku": "a", "qty": 1}],
    }
    order.items[0].qty = SECRET  # type: ignore[assignment]  # not validated on assignment
    with pytest.raises(StateValidationError) as refused:
        spec.dump(order, "orders", "i", "the state returned by step 'take'")
    assert refused.value.fields == ["items.0.qty: int_parsing"]
    assert SECRET not in str(refused.value) and "'take'" in str(refused.value)
    with pytest.raises(StateValidationError, match="a dict, not a Order"):
        spec.dump({"customer": "c"}, "orders", "i", "x")


def test_a_seed_may_be_the_model_and_every_seed_is_validated() -> None:
    spec = StateSpec(Order, 1)
    assert (
        seed_json(Order(customer="c"), max_bytes=1000, state=spec) == '{"customer":"c","items":[]}'
    )
    assert seed_json({"customer": "d"}, max_bytes=1000, state=spec) == '{"customer":"d","items":[]}'
    with pytest.raises(StateValidationError, match="customer: missing"):
        seed_json({"items": []}, max_bytes=1000, state=spec)
    assert seed_json({"any": 1}, max_bytes=1000) == '{"any":1}'  # the dict API: unchanged
