"""The field types a typed state may hold, without a database: every type JSON holds exactly
round-trips through the state's save and load (the model's JSON text and back) as the same
value of the same type; every type it cannot hold is refused when the definition is built,
naming the model, the field path and the type; a declared encoding makes a datetime fit."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from ipaddress import IPv4Address
from typing import Annotated, Any, Generic, Literal, NewType, TypeVar
from uuid import UUID

import pytest
from pydantic import (
    UUID4,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    PositiveInt,
    SecretStr,
    StrictStr,
    WrapSerializer,
    conint,
    constr,
    create_model,
    field_serializer,
    model_serializer,
)

from fsmflow import DefinitionError, StateValidationError, WorkflowDefinition
from fsmflow.model.context import encode_context
from fsmflow.model.state import StateSpec

T = TypeVar("T")
Sku = NewType("Sku", str)
ID = UUID("12345678-1234-4678-9234-567812345678")


class Color(str, Enum):  # noqa: UP042  # the mixin form, as older code writes it
    RED = "red"
    BLUE = "blue"


class Size(IntEnum):
    S = 1
    L = 3


class Mood(StrEnum):
    CALM = "calm"


class Level(Enum):  # a plain Enum of ints: stored as its value
    LOW = 1
    HIGH = 2


class Item(BaseModel):
    sku: str
    qty: int = 1


class Tree(BaseModel):  # a recursive model
    label: str
    children: list[Tree] = []


class Box(BaseModel, Generic[T]):
    content: T


class Card(BaseModel):
    kind: Literal["card"] = "card"
    last4: str


class Cash(BaseModel):
    kind: Literal["cash"] = "cash"
    amount_cents: int


class Every(BaseModel):
    """A state holding every allowed field type, each with a value that could go wrong."""

    text: str = "ünïcode ✓ \N{GRINNING FACE}"
    count: int = 2**70  # beyond 64 bits
    ratio: float = 0.1
    flag: bool = True
    nothing: None = None
    choice: Literal["a", "b"] = "b"
    mixed_literal: Literal[1, "one", True, None] = 1
    color: Color = Color.BLUE
    size: Size = Size.L
    mood: Mood = Mood.CALM
    level: Level = Level.HIGH
    uid: UUID = ID
    uid4: UUID4 = ID
    numbers: list[int] = [3, 1, 2]
    pair: tuple[int, str] = (1, "x")
    many: tuple[float, ...] = (1.5, 2.0)
    empty: tuple[()] = ()
    prices: dict[str, float] = {"b": 2.5, "a": 1.0}
    by_color: dict[Color, int] = {Color.RED: 1}
    by_name: dict[Literal["x", "y"], list[str]] = {"y": ["z"]}
    item: Item = Item(sku="a")
    items: list[Item] = [Item(sku="b", qty=2)]
    nested: dict[str, list[dict[str, Item]]] = {"k": [{"j": Item(sku="c")}]}
    maybe: int | None = None
    maybe_set: Item | None = Item(sku="d")
    either: int | str = "5"  # a str that looks like an int stays a str
    number: int | float = 2.0  # a float equal to an int stays a float
    tree: Tree = Tree(label="root", children=[Tree(label="leaf")])
    box: Box[int] = Box[int](content=7)
    payment: Card | Cash = Field(default=Cash(amount_cents=5), discriminator="kind")
    payments: list[Annotated[Card | Cash, Field(discriminator="kind")]] = [Card(last4="4242")]
    positive: PositiveInt = 3
    bounded: conint(ge=0, le=10) = 10  # type: ignore[valid-type]
    code: constr(pattern=r"^[A-Z]+$") = "ABC"  # type: ignore[valid-type]
    strict: StrictStr = "s"
    annotated: Annotated[int, Field(ge=0)] = 0
    sku: Sku = Sku("s-1")
    json_value: JsonValue = {"a": [1, 2.5, "x", None, True, {"b": {}}]}


ALLOWED: list[tuple[str, Any, Any]] = [
    (name, info.annotation if not info.metadata else Annotated[info.annotation, *info.metadata],
     info.get_default())
    for name, info in Every.model_fields.items()
    if name not in ("payment",)  # its discriminator lives on the field: covered by Every
]  # fmt: skip


def spec_of(model: type[BaseModel]) -> StateSpec:
    spec = WorkflowDefinition("types", ["save"], state_model=model).state_spec
    assert spec is not None
    return spec


def save_and_load(spec: StateSpec, state: BaseModel) -> tuple[dict[str, Any], BaseModel]:
    """The state as the store keeps it (its JSON text, checked by the context rules) and as
    the next step gets it."""
    stored = spec.dump(state, "types", "i", "the saved state")
    text = encode_context(stored)
    return json.loads(text), spec.validate(json.loads(text), "types", "i", "the loaded state")


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types all the way down (``Color.RED == "red"`` is not)."""
    return bool(a == b) and repr(a) == repr(b)


def test_every_allowed_type_round_trips_exactly() -> None:
    state = Every()
    stored, loaded = save_and_load(spec_of(Every), state)
    assert same(loaded, state)
    assert stored["pair"] == [1, "x"] and stored["uid"] == str(ID) and stored["color"] == "blue"
    assert stored["level"] == 2 and stored["count"] == 2**70
    again, reloaded = save_and_load(spec_of(Every), loaded)
    assert again == stored and same(reloaded, state)


