"""The worker fleet's hot queries stay index-backed and flat in the history's size: the
claim, ``next_ready`` (the claim loop's "when next?") and ``reap_workers`` (each sweep),
with 10,000 unclaimed instances queued (ready now, due later and waiting for an event)
beside 300 claimed by a live worker and 20 by a dead one, at 10 history rows and at
1,000,000 (built in one INSERT ... SELECT generate_series: about 15 s on the shared 2-vCPU
test machine).

Each plan is read with EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) inside a transaction that
is rolled back (the claims and releases it makes are undone), in every plan-cache mode the
worker's session can run them in: it forces custom plans (a generic plan, cached while the
queue was small, would read the whole queue on each claim: the second test shows it), so
custom plans only; both modes were it left the server's default. None of them may touch
the history table, which the transaction's own statistics (``pg_stat_xact_user_tables``)
confirm whatever the plan says; no sequential scan of the queue; the buffers they touch
stay within a small constant of each other at both sizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fsmflow import sql as fsql
from fsmflow.store.fleet import _SESSION_SETTINGS

H = "fsmflow_transitions"
Q = "fsmflow_transitions_queue"
W = "fsmflow_transitions_workers"
READY_IDX, CLAIMED_IDX = f"{Q}_ready_idx", f"{Q}_claimed_idx"
WORKFLOW = "fleet_explain"
QUEUED = 10_000  # unclaimed: 9,000 ready now, 500 due in an hour, 500 waiting for an event
CLAIMED_LIVE, CLAIMED_DEAD = 300, 20
ROWS = 1_000_000
SMALL_ROWS = 10
# Buffers the scans of a plan may differ by between the two history sizes. (Its total
# also counts writing the new row versions of the claim and the sweep, which moves by a
# few dozen buffers from run to run with where they land: bounded by BUDGET instead.)
BUFFER_SLACK = 8
# What each may touch at most, set by its own work: the claim updates 10 rows (their
# heap pages and index entries), next_ready reads one index entry, the sweep reads the
# claimed index and gives the dead worker's 20 claims back.
BUDGET = {"claim": 200, "next_ready": 12, "reap_workers": 60 + 10 * CLAIMED_DEAD}
# The plan-cache modes the worker's session may run its prepared statements in.
SESSION_MODE = _SESSION_SETTINGS.get("plan_cache_mode", "auto")
MODES = ["force_custom_plan"] if SESSION_MODE == "force_custom_plan" else [
    "force_custom_plan", "force_generic_plan"]  # fmt: skip

# Each query, its parameters, the queue indexes it may read (it must read the first).
CALLS: dict[str, tuple[str, list[str]]] = {
    "claim": (f"'{{{WORKFLOW}}}', 10, 'w-live'", [READY_IDX, f"{Q}_pkey"]),
    "next_ready": (f"'{{{WORKFLOW}}}'", [READY_IDX]),
    # A sweep: staleness 3600 s (only a gone session counts as dead here, so the live
    # worker stays live however long the fill takes); the dead one's 20 claims go back.
    "reap_workers": ("3600", [CLAIMED_IDX, f"{Q}_pkey"]),
}

FILL_QUEUE = f"""
INSERT INTO {Q} (workflow_name, instance_id, ready_at, claimed_by, claimed_at, submitted_at)
SELECT %(workflow)s, %(prefix)s || g,
       CASE WHEN g <= %(queued)s * 0.90
            THEN clock_timestamp() - make_interval(secs => %(queued)s - g)
            WHEN g <= %(queued)s * 0.95 THEN clock_timestamp() + interval '1 hour'
            WHEN g <= %(queued)s THEN 'infinity'
            ELSE clock_timestamp() - interval '2 hours' END,
       CASE WHEN g > %(queued)s + %(dead)s THEN 'w-live' WHEN g > %(queued)s THEN 'w-dead' END,
       CASE WHEN g > %(queued)s THEN clock_timestamp() END,
       clock_timestamp() - interval '3 hours'
