"""What the pages show, computed from the store's records: filters and keyset cursors,
the timeline's rows, a waiting instance's wait. No HTML here (the templates escape).

Context values never reach these views: a row shows its context's key count and size;
the values, and stored error messages (which may quote them), only come from the
per-row context route a person asks for.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from fsmflow.errors import ConfigError
from fsmflow.model.names import check_identifier
from fsmflow.model.records import STATUSES, InstanceSummary, Status, TransitionRecord

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500


class BadRequest(ValueError):
    """A query parameter the pages cannot use; the message says which and what to pass."""


@dataclass(frozen=True, slots=True)
class Filters:
    """The instances page's query: ``after`` is the decoded keyset cursor."""

    workflow: str | None = None
    status: Status | None = None
    q: str | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[Any, ...] | None = None

    def query(self, **changes: Any) -> dict[str, str]:
        """The query parameters of these filters (with ``changes``), empty ones left out."""
        values = {"workflow": self.workflow, "status": self.status, "q": self.q}
        if self.limit != DEFAULT_LIMIT:
            values["limit"] = str(self.limit)
        values.update(changes)
        return {k: str(v) for k, v in values.items() if v not in (None, "")}


def parse_filters(params: Mapping[str, str]) -> Filters:
    """The filters of the instances page from its query string; :class:`BadRequest`."""
    workflow = params.get("workflow") or None
    if workflow is not None:
        try:
            check_identifier(workflow, "the workflow filter")
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status {status!r} is unknown: use one of {', '.join(STATUSES)}")
    q = params.get("q") or None
    if q is not None and (len(q) > 1000 or "\x00" in q):
        raise BadRequest("the id search must be at most 1000 characters, without NUL")
    limit = _limit(params.get("limit"))
    after = decode_cursor(params["after"]) if params.get("after") else None
    return Filters(workflow, status, q, limit, after)


def _limit(text: str | None) -> int:
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def encode_cursor(summary: InstanceSummary, search: bool) -> str:
    """The ``after`` parameter that continues a page after ``summary`` (an id search is
    ordered by workflow and id, the list by start time)."""
    key: list[str] = [summary.workflow_name, summary.instance_id]
    if not search:
        key.insert(0, summary.started_at.isoformat())
    raw = json.dumps(key, ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> tuple[Any, ...]:
    """The keyset ``after`` names: ``(started_at, workflow, id)`` or ``(workflow, id)``."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        key = json.loads(raw.decode("utf-8"))
        if not isinstance(key, list) or not all(isinstance(k, str) for k in key):
            raise ValueError(key)
        if len(key) == 3:
            return (datetime.fromisoformat(key[0]), key[1], key[2])
        if len(key) == 2:
            return (key[0], key[1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise BadRequest("the page cursor (after) is not one this dashboard made: start from page 1")


def cursor_summary(after: tuple[Any, ...] | None) -> InstanceSummary | None:
    """The list's keyset as the ``after`` instance ``list_instances`` takes."""
    if after is None:
        return None
    if len(after) != 3:
        raise BadRequest("this page cursor belongs to an id search: start from page 1")
    started, workflow, instance_id = after
    return InstanceSummary(workflow, instance_id, "running", "", 0, started, started)


def search_after(after: tuple[Any, ...] | None) -> tuple[str, str] | None:
    """The id search's keyset ``(workflow, id)``."""
    if after is None:
        return None
    if len(after) != 2:
        raise BadRequest("this page cursor belongs to the list, not an id search: start again")
    return (after[0], after[1])


# -- one instance ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One history row on the timeline (no context values, no error message)."""

    seq: int
    status: str
    trigger: str
    source: str
    dest: str
    created_at: datetime
    duration: str
    context_keys: int
    context_bytes: int
    error_type: str | None
    error_where: str | None
    error_attempts: str | None
    has_message: bool


def timeline(records: Sequence[TransitionRecord]) -> list[Row]:
    """The timeline's rows, in seq order."""
    return [_row(r) for r in records]


def _row(record: TransitionRecord) -> Row:
    error = record.error
    frames = [] if error is None else error.get("traceback")
    where = None
    if isinstance(frames, list) and frames and isinstance(frames[-1], dict):
        f = frames[-1]
        where = f"{f.get('file', '?')}:{f.get('line', '?')} in {f.get('function', '?')}"
    return Row(
        seq=record.seq,
        status=record.status,
        trigger=record.trigger or ("start" if record.seq == 0 else ""),
        source=record.source_state or "",
        dest=record.dest_state or ("(end)" if record.source_state else ""),
        created_at=record.created_at,
        duration=duration_text(record.duration_ms),
        context_keys=len(record.context),
        context_bytes=len(json.dumps(record.context, ensure_ascii=False).encode("utf-8")),
        error_type=None if error is None else str(error.get("type", "error")),
        error_where=where,
        error_attempts=None if error is None or "attempts" not in error else str(error["attempts"]),
        has_message=error is not None and error.get("message") is not None,
    )


def duration_text(ms: float | None) -> str:
    """A step's duration for people: ``850 ms``, ``2.5 s``, ``3 min 20 s``; ``""`` if none."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


@dataclass(frozen=True, slots=True)
class Wait:
    """A waiting instance's wait: the events and timeouts of its state, its deadline."""

    state: str
    since: datetime | None
    events: tuple[str, ...]
    timeouts: tuple[tuple[str, float, datetime | None], ...]  # trigger, seconds, at
    deadline: datetime | None


def wait_of(records: Sequence[TransitionRecord]) -> Wait | None:
    """The wait the instance is in, read from its stored definition (None if not waiting)."""
    last = records[-1]
    if last.status != "waiting":
        return None
    state = last.dest_state or ""
    found = (records[0].definition or {}).get("transitions")
    declared = [t for t in found if isinstance(t, dict)] if isinstance(found, list) else []
    outgoing = [t for t in declared if state in (t.get("source") or ())]
    events = tuple(dict.fromkeys(t["event"] for t in outgoing if isinstance(t.get("event"), str)))
    timeouts = tuple(
        (str(t.get("trigger")), float(t["timeout"]), _plus(last.waiting_since, t["timeout"]))
        for t in outgoing
        if isinstance(t.get("timeout"), int | float) and not isinstance(t.get("event"), str)
    )
    return Wait(state, last.waiting_since, events, timeouts, last.wake_at)


def _plus(since: datetime | None, seconds: float) -> datetime | None:
    return None if since is None else since + timedelta(seconds=seconds)


def timestamp(value: datetime | None) -> str:
    """A UTC time for the pages: ``2025-01-31 12:00:05``."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def declared_events(summary: dict[str, Any] | None) -> list[str]:
    """The event names a stored definition declares (the send-event form's choices)."""
    found = (summary or {}).get("transitions")
    names = (
        [t.get("event") for t in found if isinstance(t, dict)] if isinstance(found, list) else []
    )
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))
