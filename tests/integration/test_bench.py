"""``fsmflow bench``: a smoke run with tiny sizes against the test's database.

Sane numbers only (rates above zero, every figure and issue-13 target present, exact
statement counts where the client counts them, JSON that parses), never timing
thresholds; and the scratch tables are gone afterwards, also after
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

import fsmflow.bench.throughput
from fsmflow import DBConfig
from fsmflow.bench.command import BenchOptions, run_bench
from tests.conftest import ROOT

TINY = ["--steps", "3", "--instances", "4", "--concurrency", "4", "--rounds", "2"]


def scratch_tables(postgresql: Any) -> list[str]:
    """Tables the bench created (``fsmflow_bench_<random>[_suffix]``)."""
    with postgresql.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'fsmflow_bench_%'")
        names = [name for (name,) in cur.fetchall()]
    postgresql.commit()
    return names


KINDS = ("baseline", "handrolled", "fsmflow")
RATIOS = (
    "fsmflow_vs_handrolled",
    "fsmflow_vs_baseline",
    "handrolled_vs_baseline",
    "cpu_fsmflow_vs_handrolled",
)
# Issue 13's targets, by the start of their names; "SHOWN" ones carry met = None.
ISSUE_13 = (
    "sequential (1): fsmflow >= 0.95 x hand-rolled",
    "sequential (1): fsmflow >= 0.75 x raw INSERT",
    "concurrent (4): fsmflow >= 1.5 x raw INSERT",
    "concurrent (4): statements per transition < 1",
    "concurrent (4): write xacts per transition < 1",
    "instance start: commits beyond its transitions = 0",
    "instance start: round trips <= 1",
    "sequential: p99 latency of a lone instance's transition",
    "sequential: client CPU per transition, fsmflow <= 1.2 x hand-rolled",
    "concurrent: client CPU per transition, fsmflow <= 1.2 x hand-rolled",
)


def check_mode(numbers: dict[str, Any]) -> None:
    """One mode's runs, ratios and accounting: present and sane (never timing limits)."""
    assert numbers["baseline_connections"] == (1 if numbers["concurrency"] == 1 else 10)
    for kind in KINDS:
        run = numbers[kind]
        assert run["rate_median"] > 0 and len(run["rates"]) == 2  # --rounds 2
        assert run["rate_min"] <= run["rate_median"] <= run["rate_max"]
        assert 0 < run["latency_p50_ms"] <= run["latency_p99_ms"]
        assert run["client_cpu_us"] > 0
    for key in RATIOS:
        ratio = numbers["ratios"][key]
        assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
        assert len(ratio["rounds"]) == 2
    counts = numbers["accounting"]
    assert counts["source"] in ("pg_stat_statements", "client")
    # Counted on the client when sent: exact, whatever else runs on the server.
    assert counts["baseline_per_row"]["statements_client"] == 1
    assert counts["handrolled_per_transition"]["statements_client"] == 1
    # Write transactions are the distinct xmin of the pass's own rows: exact too.
    assert counts["baseline_per_row"]["write_transactions"] == 1
    assert counts["handrolled_per_transition"]["write_transactions"] == 1
    assert "write_transactions_server" in counts["baseline_per_row"]  # server-wide, noisy
    assert counts["fsmflow_per_transition"]["statements_client"] > 0
    # Each pass opens its store first: one more step costs whole statements, no
    # once-per-pass schema checks left over (they made it read 1.027 or 0.972).
    steady = counts["fsmflow_per_step_steady"]
    assert 0 < steady["statements_client"] <= 1.1  # a heartbeat could fall in a slow pass
    assert not any("At open" in label for label in steady["breakdown"])
    assert 0 < steady["write_transactions"] <= 1
    assert any("Append" in label for label in counts["fsmflow_per_transition"]["breakdown"])
    for key in ("baseline_per_row", "handrolled_per_transition", "fsmflow_per_transition"):
        flushes = counts[key]["wal_flushes"]
        assert flushes is None or flushes >= 0


def check_start(start: dict[str, Any]) -> None:
    """The instance-start pass: round trips counted on the client, flushes if measurable."""
    assert start["instances"] == 4 and start["steps"] == 3
    assert len(start["round_trips"]) == 4
    assert 0 <= start["round_trips_median"] <= start["round_trips_max"]
    assert 0 <= start["unanswered_at_first_step_median"] <= start["round_trips_max"]
    assert sum(start["breakdown"].values()) == pytest.approx(
        sum(start["round_trips"]) / 4, abs=0.01
    )
    if start["flush_source"] is None:
        assert start["flush_note"].startswith("not measurable")
        assert start["fsmflow_commits_beyond_transitions"] is None
    else:
        # Another session's flush can cover one of ours: at most one flush per commit.
        for kind in ("fsmflow", "handrolled"):
            assert 0 < start[f"{kind}_flushes_per_instance"] <= start["steps"] + 2
            beyond = start[f"{kind}_commits_beyond_transitions"]
            assert beyond == pytest.approx(start[f"{kind}_flushes_per_instance"] - 3)


def check_targets(targets: list[dict[str, Any]]) -> None:
    """Every issue-13 target is judged (or shown), whatever the verdict."""
    names = [t["target"] for t in targets]
    for start in ISSUE_13:
        found = [t for t in targets if t["target"].startswith(start)]
        assert len(found) == 1, (start, names)
        verdict = found[0]["met"]
        assert verdict is None if "p99" in start else isinstance(verdict, bool | None)
        assert found[0]["value"]
    assert not any("fsmflow / baseline" in name for name in names)  # the old targets


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
        check_mode(report["throughput"][mode])
    check_start(report["throughput"]["start"])
    check_targets(report["targets"])
    resume = report["resume"]
    assert resume["small"]["rows_in_table"] == 10
    assert resume["large"]["rows_in_table"] == 300
    assert resume["large"]["index_used"]
    assert resume["large"]["last_record"]["p50_ms"] > 0
    memory = report["memory"]
    # an instance joins the shared machine only once it uses a trigger method: none here
    assert memory["instances"] == 40 and memory["models_on_the_machine"] == 0
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
    for text in (
        "sequential", "concurrent", "raw INSERT", "hand-rolled", "fsmflow/hand-rolled",
        "statements", "instance start", "WAL flushes", "targets:", "SHOWN",
    ):  # fmt: skip
        assert text in result.stdout
    assert "round 2/2" in result.stderr  # progress goes to stderr
    assert "transitions.extensions" not in result.stderr  # the library's INFO lines
    assert scratch_tables(postgresql) == []


async def test_scratch_tables_are_dropped_when_a_run_fails(
    db_config: DBConfig, postgresql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        assert scratch_tables(postgresql)  # the scratch table exists while runs happen
        raise RuntimeError("injected failure")

    monkeypatch.setattr(fsmflow.bench.throughput, "run_fsmflow", broken)
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
    assert memory["instances"] == 50 and memory["models_on_the_machine"] == 0  # none joined
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