FROM generate_series(1, %(queued)s + %(dead)s + %(live)s) AS g
"""
# The live worker is this test's own session; the dead one's session is gone (pid 0).
WORKERS = f"""
INSERT INTO {W} (worker_id, host, pid, workflows, concurrency, session_pid, session_start)
SELECT 'w-live', 'here', 1, ARRAY[%(workflow)s], 320, pg_backend_pid(),
       (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
UNION ALL
SELECT 'w-dead', 'gone', 2, ARRAY[%(workflow)s], 20, 0, NULL
"""
FILL_HISTORY = f"""
INSERT INTO {H} (workflow_name, instance_id, seq, trigger, source_state, dest_state, context,
                 status, created_at)
SELECT %(workflow)s, 'q-' || (g / 20), g %% 20, CASE WHEN g %% 20 > 0 THEN 'next' END,
       's' || (g %% 20), 's' || (g %% 20 + 1), '{{"n": 1}}', 'running',
       timestamptz '2025-01-01' + make_interval(secs => g)
FROM generate_series(%(first)s::bigint, %(last)s::bigint - 1) AS g
"""


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan tree (CTEs, subplans and init plans included)."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def explain(conn: Any, cur: Any, name: str, mode: str) -> dict[str, Any]:
    """One query's analyzed plan, rolled back, and how often it scanned the history."""
    args = CALLS[name][0]
    cur.execute(f"SET LOCAL plan_cache_mode = {mode}")
    cur.execute(f"PREPARE q AS {fsql.queries(None, H)[name]}")
    cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE q({args})")
    (found,) = cur.fetchone()
    document = found if isinstance(found, list) else json.loads(found)
    cur.execute(
        "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0) FROM "
        f"pg_stat_xact_user_tables WHERE relname = '{H}'"
    )
    (history_scans,) = cur.fetchone()
    cur.execute("DEALLOCATE q")
    conn.rollback()  # the claim's and the reap's updates are undone
    return {"plan": document[0]["Plan"], "history_scans": int(history_scans)}


def buffers(plan: dict[str, Any]) -> int:
    """Shared buffers the whole statement hit or read (the top node's counts)."""
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def scanned(plan: dict[str, Any]) -> int:
    """Shared buffers the plan's table and index scans hit or read (the reading side)."""
    return sum(
        int(n["Shared Hit Blocks"]) + int(n["Shared Read Blocks"])
        for n in nodes(plan)
        if n.get("Relation Name") and n["Node Type"] != "ModifyTable"
    )


def problems(name: str, found: dict[str, Any]) -> list[str]:
    """What is wrong with ``name``'s plan: history touched, queue scanned, index unused."""
    allowed = CALLS[name][1]
    out = []
    every = list(nodes(found["plan"]))
    relations = {n.get("Relation Name") for n in every} - {None}
    indexes = {n.get("Index Name") for n in every} - {None}
    if H in relations or found["history_scans"]:
        out.append(f"touches the history ({found['history_scans']} scans)")
    out += [f"seq scan of {n['Relation Name']}" for n in every
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in (Q, H)]  # fmt: skip
    if allowed[0] not in indexes:
        out.append(f"does not use {allowed[0]}")
    if indexes - set(allowed) - {f"{W}_pkey"}:
        out.append(f"reads other indexes: {sorted(indexes - set(allowed))}")
    if name != "reap_workers" and W in relations:
        out.append("reads the workers table")
    return out


def plans(conn: Any, cur: Any) -> dict[tuple[str, str], dict[str, Any]]:
    conn.autocommit = True  # VACUUM: the dead versions an earlier rollback left go
    for table in (Q, W, H):
        cur.execute(f"VACUUM (ANALYZE) {table}")
    conn.autocommit = False
    return {(name, mode): explain(conn, cur, name, mode) for mode in MODES for name in CALLS}


PARAMS = {"workflow": WORKFLOW, "prefix": "q-", "queued": QUEUED, "dead": CLAIMED_DEAD,
          "live": CLAIMED_LIVE}  # fmt: skip


def test_claim_next_ready_and_reap_are_index_backed_and_flat(postgresql: Any) -> None:
    params = {**PARAMS, "first": 0, "last": SMALL_ROWS}
    with postgresql.cursor() as cur:
        cur.execute(FILL_QUEUE, params)
        cur.execute(WORKERS, params)
        cur.execute(FILL_HISTORY, params)
        postgresql.commit()
        small = plans(postgresql, cur)
        params.update(first=SMALL_ROWS, last=ROWS)
        cur.execute(FILL_HISTORY, params)
        postgresql.commit()
        large = plans(postgresql, cur)
        cur.execute(
            f"SELECT (SELECT count(*) FROM {H}), count(*) FILTER (WHERE claimed_by IS NULL), "
            f"count(*) FILTER (WHERE claimed_by IS NOT NULL) FROM {Q}"
        )
        rows, unclaimed, claimed = cur.fetchone()
        postgresql.commit()
    assert (rows, unclaimed, claimed) == (ROWS, QUEUED, CLAIMED_LIVE + CLAIMED_DEAD)
    found = [
        f"{name} ({mode}, {size}): {problem}"
        for size, measured in (("10 rows", small), (f"{ROWS:,} rows", large))
        for (name, mode), result in measured.items()
        for problem in problems(name, result)
    ]
    assert found == [], json.dumps({f"{n} {m}": r["plan"] for (n, m), r in large.items()})
    touched = {
        f"{n} ({m})": {size: [scanned(r[(n, m)]["plan"]), buffers(r[(n, m)]["plan"])]
                       for size, r in ((SMALL_ROWS, small), (ROWS, large))}
        for n, m in large
    }  # fmt: skip
    print(json.dumps({"buffers [scans, all] by history rows": touched}, indent=1))
    for key, by_size in touched.items():
        (before, _), (after, _) = by_size[SMALL_ROWS], by_size[ROWS]
        assert abs(after - before) <= BUFFER_SLACK, f"{key}: scans {before} -> {after} buffers"
    for (name, mode), result in large.items():
        assert buffers(result["plan"]) <= BUDGET[name], (name, mode, result["plan"])


def test_a_claim_planned_on_a_small_queue_stays_indexed_once_the_queue_grows(
    postgresql: Any,
) -> None:
    """What a worker's session lives through: it starts on a near-empty queue and runs
    its prepared claim again and again; then a burst of submissions arrives, before any
    ANALYZE of the queue. Its next claim must still use the ready index."""
    queries = fsql.queries(None, H)
    postgresql.autocommit = True
    with postgresql.cursor() as cur:
        cur.execute(FILL_QUEUE, {**PARAMS, "queued": 100, "dead": 0, "live": 0})
        cur.execute(f"ANALYZE {Q}")
        cur.execute(f"SET plan_cache_mode = {SESSION_MODE}")  # as the worker's session runs
        cur.execute(f"PREPARE claim AS {queries['claim']}")
        for _ in range(10):  # past the five custom plans after which a generic one may stay
            cur.execute(f"EXECUTE claim('{{{WORKFLOW}}}', 2, 'w-live')")
        cur.execute(FILL_QUEUE, {**PARAMS, "prefix": "burst-", "dead": 0, "live": 0})
        postgresql.autocommit = False
        cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim({CALLS['claim'][0]})")
        (found,) = cur.fetchone()
        postgresql.rollback()
    plan = (found if isinstance(found, list) else json.loads(found))[0]["Plan"]
    every = list(nodes(plan))
    seq_scans = [n for n in every if n["Node Type"] == "Seq Scan"]
    assert seq_scans == [] and READY_IDX in {n.get("Index Name") for n in every}, plan
    assert buffers(plan) <= BUDGET["claim"], plan
