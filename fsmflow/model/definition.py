"""Declaring a workflow: states (step names), transitions, conditions and steps.

A :class:`WorkflowDefinition` is validated when it is built and raises one
:class:`~fsmflow.errors.DefinitionError` listing every problem, because ``transitions``
silently accepts most mistakes (unknown states, duplicates, name clashes).
"""

from __future__ import annotations

import functools
import hashlib
import keyword
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from fsmflow.errors import DefinitionError, InvalidIdentifierError
from fsmflow.model.conditions import Condition, canonical_json, describe_summary
from fsmflow.model.context import WorkflowContext
from fsmflow.model.names import MAX_IDENTIFIER_LENGTH as MAX_IDENTIFIER_LENGTH
from fsmflow.model.names import RESERVED_NAMES as RESERVED_NAMES
from fsmflow.model.names import check_identifier as check_identifier
from fsmflow.model.state import StateSpec, Upgrade, state_problems, state_spec

StepResult: TypeAlias = tuple[WorkflowContext, str | None] | WorkflowContext
# Sync or async: returns a StepResult or an awaitable of one. A step of a typed workflow
# takes and returns its state model instead (``Callable[[TicketState], TicketState]``), so
# the argument is Any here: a Callable's parameter is contravariant, and a function of one
# model is not a function of every BaseModel.
StepFunction: TypeAlias = Callable[[Any], Any]

DEFAULT_MAX_TRANSITIONS: Final = 10_000


class RetryPolicy(BaseModel):
    """How often a failing step is attempted, and how long it may run.

    ``max_attempts=1`` (the default) means no retry. Between attempts fsmflow sleeps
    ``min(initial_backoff * factor**(n-1), max_backoff)`` seconds, times a random factor in
    ``[1 - jitter, 1 + jitter]``. Only exceptions that are instances of ``retry_on`` are
    retried. ``timeout`` (seconds) bounds one attempt; a timeout counts as a failed attempt.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    max_attempts: int = Field(default=1, ge=1)
    initial_backoff: float = Field(default=1.0, ge=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    max_backoff: float = Field(default=60.0, ge=0)
    jitter: float = Field(default=0.1, ge=0, le=1)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = Field(default=None, gt=0)

    def delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt + 1`` (without jitter)."""
        return min(self.initial_backoff * self.backoff_factor ** (attempt - 1), self.max_backoff)


class WorkflowStep(BaseModel):
    """A named step: ``execute(context) -> (context, next_trigger | None)``, sync or async.

    Sync functions run in a worker thread, so they never block the event loop. A step is
    run again from its start if the process dies while it runs: make it idempotent or
    tolerant of a rerun. ``retry`` overrides the workflow's default :class:`RetryPolicy`.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    execute: StepFunction
    retry: RetryPolicy | None = None

    def __init__(self, name: str, execute: StepFunction, retry: RetryPolicy | None = None) -> None:
        super().__init__(name=name, execute=execute, retry=retry)


class Transition(BaseModel):
    """An edge: ``trigger`` moves from ``source`` (one state or a list) to ``dest``.

    ``dest=None`` completes the instance. ``conditions`` must all hold for the transition
    to be taken. ``after`` (sync or async, receives the context) runs once the transition
    is recorded; like a step, it may run again if the process dies right after the record.

    A *wait*: with ``event="approval"`` the transition is taken when an event of that name
    is delivered to the instance while it waits in ``source`` (the event's payload is put
    into the context at ``context.data["approval"]`` before ``conditions`` are judged);
    with ``timeout`` (a :class:`~datetime.timedelta` or seconds) when the instance has
    waited in ``source`` that long, by the database server's clock.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    trigger: str
    source: str | list[str]
    dest: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    after: Callable[[WorkflowContext], Any] | None = None
    event: Any = None  # a str; any other value is reported by the definition
    timeout: float | None = None  # seconds

    def __init__(
        self,
        trigger: str,
        source: str | list[str],
        dest: str | None = None,
        conditions: Sequence[Condition] = (),
        after: Callable[[WorkflowContext], Any] | None = None,
        *,
        event: str | None = None,
        timeout: timedelta | float | None = None,
    ) -> None:
        super().__init__(
            trigger=trigger,
            source=source,
            dest=dest,
            conditions=list(conditions),
            after=after,
            event=event,
            timeout=_seconds(trigger, timeout),
        )

    @property
    def sources(self) -> tuple[str, ...]:
        """The source states as a tuple."""
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    @property
    def waits(self) -> bool:
        """True for an event or timeout transition (taken while the instance waits)."""
        return self.event is not None or self.timeout is not None

    def describe(self) -> str:
        """``trigger: source -> dest`` for messages (with the event or timeout it waits for)."""
        return f"{self.trigger}: {'|'.join(self.sources)} -> {self.dest or '(complete)'}" + (
            _wait_text(self.summary())
        )

    def summary(self) -> dict[str, Any]:
        """The JSON-able description the fingerprint is computed from (``event`` and
        ``timeout`` appear only when set, so older definitions keep their fingerprint)."""
        described: dict[str, Any] = {
            "trigger": self.trigger,
            "source": list(self.sources),
            "dest": self.dest,
            "conditions": [c.summary() for c in self.conditions],
        }
        if self.event is not None:
            described["event"] = self.event
        if self.timeout is not None:
            described["timeout"] = self.timeout
        return described


