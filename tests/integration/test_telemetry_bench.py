"""``fsmflow bench --otel``: a smoke run with tiny sizes against the test's database.

Sane numbers only (rates above zero, ratios that are numbers, the text report's section),
never timing thresholds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

TINY = ["--steps", "3", "--instances", "4", "--concurrency", "4", "--rounds", "2"]


def fsmflow_bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsmflow", "bench", "--no-throughput", "--otel", *TINY, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_bench_otel_reports_each_setup_against_no_provider(
    db_env: dict[str, str], postgresql: Any
) -> None:
    result = fsmflow_bench(db_env, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    otel = json.loads(result.stdout)["otel"]
    for mode in ("sequential", "concurrent"):
        assert set(otel[mode]) == {"off", "api", "sdk"}
        for figures in otel[mode].values():
            assert figures["rate_median"] > 0 and figures["client_cpu_us"] > 0
            assert 0 < figures["ratio_min"] <= figures["ratio_median"] <= figures["ratio_max"]
        assert otel[mode]["off"]["ratio_median"] == 1.0
    assert set(otel["hooks_us"]) == {"off", "api", "sdk"}
    assert all(us > 0 for us in otel["hooks_us"].values())


def test_bench_otel_text_report(db_env: dict[str, str], postgresql: Any) -> None:
    result = fsmflow_bench(db_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OpenTelemetry (fsmflow bench --otel)" in result.stdout
    assert "concurrent  sdk" in result.stdout
