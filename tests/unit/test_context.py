"""The context codec: what may be stored, what is refused (with its key path), and sizes.

No database: ``encode_context`` is the only serializer fsmflow uses, and it runs before any
SQL. The same matrix goes through a real database in ``tests/integration/test_bad_input.py``.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import math
import uuid
from types import MappingProxyType
from typing import Any

import pytest

from fsmflow import ContextError, ContextSerializationError, ContextTooLargeError, WorkflowContext
from fsmflow.model.context import (
    MAX_DEPTH,
    check_json_value,
    compact_json,
    decode_context,
    encode_context,
    seed_json,
)

SENTINEL = "Top-Secret-Value-1234"  # part of a refused value: must never be shown


class Color(enum.Enum):
    RED = "red"


class Text(str):
    """A str subclass: json.dumps would store it, but it would come back as a plain str."""


# (id, context data, key path named in the error, fragment of the reason)
BAD: list[tuple[str, dict[Any, Any], str, str]] = [
    ("datetime", {"when": datetime.datetime(2024, 1, 2, 3, 4)}, "ctx['when']", "datetime"),
    ("date", {"order": {"due": datetime.date(2024, 1, 2)}}, "ctx['order']['due']", "date"),
    ("set", {"tags": {"a", "b"}}, "ctx['tags']", "set"),
    ("frozenset", {"tags": frozenset({1})}, "ctx['tags']", "frozenset"),
    ("bytes", {"blob": SENTINEL.encode()}, "ctx['blob']", "bytes"),
    ("bytearray", {"blob": bytearray(b"x")}, "ctx['blob']", "bytearray"),
    ("object", {"thing": object()}, "ctx['thing']", "object"),
    ("decimal", {"price": decimal.Decimal("1.10")}, "ctx['price']", "Decimal"),
    ("uuid", {"id": uuid.UUID(int=1)}, "ctx['id']", "UUID"),
    ("enum", {"color": Color.RED}, "ctx['color']", "Color"),
    ("str subclass", {"name": Text(SENTINEL)}, "ctx['name']", "Text"),
    ("tuple", {"pair": (1, 2)}, "ctx['pair']", "tuple"),
    ("tuple in list", {"items": [1, 2, (3, 4)]}, "ctx['items'][2]", "tuple"),
    ("NaN", {"score": math.nan}, "ctx['score']", "not finite"),
    ("+Infinity", {"a": {"b": [math.inf]}}, "ctx['a']['b'][0]", "not finite"),
    ("-Infinity", {"low": -math.inf}, "ctx['low']", "not finite"),
    ("float >= 1e16", {"big": 1e16}, "ctx['big']", "1e16"),
    ("negative zero", {"z": -0.0}, "ctx['z']", "negative zero"),
    ("NUL in a string", {"note": f"{SENTINEL}\x00tail"}, "ctx['note']", "NUL"),
    ("NUL in a nested string", {"a": [{"b": "x\x00"}]}, "ctx['a'][0]['b']", "NUL"),
    ("NUL in a key", {"a": {"k\x00ey": 1}}, "ctx['a'] key 'k\\x00ey'", "NUL"),
    ("lone surrogate", {"text": f"{SENTINEL}\ud800"}, "ctx['text']", "surrogate"),
    ("lone surrogate in a key", {"\udfff": 1}, "ctx key '\\udfff'", "surrogate"),
    ("int key", {1: "one"}, "ctx[1]", "key of type int"),
    ("bool key", {"a": {True: "yes"}}, "ctx['a'][True]", "key of type bool"),
    ("None key", {None: 1}, "ctx[None]", "key of type NoneType"),
    ("tuple key", {(1, 2): 1}, "ctx[(1, 2)]", "key of type tuple"),
    ("str subclass key", {Text("k"): 1}, "ctx['k']", "key of type Text"),
    ("huge int", {"n": 10**5000}, "ctx['n']", "int"),
]


@pytest.mark.parametrize(("data", "path", "reason"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_unstorable_values_are_refused_naming_the_key_path(
    data: dict[Any, Any], path: str, reason: str
) -> None:
    with pytest.raises(ContextSerializationError) as raised:
        encode_context(data, where="context returned by step 'think'")
    error = raised.value
    assert error.path == path
    assert reason in error.reason
    assert str(error).startswith(f"{path}: ")
    assert "(context returned by step 'think')" in str(error)
    assert SENTINEL not in str(error) and SENTINEL not in repr(error.args)


@pytest.mark.parametrize("data", [[1, 2], "text", None, (("a", 1),)], ids=repr)
def test_context_data_must_be_a_dict(data: Any) -> None:
    with pytest.raises(ContextSerializationError, match="must be a dict") as raised:
        encode_context(data)
    assert raised.value.path == "ctx"


GOOD: list[Any] = [
    {},
    {"a": None, "b": True, "c": False, "d": 0, "e": -1, "f": 2**63, "g": -(10**30)},
    {"pi": 3.141592653589793, "tiny": 5e-324, "small": 1e-7, "almost": 9.999999999999998e15},
    {"zero": 0.0, "one": 1.0, "third": 1 / 3},
    {"nested": {"list": [[], {}, [1, [2, [3]]]], "dict": {"x": {"y": {"z": "deep"}}}}},
    {"unicode": "ünïcødé 🙂 中文 \u2028\ufeff", "escapes": '"\\/\b\f\n\r\t\x01\x1f\x7f'},
    {"🙂 key": 1, "": "empty key", "with.dot": 2, "'; DROP TABLE x; --": "$1"},
]


@pytest.mark.parametrize("data", GOOD, ids=range(len(GOOD)))
def test_json_values_round_trip_through_the_codec(data: dict[str, Any]) -> None:
    text = encode_context(data)
    back = decode_context(text)
    assert back == data
    assert json.dumps(back, sort_keys=True) == json.dumps(data, sort_keys=True)
    for key in data:  # floats stay floats, ints stay ints
        assert type(back[key]) is type(data[key])


@pytest.mark.parametrize("data", GOOD, ids=range(len(GOOD)))
def test_the_stored_text_is_what_json_dumps_writes(data: dict[str, Any]) -> None:
    # encode_context uses a C encoder built once; the text must not change with that
    assert encode_context(data) == compact_json(data, allow_nan=False)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b": [1, 2]}',
        ' {"a":1} ',
        '{"a":1}\n',
        '{"a":1}{"b":2}',
        '{"a":',
        "\ufeff{}",
        "[1]",
        '"s"',
        "",
        "{} x",
    ],
)
def test_decoding_gives_what_json_loads_gives_or_its_error(text: str) -> None:
    # decode_context calls json's C scanner itself; anything but one bare value falls
    # back to json.loads, which decides (a value, or its error)
    try:
        expected: Any = json.loads(text)
    except ValueError as exc:
        with pytest.raises(ValueError) as raised:
            decode_context(text)
        assert str(raised.value) == str(exc)
        return
    if isinstance(expected, dict):
        assert decode_context(text) == expected
    else:
        with pytest.raises(ValueError, match="not a JSON object"):
            decode_context(text)


def test_encoding_is_compact_utf8_json() -> None:
    assert encode_context({"a": [1, 2], "é": "ü"}) == '{"a":[1,2],"é":"ü"}'


def test_too_large_names_both_sizes() -> None:
    data = {"blob": "x" * 2000}
    size = len(encode_context(data))
    with pytest.raises(ContextTooLargeError) as raised:
        encode_context(data, max_bytes=size - 1, where="initial context")
    error = raised.value
    assert (error.size, error.limit) == (size, size - 1)
    assert f"{size} bytes" in str(error) and f"{size - 1} bytes" in str(error)
    assert "FSMFLOW_MAX_CONTEXT_BYTES" in str(error) and "initial context" in str(error)
    assert "xxxx" not in str(error)
    assert encode_context(data, max_bytes=size) is not None  # the limit itself is allowed


def test_size_is_counted_in_utf8_bytes() -> None:
    data = {"s": "é" * 1000}  # 1000 characters, 2000 bytes
    size = len(encode_context(data).encode("utf-8"))
    assert size > 2000
    with pytest.raises(ContextTooLargeError) as raised:
        encode_context(data, max_bytes=size - 1)
    assert raised.value.size == size


def test_context_errors_share_a_root() -> None:
    assert issubclass(ContextSerializationError, ContextError)
    assert issubclass(ContextTooLargeError, ContextError)


def test_context_repr_shows_keys_not_values() -> None:
    context = WorkflowContext(data={"card": SENTINEL, "amount": 3})
    for text in (repr(context), str(context), f"{context}"):
        assert SENTINEL not in text
        assert "card" in text and "amount" in text


def test_context_defaults_to_an_empty_dict_per_instance() -> None:
    first, second = WorkflowContext(), WorkflowContext()
    first.data["x"] = 1
    assert second.data == {}


# -- over-deep and circular contexts, and the seed ----------------------------------------


def nested(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    inner = data
    for _ in range(depth - 1):
        inner["a"] = {}
        inner = inner["a"]
    return data


def test_a_context_at_the_depth_limit_is_accepted() -> None:
    assert decode_context(encode_context(nested(MAX_DEPTH))) == nested(MAX_DEPTH)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 990, 5000])
def test_an_over_deep_context_names_the_path_prefix_and_the_limit(depth: int) -> None:
    with pytest.raises(ContextSerializationError) as raised:
        encode_context(nested(depth))
    message = str(raised.value)
    assert message.startswith("ctx['a']['a']['a']"), message
    assert f"{MAX_DEPTH} levels" in message and len(message) < 500


def test_a_deep_list_is_refused_too() -> None:
    data: list[Any] = []
    inner = data
    for _ in range(2000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(ContextSerializationError, match=r"ctx\['l'\]\[0\]\[0\]"):
        encode_context({"l": data})


def test_a_circular_context_is_refused() -> None:
    data: dict[str, Any] = {"x": 1, "items": []}
    data["items"].append({"back": data})
    with pytest.raises(ContextSerializationError, match="levels") as raised:
        encode_context(data)
    assert raised.value.path.startswith("ctx['items'][0]['back']['items']")
    with pytest.raises(ContextSerializationError):
        check_json_value(data)


@pytest.mark.parametrize(
    ("seed", "expected"),
    [
        (None, "{}"),
        ({"b": 1, "a": [2]}, '{"b":1,"a":[2]}'),
        (MappingProxyType({"k": "v"}), '{"k":"v"}'),
        (WorkflowContext(data={"z": None}), '{"z":null}'),
    ],
    ids=["None", "dict", "Mapping", "WorkflowContext"],
)
def test_seed_json_accepts_none_dicts_mappings_and_contexts(seed: Any, expected: str) -> None:
    assert seed_json(seed, max_bytes=1000) == expected


@pytest.mark.parametrize("seed", [[("a", 1)], "text", 3, {"a"}, b"{}"], ids=repr)
def test_seed_json_refuses_anything_else(seed: Any) -> None:
    with pytest.raises(ContextSerializationError, match="the seed context must be a dict"):
        seed_json(seed, max_bytes=1000)


def test_seed_json_validates_and_caps_the_seed() -> None:
    with pytest.raises(ContextSerializationError, match=r"ctx\['when'\]"):
        seed_json({"when": datetime.date(2026, 1, 1)}, max_bytes=1000)
    with pytest.raises(ContextTooLargeError):
        seed_json({"big": "x" * 100}, max_bytes=50)
