"""``fsmflow bench``: a smoke run with tiny sizes against the test's database.

Sane numbers only (rates above zero, at least one statement per transition, JSON that
parses), never timing thresholds; and the scratch tables are gone afterwards, also after
an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import fsmflow.bench.command
from fsmflow import DBConfig
from fsmflow.bench.command import BenchOptions, run_bench
from tests.conftest import ROOT

TINY = ["--steps", "3", "--instances", "4", "--concurrency", "4", "--rounds", "1"]


def scratch_tables(postgresql: Any) -> list[str]:
    """Tables the bench created (``fsmflow_bench_<random>[_suffix]``)."""
    with postgresql.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'fsmflow_bench_%'")
        names = [name for (name,) in cur.fetchall()]
    postgresql.commit()
    return names


def fsmflow_bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsmflow", "bench", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_bench_json_reports_sane_numbers_and_drops_its_tables(
    db_env: dict[str, str], postgresql: Any
) -> None:
    result = fsmflow_bench(
        db_env, "--json", *TINY, "--resume-check", "--resume-rows", "300",
        "--memory-check", "--memory-instances", "40",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["server"]["synchronous_commit"] == "on"
    for mode in ("sequential", "concurrent"):
        numbers = report["throughput"][mode]
        assert numbers["ratio_median"] > 0
        for run in ("baseline", "fsmflow"):
            assert numbers[run]["rate_median"] > 0
            assert 0 < numbers[run]["latency_p50_ms"] <= numbers[run]["latency_p99_ms"]
        counts = numbers["accounting"]
        assert counts["source"] in ("pg_stat_statements", "client")
        assert counts["baseline_per_row"]["statements"] >= 1
        assert counts["fsmflow_per_transition"]["statements"] >= 1
        assert counts["fsmflow_per_step_steady"]["statements"] >= 1
        assert counts["fsmflow_per_step_steady"]["write_transactions"] >= 1
        assert any("Append" in label for label in counts["fsmflow_per_transition"]["breakdown"])
    resume = report["resume"]
    assert resume["small"]["rows_in_table"] == 10
    assert resume["large"]["rows_in_table"] == 300
    assert resume["large"]["index_used"]
    assert resume["large"]["last_record"]["p50_ms"] > 0
    memory = report["memory"]
    assert memory["instances"] == 40 and memory["models_on_the_machine"] == 40
    assert memory["state_machines_after"] == memory["state_machines_before"]
    assert memory["unexpected_failures"] == []
    assert {t["target"] for t in report["targets"]}  # judged, whatever the verdict
    assert scratch_tables(postgresql) == []
    with postgresql.cursor() as cur:  # the configured table was not touched
        cur.execute("SELECT count(*) FROM fsmflow_transitions")
        assert cur.fetchone() == (0,)
    postgresql.commit()


def test_bench_text_report(db_env: dict[str, str], postgresql: Any) -> None:
    result = fsmflow_bench(db_env, *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("sequential", "concurrent", "fsmflow/baseline", "statements", "targets:"):
        assert text in result.stdout
    assert "round 1/1" in result.stderr  # progress goes to stderr
    assert scratch_tables(postgresql) == []


async def test_scratch_tables_are_dropped_when_a_run_fails(
    db_config: DBConfig, postgresql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        assert scratch_tables(postgresql)  # the scratch table exists while runs happen
        raise RuntimeError("injected failure")

    monkeypatch.setattr(fsmflow.bench.command, "run_fsmflow", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        await run_bench(db_config, BenchOptions(steps=2, instances=2, concurrency=2, rounds=1))
    assert scratch_tables(postgresql) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_scratch_tables_are_dropped_on_a_signal(
    db_env: dict[str, str], postgresql: Any, signum: signal.Signals
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fsmflow", "bench", "--steps", "20", "--instances", "400",
         "--rounds", "50"],
        cwd=ROOT, env=db_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scratch_tables(postgresql):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # inside the timed runs
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0, stderr
    assert scratch_tables(postgresql) == [], stderr


def test_wait_check_reports_sane_numbers_and_drops_its_tables(
    db_env: dict[str, str], postgresql: Any
) -> None:
    result = fsmflow_bench(
        db_env, "--json", "--no-throughput", "--wait-check", "--wait-rounds", "20",
        "--wait-instances", "5", "--idle-seconds", "6", "--wait-memory-instances", "50",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert "throughput" not in report
    waits = report["waits"]
    latency = waits["latency"]
    assert latency["rounds"] == 20 and latency["completed"]
    assert 0 < latency["latency_p50_ms"] <= latency["latency_p99_ms"] <= latency["latency_max_ms"]
    assert latency["send_event_p50_ms"] > 0
    idle = waits["idle"]
    assert idle["instances"] == 5 and idle["seconds"] >= 6
    assert idle["beyond_heartbeats"] == 0, idle["by_connection"]  # only heartbeats, if any
    assert all(label.endswith(": SELECT 1") for label in idle["by_connection"])
    assert idle["sessions"]["fsmflow-listener"] == 1
    assert idle["per"].startswith("process")
    assert idle["unexpected_failures"] == []
    memory = waits["memory"]
    assert memory["instances"] == 50 and memory["models_on_the_machine"] == 51  # + warm-up
    assert memory["listening_connections"] == 1
    assert memory["state_machines_after"] == memory["state_machines_before"]
    assert memory["unexpected_failures"] == []
    judged = {t["target"] for t in report["targets"]}
    assert "one listening connection per process" in judged
    assert scratch_tables(postgresql) == []  # the history tables and their _events tables
    with postgresql.cursor() as cur:  # the configured tables were not touched
        cur.execute("SELECT (SELECT count(*) FROM fsmflow_transitions), "
                    "(SELECT count(*) FROM fsmflow_transitions_events)")  # fmt: skip
        assert cur.fetchone() == (0, 0)
    postgresql.commit()


def test_wait_check_text_report(db_env: dict[str, str], postgresql: Any) -> None:
    result = fsmflow_bench(
        db_env, "--no-throughput", "--wait-check", "--wait-rounds", "5",
        "--wait-instances", "2", "--idle-seconds", "1", "--wait-memory-instances", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("event delivery", "statements/min, per process", "listening connections: 1"):
        assert text in result.stdout
    assert scratch_tables(postgresql) == []
