"""The report of ``fsmflow bench``: targets met or missed, and the text it prints."""

from __future__ import annotations

from typing import Any

from fsmflow.bench.report_throughput import target as _target
from fsmflow.bench.report_throughput import throughput_lines, throughput_targets

TARGET_MEMORY_MB = 150.0
TARGET_DELIVERY_P50_MS = 20.0
CLAIM_SCAN_SLACK = 8  # buffers the claim's scans may differ by between the history sizes
TARGET_TAKEOVER_S = 10.0  # issue 12: a SIGKILLed worker's instances taken over within 10 s
PARKED_INSTANCE_KB = 15.1  # README: one instance parked inside a step (--memory-check)


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the performance issues that this report can judge (``met`` None:
    shown only, or not measurable on this server)."""
    targets = throughput_targets(report.get("throughput"))
    resume = report.get("resume")
    if resume is not None:
        small, large = resume["small"], resume["large"]
        before, after = small["last_record"]["p50_ms"], large["last_record"]["p50_ms"]
        flat = after <= max(2 * before, before + 0.5)
        targets.append(
            _target(
                f"resume lookup flat from {small['rows_in_table']:,} to "
                f"{large['rows_in_table']:,} rows, index used",
                flat and small["index_used"] and large["index_used"],
                f"{before:.3f} ms -> {after:.3f} ms",
            )
        )
    memory = report.get("memory")
    if memory is not None and "skipped" not in memory:
        # With --tracemalloc, RSS also holds tracemalloc's own records: judge the traced heap.
        traced = memory["tracemalloc_current_mb"]
        delta = memory["rss_delta_mb"] if traced is None else traced
        what = "RSS" if traced is None else "traced Python heap"
        within = delta is not None and delta < TARGET_MEMORY_MB
        targets.append(
            _target(
                f"{memory['instances']:,} instances in flight under {TARGET_MEMORY_MB:.0f} MB",
                within and not memory["unexpected_failures"],
                "unknown" if delta is None else f"{delta:.1f} MB ({what})",
            )
        )
        same = memory["state_machines_after"] == memory["state_machines_before"]
        targets.append(
            _target(
                "no state machine built per instance",
                same,
                f"{memory['state_machines_before']} -> {memory['state_machines_after']} "
                f"AsyncMachine(s), {memory['models_on_the_machine']:,} models on it",
            )
        )
    return targets + _wait_targets(report.get("waits")) + _fleet_targets(report.get("workers"))


def _all_ended(runs: list[dict[str, Any]]) -> bool:
    return all(r["completed"] == r["instances"] and r["histories_with_gaps"] == 0 for r in runs)


def _fleet_targets(fleet: dict[str, Any] | None) -> list[dict[str, Any]]:
    if fleet is None:
        return []
    runs = fleet["throughput"]["workers"]
    takeover = fleet.get("takeover")
    ended = [*runs, *([takeover] if takeover else [])]
    targets = [
        _target(
            "workers: every submitted instance completed, no history with a gap",
            _all_ended(ended) and all(set(r["exit_codes"]) <= {0} for r in ended),
            ", ".join(f"{r['completed']:,}/{r['instances']:,}" for r in ended),
        )
    ]
    if takeover is not None:
        targets.append(
            _target(
                f"takeover after SIGKILL within {TARGET_TAKEOVER_S:.0f} s "
                f"(sweep {fleet['sweep_seconds']:g} s)",
                takeover["taken_over"] > 0 and takeover["max_s"] < TARGET_TAKEOVER_S,
                f"p50 {takeover['p50_s']:.2f} s, max {takeover['max_s']:.2f} s over "
                f"{takeover['taken_over']} instances, {takeover['kills']} kills",
            )
        )
    small, large = fleet["claim"]["small"], fleet["claim"]["large"]
    plans_ok = all(
        p["ready_index_used"] and not p["seq_scans"] and not p["history_in_plan"]
        for p in (small, large)
    )
    # Judged on what the plan reads, not on the latency: a claim commits, and its WAL
    # flush (most of its latency) moves with the disk's other load.
    before, after = small["plan_scan_buffers"], large["plan_scan_buffers"]
    return [
        *targets,
        _target(
            f"claim flat from {small['history_rows']:,} to {large['history_rows']:,} history "
            f"rows with {fleet['claim']['queued']:,} queued: ready index, no seq scan, history "
            f"untouched, its scans within {CLAIM_SCAN_SLACK} buffers",
            plans_ok and abs(after - before) <= CLAIM_SCAN_SLACK,
            f"scans {before} -> {after} buffers; p50 {small['p50_ms']:.3f} ms -> "
            f"{large['p50_ms']:.3f} ms (server execution {small['plan_execution_ms']:.3f} -> "
            f"{large['plan_execution_ms']:.3f} ms)",
        ),
    ]


def _wait_targets(waits: dict[str, Any] | None) -> list[dict[str, Any]]:
    if waits is None:
        return []
    latency, idle, memory = waits["latency"], waits["idle"], waits["memory"]
    p50 = latency["latency_p50_ms"]
    targets = [
        _target(
            f"event delivery p50 under {TARGET_DELIVERY_P50_MS:.0f} ms (in-process waiter)",
            p50 < TARGET_DELIVERY_P50_MS,
            f"{p50:.2f} ms (p99 {latency['latency_p99_ms']:.2f} ms)",
        ),
        _target(
            f"{idle['instances']} idle waiters: no statement beyond the heartbeats",
            idle["beyond_heartbeats"] == 0 and not idle["unexpected_failures"],
            f"{idle['statements_per_minute']:.1f} statements/min per process, "
            f"{idle['beyond_heartbeats']} beyond the heartbeats",
        ),
    ]
    if "skipped" in memory:
        return targets
    kb, what = memory["tracemalloc_per_instance_kb"], "traced Python heap"
    if kb is None:
        kb, what = memory["rss_per_instance_kb"], "RSS"
    return [
        *targets,
        _target(
            f"{memory['instances']:,} waiting instances: within {PARKED_INSTANCE_KB} KB each "
            "(a parked instance)",
            kb is not None and kb <= PARKED_INSTANCE_KB and not memory["unexpected_failures"],
            "unknown" if kb is None else f"{kb:.1f} KB each ({what})",
        ),
        _target(
            "one listening connection per process",
            memory["listening_connections"] == 1,
            f"{memory['listening_connections']} for {memory['instances']:,} waiting instances",
        ),
    ]


def _resume_lines(resume: dict[str, Any]) -> list[str]:
    lines = ["resume: Store.last_record (the lookup a resuming instance makes) and a whole"]
    lines.append("        resume (lock + lookup + restore, up to its unfinished step starting):")
    for key in ("small", "large"):
        r = resume[key]
        lookup, whole = r["last_record"], r["resume_to_step"]
        lines.append(
            f"  {r['rows_in_table']:>10,} rows: lookup p50 {lookup['p50_ms']:.3f} ms, "
            f"p99 {lookup['p99_ms']:.3f} ms; resume p50 {whole['p50_ms']:.3f} ms"
        )
    small, large = resume["small"], resume["large"]
    lines.append(
        f"  plan: {small['index_scan']}; buffers {small['buffers']} -> {large['buffers']}, "
        f"execution {small['execution_ms']:.3f} -> {large['execution_ms']:.3f} ms"
    )
    lines.append(f"  plan at {resume['large']['rows_in_table']:,} rows:")
    lines += [f"    {line}" for line in resume["large"]["plan"]]
    return lines


def _memory_lines(memory: dict[str, Any]) -> list[str]:
    if "skipped" in memory:
        return [f"memory: skipped: {memory['skipped']}"]
    delta = memory["rss_delta_mb"]
    line = (
        f"memory: {memory['instances']:,} instances parked inside a step "
        f"(all in after {memory['seconds_to_park_all']:.1f} s): "
    )
    line += (
        "RSS unknown"
        if delta is None
        else (f"+{delta:.1f} MB RSS ({memory['rss_per_instance_kb']:.1f} KB each)")
    )
    lines = [line]
    if memory["tracemalloc_current_mb"] is not None:
        lines.append(
            f"  tracemalloc: {memory['tracemalloc_current_mb']:.1f} MB traced, "
            f"peak {memory['tracemalloc_peak_mb']:.1f} MB (RSS above includes its own records)"
        )
    lines.append(
        f"  AsyncMachine objects: {memory['state_machines_before']} before, "
        f"{memory['state_machines_after']} after; models on it: "
        f"{memory['models_on_the_machine']:,}"
    )
    return lines


def _wait_lines(waits: dict[str, Any]) -> list[str]:
    latency, idle, memory = waits["latency"], waits["idle"], waits["memory"]
    lines = [
        f"waits: event delivery to an in-process waiter ({latency['rounds']} events, "
        "send_event returned -> next step started):",
        f"  p50 {latency['latency_p50_ms']:.2f} ms, p99 {latency['latency_p99_ms']:.2f} ms, "
        f"max {latency['latency_max_ms']:.2f} ms; send_event itself p50 "
        f"{latency['send_event_p50_ms']:.2f} ms",
        f"  {idle['instances']} instances waiting idle for {idle['seconds']:.0f} s: "
        f"{idle['statements_per_minute']:.1f} statements/min, per process (heartbeats "
        f"expected: {idle['expected_heartbeats_per_minute']}/min), counted on its connections:",
    ]
    lines += [f"    {n:>7.1f}/min  {label}" for label, n in idle["by_connection"].items()]
    sessions = ", ".join(f"{n} {app}" for app, n in sorted(idle["sessions"].items()))
    lines.append(f"  sessions: {sessions}")
    server = idle["server_statements_per_minute_database_wide"]
    lines.append(
        "  server counters, database-wide (other sessions included): "
        + ("" if server is None else f"{server:.1f} statements/min (pg_stat_statements), ")
        + f"{idle['server_transactions_per_minute_database_wide']:.1f} commits/min"
    )
    if "skipped" in memory:
        return [*lines, f"  memory: skipped: {memory['skipped']}"]
    rss = memory["rss_delta_mb"]
    line = (
        f"  memory: {memory['instances']:,} instances waiting in-process (all waiting after "
        f"{memory['seconds_to_wait_all']:.1f} s): "
    )
    line += (
        "RSS unknown"
        if rss is None
        else f"+{rss:.1f} MB RSS ({memory['rss_per_instance_kb']:.1f} KB each)"
    )
    lines.append(line)
    if memory["tracemalloc_current_mb"] is not None:
        lines.append(
            f"    tracemalloc: {memory['tracemalloc_current_mb']:.1f} MB traced "
            f"({memory['tracemalloc_per_instance_kb']:.1f} KB each)"
        )
    lines.append(
        f"    listening connections: {memory['listening_connections']}; AsyncMachine objects "
        f"{memory['state_machines_before']} -> {memory['state_machines_after']}, "
        f"{memory['models_on_the_machine']:,} models on it"
    )
    return lines


def _per_s(value: float | None, digits: int = 0) -> str:
    return "?" if value is None else f"{value:,.{digits}f}"


def _fleet_lines(fleet: dict[str, Any], options: dict[str, Any]) -> list[str]:
    throughput, base = fleet["throughput"], fleet["throughput"]["baseline"]
    lines = [
        f"workers: {options['worker_instances']:,} instances of {options['worker_steps']} "
        f"trivial steps submitted with store.submit, {options['worker_concurrency']} in flight "
        f"in total, {options['worker_rounds']} round(s); per process pool "
        f"{fleet['pool_size']} + {fleet['owner_connections']} owner connections; sweep "
        f"{fleet['sweep_seconds']:g} s",
        f"  {'run':<36}{'instances/s':>12}{'transitions/s':>15}{'vs baseline':>20}"
        f"{'CPU us/trans':>14}{'completed':>11}",
        f"  {'baseline: 1 process, run_workflow':<36}{_per_s(base['instances_per_s']):>12}"
        f"{_per_s(base['transitions_per_s']):>15}{'1.00':>20}"
        f"{_per_s(base['cpu_us_per_transition']):>14}{base['completed']:>11,}",
    ]
    for run in throughput["workers"]:
        label = f"{run['workers']} worker process(es), {run['concurrency_each']} each"
        ratio = f"{run['ratio']:.2f} ({run['ratio_min']:.2f}-{run['ratio_max']:.2f})"
        lines.append(
            f"  {label:<36}{_per_s(run['instances_per_s']):>12}"
            f"{_per_s(run['transitions_per_s']):>15}{ratio:>20}"
            f"{_per_s(run['cpu_us_per_transition']):>14}{run['completed']:>11,}"
        )
    lines += [f"  skipped: {why}" for why in throughput["skipped"]]
    lines.append(
        "  (CPU: the worker processes' user+sys; the baseline's is this process's; the "
        "server's is in neither)"
    )
    takeover = fleet.get("takeover")
    if takeover is not None:
        lines.append(
            f"  takeover after SIGKILL of one of {takeover['workers']} loaded workers "
            f"({takeover['kills']} kills, {takeover['taken_over']} in-flight instances): "
            f"p50 {takeover['p50_s']:.2f} s, max {takeover['max_s']:.2f} s; afterwards "
            f"{takeover['completed']:,}/{takeover['instances']:,} completed, "
            f"{takeover['histories_with_gaps']} gaps"
        )
    claim = fleet["claim"]
    lines.append(
        f"  claim ({claim['limit']} a claim, committed) with {claim['queued']:,} queued and "
        f"{claim['claimed_by_a_running_worker']} claimed:"
    )
    for key in ("small", "large"):
        c = claim[key]
        where = "history untouched" if not c["history_in_plan"] else "READS THE HISTORY"
        index = "ready index" if c["ready_index_used"] else "NO READY INDEX"
        lines.append(
            f"    {c['history_rows']:>10,} history rows: p50 {c['p50_ms']:.3f} ms, p99 "
            f"{c['p99_ms']:.3f} ms, {c['wal_bytes_per_claim'] / 1024:.1f} KB WAL a claim; "
            f"plan: {index}, {len(c['seq_scans'])} seq scans, "
            f"{c['plan_scan_buffers']} buffers scanned ({c['plan_buffers']} with the update), "
            f"{where}, server execution {c['plan_execution_ms']:.3f} ms"
        )
    return lines


def _verdict(met: bool | None) -> str:
    return "SHOWN " if met is None else "MET   " if met else "MISSED"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report."""
    server, options = report["server"], report["options"]
    lines = [
        f"fsmflow bench against {report['target']}: PostgreSQL {server['version']}, "
        f"synchronous_commit={server['synchronous_commit']}, fsync={server['fsync']}",
    ]
    throughput = report.get("throughput")
    if throughput:
        per_run = options["instances"] * options["steps"]
        source = throughput["sequential"]["accounting"]["source"]
        lines += [
            f"workflow: {options['steps']} trivial async steps, context ~{options['context_bytes']}"
            f" bytes; per run {options['instances']} instances = {per_run:,} transitions "
            f"(raw INSERT: {per_run:,} rows; hand-rolled: the same transitions); "
            f"{options['rounds']} interleaved rounds; statements counted by {source}",
            "",
            *throughput_lines(throughput),
        ]
    if "resume" in report:
        lines += ["", *_resume_lines(report["resume"])]
    if "memory" in report:
        lines += ["", *_memory_lines(report["memory"])]
    if "waits" in report:
        lines += ["", *_wait_lines(report["waits"])]
    if "workers" in report:
        lines += ["", *_fleet_lines(report["workers"], options)]
    if report["targets"]:
        lines += ["", "targets:"]
        lines += [f"  {_verdict(t['met'])}  {t['target']}: {t['value']}" for t in report["targets"]]
    return "\n".join(lines)
