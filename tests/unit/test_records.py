"""Building typed records from stored rows: hand-altered rows give a clear error or a
normalized value, never a traceback from deep inside the runner or the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fsmflow import HistoryCorruptError
from fsmflow.model.records import to_record


def row(**changes: Any) -> dict[str, Any]:
    """A stored row as the store reads it (jsonb columns as text)."""
    base: dict[str, Any] = {
        "workflow_name": "wf",
        "instance_id": "i-1",
        "seq": 2,
        "trigger": None,
        "source_state": "charge",
        "dest_state": "charge",
        "context": json.dumps({"amount": "12x"}),
        "status": "failed",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "fingerprint": None,
        "attempt_id": None,
        "duration_ms": None,
        "error": json.dumps({"type": "ValueError", "message": "bad", "attempts": 1}),
        "definition": None,
        "forked_from_instance": None,
        "forked_from_seq": None,
    }
    return {**base, **changes}


@pytest.mark.parametrize("context", ["[1, 2]", '"text"', "42", "null"])
def test_a_context_that_is_not_an_object_names_the_row_and_the_way_out(context: str) -> None:
    with pytest.raises(HistoryCorruptError) as raised:
        to_record(row(context=context))
    message = str(raised.value)
    assert "'wf'" in message and "'i-1'" in message and "seq 2" in message
    assert "fork the instance from an intact seq" in message


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ('"disk full"', {"type": "error", "message": "disk full"}),
        ("[1, 2]", {"type": "error", "message": "[1, 2]"}),
        ("7", {"type": "error", "message": "7"}),
    ],
)
def test_an_error_that_is_not_an_object_is_normalized(
    stored: str, expected: dict[str, Any]
) -> None:
    assert to_record(row(error=stored)).error == expected


def test_an_intact_row_is_read_as_stored() -> None:
    record = to_record(row())
    assert record.context == {"amount": "12x"}
    assert record.error == {"type": "ValueError", "message": "bad", "attempts": 1}
