"""The throughput part of the report: issue 13's targets and the lines that show them.

Targets (each from the same run; ratios are medians of per-round ratios):

* sequential: fsmflow >= 0.95 x the hand-rolled loop and >= 0.75 x the raw INSERT;
* concurrent: fsmflow >= 1.5 x the raw INSERT; statements and write transactions per
  transition (steady state) < 1, which only batching appends can reach;
* instance start: commits beyond its transitions = 0 (WAL flushes client sessions
  waited for); round trips from ``run_workflow()`` to the first step <= 1;
* client CPU per transition within 1.2 x the hand-rolled loop (each mode);
* shown, not judged: the p99 latency of a lone sequential instance's transition.
"""

from __future__ import annotations

from typing import Any, Final

SEQUENTIAL_VS_HANDROLLED: Final = 0.95
SEQUENTIAL_VS_BASELINE: Final = 0.75
CONCURRENT_VS_BASELINE: Final = 1.5
CPU_VS_HANDROLLED: Final = 1.2
START_ROUND_TRIPS: Final = 1
# Commits are whole numbers per instance; a mean within this of 0 is "none" (another
# session's commit in the window, or the walwriter flushing a commit first, moves it).
START_COMMITS_SLACK: Final = 0.1


def target(name: str, met: bool | None, value: str) -> dict[str, Any]:
    """A target: ``met`` True/False, or None when it is only shown or not measurable."""
    return {"target": name, "met": met, "value": value}


def _ratio_text(r: dict[str, Any]) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"


def _ratio_target(mode: str, result: dict[str, Any], key: str, what: str, floor: float) -> Any:
    r = result["ratios"][key]
    name = f"{mode} ({result['concurrency']}): fsmflow >= {floor} x {what}"
    return target(name, r["median"] >= floor, _ratio_text(r))


def _cpu_target(mode: str, result: dict[str, Any]) -> dict[str, Any]:
    r = result["ratios"]["cpu_fsmflow_vs_handrolled"]
    value = (
        f"{_ratio_text(r)}: {result['fsmflow']['client_cpu_us']:.0f} us vs "
        f"{result['handrolled']['client_cpu_us']:.0f} us"
    )
    return target(
        f"{mode}: client CPU per transition, fsmflow <= {CPU_VS_HANDROLLED} x hand-rolled",
        r["median"] <= CPU_VS_HANDROLLED,
        value,
    )


def _batching_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    counts = result["accounting"]
    steady, all_in = counts["fsmflow_per_step_steady"], counts["fsmflow_per_transition"]
    out = []
    for key, what in (("statements", "statements"), ("write_transactions", "write xacts")):
        out.append(
            target(
                f"concurrent ({result['concurrency']}): {what} per transition < 1 "
                "(steady state; batching)",
                steady[key] < 1,
                f"{steady[key]:.3f} (all-in {all_in[key]:.3f})",
            )
        )
    return out


def _start_targets(start: dict[str, Any]) -> list[dict[str, Any]]:
    beyond, hand = (
        start["fsmflow_commits_beyond_transitions"],
        start["handrolled_commits_beyond_transitions"],
    )
    if beyond is None:
        commits = target(
            "instance start: commits beyond its transitions = 0", None, start["flush_note"]
        )
    else:
        commits = target(
            "instance start: commits beyond its transitions = 0 (WAL flushes waited for)",
            beyond <= START_COMMITS_SLACK,
            f"{beyond:+.2f} per instance ({start['fsmflow_flushes_per_instance']:.2f} flushes "
            f"for {start['steps']} transitions; hand-rolled {hand:+.2f})",
        )
    trips = start["round_trips_median"]
    return [
        commits,
        target(
            f"instance start: round trips <= {START_ROUND_TRIPS} (statements sent from "
            "run_workflow() to the first step)",
            trips <= START_ROUND_TRIPS,
            f"median {trips:g}, max {start['round_trips_max']} over {start['instances']} "
            f"instances ({start['unanswered_at_first_step_median']:g} still unanswered then)",
        ),
    ]


