"""``examples/otel_console.py`` as the README shows it: spans on the console, and a run
that crashed mid-ticket resumed in another process within the same trace."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from tests.conftest import run_python

from .support import assert_complete, history, output_of

EXAMPLE = "examples/otel_console.py"


def console_spans(stdout: str) -> list[dict[str, Any]]:
    """The spans ConsoleSpanExporter printed (indented JSON objects), in order."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while (start := stdout.find("{\n", position)) >= 0:
        value, position = decoder.raw_decode(stdout, start)
        if isinstance(value, dict) and "context" in value:
            found.append(value)
    return found


def test_the_example_prints_the_spans_of_a_ticket(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    result = run_python([EXAMPLE, "--instance-id", "otel-1"], db_env)
    assert result.returncode == 0, output_of(result)
    assert "ticket T-1042 resolved" in result.stdout
    spans = console_spans(result.stdout)
    names = [s["name"] for s in spans]
    assert names[0] == "fsmflow.start support_ticket"
    assert names[-1] == "fsmflow.run support_ticket"
    assert "fsmflow.step triage" in names and "fsmflow.step close_ticket" in names
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    assert spans[-1]["attributes"]["fsmflow.outcome"] == "completed"
    assert spans[-1]["resource"]["attributes"]["service.name"] == "tickets"
    assert "fsmflow.transitions" in result.stderr  # the metrics, printed at exit
    assert_complete(history(postgresql, "support_ticket", "otel-1"))


def test_a_crashed_and_resumed_ticket_is_one_trace(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    crashed = run_python(
        [EXAMPLE, "--instance-id", "otel-2"], {**db_env, "OTEL_CONSOLE_CRASH_IN": "escalate"}
    )
    assert crashed.returncode == 70, output_of(crashed)
    resumed = run_python([EXAMPLE, "--instance-id", "otel-2"], db_env)
    assert resumed.returncode == 0, output_of(resumed)

    before, after = console_spans(crashed.stdout), console_spans(resumed.stdout)
    assert [s["name"] for s in before] == [
        "fsmflow.start support_ticket",
        "fsmflow.step receive",
        "fsmflow.step triage",
    ]  # fmt: skip: the killed run's own span never ended
    start, run = before[0], after[-1]
    assert run["name"] == "fsmflow.run support_ticket"
    assert {s["context"]["trace_id"] for s in before + after} == {start["context"]["trace_id"]}
    assert run["parent_id"] == start["context"]["span_id"]
    assert run["attributes"]["fsmflow.resumed"] is True
    assert after[0]["name"] == "fsmflow.step escalate"  # where it crashed: run again
    assert_complete(history(postgresql, "support_ticket", "otel-2"))
