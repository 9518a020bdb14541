"""How the ``fsmflow`` CLI shows things: aligned tables, ages, sizes and JSON.

Context values are never shown in tables: only how many keys a context has, their
names for the latest row, and its size. Stored error messages (which may quote context
values) are shown only when asked for. Human-readable output escapes control and bidi
characters (:func:`printable`), so a stored id cannot spoof rows or restyle the terminal;
``--json`` output is exact JSON.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from fsmflow.model.context import compact_json
from fsmflow.model.records import InstanceSummary, TransitionRecord, WorkerInfo

# C0 and C1 controls, DEL, and the characters that reorder or separate text (bidi
# embeddings, overrides and isolates, marks, line/paragraph separators).
_OTHERS: Final = r"\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
_UNSAFE: Final = re.compile(rf"[\x00-\x1f{_OTHERS}]")
_UNSAFE_INLINE: Final = re.compile(rf"[\x00-\x09\x0b-\x1f{_OTHERS}]")  # keeps "\n"
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with control and bidi characters escaped (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return _UNSAFE.sub(_escape, text)


def printable_lines(text: str) -> str:
    """Like :func:`printable`, but newlines stay: for whole blocks of output."""
    return _UNSAFE_INLINE.sub(_escape, text)


def say(text: str, *, file: TextIO | None = None) -> None:
    """Print human-readable ``text`` (a line or a block), control characters escaped."""
    print(printable_lines(text), file=file)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()) -> str:
    """``rows`` under ``headers`` in aligned columns; column indexes in ``right`` align right."""
    body = [list(headers), *([printable(cell) for cell in r] for r in rows)]
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
    text = compact_json(context)
    return len(text.encode("utf-8"))


def human_bytes(size: int) -> str:
    """``812 B``, ``3.4 KiB``, ``1.2 MiB``."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def instances_table(
    summaries: Sequence[InstanceSummary],
    workers: Mapping[tuple[str, str], WorkerInfo] | None = None,
) -> str:
    """The ``fsmflow list`` table; ``workers``: the live worker running an instance, by
    ``(workflow, instance)`` (its WORKER cell is ``host:pid``, else empty)."""
    now = datetime.now(UTC)
    running = workers or {}
    rows = [
        (
            s.workflow_name,
            s.instance_id,
            s.status,
            s.current_state,
            str(s.seq),
            age(s.started_at, now) + " ago",
            age(s.updated_at, now) + " ago",
            worker_cell(running.get((s.workflow_name, s.instance_id))),
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
        "WORKER",
        "FORKED FROM",
    )
    return table(headers, rows, right=(4, 5, 6))


def worker_cell(worker: WorkerInfo | None) -> str:
    """``host:pid`` of a worker, or empty."""
    return "" if worker is None else f"{worker.host}:{worker.pid}"


def worker_line(worker: WorkerInfo) -> str:
    """The line ``fsmflow show`` prints for an instance a worker runs."""
    return printable(f"run by worker {worker_cell(worker)} (id {worker.worker_id})")


def history_table(records: Sequence[TransitionRecord]) -> str:
    """The ``fsmflow show`` table: one line per row, contexts as key counts and sizes.

    With waits in the history, two more columns: EVENT (the id of the event a row
    delivered or consumed) and WAKE AT (a waiting row's first deadline); with a typed
    workflow's rows, V: the state_version each row's context was written with.
    """
    rows: list[tuple[str, ...]] = [
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
    headers: tuple[str, ...] = (
        "SEQ",
        "AT (UTC)",
        "TRIGGER",
        "FROM",
        "TO",
        "STATUS",
        "STEP",
        "CONTEXT",
    )
    right: tuple[int, ...] = (0, 6)
    if any(r.status == "waiting" or r.event_id is not None for r in records):
        waits = [(_event_cell(r), _wake_cell(r)) for r in records]
        rows = [(*row[:-1], *wait, row[-1]) for row, wait in zip(rows, waits, strict=True)]
        headers, right = (*headers[:-1], "EVENT", "WAKE AT (UTC)", headers[-1]), (0, 6, 7)
    if any(r.state_version is not None for r in records):  # a typed workflow's rows
        versions = ["" if r.state_version is None else str(r.state_version) for r in records]
        rows = [(*row[:-1], v, row[-1]) for row, v in zip(rows, versions, strict=True)]
        headers, right = (*headers[:-1], "V", headers[-1]), (*right, len(headers) - 1)
    return table(headers, rows, right=right)


def _event_cell(record: TransitionRecord) -> str:
    return "" if record.event_id is None else str(record.event_id)


def _wake_cell(record: TransitionRecord) -> str:
    if record.status != "waiting":
        return ""
    return "no deadline" if record.wake_at is None else timestamp(record.wake_at)


def _keys(count: int) -> str:
    return "1 key" if count == 1 else f"{count} keys"


def history_notes(records: Sequence[TransitionRecord], *, with_errors: bool = False) -> list[str]:
    """Lines under the ``show`` table: fork origin, errors (type, attempts, location and
    traceback frames; messages only ``with_errors``) and the last row's context keys."""
    notes = []
    first, last = records[0], records[-1]
    if first.forked_from_instance is not None:
        notes.append(
            f"forked from instance {first.forked_from_instance!r} at seq {first.forked_from_seq}"
        )
    for record in records:
        if record.error is not None:
            notes += error_lines(record, with_message=with_errors)
    keys = ", ".join(sorted(last.context)) or "(none)"
    notes.append(f"context keys at seq {last.seq}: {keys}")
    return [printable_lines(note) for note in notes]


def error_lines(record: TransitionRecord, *, with_message: bool) -> list[str]:
    """A row's stored error: one line, then its traceback frames (innermost last)."""
    error = record.error or {}
    frames = _frames(error.get("traceback"))
    head = f"seq {record.seq} {record.status}: {printable(str(error.get('type', 'error')))}"
    message = error.get("message")
    if with_message and message is not None:
        head += f": {printable(str(message))}"
    if "attempts" in error:
        head += f" ({printable(str(error['attempts']))} attempt(s))"
    if frames:
        head += f" at {frames[-1]}"
    if message is not None and not with_message:
        head += "; message not shown (it may quote context values): --errors shows it"
    if len(frames) < 2:
        return [head]
    return [head, "  traceback (innermost last):", *(f"    {frame}" for frame in frames)]


def _frames(stored: Any) -> list[str]:
    """``file:line in function`` of each well-formed stored frame; anything else skipped."""
    if not isinstance(stored, list):
        return []
    return [
        printable(f"{f.get('file', '?')}:{f.get('line', '?')} in {f.get('function', '?')}")
        for f in stored
        if isinstance(f, dict)
    ]


def record_json(
    record: TransitionRecord, *, with_context: bool, with_errors: bool = True
) -> dict[str, Any]:
    """One row for ``--json``: context values only when asked for, else keys and size;
    the error's message only ``with_errors``."""
    data: dict[str, Any] = jsonable(record)
    data.pop("definition", None)
    data["context_keys"] = sorted(record.context)
    data["context_bytes"] = context_size(record.context)
    if not with_context:
        data.pop("context")
    if not with_errors and isinstance(data.get("error"), dict):
        data["error"].pop("message", None)
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
