"""Which field types a typed state may hold: those whose JSON form loads back as the value
that was saved.

A state is stored as ``model_dump(mode="json")`` and loaded with ``model_validate``. For
most types pydantic offers, that is exact; for others JSON has no form of its own and pydantic
picks one silently (a ``datetime`` becomes a str, a ``set`` a list in some order, a
``Decimal`` a str), or a union of two types that look alike in JSON loads the saved value as
the other one (``str | UUID``). :func:`type_problems` walks a model's fields (nested models,
the items of lists, tuples and dicts, the members of unions, ``Annotated`` and type aliases)
and names each field whose type is not known to be exact, with what to use instead. A type
under a declared encoding (an ``Annotated`` ``PlainSerializer``/``WrapSerializer``, a
``@field_serializer`` or a ``@model_serializer``) is the user's choice: the round-trip check
that every save makes guards it.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from uuid import UUID

from pydantic import BaseModel, Discriminator, JsonValue
from pydantic.fields import FieldInfo
from pydantic.functional_serializers import PlainSerializer, WrapSerializer

__all__ = ["type_problems"]

NoneType = type(None)
# The JSON kind each exact leaf type is stored as, and the Python type it loads back as.
_LEAVES: dict[Any, str] = {
    str: "string", int: "number", float: "number", bool: "boolean", NoneType: "null",
    UUID: "string",
}  # fmt: skip
_ENCODE = "or declare an encoding (an Annotated PlainSerializer, or a @field_serializer)"
_REFUSED: dict[type, str] = {
    datetime: f"JSON has no datetime: store an ISO 8601 str, {_ENCODE}",
    date: f"JSON has no date: store an ISO 8601 str, {_ENCODE}",
    time: f"JSON has no time of day: store an ISO 8601 str, {_ENCODE}",
    timedelta: f"JSON has no duration: store an int or float of seconds, {_ENCODE}",
    Decimal: "JSON numbers are not decimals: store an int (of cents, say) or a str",
    bytes: "JSON has no bytes: store a base64 str",
    bytearray: "JSON has no bytes: store a base64 str",
    set: "JSON has no set (its order is lost): use a list",
    frozenset: "JSON has no set (its order is lost): use a list",
    complex: "JSON has no complex number: store two floats",
}
_UNKNOWN = (
    "not a type JSON holds exactly: use str, int, float, bool, None, a Literal, a str or int "
    f"Enum, UUID, a list, tuple or dict[str, ...] of those, or a nested BaseModel; {_ENCODE}"
)


def type_problems(model: type[BaseModel]) -> Iterator[str]:
    """One message per field of ``model`` (nested ones by dotted path, ``*`` for the items
    of a list, tuple or dict) whose type JSON cannot hold exactly; none if all fit."""
    walk = _Walk(model.__name__)
    for problem in walk.model(model, ""):
        yield f"state_model {model.__name__}: {problem}"


@dataclass
class _Walk:
    """One walk over a state model's types; ``seen`` stops at a model met again (recursion)."""

    top: str
    seen: set[type[BaseModel]] = field(default_factory=set)

    def model(self, model: type[BaseModel], path: str) -> Iterator[str]:
        if model in self.seen or model.__pydantic_decorators__.model_serializers:
            return
        self.seen.add(model)
        encoded = {
            name
            for serializer in model.__pydantic_decorators__.field_serializers.values()
            for name in serializer.info.fields
        }
        for name, info in model.model_fields.items():
            if name in encoded or "*" in encoded or _declares_encoding(info.metadata):
                continue
            where = f"{path}.{name}" if path else name
            yield from self.type(info.annotation, where, info.discriminator is not None)

    def type(self, tp: Any, path: str, discriminated: bool = False) -> Iterator[str]:
        tp = _unalias(tp)
        origin = get_origin(tp)
        if origin is Annotated:
            inner, *metadata = get_args(tp)
            if not _declares_encoding(metadata):
                yield from self.type(inner, path, discriminated or _discriminates(metadata))
        elif tp is JsonValue or tp in _LEAVES:
            return
        elif origin in (Union, types.UnionType):
            yield from self.union(tp, path, discriminated)
        elif origin is Literal:
            yield from _literal(tp, path)
        elif origin in (list, tuple, dict):
            yield from self.container(tp, origin, path)
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            yield from self.model(tp, path)
        elif isinstance(tp, type) and issubclass(tp, Enum):
            yield from _enum(tp, path)
        else:
            yield _problem(path, tp)

    def container(self, tp: Any, origin: Any, path: str) -> Iterator[str]:
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if origin is dict and args and not _is_str(args[0]):
            yield (
                f"field {path} has type {_name(tp)}: JSON object keys are strings; "
                "use dict[str, ...] or a list of pairs"
            )
            args = args[1:]
        elif origin is dict:
            args = args[1:]
        for arg in args:
            yield from self.type(arg, f"{path}.*")

    def union(self, tp: Any, path: str, discriminated: bool) -> Iterator[str]:
        members = get_args(tp)
        for member in members:
            yield from self.type(member, path)
        loaded: dict[str, set[Any]] = {}
        for member in members:
            for kind, python in _loads_as(member):
                loaded.setdefault(kind, set()).add(python)
        for kind, pythons in sorted(loaded.items()):
            if len(pythons) > 1 and not (kind == "object" and discriminated):
                names = " and ".join(sorted(_name(p) for p in pythons))
                yield (
                    f"field {path} has type {_name(tp)}: {names} are stored as a JSON {kind}, "
                    "so a saved value may load as the other type; keep one of them"
                    + (" or discriminate the models (Field(discriminator=...))"
                       if kind == "object" else "")
                )  # fmt: skip


