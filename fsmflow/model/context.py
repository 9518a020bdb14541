"""The workflow context and its exact JSON encoding.

fsmflow serializes contexts itself, once per transition, and refuses before any SQL what
JSON or PostgreSQL ``jsonb`` would not give back unchanged: non-finite floats, NUL
characters, lone surrogates, non-string keys, tuples, sets, bytes, datetimes and other
objects. Nothing is ever pickled.
"""

from __future__ import annotations

import _json
import json
import math
from collections.abc import Mapping
from typing import Any, Final, cast

from pydantic import BaseModel, Field

from fsmflow.errors import ContextSerializationError, ContextTooLargeError
from fsmflow.model.state import StateSpec

DEFAULT_MAX_CONTEXT_BYTES: Final = 16 * 1024 * 1024
# jsonb keeps numbers as numeric and prints 1e16 as 10000000000000000, which json.loads
# returns as an int: floats this large would come back with another type.
_FLOAT_REPR_MAX: Final = 1e16
# Nesting deeper than this is refused: it keeps the walk (one frame per level) and
# json.dumps far from Python's recursion limit, and catches circular contexts.
MAX_DEPTH: Final = 500
_PATH_PARTS_SHOWN: Final = 12


class WorkflowContext(BaseModel):
    """The data a workflow carries from step to step (``data`` must be JSON values)."""

    data: dict[str, Any] = Field(default_factory=dict)

    def __repr__(self) -> str:
        # Context values may be sensitive: show keys only.
        return f"WorkflowContext(keys={sorted(self.data)!r})"

    __str__ = __repr__


# A problem found while walking a value: the key path, innermost part first (formatted
# only when there is a problem, so the walk over a valid context builds no strings), and
# the reason.
_Problem = tuple[list[str], str]


def _str_problem(value: str, *, surrogates: bool) -> str | None:
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    if surrogates:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate"
    return None


def _float_problem(value: float) -> str | None:
    if not math.isfinite(value):
        return f"float {value} is not finite"
    if abs(value) >= _FLOAT_REPR_MAX:
        return "float of 1e16 or more would come back from jsonb as an int; store it as a string"
    if value == 0 and math.copysign(1.0, value) < 0:
        return "negative zero does not round-trip through jsonb"
    return None


def _int_problem(value: int) -> str | None:
    # Python refuses to print ints of more than 4300 digits (a DoS guard): say so here
    # rather than fail with a bare ValueError inside json.dumps.
    if value.bit_length() > 14_000:
        try:
            str(value)
        except ValueError:
            return "int has too many digits to serialize; store it as a string"
    return None


def _key_problem(key: Any, surrogates: bool) -> _Problem | None:
    if type(key) is not str:
        return [f"[{key!r}]"], f"key of type {type(key).__name__}; keys must be str"
    reason = _str_problem(key, surrogates=surrogates)
    return None if reason is None else ([f" key {key!r}"], reason)


def _problem(value: Any, surrogates: bool, depth: int = 1) -> _Problem | None:
    """The first part of ``value`` that JSON/jsonb would not give back unchanged.

    Lone surrogates are looked for only with ``surrogates`` (encode_context finds them
    far more cheaply in the JSON text, and walks again only if there is one). Dicts and
    lists are walked here, not in helpers: one frame per level of nesting; their plain
    items (None, bools, small ints, strs without NUL) are passed over in the loop, without
    a call (this walk runs on every transition's context).
    """
    kind = type(value)
    if kind is dict or kind is list:
        if depth > MAX_DEPTH:
            return [], f"nested more than {MAX_DEPTH} levels deep (or it contains itself)"
        is_dict = kind is dict
        for key, item in value.items() if is_dict else enumerate(value):
            odd_key = is_dict and (type(key) is not str or surrogates or "\x00" in key)
            if odd_key and (bad_key := _key_problem(key, surrogates)) is not None:
                return bad_key
            plain = type(item)
            if plain is str:
                if not surrogates and "\x00" not in item:
                    continue
            elif item is None or plain is bool or (plain is int and item.bit_length() <= 64):
                continue
            found = _problem(item, surrogates, depth + 1)
            if found is not None:
                found[0].append(f"[{key!r}]")
                return found
        return None
    reason: str | None = None
    if kind is str:
        if surrogates or "\x00" in value:
            reason = _str_problem(value, surrogates=surrogates)
    elif kind is float:
        reason = _float_problem(value)
    elif kind is int:
        reason = _int_problem(value)
    elif value is not None and kind is not bool:
        reason = f"{kind.__name__} is not a JSON value (convert it to str, int, list or dict)"
    return None if reason is None else ([], reason)


