"""The workflow context and its exact JSON encoding.

fsmflow serializes contexts itself, once per transition, and refuses before any SQL what
JSON or PostgreSQL ``jsonb`` would not give back unchanged: non-finite floats, NUL
characters, lone surrogates, non-string keys, tuples, sets, bytes, datetimes and other
objects. Nothing is ever pickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, Final

from pydantic import BaseModel, Field

from .errors import ContextSerializationError, ContextTooLargeError

DEFAULT_MAX_CONTEXT_BYTES: Final = 16 * 1024 * 1024
# jsonb keeps numbers as numeric and prints 1e16 as 10000000000000000, which json.loads
# returns as an int: floats this large would come back with another type.
_FLOAT_REPR_MAX: Final = 1e16


class WorkflowContext(BaseModel):
    """The data a workflow carries from step to step (``data`` must be JSON values)."""

    data: dict[str, Any] = Field(default_factory=dict)

    def __repr__(self) -> str:
        # Context values may be sensitive: show keys only.
        return f"WorkflowContext(keys={sorted(self.data)!r})"

    __str__ = __repr__


def _check_str(value: str, path: str) -> None:
    if "\x00" in value:
        raise ContextSerializationError(path, "contains a NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ContextSerializationError(path, "contains a lone surrogate") from None


def _check_float(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise ContextSerializationError(path, f"float {value} is not finite")
    magnitude = abs(value)
    if magnitude >= _FLOAT_REPR_MAX:
        raise ContextSerializationError(
            path, "float of 1e16 or more would come back from jsonb as an int; store it as a string"
        )
    if value == 0 and math.copysign(1.0, value) < 0:
        raise ContextSerializationError(path, "negative zero does not round-trip through jsonb")


def _check_int(value: int, path: str) -> None:
    # Python refuses to print ints of more than 4300 digits (a DoS guard): say so here
    # rather than fail with a bare ValueError inside json.dumps.
    if value.bit_length() > 14_000:
        try:
            str(value)
        except ValueError:
            raise ContextSerializationError(
                path, "int has too many digits to serialize; store it as a string"
            ) from None


def check_json_value(value: Any, path: str = "ctx") -> None:
    """Raise :class:`ContextSerializationError` naming ``path`` if ``value`` won't round-trip."""
    kind = type(value)
    if kind is str:
        _check_str(value, path)
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ContextSerializationError(
                    f"{path}[{key!r}]", f"key of type {type(key).__name__}; keys must be str"
                )
            _check_str(key, f"{path} key {key!r}")
            check_json_value(item, f"{path}[{key!r}]")
    elif kind is list:
        for index, item in enumerate(value):
            check_json_value(item, f"{path}[{index}]")
    elif kind is float:
        _check_float(value, path)
    elif kind is int:
        _check_int(value, path)
    elif value is None or kind is bool:
        return
    else:
        raise ContextSerializationError(
            path, f"{kind.__name__} is not a JSON value (convert it to str, int, list or dict)"
        )


def _plainly_valid(items: Iterable[Any]) -> bool:
    """The per-transition fast path of :func:`check_json_value`: builds no key paths.

    False means "maybe invalid": :func:`check_json_value` then finds (and names) the
    problem. Lone surrogates are left to the caller, which finds them in the JSON text.
    """
    for value in items:
        kind = type(value)
        if kind is str:
            if "\x00" in value:
                return False
        elif kind is dict:
            for key in value:
                if type(key) is not str or "\x00" in key:
                    return False
            if not _plainly_valid(value.values()):
                return False
        elif kind is list:
            if not _plainly_valid(value):
                return False
        elif kind is float:
            if not -_FLOAT_REPR_MAX < value < _FLOAT_REPR_MAX or (
                value == 0 and math.copysign(1.0, value) < 0
            ):
                return False
        elif kind is int:
            if value.bit_length() > 14_000:
                return False
        elif value is not None and kind is not bool:
            return False
    return True


def _refuse(data: Any, where: str) -> None:
    """Raise the :class:`ContextSerializationError` that names what is wrong in ``data``."""
    try:
        check_json_value(data)
    except ContextSerializationError as exc:
        if where:
            raise ContextSerializationError(exc.path, exc.reason, where=where) from None
        raise


def encode_context(
    data: Any, *, max_bytes: int = DEFAULT_MAX_CONTEXT_BYTES, where: str = ""
) -> str:
    """Validate ``data`` and return its JSON text; the only serializer fsmflow uses."""
    if type(data) is not dict:
        raise ContextSerializationError(
            "ctx", f"context data must be a dict, not {type(data).__name__}"
        )
    if not _plainly_valid((data,)):
        _refuse(data, where)
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate somewhere: say where
            _refuse(data, where)
            raise
    if size > max_bytes:
        raise ContextTooLargeError(size, max_bytes, where=where)
    return text


def decode_context(text: str) -> dict[str, Any]:
    """Parse context JSON text read from the database."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("stored context is not a JSON object")
    return data
