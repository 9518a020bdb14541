"""Every query that sending an event and a waiting runner issue stays index-backed, with a
real instance's parameters, at 10 rows and with 10,000 waiting instances in a history of
about 1,000,000 rows (and its events table): no sequential scan of either table, the
expected index in the plan, the same indexes at both sizes.

Real PostgreSQL; plans are read with EXPLAIN (ANALYZE, BUFFERS) inside transactions that
are rolled back, never timed. Both plan-cache modes are checked: asyncpg runs prepared
statements, which the server may run with a generic plan after a few executions.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fsmflow import DBConfig, PersistentWorkflowStateMachine
from fsmflow import sql as fsql
from tests.integration.test_waits import Counts, approval_definition

WORKFLOW = "approval"
REAL = "real-1"
WAITING = 10_000
ROWS = 1_000_000
ROWS_PER_INSTANCE = 4  # seq 0 running, 1 waiting, 2 the delivery (event_id), 3 ...
FIRST_FILLED_EVENT = 1_000  # filled events get ids from here (sent ones from 1)

H = "fsmflow_transitions"
E = "fsmflow_transitions_events"
PKEY, EVENTS_PKEY = f"{H}_pkey", f"{E}_pkey"
EVENT_IDX, WAKE_IDX = f"{H}_event_idx", f"{H}_wake_idx"
EVENTS_INSTANCE_IDX, EVENTS_KEY_IDX = f"{E}_instance_idx", f"{E}_key_idx"

# Each query, its parameters (a real, suspended instance), the indexes its plan must use.
CALLS: dict[str, tuple[str, set[str]]] = {
    "event_by_key": (f"'{WORKFLOW}', '{REAL}', 'key-2'", {EVENTS_KEY_IDX, EVENT_IDX}),
    "last_record": (f"'{WORKFLOW}', '{REAL}'", {PKEY}),
    "record_at": (f"'{WORKFLOW}', '{REAL}', 3", {PKEY}),
    "send_event": (
        f"'{WORKFLOW}', '{REAL}', 'approval', 'key-3', '{{\"ok\": true}}', "
        f"'{H}_wake', '[\"{WORKFLOW}\", \"{REAL}\"]'",
        {EVENTS_KEY_IDX},  # the ON CONFLICT arbiter: nothing is scanned
    ),
    "wait_check": (
        f"'{WORKFLOW}', '{REAL}', '{{approval}}'",
        {PKEY, EVENTS_INSTANCE_IDX, EVENT_IDX},
    ),
    "instance_events": (f"'{WORKFLOW}', '{REAL}', 1000, false", {EVENTS_INSTANCE_IDX, EVENT_IDX}),
    # A sweep bounded by its previous one (a minute ago): only that window's deadlines.
    "due_waits": (
        f"'{WORKFLOW}', clock_timestamp(), 100, clock_timestamp() - interval '1 minute'",
        {WAKE_IDX, PKEY},
    ),
}

# Instances of ROWS_PER_INSTANCE rows, one in %(every)s waiting (its first wait got an event,
# its second one's deadline is in an hour), the others completed (their waiting rows stay,
# deadlines long past: rows the deadline index keeps for ever); one event per instance,
# delivered by seq 2.
FILL_HISTORY = f"""
INSERT INTO {H} (workflow_name, instance_id, seq, trigger, source_state, dest_state, context,
                 status, waiting_since, wake_at, event_id, created_at)
SELECT %(workflow)s, 'filled-' || i, s,
       (ARRAY[NULL, 'drafted', 'rejected', 'redrafted'])[s + 1],
       (ARRAY[NULL, 'draft', 'review', 'revise'])[s + 1],
       (ARRAY['draft', 'review', 'revise', 'review'])[s + 1],
       '{{"trail": ["draft"]}}',
       CASE WHEN s = 1 OR (s = 3 AND w.waits) THEN 'waiting'
            WHEN s = 3 THEN 'completed' ELSE 'running' END,
       CASE WHEN s = 1 OR (s = 3 AND w.waits) THEN w.t END,
       CASE WHEN s = 1 THEN w.t + interval '1 hour'
            WHEN s = 3 AND w.waits THEN clock_timestamp() + interval '1 hour' END,
       CASE WHEN s = 2 THEN %(first_event)s + i END,
       w.t
FROM generate_series(%(first)s::int, %(last)s::int) i, generate_series(0, 3) s,
     LATERAL (SELECT timestamptz '2025-01-01' + make_interval(secs => i * 10 + s),
                     i %% %(every)s = 1) w(t, waits)
"""
FILL_EVENTS = f"""
INSERT INTO {E} (id, workflow_name, instance_id, event, key, payload, created_at)
OVERRIDING SYSTEM VALUE
SELECT %(first_event)s + i, %(workflow)s, 'filled-' || i, 'approval', 'key-' || i,
       '{{"ok": false}}', timestamptz '2025-01-01' + make_interval(secs => i * 10 + 1)
