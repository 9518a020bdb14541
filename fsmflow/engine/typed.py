"""The steps of a typed workflow: each gets its validated state model, returns the model.

The engine works with :class:`WorkflowContext` dicts throughout; a typed workflow's steps
are wrapped so that the step receives ``state_model.model_validate(context.data)`` (a sync
step stays sync, an async one async: :func:`is_async_callable` still decides where it
runs), and what it returns is turned back into a context by :func:`typed_result` where an
ordinary step's result is judged: before anything is written, and a state that does not
validate fails the instance like a context that breaks the context rules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeAlias

from pydantic import BaseModel

from fsmflow.engine.recorder import Position
from fsmflow.engine.steps import is_async_callable
from fsmflow.errors import StateValidationError
from fsmflow.model.context import WorkflowContext, encode_context, seed_json
from fsmflow.model.definition import WorkflowDefinition, WorkflowStep
from fsmflow.model.records import TransitionRecord, WorkflowState
from fsmflow.model.state import StateSpec


def typed_steps(
    steps: Mapping[str, WorkflowStep], spec: StateSpec, workflow: str, instance_id: str
) -> dict[str, WorkflowStep]:
    """``steps`` with each one's function called with its state model, not the context."""
    return {
        name: WorkflowStep(
            name=step.name,
            execute=_typed(step.execute, spec, workflow, instance_id, name),
            retry=step.retry,
        )
        for name, step in steps.items()
    }


def _typed(
    execute: Callable[[Any], Any], spec: StateSpec, workflow: str, instance_id: str, state: str
) -> Callable[[WorkflowContext], Any]:
    where = f"the input of step {state!r}"

    def model(context: WorkflowContext) -> BaseModel:
        return spec.validate(context.data, workflow, instance_id, where)

    if is_async_callable(execute):

        @functools.wraps(execute)
        async def run_async(context: WorkflowContext) -> Any:
            return await execute(model(context))

        return run_async

    @functools.wraps(execute)
    def run(context: WorkflowContext) -> Any:
        return execute(model(context))  # an awaitable it returns is awaited by StepCall

    return run


def typed_result(
    result: Any, spec: StateSpec, workflow: str, instance_id: str, state: str
) -> tuple[WorkflowContext, str | None]:
    """``(context, trigger)`` from what a typed step returned: its model, or ``(model,
    trigger or None)``; :class:`StateValidationError` for anything else or an invalid state."""
    where = f"the state returned by step {state!r}"
    trigger: Any = None
    if isinstance(result, tuple) and len(result) == 2:
        result, trigger = result
    if trigger is not None and not isinstance(trigger, str):
        raise StateValidationError(
            workflow, instance_id, where, spec.model.__name__,
            [f"(the trigger): a {type(trigger).__name__}, not a str or None"],
        )  # fmt: skip
    data = spec.dump(result, workflow, instance_id, where)
    return WorkflowContext(data=data), trigger


Seed: TypeAlias = WorkflowContext | Mapping[str, Any] | BaseModel | None


class TypedState:
    """What the runner does with a definition's state around the steps: the seed, the
    context an instance resumes with (upgraded), the model :class:`WorkflowState` holds.
    For the dict API (no ``state_model``) each is what it always was."""

    def __init__(self, definition: WorkflowDefinition, max_bytes: int) -> None:
        self._spec = definition.state_spec
        self._name = definition.name
        self._max_bytes = max_bytes

    def seed(self, context: Seed) -> Callable[[], str]:
        """The seed's JSON text, validated now; for a typed workflow without a seed, when
        it starts an instance (a resumed one needs none, and its model may have no defaults)."""

        def text() -> str:
            return seed_json(context, max_bytes=self._max_bytes, state=self._spec,
                             workflow=self._name)  # fmt: skip

        if context is None and self._spec is not None:
            return text
        known = text()
        return lambda: known

    def restore(self, position: Position, record: TransitionRecord) -> WorkflowContext:
        """Stand ``position`` at ``record`` and return the context to resume with: a typed
        state stored under an older state_version upgraded (so the next row, a failed one
        too, stores the upgraded state; the stored rows are left as they are)."""
        position.restore(record)
        if self._spec is None:
            return WorkflowContext(data=record.context)
        upgraded = self._spec.upgrade(
            record.context, record.state_version, self._name, record.instance_id
        )
        if upgraded is None:
            return WorkflowContext(data=record.context)
        where = "the upgraded state"
        position.context_json = encode_context(upgraded, max_bytes=self._max_bytes, where=where)
        return WorkflowContext(data=upgraded)

    def model(self, context: WorkflowContext, instance_id: str) -> BaseModel | None:
        """The model instance of a typed workflow's ``context`` (None for the dict API)."""
        if self._spec is None:
            return None
        return self._spec.validate(context.data, self._name, instance_id, "the instance's state")

    def finished(self, record: TransitionRecord, context: WorkflowContext) -> WorkflowState:
        """The state of an instance that had ended at ``record`` (``context``: restored)."""
        state = self.model(context, record.instance_id)
        return replace(WorkflowState.from_record(record), context=context, state=state)
