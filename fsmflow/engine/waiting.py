"""Waiting: an instance that waits in a state for an event or a deadline, across restarts.

The wait itself is durable: its start is the waiting row's ``waiting_since`` (the server's
clock), so every deadline is ``waiting_since + timeout`` whatever happened to the
processes meanwhile. A :class:`Waiter` holds the instance's lock but no transaction; on
each wake-up (a notification on the store's one listening connection, or the next
deadline) it reads the server's clock, the instance's last row and its oldest pending
awaited event, and either delivers that event, takes a due timeout, or sleeps again.
Events that arrived before a deadline are delivered before it fires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Set
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol

from fsmflow.engine.choosing import first_holding
from fsmflow.engine.interrupts import Interrupts
from fsmflow.engine.recorder import Instance, Recorder, Wait
from fsmflow.engine.resuming import check_ended_well
from fsmflow.errors import ConcurrentTransitionError, WorkflowError
from fsmflow.model.context import WorkflowContext, decode_context, encode_context
from fsmflow.model.definition import Transition, WorkflowDefinition
from fsmflow.model.records import UNMATCHED_TRIGGER, EventRecord, TransitionRecord
from fsmflow.store.events import WaitCheck
from fsmflow.store.listening import Subscription

logger = logging.getLogger("fsmflow")

# Sleep a little past a deadline: the clocks agree on the server, not in this process.
_PAST_DEADLINE: Final = 0.005


class WaitStore(Protocol):
    """What waiting needs of the store (:class:`~fsmflow.store.facade.Store`)."""

    async def wait_check(
        self, workflow: str, instance_id: str, names: list[str]
    ) -> WaitCheck | None:
        """The server's clock, the last row and the oldest pending event among ``names``."""

    async def subscribe(self, workflow: str, instance_id: str) -> Subscription:
        """Wake-ups for an instance."""

    async def last_record(self, workflow: str, instance_id: str) -> TransitionRecord | None:
        """The instance's last row, or None."""


@dataclass(frozen=True, slots=True)
class Woke:
    """A wait that ended: ``chosen`` was recorded (its ``dest`` None: the instance
    completed) and ``context`` is what the row stored."""

    chosen: Transition
    context: WorkflowContext


def first_deadline(definition: WorkflowDefinition, state: str) -> float | None:
    """Seconds from the start of a wait in ``state`` to its first deadline (None: none)."""
    timeouts = [t.timeout for t in definition.waits_from(state) if t.timeout is not None]
    return min(timeouts) if timeouts else None