@pytest.mark.parametrize(("name", "annotation", "value"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_each_allowed_type_alone_round_trips(name: str, annotation: Any, value: Any) -> None:
    model = create_model("One", x=(annotation, ...))
    state = model(x=value)
    assert same(save_and_load(spec_of(model), state)[1], state), name


REFUSED: list[tuple[Any, str, str, str]] = [
    # annotation, path under Shop.inner, type as named, what to use
    (datetime, "x", "datetime", "ISO 8601 str"),
    (date, "x", "date", "ISO 8601 str"),
    (time, "x", "time", "ISO 8601 str"),
    (timedelta, "x", "timedelta", "seconds"),
    (Decimal, "x", "Decimal", "int (of cents, say) or a str"),
    (bytes, "x", "bytes", "base64 str"),
    (bytearray, "x", "bytearray", "base64 str"),
    (set[int], "x", "set[int]", "use a list"),
    (frozenset[str], "x", "frozenset[str]", "use a list"),
    (complex, "x", "complex", "two floats"),
    (Any, "x", "Any", "pydantic.JsonValue"),
    (list, "x", "list", "declare its item type"),
    (SecretStr, "x", "SecretStr", "not a type JSON holds exactly"),
    (IPv4Address, "x", "IPv4Address", "not a type JSON holds exactly"),
    (list[datetime], "x.*", "datetime", "ISO 8601 str"),
    (dict[str, set[str]], "x.*", "set[str]", "use a list"),
    (tuple[int, Decimal], "x.*", "Decimal", "a str"),
    (Decimal | None, "x", "Decimal", "a str"),
    (Annotated[bytes, Field(min_length=1)], "x", "bytes", "base64 str"),
    (dict[int, str], "x", "dict[int, str]", "JSON object keys are strings"),
    (Literal[b"x"], "x", "Literal[b'x']", "values must be str, int, float, bool or None"),
    (str | UUID, "x", "str | UUID", "UUID and str are stored as a JSON string"),
    (list[int] | tuple[int, ...], "x", "list[int] | tuple[int, ...]", "list and tuple"),
    (Color | str, "x", "Color | str", "Color and str are stored as a JSON string"),
    (Card | Cash, "x", "Card | Cash", "discriminate the models"),
]


@pytest.mark.parametrize(
    ("annotation", "path", "shown", "advice"), REFUSED, ids=[r[2] + ":" + r[1] for r in REFUSED]
)
def test_each_refused_type_names_the_model_the_field_path_and_the_type(
    annotation: Any, path: str, shown: str, advice: str
) -> None:
    config = ConfigDict(arbitrary_types_allowed=True)
    inner = create_model("Inner", __config__=config, x=(annotation, ...))
    shop = create_model("Shop", name=(str, ...), inner=(inner, ...))
    with pytest.raises(DefinitionError) as refused:
        WorkflowDefinition("types", ["save"], state_model=shop)
    [problem] = refused.value.problems
    assert problem.startswith(f"state_model Shop: field inner.{path} has type {shown}: "), problem
    assert advice in problem and "'types'" in str(refused.value)


def test_every_refused_field_is_listed_in_the_one_error() -> None:
    class Ledger(BaseModel):
        opened: datetime
        total: Decimal
        lines: list[Item]
        tags: set[str]
        raw: bytes

    with pytest.raises(DefinitionError) as refused:
        WorkflowDefinition("types", ["save"], state_model=Ledger)
    assert [p.split(":")[1] for p in refused.value.problems] == [
        " field opened has type datetime",
        " field total has type Decimal",
        " field tags has type set[str]",
        " field raw has type bytes",
    ]


def iso(value: datetime) -> str:
    return value.isoformat()


class Stamped(BaseModel):
    created: Annotated[datetime, PlainSerializer(iso)]
    seen: list[Annotated[datetime, WrapSerializer(lambda v, _: v.isoformat())]] = []
    updated: datetime | None = None
    total: Annotated[Decimal, PlainSerializer(str)] = Decimal("1.10")

    @field_serializer("updated")
    def _updated(self, value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()


def test_a_datetime_with_a_declared_encoding_is_accepted_and_round_trips() -> None:
    when = datetime(2024, 2, 29, 23, 59, 1, 123456, tzinfo=timezone(timedelta(hours=-3)))
    state = Stamped(created=when, seen=[when.replace(tzinfo=None)], updated=when)
    stored, loaded = save_and_load(spec_of(Stamped), state)
    assert stored["created"] == "2024-02-29T23:59:01.123456-03:00" and stored["total"] == "1.10"
    assert loaded == state and loaded.created.utcoffset() == timedelta(hours=-3)
    assert type(loaded.total) is Decimal and type(loaded.seen[0]) is datetime


def test_a_model_serializer_declares_the_encoding_of_the_whole_model() -> None:
    class Money(BaseModel):
        amount: Decimal

        @model_serializer
        def _json(self) -> dict[str, str]:
            return {"amount": str(self.amount)}

    model = create_model("Wallet", money=(Money, ...))
    state = model(money=Money(amount=Decimal("0.30")))
    assert same(save_and_load(spec_of(model), state)[1], state)


def test_a_declared_encoding_that_loses_information_is_refused_at_save() -> None:
    class Dated(BaseModel):  # a datetime encoded as its date only: the time is lost
        at: Annotated[datetime, PlainSerializer(lambda v: v.date().isoformat())]

    spec = spec_of(Dated)
    with pytest.raises(StateValidationError, match="at: does not round-trip through JSON"):
        spec.dump(Dated(at=datetime(2024, 1, 2, 3, 4)), "types", "i", "the saved state")
