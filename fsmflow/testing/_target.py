"""Naming a workflow so that a child process can import it: ``"module:attribute"``.

A crash test runs the workflow in fresh processes, so it is named, not passed: the target
names a :class:`WorkflowDefinition` (and ``steps`` names its steps), or a factory that
takes no argument and returns ``(definition, steps)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from fsmflow.engine.steps import StepsArgument
from fsmflow.errors import ConfigError
from fsmflow.model.definition import WorkflowDefinition

__all__ = ["load_workflow"]


def _resolve(name: str, what: str) -> Any:
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(
            f"{what} {name!r} is not 'module:attribute' (e.g. 'myapp.workflows:DEFINITION')"
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{what} {name!r}: cannot import module {module_name!r} ({exc}); the child "
            "processes import it with the test's sys.path"
        ) from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"{what} {name!r}: {module_name} has no {attribute!r}") from None
    return found


def load_workflow(target: str, steps: str | None) -> tuple[WorkflowDefinition, StepsArgument]:
    """The definition and steps ``target`` (and ``steps``) name; :class:`ConfigError`
    saying what is wrong with the names otherwise."""
    found = _resolve(target, "target")
    if isinstance(found, WorkflowDefinition):
        if steps is None:
            raise ConfigError(
                f"target {target!r} is a WorkflowDefinition: name its steps too, "
                "steps='module:STEPS' (a dict state -> step, or a list of WorkflowStep)"
            )
        definition, found_steps = found, _resolve(steps, "steps")
    elif callable(found):
        if steps is not None:
            raise ConfigError(f"target {target!r} is a factory: it returns the steps itself")
        made = found()
        if not (isinstance(made, tuple) and len(made) == 2):
            raise ConfigError(f"factory {target!r} must return (WorkflowDefinition, steps)")
        definition, found_steps = made
    else:
        raise ConfigError(
            f"target {target!r} is a {type(found).__name__}: name a WorkflowDefinition "
            "(with steps=...) or a factory returning (definition, steps)"
        )
    if not isinstance(definition, WorkflowDefinition):
        raise ConfigError(f"factory {target!r} returned no WorkflowDefinition first")
    if not isinstance(found_steps, Mapping | Sequence):
        raise ConfigError(f"the steps of {target!r} are neither a dict nor a list")
    return definition, found_steps
