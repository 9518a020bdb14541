"""Typed state: a workflow's pydantic ``state_model``, its ``state_version`` and the
``upgrades`` that bring a state stored under an older version to the current one.

The stored form is the model's JSON (``model_dump(mode="json")``), so the history stays
readable in SQL and the context rules hold for it; a state is validated whenever it crosses
the line between the step code and the store: on the way in (seed, a resumed or forked
instance, a step's input) and on the way out (a step's result), before anything is written.
Messages name the model's field paths and the kind of problem, never a value.

The model's field types are checked when the definition is built
(:mod:`fsmflow.model.state_types`): only types whose JSON form loads back as the same value
are accepted; a field that declares its own encoding is left to the round-trip check that
every save makes.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from pydantic import BaseModel, ValidationError

from fsmflow.errors import StateValidationError, StateVersionError
from fsmflow.model.state_types import type_problems

# An upgrade takes the stored JSON dict of version n and returns the dict of version n + 1.
Upgrade: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]


def state_problems(model: object, version: object, upgrades: object) -> Iterator[str]:
    """Why ``state_model``, ``state_version`` and ``upgrades`` do not fit together."""
    if isinstance(version, bool) or not isinstance(version, int):
        yield f"state_version must be an int, not {type(version).__name__}"
        return
    if version < 1:
        yield f"state_version={version}: it must be at least 1"
    if model is None:
        if upgrades:
            yield "upgrades are given but no state_model: upgrades migrate a typed state"
        return
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        yield f"state_model must be a pydantic BaseModel subclass, not {model!r}"
    else:
        yield from type_problems(model)
    if upgrades is not None and not isinstance(upgrades, Mapping):
        yield f"upgrades must be a dict version -> function, not {type(upgrades).__name__}"
        return
    yield from _chain_problems(version, dict(upgrades or {}))


def _chain_problems(version: int, upgrades: dict[Any, Any]) -> Iterator[str]:
    wanted = set(range(1, version))
    for key in sorted(wanted - set(upgrades)):
        yield (
            f"upgrades has no entry for version {key}: state_version={version} needs "
            f"upgrades[{key}] (version {key} -> {key + 1}); the chain must have no gap"
        )
    for key in sorted((k for k in upgrades if k not in wanted), key=repr):
        yield f"upgrades[{key!r}]: only versions 1 to {version - 1} are upgraded"
    for key, upgrade in upgrades.items():
        if key in wanted and not callable(upgrade):
            yield f"upgrades[{key}] is not callable"


def state_spec(
    model: Any, version: int, upgrades: Mapping[int, Upgrade] | None
) -> StateSpec | None:
    """The :class:`StateSpec` of a definition that passed :func:`state_problems`."""
    return None if model is None else StateSpec(model, version, dict(upgrades or {}))


def _fields(exc: ValidationError) -> list[str]:
    """``loc: kind`` for each pydantic error: the input value is left out on purpose."""
    return [
        f"{'.'.join(str(p) for p in e['loc']) or '(the state itself)'}: {e['type']}"
        for e in exc.errors(include_url=False, include_input=False)
    ]


def _equal(saved: Any, loaded: Any) -> bool:
    """Whether ``loaded`` is ``saved`` again: models field by field (their private
    attributes are not stored), containers item by item, anything else by ``==``."""
    if isinstance(saved, BaseModel):
        return type(saved) is type(loaded) and all(
            _equal(getattr(saved, k, None), getattr(loaded, k, None))
            for k in type(saved).model_fields
        ) and (saved.model_extra or {}) == (loaded.model_extra or {})  # fmt: skip
    if isinstance(saved, list | tuple):
        return (
            type(saved) is type(loaded)
            and len(saved) == len(loaded)
            and all(_equal(a, b) for a, b in zip(saved, loaded, strict=True))
        )
    if isinstance(saved, dict):
        return (
            isinstance(loaded, dict)
            and saved.keys() == loaded.keys()
            and all(_equal(v, loaded[k]) for k, v in saved.items())
        )
    return bool(saved == loaded)


@dataclass(frozen=True, slots=True)
class StateSpec:
    """A workflow's typed state: the model, its version and the upgrade chain."""

    model: type[BaseModel]
    version: int
    upgrades: Mapping[int, Upgrade] = field(default_factory=dict)

    def validate(self, data: Any, workflow: str, instance_id: str | None, where: str) -> BaseModel:
        """``data`` (a JSON dict) as a model instance; :class:`StateValidationError` if not."""
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise StateValidationError(
                workflow, instance_id, where, self.model.__name__, _fields(exc)
            ) from None

    def dump(
        self, value: Any, workflow: str, instance_id: str | None, where: str
    ) -> dict[str, Any]:
        """The JSON form of ``value``, a model instance, validated again (a field assigned
        after construction is not validated by pydantic) and checked to round-trip."""
        if not isinstance(value, self.model):
            raise StateValidationError(
                workflow, instance_id, where, self.model.__name__,
                [f"(the state itself): a {type(value).__name__}, not a {self.model.__name__}"],
            )  # fmt: skip
        first = self._json(value, workflow, instance_id, where)
        loaded = self.validate(first, workflow, instance_id, where)
        again = self._json(loaded, workflow, instance_id, where)
        # Both checks: the JSON must be stable, and it must load as the value saved (a
        # declared encoding may drop information, e.g. a datetime stored as its date).
        changed = sorted(
            {k for k in {*first, *again} if first.get(k) != again.get(k)}
            | {k for k in type(value).model_fields if not _equal(getattr(value, k, None),
                                                                 getattr(loaded, k, None))}
        )  # fmt: skip
        if changed:
            raise StateValidationError(
                workflow, instance_id, where, self.model.__name__,
                [f"{name}: does not round-trip through JSON (declare a JSON encoding for it)"
                 for name in changed],
            )  # fmt: skip
        result: dict[str, Any] = first
        return result

    def _json(self, value: BaseModel, workflow: str, instance_id: str | None, where: str) -> Any:
        try:
            with warnings.catch_warnings():
                # An invalid assigned value is reported by the validation that follows.
                warnings.simplefilter("ignore")
                return value.model_dump(mode="json", warnings=False)
        except Exception as exc:  # PydanticSerializationError: a value JSON cannot hold
            raise StateValidationError(
                workflow, instance_id, where, self.model.__name__,
                [f"(a field): cannot be serialized to JSON ({type(exc).__name__})"],
            ) from None  # fmt: skip

    def upgrade(
        self, data: dict[str, Any], stored: int | None, workflow: str, instance_id: str
    ) -> dict[str, Any] | None:
        """The JSON form of a state stored under version ``stored`` (None: version 1)
        brought to :attr:`version` and validated; None when it already is at it.

        :class:`StateVersionError` for a version newer than the code's, an upgrade that
        raises or returns no dict, or a result that does not validate.
        """
        stored = 1 if stored is None else stored
        if stored == self.version:
            return None
        if stored > self.version:
            raise StateVersionError(
                workflow, instance_id, stored, self.version,
                "it was written by a newer program; run that one (or one whose state_version "
                "is at least as high)",
            )  # fmt: skip
        upgraded = copy.deepcopy(data)  # an upgrade may change its argument in place
        for n in range(stored, self.version):
            upgraded = self._step(n, upgraded, stored, workflow, instance_id)
        try:
            model = self.validate(upgraded, workflow, instance_id, "the upgraded state")
            return self.dump(model, workflow, instance_id, "the upgraded state")
        except StateValidationError as exc:
            fields = "; ".join(exc.fields)
            detail = f"the upgraded state is not a valid {self.model.__name__}: {fields}"
            raise StateVersionError(workflow, instance_id, stored, self.version, detail) from None

    def _step(
        self, n: int, data: dict[str, Any], stored: int, workflow: str, instance_id: str
    ) -> dict[str, Any]:
        try:
            result = self.upgrades[n](data)
        except Exception as exc:
            detail = f"upgrades[{n}] (version {n} -> {n + 1}) raised {type(exc).__name__}"
            raise StateVersionError(workflow, instance_id, stored, self.version, detail) from exc
        if type(result) is not dict:
            detail = f"upgrades[{n}] returned a {type(result).__name__}, not a dict"
            raise StateVersionError(workflow, instance_id, stored, self.version, detail)
        return result
