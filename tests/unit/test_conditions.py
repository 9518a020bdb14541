"""Conditions: every operator, dotted paths, missing fields, type mismatches, custom functions.

No database: a condition is a pure function of the context data. Each case goes through
``Condition.evaluate`` (what the runner awaits) and, for the built-in operators, through the
synchronous ``holds`` too.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import Any

import pytest

from fsmflow import Condition
from fsmflow.model.conditions import ALL_OPERATORS, MISSING, read_field

# (operator, condition value, field value, expected)
CASES: list[tuple[str, Any, Any, bool]] = [
    ("eq", "High", "High", True),
    ("eq", "High", "Low", False),
    ("eq", 3, 3.0, True),
    ("eq", {"a": [1]}, {"a": [1]}, True),
    ("eq", None, None, True),
    ("ne", "High", "Low", True),
    ("ne", "High", "High", False),
    ("gt", 3, 4, True),
    ("gt", 3, 3, False),
    ("ge", 3, 3, True),
    ("ge", 3, 2.5, False),
    ("lt", 3, 2, True),
    ("lt", 3, 3, False),
    ("le", 3, 3, True),
    ("le", 3, 4, False),
    ("gt", "b", "c", True),  # strings compare too
    ("contains", "urgent", "this is urgent", True),
    ("contains", "urgent", "this is fine", False),
    ("contains", 2, [1, 2, 3], True),
    ("contains", "k", {"k": 1}, True),
    ("not_contains", "urgent", "this is fine", True),
    ("not_contains", 2, [1, 2, 3], False),
    ("starts_with", "INV-", "INV-0042", True),
    ("starts_with", "INV-", "PO-0042", False),
    ("ends_with", ".pdf", "scan.pdf", True),
    ("ends_with", ".pdf", "scan.png", False),
    ("matches", r"^\d{3}-\d{4}$", "555-1234", True),
    ("matches", r"\d{3}", "call 555 now", True),  # re.search, not fullmatch
    ("matches", r"^\d+$", "12a", False),
    ("is_none", None, None, True),
    ("is_none", None, 0, False),
    ("is_none", None, "", False),
    ("is_not_none", None, 0, True),
    ("is_not_none", None, False, True),
    ("is_not_none", None, None, False),
    ("is_empty", None, "", True),
    ("is_empty", None, [], True),
    ("is_empty", None, {}, True),
    ("is_empty", None, "x", False),
    ("is_empty", None, [0], False),
    ("is_not_empty", None, "x", True),
    ("is_not_empty", None, {"k": None}, True),
    ("is_not_empty", None, [], False),
    ("is_not_empty", None, "", False),
    ("in", ["High", "Urgent"], "High", True),
    ("in", ["High", "Urgent"], "Low", False),
    ("in", "abcdef", "cde", True),
    ("not_in", ["High", "Urgent"], "Low", True),
    ("not_in", ["High", "Urgent"], "High", False),
]

# A type mismatch is "does not hold", never an exception.
TYPE_MISMATCHES: list[tuple[str, Any, Any]] = [
    ("gt", 3, "four"),
    ("ge", 3, None),
    ("lt", "b", 1),
    ("le", [1], {"a": 1}),
    ("gt", 3, [4]),
    ("eq", 3, "3"),
    ("contains", "x", 42),
    ("contains", [1], "abc"),  # list in str: TypeError
    ("in", [1, 2], {"k": "dict"}),  # a dict is not in a list of ints
    ("in", 5, 1),  # `1 in 5`: TypeError
    ("in", {"a": 1}, ["unhashable"]),  # list in dict: TypeError
    ("starts_with", "INV", 42),
    ("starts_with", 5, "5 apples"),  # non-str condition value
    ("ends_with", "pdf", ["scan.pdf"]),
    ("ends_with", None, "scan.pdf"),  # non-str condition value
    ("matches", r"\d+", 123),
    ("matches", r"\d+", ["123"]),
    ("is_empty", None, 0),
    ("is_empty", None, None),
    ("is_not_empty", None, 7),
    ("is_not_empty", None, True),
]


def test_every_operator_is_covered() -> None:
    covered = {case[0] for case in CASES} | {"custom"}
    assert covered == set(ALL_OPERATORS)


def case_id(case: tuple[Any, ...]) -> str:
    return f"{case[0]}-{case[2]!r}-vs-{case[1]!r}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_operator(case: tuple[str, Any, Any, bool]) -> None:
    operator, value, actual, expected = case
    condition = Condition(field="f", operator=operator, value=value)
    assert condition.problems() == []
    assert condition.holds({"f": actual}) is expected
    assert await condition.evaluate({"f": actual}) is expected


@pytest.mark.parametrize("case", TYPE_MISMATCHES, ids=case_id)
async def test_type_mismatch_is_false_not_an_error(case: tuple[str, Any, Any]) -> None:
    operator, value, actual = case
    condition = Condition(field="f", operator=operator, value=value)
    assert await condition.evaluate({"f": actual}) is False


@pytest.mark.parametrize("operator", sorted(ALL_OPERATORS))
async def test_missing_field_is_false_except_is_none(operator: str) -> None:
    calls: list[Any] = []
    condition = Condition(
        field="order.total",
        operator=operator,
        value=r"." if operator == "matches" else 1,
        custom_function=lambda v: calls.append(v) or True,
    )
    expected = operator == "is_none"
    for data in ({}, {"order": {}}, {"order": {"other": 1}}, {"other": {"total": 1}}):
        assert await condition.evaluate(data) is expected, data
    assert calls == []  # a custom function never sees a missing field


@pytest.mark.parametrize(
    ("data", "field", "expected"),
    [
        ({"order": {"total": 30}}, "order.total", 30),
        ({"a": {"b": {"c": None}}}, "a.b.c", None),
        ({"a": {"b": {"c": [1]}}}, "a.b", {"c": [1]}),
        ({"order.total": 5, "order": {"total": 30}}, "order.total", 5),  # literal key wins
        ({"order": {"total": 30}}, "order.total.cents", MISSING),  # through an int
        ({"order": [{"total": 30}]}, "order.0.total", MISSING),  # lists are not walked
        ({"order": "text"}, "order.total", MISSING),
        ({"order": None}, "order.total", MISSING),
        ({}, "order", MISSING),
    ],
)
def test_read_field_follows_dotted_paths(data: dict[str, Any], field: str, expected: Any) -> None:
    found = read_field(data, field)
    if expected is MISSING:
        assert found is MISSING
    else:
        assert found == expected


@pytest.mark.parametrize(
    ("field", "operator", "value", "expected"),
    [
        ("order.total", "gt", 0, True),
        ("order.customer.tier", "eq", "gold", True),
        ("order.customer.tier", "in", ["silver", "bronze"], False),
        ("order.items", "is_not_empty", None, True),
        ("order.customer.email", "is_none", None, True),  # missing nested key
        ("order.customer.email", "is_not_none", None, False),
        ("order.note", "is_none", None, True),  # present and None
    ],
)
async def test_dotted_paths_in_conditions(
    field: str, operator: str, value: Any, expected: bool
) -> None:
    data = {"order": {"total": 30, "customer": {"tier": "gold"}, "items": [1], "note": None}}
    condition = Condition(field=field, operator=operator, value=value)
    assert await condition.evaluate(data) is expected


# -- custom ------------------------------------------------------------------------------


def sync_positive(value: Any) -> bool:
    return isinstance(value, int) and value > 0


async def async_positive(value: Any) -> bool:
    await asyncio.sleep(0)
    return isinstance(value, int) and value > 0


class CallableObject:
    """A callable instance returning a truthy non-bool."""

    def __call__(self, value: Any) -> Any:
        return [value] if value else []


@pytest.mark.parametrize(
    "function", [sync_positive, async_positive, CallableObject()], ids=["sync", "async", "object"]
)
@pytest.mark.parametrize(("value", "expected"), [(5, True), (0, False), (None, False)])
async def test_custom_sync_and_async(function: Any, value: Any, expected: bool) -> None:
    condition = Condition(field="score", operator="custom", custom_function=function)
    assert condition.problems() == []
    assert await condition.evaluate({"score": value}) is expected


async def test_custom_function_receives_the_field_value_not_the_context() -> None:
    received: list[Any] = []
    condition = Condition(
        field="a.b", operator="custom", custom_function=lambda v: received.append(v) or True
    )
    assert await condition.evaluate({"a": {"b": [1, 2]}, "secret": "x"}) is True
    assert received == [[1, 2]]


async def test_async_custom_is_awaitable_through_holds() -> None:
    condition = Condition(field="score", operator="custom", custom_function=async_positive)
    pending = condition.holds({"score": 3})
    assert inspect.isawaitable(pending)
    assert await pending is True  # type: ignore[misc]


async def test_sync_callable_returning_a_coroutine_is_awaited() -> None:
    def returns_coroutine(value: Any) -> Awaitable[bool]:
        return async_positive(value)

    condition = Condition(field="score", operator="custom", custom_function=returns_coroutine)
    assert await condition.evaluate({"score": 2}) is True
    assert await condition.evaluate({"score": -2}) is False


# -- problems and descriptions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"operator": "equals"}, "unknown operator 'equals'"),
        ({"operator": "EQ"}, "unknown operator 'EQ'"),
        ({"operator": ""}, "unknown operator ''"),
        ({"operator": "custom"}, "custom_function"),
        ({"operator": "matches", "value": "(unclosed"}, "invalid regex"),
        ({"operator": "matches", "value": "[z-a]"}, "invalid regex"),
    ],
)
def test_unsound_conditions_report_a_problem(kwargs: dict[str, Any], fragment: str) -> None:
    problems = Condition(field="f", **kwargs).problems()
    assert len(problems) == 1 and fragment in problems[0]


@pytest.mark.parametrize("operator", sorted(ALL_OPERATORS - {"custom", "matches"}))
def test_sound_conditions_have_no_problem(operator: str) -> None:
    assert Condition(field="f", operator=operator, value=1).problems() == []


def test_describe_names_field_operator_and_function() -> None:
    assert Condition(field="priority", operator="eq", value="High").describe() == (
        "priority eq 'High'"
    )
    assert Condition(field="note", operator="is_empty").describe() == "note is_empty"
    assert Condition(
        field="score", operator="custom", custom_function=sync_positive
    ).describe() == ("score custom sync_positive")


def test_conditions_are_frozen() -> None:
    condition = Condition(field="f", operator="eq", value=1)
    with pytest.raises(ValueError, match="frozen"):
        condition.value = 2  # type: ignore[misc]