def throughput_targets(throughput: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 13's targets this report can judge."""
    if throughput is None:
        return []
    out = []
    seq, conc = throughput.get("sequential"), throughput.get("concurrent")
    if seq is not None:
        out += [
            _ratio_target("sequential", seq, "fsmflow_vs_handrolled", "hand-rolled",
                          SEQUENTIAL_VS_HANDROLLED),
            _ratio_target("sequential", seq, "fsmflow_vs_baseline", "raw INSERT",
                          SEQUENTIAL_VS_BASELINE),
        ]  # fmt: skip
    if conc is not None:
        out.append(
            _ratio_target(
                "concurrent", conc, "fsmflow_vs_baseline", "raw INSERT", CONCURRENT_VS_BASELINE
            )
        )
        out += _batching_targets(conc)
    if "start" in throughput:
        out += _start_targets(throughput["start"])
    if seq is not None:
        f, h = seq["fsmflow"], seq["handrolled"]
        out.append(
            target(
                "sequential: p99 latency of a lone instance's transition (shown)",
                None,
                f"fsmflow {f['latency_p99_ms']:.3f} ms, hand-rolled {h['latency_p99_ms']:.3f} ms",
            )
        )
    out += [_cpu_target(mode, r) for mode, r in (("sequential", seq), ("concurrent", conc)) if r]
    return out


# -- lines ---------------------------------------------------------------------------------

_KINDS: Final = (("baseline", "raw INSERT"), ("handrolled", "hand-rolled"), ("fsmflow", "fsmflow"))
_MODES: Final = ("sequential", "concurrent")


def _rate(summary: dict[str, Any]) -> str:
    return (
        f"{summary['rate_median']:>8,.0f} ({summary['rate_min']:,.0f}-{summary['rate_max']:,.0f})"
    )


def _run_lines(throughput: dict[str, Any]) -> list[str]:
    lines = [
        f"{'mode':<11}{'run':<13}{'transitions/s median (min-max)':<34}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'cpu us':>8}"
    ]
    for mode in _MODES:
        result = throughput[mode]
        for key, label in _KINDS:
            s = result[key]
            lines.append(
                f"{mode:<11}{label:<13}{_rate(s):<34}{s['latency_p50_ms']:>8.3f}"
                f"{s['latency_p99_ms']:>8.3f}{s['client_cpu_us']:>8.0f}"
            )
        r = result["ratios"]
        lines.append(
            f"{'':<11}ratios, median (min-max) over rounds: fsmflow/hand-rolled "
            f"{_ratio_text(r['fsmflow_vs_handrolled'])}, fsmflow/raw "
            f"{_ratio_text(r['fsmflow_vs_baseline'])}, hand-rolled/raw "
            f"{_ratio_text(r['handrolled_vs_baseline'])}, CPU fsmflow/hand-rolled "
            f"{_ratio_text(r['cpu_fsmflow_vs_handrolled'])}"
        )
    return lines


def _flushes(c: dict[str, Any]) -> str:
    return f"{'?':>9}" if c["wal_flushes"] is None else f"{c['wal_flushes']:>9.3f}"


def _sql_lines(throughput: dict[str, Any]) -> list[str]:
    lines = ["", "SQL per transition (accounting passes; differences between passes):"]
    lines.append(
        f"{'mode':<11}{'per':<28}{'statements [client]':>20}{'xacts':>8}{'write xacts':>13}"
        f"{'flushes':>9}"
    )
    for mode in _MODES:
        counts = throughput[mode]["accounting"]
        for key, label in (
            ("baseline_per_row", "raw INSERT row"),
            ("handrolled_per_transition", "hand-rolled transition"),
            ("fsmflow_per_transition", "fsmflow transition (all-in)"),
            ("fsmflow_per_step_steady", "fsmflow step (steady state)"),
        ):
            c = counts[key]
            lines.append(
                f"{mode:<11}{label:<28}{c['statements']:>11.3f} [{c['statements_client']:.3f}]"
                f"{c['transactions']:>8.3f}{c['write_transactions']:>13.3f}{_flushes(c)}"
            )
        breakdown = counts["fsmflow_per_transition"]["breakdown"]
        lines.append("           fsmflow statements per instance (client):")
        lines += [f"             {n:>7.2f}  {label}" for label, n in breakdown.items()]
    return lines


def _start_lines(start: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"instance start ({start['instances']} sequential instances of {start['steps']} steps, "
        "a fresh store, the first one not counted):",
        f"  statements sent from run_workflow() to the first step: median "
        f"{start['round_trips_median']:g}, max {start['round_trips_max']} "
        f"({start['unanswered_at_first_step_median']:g} unanswered when the step started):",
    ]
    lines += [f"    {n:>7.2f}  {label}" for label, n in start["breakdown"].items()]
    beyond = start["fsmflow_commits_beyond_transitions"]
    if beyond is None:
        lines.append(f"  WAL flushes: {start['flush_note']}")
    else:
        lines.append(
            f"  WAL flushes per instance ({start['flush_note']}): fsmflow "
            f"{start['fsmflow_flushes_per_instance']:.2f} ({beyond:+.2f} beyond its "
            f"transitions), hand-rolled {start['handrolled_flushes_per_instance']:.2f} "
            f"({start['handrolled_commits_beyond_transitions']:+.2f})"
        )
    return lines


def throughput_lines(throughput: dict[str, Any]) -> list[str]:
    """The runs, the ratios, the SQL per transition and the instance start."""
    lines = _run_lines(throughput) + _sql_lines(throughput)
    if "start" in throughput:
        lines += _start_lines(throughput["start"])
    return lines