def _unalias(tp: Any) -> Any:
    """A ``NewType`` or ``type X = ...`` alias as the type it stands for (JsonValue kept)."""
    if tp is None:
        return NoneType
    while tp is not JsonValue:
        if hasattr(tp, "__supertype__"):
            tp = tp.__supertype__
        elif hasattr(tp, "__value__") and get_origin(tp) is None:
            tp = tp.__value__
        else:
            break
    return tp


def _declares_encoding(metadata: Any) -> bool:
    return any(isinstance(m, PlainSerializer | WrapSerializer) for m in metadata)


def _discriminates(metadata: Any) -> bool:
    return any(
        isinstance(m, Discriminator) or (isinstance(m, FieldInfo) and m.discriminator is not None)
        for m in metadata
    )


def _is_str(tp: Any) -> bool:
    tp = _unalias(tp)
    if get_origin(tp) is Annotated:
        return _is_str(get_args(tp)[0])
    if get_origin(tp) is Literal:
        return all(isinstance(v, str) for v in get_args(tp))
    return tp is str or (isinstance(tp, type) and issubclass(tp, Enum) and _values(tp) == {str})


def _values(enum: type[Enum]) -> set[type]:
    return {type(member.value) for member in enum}


def _literal(tp: Any, path: str) -> Iterator[str]:
    if any(type(v) not in _LEAVES for v in get_args(tp)):
        yield f"field {path} has type {_name(tp)}: its values must be str, int, float, bool or None"


def _enum(enum: type[Enum], path: str) -> Iterator[str]:
    if not _values(enum) <= {str, int}:
        yield (
            f"field {path} has type {enum.__name__}: an Enum whose values are not all str or "
            "int; give its members str or int values"
        )


def _loads_as(tp: Any) -> Iterator[tuple[str, Any]]:
    """The JSON kind ``tp`` is stored as and the type it loads back as, for each of its
    forms (a union or a Literal may have several); nothing for a declared encoding."""
    tp = _unalias(tp)
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *metadata = get_args(tp)
        if not _declares_encoding(metadata):
            yield from _loads_as(inner)
    elif tp is JsonValue:
        yield from (("array", list), ("object", dict), ("string", str), ("boolean", bool),
                    ("number", int), ("null", NoneType))  # fmt: skip
    elif origin in (Union, types.UnionType):
        for member in get_args(tp):
            yield from _loads_as(member)
    elif origin is Literal:
        yield from ((_LEAVES.get(type(v), "?"), type(v)) for v in get_args(tp))  # "?": refused
    elif origin in (list, tuple) or tp in (list, tuple):
        yield "array", origin or tp
    elif origin is dict or tp is dict:
        yield "object", dict
    elif tp in _LEAVES:
        # An int and a float stay apart in JSON text (2 and 2.0; the context rules refuse
        # floats jsonb would print as integers), so ``int | float`` loads each as itself.
        yield _LEAVES[tp], int if tp is float else tp
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        yield "object", tp
    elif isinstance(tp, type) and issubclass(tp, Enum):
        yield from ((_LEAVES[v], tp) for v in _values(tp) if v in _LEAVES)


def _problem(path: str, tp: Any) -> str:
    base = get_origin(tp) or tp
    if tp is Any or tp is object:
        why = "it may hold values JSON cannot; use pydantic.JsonValue for free-form JSON"
    elif tp in (list, tuple, dict):
        why = "declare its item type (list[str], dict[str, JsonValue], ...)"
    else:
        why = _REFUSED.get(base, _UNKNOWN) if isinstance(base, type) else _UNKNOWN
    return f"field {path} has type {_name(tp)}: {why}"


def _name(tp: Any) -> str:
    """``tp`` as written in code, without module prefixes nor Annotated metadata."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is NoneType:
        return "None"
    if origin in (Union, types.UnionType):
        return " | ".join(_name(a) for a in args)
    if origin is Annotated:
        return _name(args[0])
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None and args:
        shown = ", ".join("..." if a is Ellipsis else _name(a) for a in args)
        return f"{_name(origin)}[{shown}]"
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
