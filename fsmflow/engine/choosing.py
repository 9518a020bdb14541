"""Choosing the transition that follows a step.

A function of the definition, the state whose step finished, the trigger the step
returned and the context it left: nothing is read or written. Conditions are evaluated
in the declared order of the candidate transitions; the first whose conditions all hold
is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from fsmflow.errors import InvalidTransitionError, NoTransitionError
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import Transition, WorkflowDefinition


class WaitHere:
    """What :func:`choose_transition` returns when the instance waits in its state."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT: Final = WaitHere()


async def choose_transition(
    definition: WorkflowDefinition,
    instance_id: str,
    state: str,
    trigger: str | None,
    context: WorkflowContext,
) -> Transition | WaitHere | None:
    """The transition to take after ``state``'s step; None completes the instance, and
    :data:`WAIT` means it waits (for an event or a timeout).

    Only ordinary transitions are candidates (event and timeout ones are taken while the
    instance waits). With ``trigger``, only that trigger's (:class:`InvalidTransitionError`
    if ``state`` has none); without, every outgoing one. If none holds, the instance waits
    when ``state`` has event or timeout transitions; else :class:`NoTransitionError` names
    each candidate's unmet conditions.
    """
    outgoing = definition.ordinary_from(state)
    waits = bool(definition.waits_from(state))
    candidates = outgoing if trigger is None else tuple(t for t in outgoing if t.trigger == trigger)
    if trigger is not None and not candidates:
        valid = list(dict.fromkeys(t.trigger for t in outgoing))
        raise InvalidTransitionError(definition.name, instance_id, state, trigger, valid)
    if not candidates:
        return WAIT if waits else None
    chosen, failed = await first_holding(candidates, context.data)
    if chosen is not None:
        return chosen
    if waits:
        return WAIT
    raise NoTransitionError(definition.name, instance_id, state, failed)


async def first_holding(
    candidates: Sequence[Transition], data: dict[str, Any]
) -> tuple[Transition | None, list[str]]:
    """The first of ``candidates`` whose conditions all hold on ``data`` (in order), and
    for each one before it, its unmet conditions (for messages)."""
    failed: list[str] = []
    for transition in candidates:
        unmet = [c for c in transition.conditions if not await c.evaluate(data)]
        if not unmet:
            return transition, failed
        failed.append(f"{transition.describe()}: " + ", ".join(c.describe() for c in unmet))
    return None, failed


def declared_transition(
    definition: WorkflowDefinition, source: str, trigger: str, dest: str | None
) -> Transition | None:
    """The declared transition ``trigger: source -> dest`` (a trigger fired by hand), or
    None if the definition has no such edge."""
    return next(
        (t for t in definition.outgoing(source) if t.trigger == trigger and t.dest == dest),
        None,
    )
