"""``examples/typed_ticket.py`` runs for real (``python examples/typed_ticket.py``) against the
test database, resumes an instance stored by "the version-1 program" (a row written by hand
as it would have written it), and passes ``mypy --strict``."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.conftest import run_python
from tests.e2e.support import assert_complete, history, output_of

pytestmark = pytest.mark.timeout(180)


def versions(conn: psycopg.Connection[Any], instance_id: str) -> list[int | None]:
    rows = conn.execute(
        "SELECT state_version FROM fsmflow_transitions WHERE workflow_name = 'typed_ticket' "
        "AND instance_id = %s ORDER BY seq",
        (instance_id,),
    ).fetchall()
    conn.commit()
    return [row[0] for row in rows]


def test_typed_ticket_runs_and_upgrades_a_version_1_instance(
    db_env: dict[str, str], postgresql: psycopg.Connection[Any]
) -> None:
    result = run_python(["examples/typed_ticket.py", "--instance-id", "t-1"], db_env)
    assert result.returncode == 0, output_of(result)
    rows = history(postgresql, "typed_ticket", "t-1")
    assert_complete(rows)
    assert [r.edge() for r in rows] == [
        (None, None, "triage"),
        ("triaged", "triage", "escalate"),
        ("escalated", "escalate", "respond"),
        ("answered", "respond", None),
    ]
    assert rows[-1].context["tags"] == ["outage"] and rows[-1].context["escalated"] is True
    assert versions(postgresql, "t-1") == [2, 2, 2, 2]
    assert "ticket t-1: priority 9, escalated True" in result.stdout

    # An instance the version-1 program started: customer, tags as one string.
    old = {"subject": "Invoice is wrong", "customer": "Old Corp", "tags": "vip, eu"}
    postgresql.execute(
        "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, dest_state, context, "
        "status, fingerprint, definition, state_version) SELECT workflow_name, 't-old', 0, "
        "dest_state, %s::json, 'running', fingerprint, definition, 1 FROM fsmflow_transitions "
        "WHERE workflow_name = 'typed_ticket' AND instance_id = 't-1' AND seq = 0",
        (json.dumps(old),),
    )
    postgresql.commit()
    resumed = run_python(["examples/typed_ticket.py", "--instance-id", "t-old"], db_env)
    assert resumed.returncode == 0, output_of(resumed)
    rows = history(postgresql, "typed_ticket", "t-old")
    assert rows[0].context == old  # history is never rewritten
    assert rows[-1].context["requester"] == "Old Corp"
    assert rows[-1].context["tags"] == ["vip", "eu", "billing"]
    assert versions(postgresql, "t-old") == [1, 2, 2]
    assert "Dear Old Corp, support is on it" in resumed.stdout


def test_typed_ticket_passes_mypy_strict(db_env: dict[str, str]) -> None:
    checked = run_python(["-m", "mypy", "--strict", "examples/typed_ticket.py"], db_env)
    assert checked.returncode == 0, output_of(checked)
    assert "Success" in checked.stdout
