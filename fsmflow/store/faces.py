"""Base classes of :class:`~fsmflow.store.facade.Store`, one per concept of its face:

* :class:`EventsFace`: sending events, reading them, and what a waiting runner needs (a
  look at its instance, wake-ups), delegated to the store's
  :class:`~fsmflow.store.events.Events` and :class:`~fsmflow.store.listening.Listener`;
* :class:`FleetFace`: submitting instances to the worker fleet and seeing its workers,
  delegated to the store's :class:`~fsmflow.store.fleet.Fleet`;
* :class:`OwnersFace`: owning an instance (its lock on an owner connection) and opening
  it (lock, last row and start in one round trip), delegated to
  :class:`~fsmflow.store.ownership.Owners` and :class:`~fsmflow.store.history.History`;
* :class:`ErrorsFace`: fsmflow 0.1's error helpers on the store, kept for programs that
  call them, delegated to the gateway and :mod:`~fsmflow.store.dberrors`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from fsmflow.errors import FsmflowError
from fsmflow.model.context import WorkflowContext, seed_json
from fsmflow.model.definition import WorkflowDefinition
from fsmflow.model.records import EventRecord, SentEvent, WorkerInfo
from fsmflow.store import dberrors
from fsmflow.store.config import StoreConfig
from fsmflow.store.database import Database
from fsmflow.store.events import Events, WaitCheck
from fsmflow.store.fleet import Fleet, Key
from fsmflow.store.history import History, Opened, StartRow
from fsmflow.store.listening import Listener, Subscription
from fsmflow.store.ownership import Owners, Ownership
from fsmflow.telemetry import submitting

T = TypeVar("T")


class ErrorsFace:
    """fsmflow 0.1's error helpers; the store sets ``_db`` and ``config``."""

    _db: Database
    config: StoreConfig

    def translate(self, exc: BaseException) -> FsmflowError:
        """Map a driver or OS error to the fsmflow error that says what to do."""
        return self._db.translate(exc)

    def is_retriable(self, exc: BaseException) -> bool:
        """True for errors that a reconnect may cure."""
        return dberrors.is_retriable(exc)

    async def retry(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying retriable errors with capped, jittered backoff."""
        return await self._db.retry(what, operation)

    def scrub(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``***``."""
        return dberrors.scrub(text, self.config.secrets())


class EventsFace:
    """Events and waits; the store sets ``_events`` and ``_listener``."""

    _events: Events
    _listener: Listener

    async def send_event(
        self,
        workflow_name: str,
        instance_id: str,
        event: str,
        payload: Any = None,
        *,
        key: str | None = None,
    ) -> SentEvent:
        """Send ``event`` with a JSON ``payload`` to an instance; durable when it returns.

        Delivered at most once, in order with the instance's other events of that name,
        when the instance waits in a state with a transition on ``event``; its waiting
        runner is woken at once. With ``key``, a second send with the same key stores
        nothing and returns the first (``duplicate=True``). Needs no workflow code.
        Refused, with nothing stored: :class:`~fsmflow.errors.InstanceNotFoundError`,
        :class:`~fsmflow.errors.InstanceStateError` (the instance ended),
        :class:`~fsmflow.errors.UnknownEventError` (its definition waits for no such event),
        and the context errors for a payload that breaks the context rules or size cap.
        """
        return await self._events.send(workflow_name, instance_id, event, payload, key)

    async def instance_events(
        self, workflow: str, instance_id: str, *, pending_only: bool = False, limit: int = 1000
    ) -> list[EventRecord]:
        """The events sent to an instance, oldest first; ``pending_only``: undelivered."""
        return await self._events.instance_events(
            workflow, instance_id, pending_only=pending_only, limit=limit
        )

    async def wait_check(
        self, workflow: str, instance_id: str, names: list[str]
    ) -> WaitCheck | None:
        """For a waiting runner: the server's clock, the last row and the oldest pending
        event among ``names`` (None if the instance has no rows)."""
        return await self._events.wait_check(workflow, instance_id, names)

    async def subscribe(self, workflow: str, instance_id: str) -> Subscription:
        """Wake-ups for an instance (new events, a cancel) on the store's one listener."""
        return await self._listener.subscribe(workflow, instance_id)


def definition_of(workflow: object) -> WorkflowDefinition:
    """The definition of a :class:`~fsmflow.Workflow` (anything with ``.definition``) or
    of a :class:`WorkflowDefinition` itself; :class:`TypeError` for anything else."""
    definition = getattr(workflow, "definition", workflow)
    if not isinstance(definition, WorkflowDefinition):
        raise TypeError(
            f"expected a fsmflow.Workflow or a WorkflowDefinition, not {type(workflow).__name__}"
        )
    return definition


class FleetFace:
    """The worker fleet; the store sets ``_fleet``, ``_listener`` and ``config``."""

    _fleet: Fleet
    _listener: Listener
    config: StoreConfig

    @property
    def fleet(self) -> Fleet:
        """The fleet's part of the store (what :class:`~fsmflow.Worker` uses)."""
        return self._fleet

    async def submit(
        self,
        workflow: Any,
        context: WorkflowContext | Mapping[str, Any] | BaseModel | None = None,
        *,
        instance_id: str | None = None,
    ) -> str:
        """Start an instance of ``workflow`` (a :class:`~fsmflow.Workflow` or its
        :class:`WorkflowDefinition`) for the worker fleet to run, without running it here;
        returns its id (``instance_id``, or a new one). A typed workflow's ``context`` may
        be an instance of its state model (every seed of one is validated against it).

        One durable write: seq 0 and the queue entry commit together, and the workers are
        woken. A pinned ``instance_id`` that exists raises
        :class:`~fsmflow.errors.InstanceExistsError` and writes nothing.
        """
        definition = definition_of(workflow)
        context_json = seed_json(
            context,
            max_bytes=self.config.max_context_bytes,
            state=definition.state_spec,
            workflow=definition.name,
        )
        summary = json.dumps(definition.summary())
        # The submission's span is the parent of the workers' runs (stored on seq 0).
        redact = self.config.redact_errors
        with submitting(definition.name, redact=redact) as start:
            submitted = await self._fleet.submit(
                definition, summary, context_json, instance_id, start.trace_parent
            )
            start.named(submitted)
        return submitted

    async def list_workers(self) -> list[WorkerInfo]:
        """The live workers of this table's fleet, oldest first (``fsmflow workers``)."""
        return await self._fleet.list_workers()

    async def instance_workers(self, keys: Iterable[Key]) -> dict[Key, WorkerInfo]:
        """Which live worker runs each of the ``(workflow, instance_id)`` given, where one
        does (``fsmflow list`` and ``show``)."""
        return await self._fleet.instance_workers(keys)

    async def subscribe_workflows(self, workflows: list[str]) -> Subscription:
        """Wake-ups for any instance of these workflows, on the store's one listener."""
        return await self._listener.subscribe_workflows(workflows)


class OwnersFace:
    """Owning instances; the store sets ``_owners`` and ``_history``."""

    _owners: Owners
    _history: History

    async def acquire(
        self,
        workflow: str,
        instance_id: str,
        *,
        wait: bool = False,
        lock_timeout: float | None = None,
    ) -> Ownership:
        """Own an instance: its lock on a dedicated connection, which also carries its
        appends. :class:`~fsmflow.errors.InstanceLockedError` if another runner owns it
        (unless ``wait``)."""
        return await self._owners.acquire(
            workflow, instance_id, wait=wait, lock_timeout=lock_timeout
        )

    async def open_instance(
        self,
        workflow: str,
        instance_id: str,
        *,
        start: StartRow | None,
        wait: bool = False,
        lock_timeout: float | None = None,
    ) -> tuple[Ownership, Opened]:
        """Own an instance as :meth:`acquire` does, reading its last row and, for a new
        instance, inserting ``start`` (its seq 0) in the same statement: one round trip.

        The row is as of the statement's start, which may precede the moment the lock was
        granted: a caller that found a row reads it again now that the lock is held.
        """
        opening = self._history.open_query(workflow, instance_id, start)
        owner = await self._owners.acquire(
            workflow, instance_id, wait=wait, lock_timeout=lock_timeout, opening=opening
        )
        try:
            assert owner.opened is not None
            return owner, self._history.opened(owner.opened, workflow, instance_id)
        except BaseException:
            await owner.release()
            raise

    def owned_here(self, workflow: str, instance_id: str) -> bool:
        """True if a runner in this process owns or is taking the instance."""
        return self._owners.owned_here(workflow, instance_id)