def check_json_value(value: Any, path: str = "ctx", *, where: str = "") -> None:
    """Raise :class:`ContextSerializationError` naming the key path (``ctx['a'][2]``) of
    the first part of ``value`` that won't round-trip."""
    _raise(_problem(value, surrogates=True), path, where)


def _raise(found: _Problem | None, path: str, where: str) -> None:
    if found is not None:
        parts, reason = found
        shown = parts[: -_PATH_PARTS_SHOWN - 1 : -1]  # outermost first, a prefix only
        more = "..." if len(parts) > _PATH_PARTS_SHOWN else ""
        raise ContextSerializationError(path + "".join(shown) + more, reason, where=where)


def encode_context(
    data: Any, *, max_bytes: int = DEFAULT_MAX_CONTEXT_BYTES, where: str = ""
) -> str:
    """Validate ``data`` and return its JSON text; the only serializer fsmflow uses."""
    if type(data) is not dict:
        raise ContextSerializationError(
            "ctx", f"context data must be a dict, not {type(data).__name__}", where=where
        )
    _raise(_problem(data, surrogates=False), "ctx", where)
    text = "".join(_encode(data, 0))
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate somewhere: say where
            check_json_value(data, where=where)
            raise
    if size > max_bytes:
        raise ContextTooLargeError(size, max_bytes, where=where)
    return text


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


# The context encoder, built once: json.dumps with any non-default argument builds a
# JSONEncoder and its C encoder on every call, which costs more than encoding a small
# context. compact_json's output (no spaces, no NaN); no circular check (markers None):
# the walk before it refuses nesting deeper than MAX_DEPTH, a context containing itself too.
_encode: Final = _json.make_encoder(
    None, _not_json, _json.encode_basestring, None, ":", ",", False, False, False
)


def seed_json(
    context: Any, *, max_bytes: int, state: StateSpec | None = None, workflow: str = ""
) -> str:
    """The JSON text of a seed context: None (empty), a dict, a Mapping or a
    :class:`WorkflowContext`; :class:`ContextSerializationError` for anything else.

    For a typed workflow (``state``, its definition's :class:`StateSpec`) the seed may also
    be an instance of its state model; every seed is validated against the model and stored
    in the model's JSON form (:class:`~fsmflow.errors.StateValidationError` if it does not fit).
    """
    where = "initial context"
    if context is None:
        data: Any = {}
    elif isinstance(context, WorkflowContext):
        data = context.data
    elif isinstance(context, Mapping):
        data = dict(context)
    elif isinstance(context, BaseModel) and state is not None and isinstance(context, state.model):
        data = state.dump(context, workflow, None, "the initial state")
    else:
        typed = "" if state is None else f", an instance of {state.model.__name__}"
        raise ContextSerializationError(
            "ctx",
            f"the seed context must be a dict, a Mapping{typed} or a WorkflowContext, "
            f"not {type(context).__name__}",
            where=where,
        )
    if state is not None and not isinstance(context, state.model):
        model = state.validate(data, workflow, None, "the initial state")
        data = state.dump(model, workflow, None, "the initial state")
    return encode_context(data, max_bytes=max_bytes, where=where)


# The C scanner of json.loads, called directly: loads wraps it in three Python calls,
# which cost more than scanning a small context, and this runs at every attempt.
_scan: Final = _json.make_scanner(cast(Any, json.JSONDecoder()))  # as JSONDecoder builds it


def decode_context(text: str) -> dict[str, Any]:
    """Parse context JSON text read from the database."""
    try:
        data, end = _scan(text, 0)
    except (StopIteration, ValueError):
        end = -1
    if end != len(text):  # not one bare JSON value (spaces around it?): json.loads decides
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("stored context is not a JSON object")
    return data


def compact_json(
    value: Any, *, ensure_ascii: bool = False, sort_keys: bool = False, allow_nan: bool = True
) -> str:
    """``value`` as JSON text without spaces (``{"a":1}``): how fsmflow writes the JSON it
    stores, measures and fingerprints. The keyword arguments are :func:`json.dumps`'s."""
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        sort_keys=sort_keys,
        allow_nan=allow_nan,
        separators=(",", ":"),
    )
