"""One turn of a run: what the instance does in its current state, recorded.

A turn either runs the state's step and records where its result leads (a move, the
completion, or the start of a wait), or, for an instance that waits, waits until an
event or a deadline takes a transition (recorded by the :class:`~fsmflow.engine.waiting.Waiter`).
The runner drives the turns and moves the machine; a turn never moves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fsmflow.engine.attempts import Attempts
from fsmflow.engine.choosing import WaitHere, choose_transition, declared_transition
from fsmflow.engine.interrupts import Interrupts
from fsmflow.engine.recorder import Recorder, Wait
from fsmflow.engine.steps import step_outcome
from fsmflow.engine.typed import typed_result, typed_steps
from fsmflow.engine.waiting import Waiter, first_deadline
from fsmflow.model.context import WorkflowContext, decode_context, encode_context
from fsmflow.model.definition import Transition, WorkflowDefinition, WorkflowStep
from fsmflow.model.records import WAIT_TRIGGER

TurnKind = Literal["moved", "waits", "by_hand", "suspended"]


@dataclass(frozen=True, slots=True)
class Turn:
    """How a turn ended.

    * ``moved``: ``chosen`` was recorded (None: the instance completed);
    * ``waits``: the waiting row was recorded, the next turn waits;
    * ``by_hand``: the step fired a trigger by hand, recorded then;
    * ``suspended``: the instance waits and the run returns (``suspend=True``).

    ``context`` is what the recorded row stored (None: unchanged).
    """

    kind: TurnKind
    chosen: Transition | None = None
    context: WorkflowContext | None = None


class Turns:
    """The turns of one run of ``instance_id`` (created once the lock is held);
    ``emit(point, state)`` tells the runner's listeners."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        steps: Mapping[str, WorkflowStep],
        parts: tuple[Recorder, Attempts, Waiter],
        emit: Callable[[str, str], None],
        max_bytes: int,
    ) -> None:
        self._definition = definition
        self._recorder, self._attempts, self.waiter = parts
        self._instance_id = self._recorder.instance_id
        spec = self._spec = definition.state_spec
        self._steps = steps if spec is None else typed_steps(
            steps, spec, definition.name, self._instance_id
        )  # fmt: skip
        self._emit = emit
        self._max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"Turns({self._definition.name!r}, {self._instance_id!r})"

    async def take(self, state: str, *, waiting: bool, suspend: bool) -> Turn:
        """The turn of ``state`` (``waiting``: the instance's last row says it waits)."""
        if not waiting and state in self._steps:
            return await self._run_step(state)
        if not waiting:  # entered a state without a step: it only waits
            await self.record_wait(state, self._recorder.context_json, 0.0)
        woke = await self.waiter.wait(state, suspend=suspend)
        if woke is None:
            return Turn("suspended")
        self._emit("transition_recorded", state)
        return Turn("moved", woke.chosen, woke.context)

    async def _run_step(self, state: str) -> Turn:
        recorder = self._recorder
        self._emit("step_started", state)
        started, seq_before = time.perf_counter(), recorder.seq
        step = self._steps[state]
        policy = step.retry or self._definition.default_retry
        result = await self._attempts.execute(state, step, policy)
        duration_ms = (time.perf_counter() - started) * 1000.0
        self._emit("step_finished", state)
        if recorder.seq != seq_before:  # the step fired a trigger by hand: already recorded
            return Turn("by_hand")
        try:
            context, encoded, chosen = await self._decide(state, result)
        except Exception as exc:
            # A bug in the step or the definition: running the step again would repeat
            # it (an LLM call each time), so the instance fails here, visibly.
            await recorder.record_failure(state, 1, exc)
            raise
        if isinstance(chosen, WaitHere):
            await self.record_wait(state, encoded, duration_ms)
        else:
            dest = None if chosen is None else chosen.dest
            wait = self.waiter.entering(dest)
            await recorder.record(chosen, state, dest, encoded, duration_ms, wait=wait)
        self._emit("transition_recorded", state)
        if isinstance(chosen, WaitHere):
            return Turn("waits", None, context)
        return Turn("moved", chosen, context)

    async def _decide(
        self, state: str, result: Any
    ) -> tuple[WorkflowContext, str, Transition | WaitHere | None]:
        """What ``state``'s step returned means: the context (and its stored text) and
        the transition to take (None completes the instance; WAIT: it waits)."""
        definition, instance_id = self._definition, self._instance_id
        if self._spec is not None:  # a typed step returns its model: it must validate
            result = typed_result(result, self._spec, definition.name, instance_id, state)
        context, trigger = step_outcome(result, definition.name, instance_id, state)
        where = f"context returned by step {state!r}"
        encoded = encode_context(context.data, max_bytes=self._max_bytes, where=where)
        chosen = await choose_transition(definition, instance_id, state, trigger, context)
        return context, encoded, chosen

    async def by_hand(
        self,
        trigger: str,
        source: str,
        dest: str | None,
        context: WorkflowContext,
        interrupts: Interrupts,
    ) -> tuple[WorkflowContext, Transition | None]:
        """Record ``trigger`` fired by hand from ``source`` (``await runner.go()``), with
        ``context`` as it is at that moment; what the row stored, and the transition."""
        encoded = encode_context(context.data, max_bytes=self._max_bytes, where="manual trigger")
        chosen = declared_transition(self._definition, source, trigger, dest)
        phase = interrupts.phase
        try:
            wait = self.waiter.entering(dest)
            await self._recorder.record(chosen, source, dest, encoded, 0.0, wait=wait)
        finally:
            interrupts.phase = phase  # the append ran inside the step's attempt
        return WorkflowContext(data=decode_context(encoded)), chosen

    async def record_wait(self, state: str, encoded: str, duration_ms: float) -> None:
        """Record that the instance waits in ``state`` from now on (server clock)."""
        wait = Wait(None, first_deadline(self._definition, state))
        await self._recorder.record(
            None, state, state, encoded, duration_ms, wait=wait, trigger=WAIT_TRIGGER
        )