def _seconds(trigger: str, timeout: timedelta | float | None) -> float | None:
    """A transition's timeout in seconds; TypeError for what is neither a timedelta nor a
    number (range problems are reported with the definition's others)."""
    if timeout is None:
        return None
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"transition {trigger!r}: timeout must be a datetime.timedelta or a number of "
            f"seconds, not {type(timeout).__name__}"
        )
    return float(timeout)


def _wait_text(summary: dict[str, Any]) -> str:
    if "event" in summary:
        return f" on event {summary['event']!r}"
    if "timeout" in summary:
        return f" after {summary['timeout']:g} s"
    return ""


class WorkflowDefinition(BaseModel):
    """A workflow: its ``name``, states (``steps``, the first is the initial state), transitions.

    Raises :class:`~fsmflow.errors.DefinitionError` listing every problem when built.
    ``default_retry`` applies to steps that do not set their own :class:`RetryPolicy`.
    ``max_transitions`` bounds the transitions one instance may record (a loop guard); it is
    not part of the fingerprint, so raising or lowering it is not a definition change.
    ``state_model`` (a pydantic model) types the state: steps get and return an instance;
    ``upgrades[n]`` turns a stored dict of version n into one of n + 1, up to
    ``state_version`` (:mod:`fsmflow.model.state`). Neither is part of the fingerprint.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    steps: list[str]
    transitions: list[Transition] = Field(default_factory=list)
    initial: str | None = None
    default_retry: RetryPolicy = Field(default_factory=RetryPolicy)
    max_transitions: int = DEFAULT_MAX_TRANSITIONS
    state_model: Any = None  # a pydantic BaseModel subclass: see fsmflow.model.state
    state_version: Any = 1
    upgrades: Any = None

    _state: StateSpec | None = PrivateAttr(default=None)
    _outgoing: dict[str, tuple[Transition, ...]] = PrivateAttr(default_factory=dict)
    _fingerprint: str = PrivateAttr(default="")
    _compiled: Any = PrivateAttr(default=None)

    def __init__(
        self,
        name: str,
        steps: list[str],
        transitions: Sequence[Transition] = (),
        initial: str | None = None,
        default_retry: RetryPolicy | None = None,
        max_transitions: int = DEFAULT_MAX_TRANSITIONS,
        *,
        state_model: type[BaseModel] | None = None,
        state_version: int = 1,
        upgrades: Mapping[int, Upgrade] | None = None,
    ) -> None:
        super().__init__(
            name=name,
            steps=steps,
            transitions=list(transitions),
            initial=initial,
            default_retry=default_retry or RetryPolicy(),
            max_transitions=max_transitions,
            state_model=state_model,
            state_version=state_version,
            upgrades=upgrades,
        )

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_an_identifier(cls, value: object) -> object:
        # InvalidIdentifierError is not a ValueError, so pydantic lets it through unwrapped.
        return check_identifier(value, "workflow name")

    def model_post_init(self, __context: Any) -> None:
        # Raised here rather than in a validator so callers get DefinitionError itself,
        # not wrapped in pydantic's ValidationError.
        check_identifier(self.name, "workflow name")
        problems = list(_find_problems(self))
        if problems:
            raise DefinitionError(self.name, problems)
        self._outgoing = {
            state: tuple(t for t in self.transitions if state in t.sources) for state in self.steps
        }
        self._fingerprint = _fingerprint(self.summary())
        self._state = state_spec(self.state_model, self.state_version, self.upgrades)

    @property
    def initial_state(self) -> str:
        """The state a new instance starts in."""
        return self.initial or self.steps[0]

    @property
    def fingerprint(self) -> str:
        """A stable hash of states and transitions, stored with each instance."""
        return self._fingerprint

    @property
    def state_spec(self) -> StateSpec | None:
        """The typed state (``state_model``, version, upgrades); None for the dict API."""
        return self._state

    @functools.cached_property
    def _by_kind(self) -> tuple[dict[str, tuple[Transition, ...]], ...]:
        # (ordinary transitions by state, wait transitions by state) asked on every step,
        # so computed once and kept in the instance's __dict__: a pydantic private
        # attribute costs a __getattr__ fallback (~1.7 us) per access.
        out = self._outgoing
        ordinary = {s: tuple(t for t in ts if not t.waits) for s, ts in out.items()}
        waits = {s: tuple(t for t in ts if t.waits) for s, ts in out.items()}
        return ordinary, waits

    def outgoing(self, state: str) -> tuple[Transition, ...]:
        """Transitions out of ``state`` in declaration order."""
        return self._outgoing.get(state, ())

    def triggers_from(self, state: str) -> list[str]:
        """Trigger names valid in ``state`` (declaration order, no duplicates)."""
        return list(dict.fromkeys(t.trigger for t in self.outgoing(state)))

    def ordinary_from(self, state: str) -> tuple[Transition, ...]:
        """The transitions out of ``state`` that its step's result chooses from (no waits)."""
        return self._by_kind[0].get(state, ())

    def waits_from(self, state: str) -> tuple[Transition, ...]:
        """The event and timeout transitions out of ``state``, in declaration order."""
        return self._by_kind[1].get(state, ())

    def awaited_events(self, state: str) -> tuple[str, ...]:
        """The event names an instance waiting in ``state`` takes (declaration order)."""
        return tuple(dict.fromkeys(t.event for t in self.waits_from(state) if t.event))

    def is_wait_state(self, state: str) -> bool:
        """True for a state whose transitions are all event/timeout ones: it needs no step."""
        ordinary, waits = self._by_kind
        return bool(waits.get(state)) and not ordinary.get(state)

    @property
    def declared_events(self) -> tuple[str, ...]:
        """Every event name the definition's transitions wait for (declaration order)."""
        return tuple(dict.fromkeys(t.event for t in self.transitions if t.event is not None))

    def summary(self) -> dict[str, Any]:
        """A JSON-able description of the graph; what the fingerprint is computed from.

        The same in every process: condition values are canonical (sets sorted, tuples as
        lists, see :func:`~fsmflow.conditions.canonical_value`).
        """
        return {
            "states": list(self.steps),
            "initial": self.initial_state,
            "transitions": [t.summary() for t in self.transitions],
        }

    def __repr__(self) -> str:
        return (
            f"WorkflowDefinition(name={self.name!r}, states={len(self.steps)}, "
            f"transitions={len(self.transitions)}, fingerprint={self._fingerprint!r})"
        )


