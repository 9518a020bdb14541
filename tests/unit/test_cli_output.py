"""What the CLI prints for people: error messages only when asked, traceback frames, and
control characters escaped so a stored id cannot spoof or restyle the terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fsmflow.cli.output import (
    history_notes,
    history_table,
    instances_table,
    printable,
    printable_lines,
)
from fsmflow.model.records import InstanceSummary, TransitionRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SECRET = "invalid literal for int() with base 10: '4111-1111'"
FRAMES = [
    {"file": "app/runner.py", "line": 10, "function": "run"},
    {"file": "app/steps.py", "line": 14, "function": "charge"},
]


def record(seq: int, **changes: Any) -> TransitionRecord:
    base: dict[str, Any] = {
        "workflow_name": "wf", "instance_id": "i-1", "seq": seq, "trigger": None,
        "source_state": "charge", "dest_state": "charge", "context": {"amount": "x"},
        "status": "running", "created_at": NOW,
    }  # fmt: skip
    return TransitionRecord(**{**base, **changes})


def failed(error: Any) -> list[TransitionRecord]:
    return [record(0), record(1, status="failed", error=error)]


def test_error_messages_are_hidden_unless_asked_but_type_attempts_and_location_show() -> None:
    rows = failed({"type": "ValueError", "message": SECRET, "attempts": 3, "traceback": FRAMES})
    hidden = "\n".join(history_notes(rows))
    assert SECRET not in hidden and "4111" not in hidden
    assert "seq 1 failed: ValueError (3 attempt(s)) at app/steps.py:14 in charge" in hidden
    assert "--errors" in hidden
    assert "app/runner.py:10 in run" in hidden  # every frame, innermost last
    assert hidden.index("app/runner.py:10") < hidden.rindex("app/steps.py:14")

    shown = "\n".join(history_notes(rows, with_errors=True))
    assert f"seq 1 failed: ValueError: {SECRET} (3 attempt(s))" in shown


@pytest.mark.parametrize(
    "error",
    [
        {"type": "RuntimeError", "message": "boom", "attempts": 1},  # an old row: no frames
        {"type": "RuntimeError", "attempts": 1},  # FSMFLOW_REDACT_ERRORS: no message
        {"type": "RuntimeError", "traceback": "not a list"},
        {"type": 7, "attempts": "x", "traceback": [1, {"file": None}, {"line": "y"}]},
        {},
    ],
)
def test_odd_or_old_error_objects_never_raise(error: dict[str, Any]) -> None:
    text = "\n".join(history_notes(failed(error)) + history_notes(failed(error), with_errors=True))
    assert "seq 1 failed:" in text


def test_control_and_bidi_characters_are_escaped() -> None:
    assert printable("a\nb\x1b[31mc\x7f\x9b\u202ed\u2066\r\t") == (
        "a\\nb\\x1b[31mc\\x7f\\x9b\\u202ed\\u2066\\r\\t"
    )
    assert printable("plain ÄÖ 日本") == "plain ÄÖ 日本"
    assert printable_lines("two\nlines\x1b") == "two\nlines\\x1b"


def test_tables_and_notes_escape_stored_text() -> None:
    spoof = "fake\n\x1b[2Kwf  i-9  completed"
    summary = InstanceSummary(
        workflow_name="wf", instance_id=spoof, status="running", current_state="s\u202e",
        seq=1, started_at=NOW, updated_at=NOW, forked_from_instance="x\x1b",
    )  # fmt: skip
    listed = instances_table([summary])
    assert len(listed.splitlines()) == 2 and "\x1b" not in listed and "\u202e" not in listed
    assert "fake\\n\\x1b[2K" in listed

    error = {"type": "E\x1b", "message": "m\u202e", "traceback": [{"file": "f\n"}]}
    rows = [record(0, trigger="t\x1b", dest_state="d\n"), record(1, status="failed", error=error)]
    for text in (history_table(rows), "\n".join(history_notes(rows, with_errors=True))):
        assert "\x1b" not in text and "\u202e" not in text
    assert len(history_table(rows).splitlines()) == 3
