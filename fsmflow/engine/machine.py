"""The state machine: fsmflow's only use of the ``transitions`` library.

One :class:`~transitions.extensions.asyncio.AsyncMachine` per workflow definition, one
model per running instance (``add_model(model, initial=state)`` restores a state without
firing callbacks: that is how an instance resumes). ``auto_transitions=False``: only
declared transitions exist.

The runner moves the machine itself (``set_state``) and joins it as a model only when one
of the methods transitions binds on a model is first used (:meth:`WorkflowMachine.bind`):
binding a trigger and a check per transition and state costs about a third of a
millisecond per instance, which a run that never fires a trigger by hand does not need.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from transitions.extensions.asyncio import AsyncEvent, AsyncEventData, AsyncMachine

from fsmflow.errors import InvalidTransitionError
from fsmflow.model.conditions import Condition
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import WorkflowDefinition


class MachineModel(Protocol):
    """What a model must offer so that manually fired triggers are recorded too, and
    their conditions judged on the context as it is when they fire."""

    @property
    def condition_context(self) -> WorkflowContext:
        """The context that conditions read."""

    async def on_manual_transition(self, trigger: str, source: str, dest: str | None) -> None:
        """Record a transition fired through a trigger method (``await model.next()``)."""


def _condition_callback(condition: Condition) -> Callable[[AsyncEventData], bool | Awaitable[bool]]:
    def check(event: AsyncEventData) -> bool | Awaitable[bool]:
        model: MachineModel = event.model  # type: ignore[assignment]
        return condition.holds(model.condition_context.data)

    check.__qualname__ = f"condition({condition.describe()})"
    return check


async def _record_manual(event: AsyncEventData) -> None:
    transition = event.transition
    assert transition is not None and event.event is not None
    model: MachineModel = event.model  # type: ignore[assignment]
    await model.on_manual_transition(event.event.name, transition.source, transition.dest)


class _CheckedEvent(AsyncEvent):
    """An event that refuses, with fsmflow's error, a trigger invalid in the model's state
    (transitions would raise its ``MachineError`` and log it at ERROR level)."""

    # transitions' stubs type Event.trigger as sync; AsyncEvent's is a coroutine.
    async def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:  # type: ignore[override]
        state = model.state
        if state not in self.transitions:
            raise InvalidTransitionError(
                model.workflow_name,
                model.instance_id,
                state,
                self.name,
                sorted(self.machine.get_triggers(state)),
            )
        return bool(await super().trigger(model, *args, **kwargs))


class _IsState:
    """``model.is_<state>()``, as transitions binds it, in a quarter of the memory of the
    ``functools.partial`` it uses (one per state and running instance adds up)."""

    __slots__ = ("machine", "model", "value")

    def __init__(self, machine: Any, value: Any, model: Any) -> None:
        self.machine, self.value, self.model = machine, value, model

    def __call__(self) -> bool:
        return bool(self.machine.is_state(self.value, self.model))


class _Machine(AsyncMachine):
    event_cls = _CheckedEvent

    def _add_model_to_state(self, state: Any, model: Any) -> None:
        super()._add_model_to_state(state, model)
        name = f"is_{state.name}"
        bound = getattr(model, name, None)
        if isinstance(bound, partial) and bound.func == self.is_state:
            setattr(model, name, _IsState(self, state.value, model))


class WorkflowMachine:
    """The compiled machine of one definition; instances join and leave as models."""

    def __init__(self, definition: WorkflowDefinition) -> None:
        self.definition = definition
        # Stored with every new instance (seq 0): serialized once, not per start.
        self.definition_json = json.dumps(definition.summary())
        self.machine = _Machine(
            model=None,
            states=list(definition.steps),
            initial=None,
            auto_transitions=False,
            send_event=True,
            # Triggers fired by hand go through transitions' own machinery; this hook
            # records them, so the in-memory state never moves without a stored row.
            before_state_change=[_record_manual],
            name=definition.name,
        )
        for t in definition.transitions:
            self.machine.add_transition(
                t.trigger,
                list(t.sources),
                t.dest,  # None: an internal transition, the instance completes in place
                conditions=[_condition_callback(c) for c in t.conditions],  # type: ignore[arg-type]
            )
        events = list(self.machine.events)
        #: What ``add_model`` binds on a model: ``trigger``, ``may_trigger``, one method
        #: and one ``may_`` check per trigger, one ``is_<state>`` per state.
        self.bound_names = frozenset(
            ["trigger", "may_trigger", *events, *(f"may_{e}" for e in events)]
            + [f"is_{state}" for state in definition.steps]
        )
        self._binding: set[int] = set()

    @classmethod
    def of(cls, definition: WorkflowDefinition) -> WorkflowMachine:
        """The machine of ``definition``, built once and kept on the definition."""
        compiled = definition._compiled
        if compiled is None:
            compiled = cls(definition)
            definition._compiled = compiled
        assert isinstance(compiled, WorkflowMachine)
        return compiled

    def attach(self, model: Any, state: str) -> None:
        """Add ``model`` in ``state`` without firing entry callbacks."""
        self.machine.add_model(model, initial=state)

    def bind(self, model: Any, name: str, *, running: bool) -> Any:
        """``model``'s attribute ``name`` (one of :attr:`bound_names`), binding every
        method transitions gives a model on the first use of one of them: the model joins
        the machine in its current state if ``running`` (its run holds the lock), else it
        is bound and removed again, as a model whose run ended is.

        ``AttributeError`` before the model has a state (before its run loads it), as
        while transitions itself binds (it probes the model's attributes).
        """
        if name not in self.bound_names or model.state is None or id(model) in self._binding:
            raise AttributeError(f"{type(model).__name__!r} object has no attribute {name!r}")
        self._binding.add(id(model))
        try:
            self.machine.add_model(model, initial=model.state)
        finally:
            self._binding.discard(id(model))
        if not running:
            self.detach(model)
        return object.__getattribute__(model, name)

    def enter(self, model: Any, state: str) -> None:
        """Stand ``model`` (a run that holds the lock) in ``state``. Methods an earlier run
        of it (or a use outside a run) bound are taken back, so that this run's first use
        binds them again and the model joins the machine, as in its first run."""
        attributes = model.__dict__
        if "trigger" in attributes:  # bound before: every name add_model gave it
            for name in self.bound_names & attributes.keys():
                del attributes[name]
        model.state = state

    def detach(self, model: Any) -> None:
        """Remove ``model`` (when its run ends) if it joined; the methods it was given
        stay bound."""
        if model in self.machine.models:
            self.machine.remove_model(model)

    def move(self, model: Any, dest: str) -> None:
        """Put ``model`` in ``dest``; the runner has already chosen and recorded the edge."""
        self.machine.set_state(dest, model)

    def get_graph_mermaid(self, highlight: str | None = None) -> str:
        """A Mermaid ``stateDiagram-v2`` of the workflow, ``highlight`` marked if given."""
        lines = ["stateDiagram-v2", f"    [*] --> {self.definition.initial_state}"]
        for t in self.definition.transitions:
            label = t.trigger
            if t.conditions:
                label += " [" + " and ".join(c.describe() for c in t.conditions) + "]"
            label = label.replace(":", "\\:")
            for source in t.sources:
                lines.append(f"    {source} --> {t.dest or '[*]'}: {label}")
        for state in self.definition.steps:
            if not self.definition.outgoing(state):
                lines.append(f"    {state} --> [*]")
        if highlight is not None:
            lines.append("    classDef current fill:#f9d71c,stroke:#333,stroke-width:2px")
            lines.append(f"    class {highlight} current")
        return "\n".join(lines) + "\n"