def _fingerprint(summary: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(summary).encode("utf-8")).hexdigest()[:16]


def _find_problems(definition: WorkflowDefinition) -> Iterator[str]:
    states = definition.steps
    known = set(states)
    if not states:
        yield "no states: steps=[...] must name at least one state"
    for name in sorted({s for s in states if states.count(s) > 1}):
        yield f"duplicate state {name!r}"
    for state in states:
        yield from _name_problems(state, "state")
        if f"is_{state}" in RESERVED_NAMES:
            yield f"state {state!r} clashes with fsmflow attribute 'is_{state}'"
    if definition.max_transitions < 1:
        yield f"max_transitions={definition.max_transitions}: it must be at least 1"
    if definition.initial is not None and definition.initial not in known:
        yield f"initial state {definition.initial!r} is not among the states"
    for index, t in enumerate(definition.transitions):
        yield from _transition_problems(index, t, known)
        yield from _wait_problems(index, t)
    yield from _trigger_clashes(definition)
    yield from state_problems(definition.state_model, definition.state_version, definition.upgrades)
    if states and definition.initial_state in known:
        for state in _unreachable(definition):
            yield f"state {state!r} is unreachable from initial state {definition.initial_state!r}"


def _name_problems(name: str, what: str) -> Iterator[str]:
    if not name.isidentifier() or keyword.iskeyword(name):
        yield f"{what} {name!r} is not a Python identifier (transitions adds it as a method)"
    elif name.startswith("_"):
        yield f"{what} {name!r} must not start with '_'"