FROM generate_series(%(first)s::int, %(last)s::int) i
"""


async def make_real_instance(db: DBConfig) -> None:
    """Suspended, one event delivered (rejected -> revise -> review again), one pending."""

    def runner() -> PersistentWorkflowStateMachine:
        return PersistentWorkflowStateMachine(
            db, approval_definition(), steps=Counts().steps(), instance_id=REAL,
            handle_signals=False,
        )  # fmt: skip

    assert (await runner().run_workflow(suspend=True)).status == "waiting"
    await db.store.send_event(WORKFLOW, REAL, "approval", {"ok": False}, key="key-1")
    assert (await runner().run_workflow(suspend=True)).status == "waiting"
    await db.store.send_event(WORKFLOW, REAL, "approval", {"note": "pending"}, key="key-2")
    history = await db.store.history(WORKFLOW, REAL)
    assert [r.status for r in history] == ["running", "waiting", "running", "waiting"]


def plans(conn: Any, cur: Any, *, seqscan: bool = True) -> dict[tuple[str, str], str]:
    """Each query's plan text, in both plan-cache modes (rolled back: nothing stays)."""
    found = {}
    queries = fsql.queries(None, H)
    for mode in ("force_custom_plan", "force_generic_plan"):
        for name, (args, _) in CALLS.items():
            cur.execute(f"SET LOCAL plan_cache_mode = {mode}")
            cur.execute(f"SET LOCAL enable_seqscan = {'on' if seqscan else 'off'}")
            cur.execute(f"PREPARE q AS {queries[name]}")
            cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) EXECUTE q({args})")
            found[(name, mode)] = "\n".join(row[0] for row in cur.fetchall())
            cur.execute("DEALLOCATE q")
            conn.rollback()  # send_event's INSERT (and its notification) is undone
    return found


def problems(found: dict[tuple[str, str], str], size: str) -> list[str]:
    out = []
    for (name, mode), plan in found.items():
        expected = CALLS[name][1]
        missing = {index for index in expected if index not in plan}
        if re.search(rf"Seq Scan on ({H}|{E})\b", plan) or missing:
            out.append(f"{name} ({mode}, {size}): missing {sorted(missing)}\n{plan}")
    return out


def indexes(plan: str) -> set[str]:
    return set(re.findall(rf"\b((?:{H}|{E})_\w+(?:idx|pkey))\b", plan))


def buffers(plan: str) -> int:
    """Shared buffers the whole plan touched (its top line's Buffers: hit + read)."""
    first = re.search(r"Buffers: shared((?: \w+=\d+)+)", plan)
    return sum(int(n) for n in re.findall(r"=(\d+)", first.group(1))) if first else 0


async def test_send_and_wait_queries_are_index_backed_and_flat(
    db_config: DBConfig, postgresql: Any
) -> None:
    await make_real_instance(db_config)
    last = (ROWS - 4) // ROWS_PER_INSTANCE  # the real instance has 4 rows
    every = ROWS // ROWS_PER_INSTANCE // WAITING  # one instance in 25 waits
    params = {"workflow": WORKFLOW, "every": every, "first_event": FIRST_FILLED_EVENT,
              "first": 1, "last": 1}  # fmt: skip
    with postgresql.cursor() as cur:
        cur.execute(FILL_HISTORY, params)  # one more waiting instance: 8 rows, 3 events
        cur.execute(FILL_EVENTS, params)
        postgresql.commit()
        small_rows = analyzed_rows(postgresql, cur)
        small = plans(postgresql, cur)  # one page each: the planner reads it sequentially
        small_indexed = plans(postgresql, cur, seqscan=False)  # the plan it has for more
        params.update(first=2, last=last)
        cur.execute(FILL_HISTORY, params)
        cur.execute(FILL_EVENTS, params)
        postgresql.commit()
        rows = analyzed_rows(postgresql, cur)
        cur.execute(
            f"SELECT (SELECT count(*) FROM {E}), (SELECT count(*) FROM {H} l "
            f"WHERE status = 'waiting' AND seq = (SELECT max(seq) FROM {H} p "
            f"WHERE p.workflow_name = l.workflow_name AND p.instance_id = l.instance_id))"
        )
        events, waiting = cur.fetchone()
        postgresql.commit()
        large = plans(postgresql, cur)
    assert small_rows == 8 and rows == ROWS and events > 200_000
    assert waiting == WAITING + 1  # the filled ones and the real one
    assert problems(large, f"{rows:,} rows") == []
    assert problems(small_indexed, f"{small_rows} rows, seq scans off") == []
    for key, plan in large.items():  # the same indexes at both sizes: the plan is flat
        assert indexes(plan) == indexes(small_indexed[key]), f"{key}\n{small[key]}\n---\n{plan}"
    touched = {f"{n} ({m})": [buffers(small[(n, m)]), buffers(large[(n, m)])] for n, m in large}
    print(json.dumps({f"buffers at {small_rows} rows, at {rows:,} rows": touched}, indent=1))
    for (name, mode), plan in large.items():
        assert buffers(plan) <= 60, f"{name} ({mode}) touched {buffers(plan)} buffers\n{plan}"


def analyzed_rows(conn: Any, cur: Any) -> int:
    """ANALYZE both tables (the planner sees their sizes); the history's row count."""
    cur.execute(f"ANALYZE {H}; ANALYZE {E}")
    cur.execute(f"SELECT count(*) FROM {H}")
    (rows,) = cur.fetchone()
    conn.commit()
    return int(rows)
