"""Conditions: predicates over the context that choose a workflow's next state.

A :class:`Condition` reads ``context.data[field]`` (``field`` may be a dotted path into
nested dicts) and applies an operator. A missing field makes every operator false except
``is_none``. Conditions must be pure: fsmflow may evaluate them again after a restart.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, PrivateAttr

from fsmflow.model.context import compact_json

MISSING: Final = object()


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def apply(actual: Any, expected: Any) -> bool:
        try:
            return bool(op(actual, expected))
        except TypeError:  # e.g. None > 3: a type mismatch is "does not hold"
            return False

    return apply


def _len_or_none(actual: Any) -> int | None:
    try:
        return len(actual)
    except TypeError:
        return None


OPERATORS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "eq": _compare(lambda a, e: a == e),
    "ne": _compare(lambda a, e: a != e),
    "gt": _compare(lambda a, e: a > e),
    "ge": _compare(lambda a, e: a >= e),
    "lt": _compare(lambda a, e: a < e),
    "le": _compare(lambda a, e: a <= e),
    "contains": _compare(lambda a, e: e in a),
    "not_contains": _compare(lambda a, e: e not in a),
    "starts_with": lambda a, e: isinstance(a, str) and isinstance(e, str) and a.startswith(e),
    "ends_with": lambda a, e: isinstance(a, str) and isinstance(e, str) and a.endswith(e),
    "is_none": lambda a, e: a is None,
    "is_not_none": lambda a, e: a is not None,
    "is_empty": lambda a, e: _len_or_none(a) == 0,
    "is_not_empty": lambda a, e: (_len_or_none(a) or 0) > 0,
    "in": _compare(lambda a, e: a in e),
    "not_in": _compare(lambda a, e: a not in e),
}
"""Built-in operators: ``(field value, condition value) -> bool``."""

SPECIAL_OPERATORS: Final = frozenset({"matches", "custom"})
ALL_OPERATORS: Final = frozenset(OPERATORS) | SPECIAL_OPERATORS
UNARY_OPERATORS: Final = frozenset({"is_none", "is_not_none", "is_empty", "is_not_empty"})
SET_TAG: Final = "$set"


def canonical_value(value: Any) -> Any:
    """``value`` as JSON data that is the same in every process, for fingerprints.

    Sets and frozensets become ``{"$set": [...]}`` with their items sorted (their iteration
    order depends on ``PYTHONHASHSEED``), tuples become lists, dict keys become str (dumped
    sorted). Other objects are named by type, plus their repr unless it holds a memory
    address (which differs per process).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, list | tuple):
        return [canonical_value(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [canonical_value(item) for item in value]
        return {SET_TAG: sorted(items, key=canonical_json)}
    if isinstance(value, Mapping):
        return {_canonical_key(k): canonical_value(v) for k, v in value.items()}
    kind = type(value)
    text = repr(value)
    named = {"$object": f"{kind.__module__}.{kind.__qualname__}"}
    return named if " at 0x" in text else {**named, "repr": text}


def _canonical_key(key: Any) -> str:
    return key if isinstance(key, str) else canonical_json(canonical_value(key))


def canonical_json(data: Any) -> str:
    """The one JSON text of canonical ``data``: sorted keys, no spaces, ASCII only."""
    return compact_json(data, ensure_ascii=True, sort_keys=True, allow_nan=False)


def render_value(data: Any) -> str:
    """A readable rendering of :func:`canonical_value` data: Python literal syntax, sets
    sorted, so messages are the same in every process."""
    if isinstance(data, list):
        return "[" + ", ".join(render_value(item) for item in data) + "]"
    if isinstance(data, dict):
        if set(data) == {SET_TAG}:
            items = data[SET_TAG]
            return "{" + ", ".join(render_value(i) for i in items) + "}" if items else "set()"
        if "$object" in data or "$float" in data:
            return str(data.get("repr") or data.get("$float") or data["$object"])
        return "{" + ", ".join(f"{k!r}: {render_value(v)}" for k, v in sorted(data.items())) + "}"
    return repr(data)


def read_field(data: Mapping[str, Any], field: str) -> Any:
    """Return ``data[field]``, following dots into nested dicts; :data:`MISSING` if absent.

    A key that itself contains a dot wins over the nested reading.
    """
    if field in data:
        return data[field]
    current: Any = data
    for part in field.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return MISSING
        current = current[part]
    return current


class Condition(BaseModel):
    """``context.data[field] <operator> value``, or a custom (sync or async) predicate.

    Example: ``Condition(field="priority", operator="eq", value="High")``;
    ``Condition(field="score", operator="custom", custom_function=lambda v: v > 0.8)``.
    The operator is checked when the :class:`~fsmflow.WorkflowDefinition` is built, so
    every problem of a definition is reported at once.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    field: str
    operator: str = "eq"
    value: Any = None
    custom_function: Callable[[Any], bool | Awaitable[bool]] | None = None

    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)

    def __init__(
        self,
        field: str,
        operator: str = "eq",
        value: Any = None,
        custom_function: Callable[[Any], bool | Awaitable[bool]] | None = None,
    ) -> None:
        super().__init__(
            field=field, operator=operator, value=value, custom_function=custom_function
        )

    def problems(self) -> list[str]:
        """Every reason this condition cannot be evaluated (empty when it is sound)."""
        if self.operator not in ALL_OPERATORS:
            known = ", ".join(sorted(ALL_OPERATORS))
            return [f"unknown operator {self.operator!r} (known: {known})"]
        if self.operator == "custom" and not callable(self.custom_function):
            return ["operator 'custom' needs custom_function=<callable>"]
        if self.operator == "matches":
            try:
                re.compile(str(self.value))
            except re.error as exc:
                return [f"operator 'matches' has an invalid regex: {exc}"]
        return []

    def holds(self, data: Mapping[str, Any]) -> bool | Awaitable[bool]:
        """Evaluate against ``data``; returns an awaitable only for async custom functions."""
        actual = read_field(data, self.field)
        if actual is MISSING:
            return self.operator == "is_none"
        if self.operator == "custom":
            assert self.custom_function is not None
            result = self.custom_function(actual)
            return result if inspect.isawaitable(result) else bool(result)
        if self.operator == "matches":
            return isinstance(actual, str) and self._regex().search(actual) is not None
        return OPERATORS[self.operator](actual, self.value)

    async def evaluate(self, data: Mapping[str, Any]) -> bool:
        """Evaluate against ``data``, awaiting an async custom function."""
        result = self.holds(data)
        if inspect.isawaitable(result):
            return bool(await result)
        return result

    def summary(self) -> dict[str, Any]:
        """JSON data describing this condition, the same in every process (what the
        definition fingerprint hashes): field, operator and the canonical value, or the
        custom function's qualified name."""
        described: dict[str, Any] = {"field": self.field, "operator": self.operator}
        if self.operator == "custom":
            described["function"] = _function_name(self.custom_function)
        elif self.operator not in UNARY_OPERATORS:
            described["value"] = canonical_value(self.value)
        return described

    def describe(self) -> str:
        """A short human description, e.g. ``priority eq 'High'`` (no context values)."""
        return describe_summary(self.summary())

    def _regex(self) -> re.Pattern[str]:
        if self._pattern is None:
            self._pattern = re.compile(str(self.value))
        return self._pattern


def describe_summary(summary: Mapping[str, Any]) -> str:
    """The :meth:`Condition.describe` text of a :meth:`Condition.summary` result."""
    head = f"{summary['field']} {summary['operator']}"
    if "function" in summary:
        return f"{head} {summary['function']}"
    return f"{head} {render_value(summary['value'])}" if "value" in summary else head


def _function_name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", type(fn).__name__))