def _transition_problems(index: int, t: Transition, known: set[str]) -> Iterator[str]:
    label = f"transition #{index} ({t.trigger!r})"
    yield from (f"{label}: {p}" for p in _name_problems(t.trigger, "trigger"))
    if t.trigger in RESERVED_NAMES or f"may_{t.trigger}" in RESERVED_NAMES:
        yield f"{label}: trigger {t.trigger!r} clashes with an fsmflow attribute; rename it"
    if t.trigger.startswith(("is_", "may_")):
        yield f"{label}: trigger {t.trigger!r} clashes with transitions' is_/may_ helpers"
    if not t.sources:
        yield f"{label}: no source state"
    for source in t.sources:
        if source not in known:
            yield f"{label}: source {source!r} is not a state"
    if t.dest is not None and t.dest not in known:
        yield f"{label}: dest {t.dest!r} is not a state"
    for cond in t.conditions:
        for problem in cond.problems():
            yield f"{label}: condition on {cond.field!r}: {problem}"


def _wait_problems(index: int, t: Transition) -> Iterator[str]:
    label = f"transition #{index} ({t.trigger!r})"
    if t.event is not None and t.timeout is not None:
        yield (
            f"{label}: has both event={t.event!r} and timeout={t.timeout:g}; a transition "
            "waits for one of them: declare two transitions"
        )
    if t.timeout is not None and not (math.isfinite(t.timeout) and t.timeout >= 0):
        yield f"{label}: timeout={t.timeout} must be a finite number of seconds, 0 or more"
    if t.event is not None:
        yield from (f"{label}: {p}" for p in event_name_problems(t.event))


def event_name_problems(event: object) -> Iterator[str]:
    """Why ``event`` cannot name an event (it becomes a context key and a condition field)."""
    if not isinstance(event, str):
        yield f"event must be a str, not {type(event).__name__}"
        return
    try:
        check_identifier(event, "event name")
    except InvalidIdentifierError as exc:
        yield str(exc)
        return
    if "." in event:
        yield (
            f"event name {event!r} contains '.', which separates the parts of a condition's "
            "field (approval.ok): use '_' instead"
        )


def _trigger_clashes(definition: WorkflowDefinition) -> Iterator[str]:
    """A trigger of one source is of one kind: ordinary, one event's, or a timeout's."""
    kinds: dict[tuple[str, str], set[str]] = {}
    for t in definition.transitions:
        kind = "an ordinary transition" if not t.waits else (
            f"event {t.event!r}" if t.event is not None else "a timeout"
        )  # fmt: skip
        for source in t.sources:
            kinds.setdefault((source, t.trigger), set()).add(kind)
    for (source, trigger), found in kinds.items():
        if len(found) > 1:
            yield (
                f"trigger {trigger!r} from state {source!r} is used by "
                f"{' and '.join(sorted(found))}: give each wait its own trigger"
            )


def _unreachable(definition: WorkflowDefinition) -> list[str]:
    seen = {definition.initial_state}
    frontier = [definition.initial_state]
    while frontier:
        state = frontier.pop()
        for t in definition.transitions:
            if state in t.sources and t.dest is not None and t.dest not in seen:
                seen.add(t.dest)
                frontier.append(t.dest)
    return [s for s in definition.steps if s not in seen]


def diff_summaries(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two :meth:`WorkflowDefinition.summary` results, for messages."""
    changes: list[str] = []
    old_states, new_states = old.get("states", []), new.get("states", [])
    changes += [f"state {s!r} removed" for s in old_states if s not in new_states]
    changes += [f"state {s!r} added" for s in new_states if s not in old_states]
    if old.get("initial") != new.get("initial"):
        changes.append(f"initial state {old.get('initial')!r} -> {new.get('initial')!r}")

    def edges(summary: dict[str, Any]) -> list[str]:
        return [
            f"{t['trigger']}: {'|'.join(t['source'])} -> {t['dest'] or '(complete)'}"
            + _wait_text(t)
            + (
                f" if {' and '.join(map(_condition_text, t['conditions']))}"
                if t["conditions"]
                else ""
            )
            for t in summary.get("transitions", [])
        ]

    old_edges, new_edges = edges(old), edges(new)
    changes += [f"transition removed: {e}" for e in old_edges if e not in new_edges]
    changes += [f"transition added: {e}" for e in new_edges if e not in old_edges]
    if not changes and old_edges != new_edges:
        changes.append("transition order changed (the first matching transition may differ)")
    return changes or ["the definition fingerprint differs"]


def _condition_text(condition: str | dict[str, Any]) -> str:
    # A summary stored by fsmflow 0.1 holds conditions as describe() strings.
    return condition if isinstance(condition, str) else describe_summary(condition)
