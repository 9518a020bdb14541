"""``fsmflow bench --workers``: a run with tiny sizes against the test's database, real
worker processes included (one of them SIGKILLed).

Sane figures only (every instance completed, rates and ratios above zero, plans that use
the ready index), never a speed; the scratch tables and the worker processes are gone
afterwards, also when the bench is stopped by SIGTERM halfway.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from fsmflow.bench.report import format_report
from tests.conftest import ROOT
from tests.integration.test_bench import fsmflow_bench, scratch_tables

TINY = [
    "--no-throughput", "--workers", "--worker-instances", "20", "--worker-steps", "3",
    "--worker-counts", "1,2", "--worker-concurrency", "4", "--takeover-kills", "1",
    "--claim-queued", "200", "--claim-history-rows", "5000",
]  # fmt: skip


def worker_sessions(postgresql: Any) -> int:
    """Sessions of worker processes still connected (application_name fsmflow-worker)."""
    with postgresql.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fsmflow-worker'"
        )
        (count,) = cur.fetchone()
    postgresql.commit()
    return int(count)


def check_throughput(throughput: dict[str, Any]) -> None:
    baseline = throughput["baseline"]
    assert baseline["completed"] == 20 and baseline["histories_with_gaps"] == 0
    assert baseline["runs"][0]["transitions"] == 20 * 3
    assert baseline["transitions_per_s"] > 0 and baseline["instances_per_s"] > 0
    assert [run["workers"] for run in throughput["workers"]] == [1, 2]
    for run in throughput["workers"]:
        assert run["completed"] == run["completed_by_workers"] == 20, run
        assert run["histories_with_gaps"] == 0 and run["exit_codes"] == [0]
        assert run["runs"][0]["transitions"] == 20 * 3
        assert run["transitions_per_s"] > 0 and run["ratio"] > 0
        assert 0 < run["ratio_min"] <= run["ratio"] <= run["ratio_max"]
        assert run["cpu_us_per_transition"] > 0  # from /proc: Linux
        assert run["concurrency_each"] == 4 // run["workers"]
        assert run["submit_seconds"] > 0
    assert throughput["skipped"] == []


def check_takeover(takeover: dict[str, Any]) -> None:
    assert takeover["workers"] == 3 and takeover["kills"] == 1
    assert takeover["taken_over"] >= 1 == len(takeover["per_kill"])
    assert 0 < takeover["p50_s"] <= takeover["max_s"]
    assert takeover["completed"] == takeover["instances"] >= takeover["taken_over"]
    assert takeover["histories_with_gaps"] == 0
    assert takeover["exit_codes"] == [0, 0, 0]  # the two survivors and the replacement


def check_claim(claim: dict[str, Any]) -> None:
    assert claim["queued"] == 200 and claim["limit"] == 10
    for key, rows in (("small", 10), ("large", 5000)):
        measured = claim[key]
        assert measured["history_rows"] == rows
        assert measured["unclaimed_at_start"] >= 200 and measured["short_claims"] == 0
        assert 0 < measured["p50_ms"] <= measured["p99_ms"] <= measured["max_ms"]
        assert measured["ready_index_used"] and measured["seq_scans"] == []
        assert not measured["history_in_plan"]
        assert 0 < measured["plan_scan_buffers"] <= measured["plan_buffers"]
        assert measured["wal_bytes_per_claim"] > 0


def test_bench_workers_reports_sane_figures_and_leaves_nothing(
    db_env: dict[str, str], postgresql: Any
) -> None:
    result = fsmflow_bench(db_env, "--json", *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    fleet = report["workers"]
    assert fleet["sweep_seconds"] == 2.0  # FSMFLOW_WORKER_SWEEP_SECONDS' default
    check_throughput(fleet["throughput"])
    check_takeover(fleet["takeover"])
    check_claim(fleet["claim"])
    judged = {t["target"].split(":")[0] for t in report["targets"]}
    assert "workers" in judged and any(t.startswith("takeover") for t in judged)
    assert "workers: round 1/1" in result.stderr and "kill 1/1" in result.stderr
    text = format_report(report)
    for line in ("baseline: 1 process, run_workflow", "2 worker process(es), 2 each",
                 "takeover after SIGKILL", "5,000 history rows: p50"):  # fmt: skip
        assert line in text, text
    assert scratch_tables(postgresql) == [] and worker_sessions(postgresql) == 0
    with postgresql.cursor() as cur:  # the configured tables were not touched
        cur.execute(
            "SELECT (SELECT count(*) FROM fsmflow_transitions), "
            "(SELECT count(*) FROM fsmflow_transitions_queue), "
            "(SELECT count(*) FROM fsmflow_transitions_workers)"
        )
        assert cur.fetchone() == (0, 0, 0)
    postgresql.commit()


def test_sigterm_while_workers_run_kills_them_and_drops_the_tables(
    db_env: dict[str, str], postgresql: Any
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fsmflow", "bench", "--no-throughput", "--workers",
         "--worker-instances", "500", "--worker-counts", "1,2", "--takeover-kills", "0"],
        cwd=ROOT, env=db_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # A worker process is registered. Whichever phase the bench is in when the signal
        # lands (the claim phase, long at default sizes, comes after), it must stop.
        while worker_sessions(postgresql) < 1:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr
    assert scratch_tables(postgresql) == [], stderr
    assert worker_sessions(postgresql) == 0, stderr
