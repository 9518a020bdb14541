"""The examples run for real, as ``python examples/NAME.py``, against the test database.

Each test checks the exit code and then reads what the run stored: the instance's whole
history (seq 0..n, the states and triggers taken, the final context), so an example that
printed the right thing but recorded something else fails.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from tests.conftest import run_python
from tests.e2e.support import Row, assert_complete, history, output_of

pytestmark = pytest.mark.timeout(180)

Edge = tuple[str | None, str | None, str | None]

# -- basic -----------------------------------------------------------------------------

BASIC_SUCCESS: list[Edge] = [
    (None, None, "fetch_orders"),
    ("validate", "fetch_orders", "validate_orders"),
    ("accept", "validate_orders", "compute_totals"),
    ("report", "compute_totals", "send_report"),
    (None, "send_report", None),  # no outgoing transition: completes
]
BASIC_FAILURE: list[Edge] = [
    (None, None, "fetch_orders"),
    ("validate", "fetch_orders", "validate_orders"),
    ("reject", "validate_orders", "alert_ops"),
    (None, "alert_ops", None),
]


def test_basic_success_branch(db_env: dict[str, str], postgresql: psycopg.Connection[Any]) -> None:
    result = run_python(["examples/basic.py", "--instance-id", "basic-ok"], db_env)
    assert result.returncode == 0, output_of(result)
    rows = history(postgresql, "basic_orders", "basic-ok")
    assert_complete(rows)
    assert [r.edge() for r in rows] == BASIC_SUCCESS
    final = rows[-1].context
    assert final["validation_errors"] == []
    assert final["total_cents"] == 1250 + 4999 + 300
    assert final["outcome"] == "report sent: 3 orders, total 65.49"
    assert "report sent: 3 orders, total 65.49 (instance basic-ok)" in result.stdout

    # Running a completed instance again runs nothing and records nothing.
    again = run_python(["examples/basic.py", "--instance-id", "basic-ok"], db_env)
    assert again.returncode == 0, output_of(again)
    assert history(postgresql, "basic_orders", "basic-ok") == rows
    assert "report sent: 3 orders" in again.stdout


def test_basic_failure_branch(db_env: dict[str, str], postgresql: psycopg.Connection[Any]) -> None:
    args = ["examples/basic.py", "--instance-id", "basic-bad", "--with-invalid-order"]
    result = run_python(args, db_env)
    assert result.returncode == 0, output_of(result)  # a business failure, handled
    rows = history(postgresql, "basic_orders", "basic-bad")
    assert_complete(rows)
    assert [r.edge() for r in rows] == BASIC_FAILURE
    assert rows[-1].context["validation_errors"] == ["order A-4: negative amount"]
    assert rows[-1].context["outcome"] == "ops alerted: 1 invalid order(s)"
    assert "total_cents" not in rows[-1].context  # compute_totals never ran


def test_basic_without_instance_id_starts_new_instances(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    for _ in range(2):
        result = run_python(["examples/basic.py"], db_env)
        assert result.returncode == 0, output_of(result)
    ids = postgresql.execute(
        "SELECT DISTINCT instance_id FROM fsmflow_transitions WHERE workflow_name = 'basic_orders'"
    ).fetchall()
    assert len(ids) == 2  # a completed instance is not resumed: each run is a new one
    for (instance_id,) in ids:
        assert_complete(history(postgresql, "basic_orders", instance_id))


# -- support_ticket --------------------------------------------------------------------

SUPPORT_CRITICAL: list[Edge] = [
    (None, None, "receive"),
    ("triage_ticket", "receive", "triage"),
    ("escalate", "triage", "escalate"),  # priority in [critical, high]
    ("escalate", "escalate", "escalate"),  # the loop: level 1 -> 2
    ("escalate", "escalate", "escalate"),  # level 2 -> 3
    ("answer", "escalate", "respond"),  # level condition reached
    ("ask_feedback", "respond", "collect_feedback"),
    ("call_back", "collect_feedback", "follow_up"),  # async custom condition
    ("answer_again", "follow_up", "respond"),
    ("ask_feedback", "respond", "collect_feedback"),
    ("resolve", "collect_feedback", "close_ticket"),  # sync custom condition
    ("archive", "close_ticket", None),
]
TICKET = {
    "id": "T-1042",
    "customer": "Acme GmbH",
    "plan": "enterprise",
    "subject": "Checkout is down for all EU customers",
    "body": "Since this morning every checkout fails with HTTP 500.",
}
SUPPORT_CRITICAL_FINAL: dict[str, Any] = {
    "ticket": TICKET,
    "status": "resolved",
    "priority": "critical",
    "escalation": {
        "level": 3,
        "required": 3,
        "remaining": 0,
        "teams": ["support-l2", "engineering-oncall", "incident-commander"],
    },
    "responses": [
        "Answer #1 to Acme GmbH from incident-commander: mitigation in place.",
        "Answer #2 to Acme GmbH from incident-commander: fix deployed.",
    ],
    "feedback": {"score": 5, "comment": "All good now, thank you!"},
    "feedback_history": [
        {"score": 2, "comment": "Still failing for some users, please call me."},
        {"score": 5, "comment": "All good now, thank you!"},
    ],
    "follow_ups": 1,
}


def test_support_ticket_critical(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    result = run_python(["examples/support_ticket.py", "--instance-id", "t-1042"], db_env)
    assert result.returncode == 0, output_of(result)
    rows = history(postgresql, "support_ticket", "t-1042")
    assert_complete(rows)
    assert [r.edge() for r in rows] == SUPPORT_CRITICAL
    assert rows[0].context == {"ticket": TICKET}
    assert rows[-1].context == SUPPORT_CRITICAL_FINAL
    assert "ticket T-1042 resolved: priority critical" in result.stdout
    assert "(instance t-1042)" in result.stdout


def test_support_ticket_normal_priority_skips_escalation(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    args = [
        "examples/support_ticket.py",
        "--instance-id",
        "t-normal",
        "--subject",
        "How do I change my invoice address?",
        "--body",
        "We moved offices.",
    ]
    result = run_python(args, db_env)
    assert result.returncode == 0, output_of(result)
    rows = history(postgresql, "support_ticket", "t-normal")
    assert_complete(rows)
    assert [r.edge() for r in rows] == [
        (None, None, "receive"),
        ("triage_ticket", "receive", "triage"),
        ("answer", "triage", "respond"),  # priority not urgent: no escalation
        ("ask_feedback", "respond", "collect_feedback"),
        ("resolve", "collect_feedback", "close_ticket"),
        ("archive", "close_ticket", None),
    ]
    final = rows[-1].context
    assert final["priority"] == "normal"
    assert final["escalation"]["teams"] == []
    assert final["status"] == "resolved"
    assert final["follow_ups"] == 0


# -- dspy_pipeline ---------------------------------------------------------------------

DSPY_EDGES: list[Edge] = [
    (None, None, "retrieve"),
    ("write_draft", "retrieve", "draft"),
    ("review", "draft", "critique"),
    ("finish", "critique", "finalize"),
    ("publish", "finalize", None),
]
DSPY_STATES = ["retrieve", "draft", "critique", "finalize"]
LM_CALLS_LINE = re.compile(r"LM calls: (\d+) recorded in the workflow, (\d+) made by this process")


def _lm_calls(output: str) -> tuple[int, int]:
    match = LM_CALLS_LINE.search(output)
    assert match, output
    return int(match[1]), int(match[2])


def _run_dspy(db_env: dict[str, str], instance_id: str, **env: str) -> Any:
    args = ["examples/dspy_pipeline.py", "--instance-id", instance_id]
    return run_python(args, {**db_env, **env})


def _crash_free_dspy_run(db_env: dict[str, str], conn: psycopg.Connection[Any]) -> list[Row]:
    result = _run_dspy(db_env, "oracle")
    assert result.returncode == 0, output_of(result)
    rows = history(conn, "dspy_pipeline", "oracle")
    assert_complete(rows)
    assert [r.edge() for r in rows] == DSPY_EDGES
    assert _lm_calls(result.stderr) == (4, 4)
    return rows


def test_dspy_pipeline(db_env: dict[str, str], postgresql: psycopg.Connection[Any]) -> None:
    rows = _crash_free_dspy_run(db_env, postgresql)
    final = rows[-1].context
    assert final["lm_calls"] == dict.fromkeys(DSPY_STATES, 1)
    assert final["search_query"] == "crash resume finished steps"
    assert len(final["passages"]) == 3
    assert final["score"] == 7
    assert final["answer"].startswith("Finished steps are never run again")


@pytest.mark.parametrize("crash_in", ["draft", "finalize"])
def test_dspy_pipeline_crash_and_resume(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any], crash_in: str
) -> None:
    oracle = _crash_free_dspy_run(db_env, postgresql)
    position = DSPY_STATES.index(crash_in)

    crashed = _run_dspy(db_env, "crashy", FSMFLOW_CRASH_IN=crash_in)
    assert crashed.returncode == 70, output_of(crashed)  # os._exit inside the step
    rows = history(postgresql, "dspy_pipeline", "crashy")
    # The history stops right before the crashed step's row: it is the instance's state.
    assert [r.edge() for r in rows] == DSPY_EDGES[: position + 1]
    assert rows[-1].dest_state == crash_in and rows[-1].status == "running"
    assert rows == oracle[: position + 1]  # same contexts too

    resumed = _run_dspy(db_env, "crashy")
    assert resumed.returncode == 0, output_of(resumed)
    assert f"resumed in state '{crash_in}'" in resumed.stderr
    rows = history(postgresql, "dspy_pipeline", "crashy")
    assert_complete(rows)
    assert [r.edge() for r in rows] == DSPY_EDGES
    # Same results as the crash-free run, and the finished steps were not called again:
    # the workflow recorded 4 LM calls, of which this process made only the unfinished ones.
    assert [r.context for r in rows[1:]] == [r.context for r in oracle[1:]]
    assert rows[-1].context["lm_calls"] == oracle[-1].context["lm_calls"]
    assert _lm_calls(resumed.stderr) == (4, len(DSPY_STATES) - position)
