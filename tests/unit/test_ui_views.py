"""The dashboard's views and defences without a server: filters, keyset cursors,
timeline rows (no context values), durations, the token and CSRF comparisons."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from fsmflow.model.records import InstanceSummary, TransitionRecord
from fsmflow.ui import security, views

NOW = datetime(2026, 1, 1, 12, 0, 5, tzinfo=UTC)


def test_filters_parse_and_reject_with_the_parameter_named() -> None:
    parsed = views.parse_filters({"workflow": "w", "status": "failed", "q": "ab", "limit": "7"})
    assert (parsed.workflow, parsed.status, parsed.q, parsed.limit) == ("w", "failed", "ab", 7)
    assert parsed.query() == {"workflow": "w", "status": "failed", "q": "ab", "limit": "7"}
    assert views.parse_filters({"workflow": "", "status": ""}) == views.Filters()
    for bad, text in (({"status": "x"}, "use one of"), ({"limit": "0"}, "limit"),
                      ({"limit": "abc"}, "limit"), ({"q": "a\x00"}, "NUL"),
                      ({"workflow": "a\x00"}, "workflow filter")):  # fmt: skip
        with pytest.raises(views.BadRequest, match=text):
            views.parse_filters(bad)


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    summary = InstanceSummary("w/<x>", 'i"d', "running", "s", 3, NOW, NOW)
    listing = views.decode_cursor(views.encode_cursor(summary, search=False))
    assert listing == (NOW, "w/<x>", 'i"d')
    after = views.cursor_summary(listing)
    assert after is not None and (after.started_at, after.instance_id) == (NOW, 'i"d')
    search = views.decode_cursor(views.encode_cursor(summary, search=True))
    assert views.search_after(search) == ("w/<x>", 'i"d')
    with pytest.raises(views.BadRequest, match="id search"):
        views.cursor_summary(search)
    with pytest.raises(views.BadRequest, match="start"):
        views.search_after(listing)
    for forged in ("!!!", "e30", "WzFd"):  # not base64, {}, [1]
        with pytest.raises(views.BadRequest, match="start from page 1"):
            views.decode_cursor(forged)


def test_timeline_rows_carry_no_context_values_nor_messages() -> None:
    error = {"type": "RuntimeError", "message": "secret-v", "attempts": 2,
             "traceback": [{"file": "f.py", "line": 3, "function": "step"}]}  # fmt: skip
    record = TransitionRecord("w", "i", 2, None, "a", "a", {"k": "secret-v"}, "failed", NOW,
                              duration_ms=2500.0, error=error)  # fmt: skip
    (row,) = views.timeline([record])
    assert "secret-v" not in repr(row)
    assert (row.error_type, row.error_attempts, row.error_where) == ("RuntimeError", "2",
                                                                    "f.py:3 in step")  # fmt: skip
    assert row.has_message and row.duration == "2.5 s" and row.context_keys == 1


@pytest.mark.parametrize(
    ("ms", "text"),
    [(None, ""), (3.21, "3.2 ms"), (850.4, "850 ms"), (2500, "2.5 s"), (200_000, "3 min 20 s")],
)
def test_durations(ms: float | None, text: str) -> None:
    assert views.duration_text(ms) == text


def test_token_and_csrf_comparisons() -> None:
    token = SecretStr("t0ken")
    assert security.token_matches("t0ken", token)
    assert not security.token_matches("t0ken", None)
    assert not security.token_matches("", token) and not security.token_matches(None, token)
    assert not security.token_matches("t0ke", token)
    assert security.same_value("a", "a") and not security.same_value("", "")
    assert security.foreign_origin("http://evil.example", "127.0.0.1:8080")
    assert security.foreign_origin("null", "127.0.0.1:8080")
    assert not security.foreign_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not security.foreign_origin(None, "127.0.0.1:8080")
    assert len({security.new_csrf() for _ in range(10)}) == 10
