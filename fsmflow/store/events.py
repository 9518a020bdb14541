"""Events sent to instances: storing them, and what a waiting runner reads on waking.

Part of the store layer. The events table is append-only: an event is pending until a
history row of its instance names it (``event_id``), so sending, delivering and timing out
need SELECT and INSERT only. Sending needs no workflow code: the events an instance may
receive are read from the definition summary stored with its seq 0.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from fsmflow.errors import (
    InstanceNotFoundError,
    InstanceStateError,
    InvalidIdentifierError,
    UnknownEventError,
)
from fsmflow.model.context import compact_json, encode_context
from fsmflow.model.definition import check_identifier, event_name_problems
from fsmflow.model.records import (
    SUBMIT_TRIGGER,
    EventRecord,
    SentEvent,
    TransitionRecord,
    to_event,
)
from fsmflow.store.database import Database
from fsmflow.store.history import History

AUTO_KEY_PREFIX: Final = "fsmflow:"  # a send without a key gets one: a retried send stores once


@dataclass(frozen=True, slots=True)
class WaitCheck:
    """What a waiting runner learns on waking: the server's clock, the instance's last row
    (seq, status, when its wait began) and its oldest pending awaited event, if any."""

    now: datetime
    seq: int
    status: str
    waiting_since: datetime | None
    event: EventRecord | None


def wake_payload(workflow: str, instance_id: str) -> str:
    """The notification payload that wakes the runner waiting on an instance."""
    return json.dumps([workflow, instance_id])


def parse_wake_payload(payload: str) -> tuple[str, str] | None:
    """The instance a notification names, or None if it is not one of fsmflow's."""
    try:
        workflow, instance_id = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not (isinstance(workflow, str) and isinstance(instance_id, str)):
        return None
    return workflow, instance_id


def declared_events(first: TransitionRecord) -> list[str]:
    """The event names in the definition summary stored with an instance's seq 0."""
    summary = first.definition or {}
    transitions = summary.get("transitions") or []
    names = (t.get("event") for t in transitions if isinstance(t, dict))
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


class Events:
    """The events of one table's instances."""

    def __init__(self, db: Database, history: History) -> None:
        self.db = db
        self.history = history

    def __repr__(self) -> str:
        return f"Events({self.db.qualified_events!r})"

    async def send(
        self, workflow: str, instance_id: str, event: str, payload: Any, key: str | None
    ) -> SentEvent:
        """Store an event for an instance; see :meth:`fsmflow.store.Store.send_event`."""
        check_identifier(workflow, "workflow name")
        check_identifier(instance_id, "instance_id")
        for problem in event_name_problems(event):
            raise InvalidIdentifierError(problem)
        if key is not None:
            check_identifier(key, "event key")
            if key.startswith(AUTO_KEY_PREFIX):
                raise InvalidIdentifierError(f"event key must not start with {AUTO_KEY_PREFIX!r}")
        where = f"payload of event {event!r}"
        encode_context({event: payload}, max_bytes=self.db.config.max_context_bytes, where=where)
        if key is not None:
            found = await self.db.fetchrow("event_by_key", workflow, instance_id, key)
            if found is not None:
                return SentEvent(_event(found), duplicate=True)
        first = await self._check_receives(workflow, instance_id, event)
        stored_key = key if key is not None else AUTO_KEY_PREFIX + uuid.uuid4().hex
        args = (
            workflow, instance_id, event, stored_key, compact_json(payload, allow_nan=False),
            self.db.wake_channel, wake_payload(workflow, instance_id),
        )  # fmt: skip
        if first.trigger == SUBMIT_TRIGGER:
            row = await self._send_to_fleet(args)
        else:  # a program's instance: no fleet table is touched (SELECT, INSERT suffice)
            row = await self.db.fetchrow("send_event", *args)
        if row is not None:
            return SentEvent(_event(row))
        # The key was taken meanwhile: by a racing sender, or by this send's own first
        # attempt before a lost connection made the retry run it again.
        found = await self.db.fetchrow("event_by_key", workflow, instance_id, stored_key)
        assert found is not None
        return SentEvent(_event(found), duplicate=key is not None)

    async def _send_to_fleet(self, args: tuple[Any, ...]) -> Any:
        """Store the event and make its submitted instance runnable, in one transaction:
        a worker suspends a waiting instance only if its queue row's wakes did not move."""
        pool = await self.db.pool()
        queries = self.db.queries

        async def send() -> Any:
            async with pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(queries["send_event"], *args)
                if row is not None:
                    await conn.execute(queries["wake"], args[0], args[1])
                return row

        return await self.db.retry("send_event", send)

    async def _check_receives(
        self, workflow: str, instance_id: str, event: str
    ) -> TransitionRecord:
        """The instance's seq 0, once it is known to receive ``event`` now."""
        last = await self.history.last_record(workflow, instance_id)
        if last is None:
            raise InstanceNotFoundError(
                workflow,
                instance_id,
                f"no such instance to send event {event!r} to (no stored history under "
                "this workflow name and id); `fsmflow list` shows the instances",
            )
        if last.terminal:
            raise InstanceStateError(
                workflow,
                instance_id,
                f"already {last.status} at seq {last.seq}: event {event!r} would never be "
                "delivered, so it was not stored",
            )
        first = last if last.seq == 0 else await self.history.record_at(workflow, instance_id, 0)
        declared = declared_events(first) if first is not None else []
        if first is None or event not in declared:
            known = ", ".join(map(repr, declared)) if declared else "none"
            raise UnknownEventError(
                workflow,
                instance_id,
                f"its stored definition waits for no event {event!r} (declared events: "
                f"{known}); nothing was stored",
            )
        return first

    async def wait_check(
        self, workflow: str, instance_id: str, names: list[str]
    ) -> WaitCheck | None:
        """The server's clock, the last row and the oldest pending event among ``names``
        (None if the instance has no rows)."""
        row = await self.db.fetchrow("wait_check", workflow, instance_id, names)
        if row is None:
            return None
        event = None
        if row["id"] is not None:
            event = EventRecord(
                workflow_name=workflow,
                instance_id=instance_id,
                event_id=row["id"],
                event=row["event"],
                key=_public_key(row["key"]),
                payload=json.loads(row["payload"]),
                created_at=row["created_at"],
            )
        return WaitCheck(row["now"], row["seq"], row["status"], row["waiting_since"], event)

    async def instance_events(
        self, workflow: str, instance_id: str, *, pending_only: bool = False, limit: int = 1000
    ) -> list[EventRecord]:
        """The events sent to an instance, oldest first (``pending_only``: undelivered)."""
        check_identifier(workflow, "workflow name")
        check_identifier(instance_id, "instance_id")
        rows = await self.db.fetch("instance_events", workflow, instance_id, limit, pending_only)
        return [_event(row) for row in rows]

    async def notify(self, workflow: str, instance_id: str) -> None:
        """Wake the runner waiting on an instance (after an operator appended to it)."""
        await self.db.fetchrow("notify", self.db.wake_channel, wake_payload(workflow, instance_id))


def _public_key(key: str | None) -> str | None:
    """The key a sender gave (None for the one fsmflow made up for a send without)."""
    return None if key is None or key.startswith(AUTO_KEY_PREFIX) else key


def _event(row: Any) -> EventRecord:
    record = to_event(row)
    if record.key is not None and record.key.startswith(AUTO_KEY_PREFIX):
        return EventRecord(
            record.workflow_name, record.instance_id, record.event_id, record.event, None,
            record.payload, record.created_at, record.delivered_seq,
        )  # fmt: skip
    return record
