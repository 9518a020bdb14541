"""Choosing the transition that follows a step.

A function of the definition, the state whose step finished, the trigger the step
returned and the context it left: nothing is read or written. Conditions are evaluated
in the declared order of the candidate transitions; the first whose conditions all hold
is taken.
"""

from __future__ import annotations

from fsmflow.errors import InvalidTransitionError, NoTransitionError
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import Transition, WorkflowDefinition


async def choose_transition(
    definition: WorkflowDefinition,
    instance_id: str,
    state: str,
    trigger: str | None,
    context: WorkflowContext,
) -> Transition | None:
    """The transition to take after ``state``'s step; None completes the instance.

    With ``trigger``, only that trigger's transitions are candidates
    (:class:`InvalidTransitionError` if ``state`` has none); without, every outgoing one.
    :class:`NoTransitionError` names each candidate's unmet conditions if none holds.
    """
    outgoing = definition.outgoing(state)
    candidates = outgoing if trigger is None else tuple(t for t in outgoing if t.trigger == trigger)
    if trigger is not None and not candidates:
        raise InvalidTransitionError(
            definition.name, instance_id, state, trigger, definition.triggers_from(state)
        )
    if not candidates:
        return None
    failed: list[str] = []
    for transition in candidates:
        unmet = [c for c in transition.conditions if not await c.evaluate(context.data)]
        if not unmet:
            return transition
        failed.append(f"{transition.describe()}: " + ", ".join(c.describe() for c in unmet))
    raise NoTransitionError(definition.name, instance_id, state, failed)


def declared_transition(
    definition: WorkflowDefinition, source: str, trigger: str, dest: str | None
) -> Transition | None:
    """The declared transition ``trigger: source -> dest`` (a trigger fired by hand), or
    None if the definition has no such edge."""
    return next(
        (t for t in definition.outgoing(source) if t.trigger == trigger and t.dest == dest),
        None,
    )