class Waiter:
    """The waits of one run of one instance (created once the lock is held).

    ``regain`` retakes a lost lock (and checks nobody moved the instance on); ``wake``
    (called when the lock's session is lost) ends the current sleep early.
    """

    def __init__(
        self,
        store: WaitStore,
        interrupts: Interrupts,
        recorder: Recorder,
        definition: WorkflowDefinition,
        instance: Instance,
        *,
        is_lost: Callable[[], bool],
        regain: Callable[[], Awaitable[None]],
        max_bytes: int,
        stepped: Set[str],
    ) -> None:
        self._store = store
        self._interrupts = interrupts
        self._recorder = recorder
        self._definition = definition
        self._instance = instance
        self._is_lost = is_lost
        self._regain = regain
        self._max_bytes = max_bytes
        self._stepped = stepped  # states with a step: a wait state with one runs it first
        self._subscription: Subscription | None = None
        self.wake_at: datetime | None = None  # the next deadline of the current wait

    def __repr__(self) -> str:
        return f"Waiter({self._instance.workflow_name!r}, {self._instance.instance_id!r})"

    def wake(self) -> None:
        """End the current sleep now (the runner looks again)."""
        if self._subscription is not None:
            self._subscription.woken.set()

    async def wait(self, state: str, *, suspend: bool) -> Woke | None:
        """Wait in ``state`` until an event or a deadline takes a transition (recorded);
        with ``suspend``, return None instead of sleeping (the lock is then released)."""
        instance = self._instance
        names = list(self._definition.awaited_events(state))
        if not self._definition.waits_from(state):
            raise WorkflowError(
                instance.workflow_name,
                instance.instance_id,
                f"waits in state {state!r} (seq {self._recorder.seq}), but this definition "
                f"has no event or timeout transition out of {state!r}: it changed since the "
                "wait began. Restore such a transition, or fork the instance into another state",
            )
        if not suspend:
            subscribing = self._store.subscribe(instance.workflow_name, instance.instance_id)
            self._subscription = await self._interrupts.guarded("wait", state, subscribing)
        try:
            while True:
                look = await self._look(state, names)
                if isinstance(look, Woke):
                    event = look.chosen.event
                    instance.trace.woke("timeout" if event is None else "event", event)
                    return look
                if isinstance(look, _Again):
                    continue
                instance.trace.waiting(state, names, self.wake_at)
                if suspend:
                    return None
                await self._interrupts.guarded("wait", state, self._sleep(look))
        finally:
            if self._subscription is not None:
                self._subscription.close()
                self._subscription = None

    async def _look(self, state: str, names: list[str]) -> Woke | _Again | float | None:
        """One look: a recorded transition, :data:`_AGAIN` (an event was consumed: look
        again), or how long to sleep (None: until woken)."""
        guarded, instance = self._interrupts.guarded, self._instance
        self._interrupts.check_stop(state)
        if self._is_lost():
            await guarded("wait", state, self._regain())
        if self._subscription is not None:
            self._subscription.woken.clear()  # before reading: a later send wakes us again
        reading = self._store.wait_check(instance.workflow_name, instance.instance_id, names)
        check = await guarded("wait", state, reading)
        await self._check_unmoved(check)
        assert check is not None and check.waiting_since is not None
        since, now = check.waiting_since, check.now
        elapsed = (now - since).total_seconds()
        timeouts = [t for t in self._definition.waits_from(state) if t.timeout is not None]
        due = [t for t in timeouts if t.timeout is not None and t.timeout <= elapsed]
        due_at = since + timedelta(seconds=min(t.timeout or 0.0 for t in due)) if due else None
        event = check.event
        if event is not None and (due_at is None or event.created_at <= due_at):
            # Each consumed event is a row: the loop guard applies to them too.
            await self._recorder.check_limit(state, self._definition.max_transitions)
            return await self._deliver(state, event, since) or _AGAIN
        if due:
            woke = await self._time_out(state, due)
            if woke is not None:
                return woke
        later = [t.timeout for t in timeouts if t.timeout is not None and t.timeout > elapsed]
        self.wake_at = since + timedelta(seconds=min(later)) if later else None
        return (min(later) - elapsed + _PAST_DEADLINE) if later else None

    async def _check_unmoved(self, check: WaitCheck | None) -> None:
        """The instance must still stand at its waiting row: a cancel (or another writer)
        may have appended meanwhile."""
        recorder, instance = self._recorder, self._instance
        if check is None:
            await recorder.check_not_deleted(recorder.seq + 1)
        elif check.seq == recorder.seq and check.status == "waiting":
            return
        last = await self._store.last_record(instance.workflow_name, instance.instance_id)
        if last is not None and last.seq > recorder.seq:
            check_ended_well(instance.workflow_name, last)  # cancelled: InstanceCancelledError
        raise ConcurrentTransitionError(
            instance.workflow_name, instance.instance_id, recorder.seq + 1
        )

    async def _deliver(self, state: str, event: EventRecord, since: datetime) -> Woke | None:
        """Deliver ``event``: its payload into the context, then the first of the state's
        transitions on it whose conditions hold; none: the event is consumed (recorded,
        the context unchanged) and the wait goes on."""
        recorder = self._recorder
        data = decode_context(recorder.context_json)
        data[event.event] = event.payload
        where = f"context after event {event.event!r} (id {event.event_id}) in state {state!r}"
        candidates = [t for t in self._definition.waits_from(state) if t.event == event.event]
        try:
            encoded = encode_context(data, max_bytes=self._max_bytes, where=where)
            chosen, _ = await first_holding(candidates, data)
        except Exception as exc:
            await recorder.record_failure(state, 1, exc)
            raise
        if chosen is None:
            logger.info(
                "workflow %r instance %r: event %r (id %d) matched no transition of state %r; "
                "consumed, still waiting",
                self._instance.workflow_name, self._instance.instance_id, event.event,
                event.event_id, state,
            )  # fmt: skip
            wait = Wait(since, first_deadline(self._definition, state))
            await recorder.record(
                None, state, state, recorder.context_json, 0.0,
                wait=wait, event_id=event.event_id, trigger=UNMATCHED_TRIGGER,
            )  # fmt: skip
            return None
        await recorder.record(
            chosen, state, chosen.dest, encoded, 0.0,
            wait=self.entering(chosen.dest), event_id=event.event_id,
        )  # fmt: skip
        return Woke(chosen, WorkflowContext(data=data))

    async def _time_out(self, state: str, due: list[Transition]) -> Woke | None:
        """Take the first due timeout transition whose conditions hold (None: none does)."""
        recorder = self._recorder
        context = WorkflowContext(data=decode_context(recorder.context_json))
        try:
            chosen, _ = await first_holding(due, context.data)
        except Exception as exc:
            await recorder.record_failure(state, 1, exc)
            raise
        if chosen is None:
            return None
        wait = self.entering(chosen.dest)
        await recorder.record(chosen, state, chosen.dest, recorder.context_json, 0.0, wait=wait)
        return Woke(chosen, context)

    def entering(self, dest: str | None) -> Wait | None:
        """The wait a row moving to ``dest`` starts: a state that only waits (no step of
        its own is run) starts its wait with that very row."""
        definition = self._definition
        if dest is None or not definition.is_wait_state(dest) or dest in self._stepped:
            return None
        return Wait(None, first_deadline(definition, dest))

    async def _sleep(self, delay: float | None) -> None:
        subscription = self._subscription
        assert subscription is not None
        try:
            async with asyncio.timeout(delay):
                await subscription.woken.wait()
        except TimeoutError:
            pass


class _Again:
    """Look again at once: an event was consumed and matched no transition."""


_AGAIN: Final = _Again()
