"""What a worker does with a claim, without a database: back-off and its report."""

from __future__ import annotations

from fsmflow import EXIT_INTERRUPTED, EXIT_OK, WorkerReport
from fsmflow.engine.claims import MAX_BACKOFF_SECONDS, backoff


def test_backoff_doubles_from_the_sweep_and_is_capped() -> None:
    assert [backoff(n, 2.0) for n in (0, 1, 2, 3, 4)] == [2.0, 2.0, 4.0, 8.0, 16.0]
    assert backoff(50, 2.0) == MAX_BACKOFF_SECONDS


def test_report_exit_code_is_75_only_when_a_step_was_cancelled() -> None:
    report = WorkerReport(completed=3, failed=1, suspended=2, released=4)
    assert report.finished == 4 and report.exit_code == EXIT_OK
    report.steps_cancelled = 1
    assert report.exit_code == EXIT_INTERRUPTED
