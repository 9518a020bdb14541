"""What ``fsmflow show`` says about a wait: the events and timeouts the instance waits for,
since when, its deadlines, and the events sent to it that are not delivered yet.

The waits are read from the definition summary stored with the instance's seq 0 (as
``send-event`` does), so ``show`` needs no workflow code. Deadlines are the server's
(``waiting_since`` + each timeout); "in 5m" / "5m ago" use this machine's clock.
Payloads are printed only with ``--context``: once delivered, they are context values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fsmflow.cli.arguments import duration_text
from fsmflow.cli.output import age, printable, table, timestamp
from fsmflow.model.records import EventRecord, TransitionRecord


@dataclass(frozen=True, slots=True)
class AwaitedEvent:
    """An event the instance waits for, and the triggers of the transitions it may take."""

    event: str
    triggers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Deadline:
    """A timeout transition of the waiting state and when it fires (server clock)."""

    trigger: str
    seconds: float
    at: datetime | None  # None when the row has no waiting_since (rows before schema 4)


@dataclass(frozen=True, slots=True)
class Wait:
    """What a waiting instance waits for: ``next_deadline`` is its last row's ``wake_at``."""

    state: str
    since: datetime | None
    events: tuple[AwaitedEvent, ...]
    timeouts: tuple[Deadline, ...]
    next_deadline: datetime | None


def wait_of(records: Sequence[TransitionRecord]) -> Wait | None:
    """The wait the instance is in (None unless its last row is ``waiting``)."""
    last = records[-1]
    if last.status != "waiting":
        return None
    state = last.dest_state or ""
    outgoing = [t for t in _transitions(records[0]) if state in (t.get("source") or ())]
    events: dict[str, list[str]] = {}
    timeouts = []
    for t in outgoing:
        trigger = str(t.get("trigger"))
        if isinstance(t.get("event"), str):
            events.setdefault(t["event"], []).append(trigger)
        elif isinstance(t.get("timeout"), int | float):
            at = None if last.waiting_since is None else (
                last.waiting_since + timedelta(seconds=t["timeout"])
            )  # fmt: skip
            timeouts.append(Deadline(trigger, float(t["timeout"]), at))
    return Wait(
        state=state,
        since=last.waiting_since,
        events=tuple(AwaitedEvent(e, tuple(ts)) for e, ts in events.items()),
        timeouts=tuple(sorted(timeouts, key=lambda d: d.seconds)),
        next_deadline=last.wake_at,
    )


def _transitions(first: TransitionRecord) -> list[dict[str, Any]]:
    found = (first.definition or {}).get("transitions")
    return [t for t in found if isinstance(t, dict)] if isinstance(found, list) else []


def wait_lines(wait: Wait, now: datetime | None = None) -> list[str]:
    """The lines ``show`` prints under the history for a waiting instance."""
    now = now or datetime.now(UTC)
    since = "" if wait.since is None else f" since {timestamp(wait.since)} UTC"
    lines = [f"waiting in state {wait.state!r}{since}"]
    for awaited in wait.events:
        lines.append(f"  event {awaited.event!r} (transitions {', '.join(awaited.triggers)})")
    for deadline in wait.timeouts:
        at = "" if deadline.at is None else f" at {timestamp(deadline.at)} UTC"
        lines.append(
            f"  timeout after {_seconds(deadline.seconds)}{at} (transition {deadline.trigger})"
        )
    if not wait.events and not wait.timeouts:
        lines.append("  (its stored definition declares no event or timeout from this state)")
    if wait.next_deadline is None:
        lines.append("  next deadline: none (only an event ends this wait)")
    else:
        lines.append(f"  next deadline: {timestamp(wait.next_deadline)} UTC ({_when(wait, now)})")
    return [printable(line) for line in lines]


def _when(wait: Wait, now: datetime) -> str:
    assert wait.next_deadline is not None
    if wait.next_deadline > now:
        return f"in {age(now, wait.next_deadline)}"
    return f"passed {age(wait.next_deadline, now)} ago: the next run takes its timeout at once"


def _seconds(seconds: float) -> str:
    if seconds >= 60 and seconds == int(seconds):
        return f"{seconds:g} s ({duration_text(timedelta(seconds=seconds))})"
    return f"{seconds:g} s"


def pending_lines(pending: Sequence[EventRecord], *, shown: int, with_payloads: bool) -> list[str]:
    """The pending-events table (the oldest ``shown`` of them) and, if asked, payloads."""
    if not pending:
        return ["pending events: none"]
    rows = [
        (str(e.event_id), e.event, e.key or "", timestamp(e.created_at) + " UTC")
        for e in pending[:shown]
    ]
    lines = [
        "pending events (sent, not delivered yet), oldest first:",
        table(("ID", "EVENT", "KEY", "SENT AT"), rows, right=(0,)),
    ]
    if len(pending) > shown:
        lines.append(f"(only the oldest {shown} shown)")
    if with_payloads:
        for e in pending[:shown]:
            text = json.dumps(e.payload, ensure_ascii=False)
            lines.append(printable(f"payload of event {e.event_id}: {text}"))
    return lines


def pending_json(event: EventRecord, *, with_payload: bool) -> dict[str, Any]:
    """One pending event for ``show --json`` (its payload only ``with_payload``)."""
    data: dict[str, Any] = {
        "event_id": event.event_id,
        "event": event.event,
        "key": event.key,
        "created_at": event.created_at,
    }
    if with_payload:
        data["payload"] = event.payload
    return data
