"""How the ``fsmflow`` CLI shows things: aligned tables, ages, sizes and JSON.

Context values are never shown in tables: only how many keys a context has, their
names for the latest row, and its size.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .records import InstanceSummary, TransitionRecord

if TYPE_CHECKING:
    pass


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()) -> str:
    """``rows`` under ``headers`` in aligned columns; column indexes in ``right`` align right."""
    body = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in body) for i in range(len(headers))]
    lines = []
    for row in body:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def age(moment: datetime, now: datetime | None = None) -> str:
    """``45s``, ``12m``, ``3h``, ``2d``: how long ago ``moment`` was."""
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def timestamp(moment: datetime) -> str:
    """``2025-11-24 10:00:01`` in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def context_size(context: dict[str, Any]) -> int:
    """Bytes of the context as stored (compact JSON, UTF-8)."""
    text = json.dumps(context, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


def human_bytes(size: int) -> str:
    """``812 B``, ``3.4 KiB``, ``1.2 MiB``."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def instances_table(summaries: Sequence[InstanceSummary]) -> str:
    """The ``fsmflow list`` table."""
    now = datetime.now(UTC)
    rows = [
        (
            s.workflow_name,
            s.instance_id,
            s.status,
            s.current_state,
            str(s.seq),
            age(s.started_at, now) + " ago",
            age(s.updated_at, now) + " ago",
            s.forked_from_instance or "",
        )
        for s in summaries
    ]
    headers = (
        "WORKFLOW",
        "INSTANCE",
        "STATUS",
        "STATE",
        "SEQ",
        "STARTED",
        "UPDATED",
        "FORKED FROM",
    )
    return table(headers, rows, right=(4, 5, 6))


def history_table(records: Sequence[TransitionRecord]) -> str:
    """The ``fsmflow show`` table: one line per row, contexts as key counts and sizes."""
    rows = [
        (
            str(r.seq),
            timestamp(r.created_at),
            r.trigger or "",
            r.source_state or "",
            r.dest_state or "",
            r.status,
            "" if r.duration_ms is None else f"{r.duration_ms:.0f} ms",
            f"{_keys(len(r.context))}, {human_bytes(context_size(r.context))}",
        )
        for r in records
    ]
    headers = ("SEQ", "AT (UTC)", "TRIGGER", "FROM", "TO", "STATUS", "STEP", "CONTEXT")
    return table(headers, rows, right=(0, 6))


def _keys(count: int) -> str:
    return "1 key" if count == 1 else f"{count} keys"


def history_notes(records: Sequence[TransitionRecord]) -> list[str]:
    """Lines under the ``show`` table: fork origin, errors and cancel reasons, last keys."""
    notes = []
    first, last = records[0], records[-1]
    if first.forked_from_instance is not None:
        notes.append(
            f"forked from instance {first.forked_from_instance!r} at seq {first.forked_from_seq}"
        )
    for record in records:
        if record.error is not None:
            error = record.error
            attempts = f" ({error['attempts']} attempt(s))" if "attempts" in error else ""
            notes.append(
                f"seq {record.seq} {record.status}: {error.get('type', 'error')}: "
                f"{error.get('message', '')}{attempts}"
            )
    keys = ", ".join(sorted(last.context)) or "(none)"
    notes.append(f"context keys at seq {last.seq}: {keys}")
    return notes


def record_json(record: TransitionRecord, *, with_context: bool) -> dict[str, Any]:
    """One row for ``--json``: context values only when asked for, else keys and size."""
    data: dict[str, Any] = jsonable(record)
    data.pop("definition", None)
    data["context_keys"] = sorted(record.context)
    data["context_bytes"] = context_size(record.context)
    if not with_context:
        data.pop("context")
    return data


def jsonable(value: Any) -> Any:
    """A dataclass (or list of them) as JSON-ready dicts; datetimes as ISO 8601 strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def dumps(value: Any) -> str:
    """Indented JSON of ``value`` (see :func:`jsonable`)."""
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False)
