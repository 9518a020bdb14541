"""Listing by a terminal status uses the partial terminal index (schema version 3) and
stays right when ``fsmflow retry`` appended a running row after a failed one.

Real PostgreSQL; plans are read with EXPLAIN, never timed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsmflow import sql as fsql
from tests.integration.reliability_support import Harness

WORKFLOW = "listed_flow"


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def add_instance(h: Harness, instance_id: str, statuses: list[str], minute: int) -> None:
    """Rows seq 0.. with these statuses, started ``minute`` minutes into 2025."""
    for seq, status in enumerate(statuses):
        h.sql(
            "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, dest_state, "
            "context, status, created_at) VALUES (%s, %s, %s, 'a', '{}', %s, "
            "timestamptz '2025-01-01' + make_interval(mins => %s, secs => %s))",
            (WORKFLOW, instance_id, seq, status, minute, seq),
        )


async def test_a_retried_instance_is_listed_by_its_last_row(h: Harness) -> None:
    add_instance(h, "failed", ["running", "failed"], 1)
    add_instance(h, "retried", ["running", "failed", "running"], 2)  # fsmflow retry
    add_instance(h, "retried-failed-again", ["running", "failed", "running", "failed"], 3)
    add_instance(h, "retried-completed", ["running", "failed", "running", "completed"], 4)
    add_instance(h, "completed", ["running", "completed"], 5)
    add_instance(h, "cancelled", ["running", "cancelled"], 6)
    store = h.config().store

    async def ids(*status: Any, workflow: str | None = WORKFLOW, **kw: Any) -> list[str]:
        found = await store.list_instances(workflow, status=list(status) or None, **kw)
        return [i.instance_id for i in found]

    assert await ids("failed") == ["retried-failed-again", "failed"]
    assert await ids("failed", workflow=None) == ["retried-failed-again", "failed"]
    assert await ids("running") == ["retried"]
    assert await ids("completed", "cancelled") == ["cancelled", "completed", "retried-completed"]
    assert await ids("failed", "running") == ["retried-failed-again", "retried", "failed"]
    assert len(await ids()) == 6
    page = await store.list_instances(WORKFLOW, status=["failed", "completed"], limit=2)
    assert [i.instance_id for i in page] == ["completed", "retried-completed"]
    assert [i.status for i in page] == ["completed", "completed"]
    rest = await ids("failed", "completed", limit=2, after=page[-1])
    assert rest == ["retried-failed-again", "failed"]


FILL = """
INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, dest_state, context,
                                 status, created_at)
SELECT 'wf_' || (i % 2), 'inst-' || i, s, 'state_' || s, '{}',
       CASE WHEN s = 2 AND i % 20000 = 7 THEN 'failed'
            WHEN s = 2 AND i % 3 = 0 THEN 'completed' ELSE 'running' END,
       timestamptz '2025-01-01' + make_interval(mins => i, secs => s)
FROM generate_series(1, 100000) i, generate_series(0, 2) s
"""

TERMINAL_ONLY = {
    "one workflow, failed": "'wf_1', '{failed}', NULL, 50, NULL, NULL, NULL",
    "every workflow, failed": "NULL, '{failed}', NULL, 50, NULL, NULL, NULL",
    "one workflow, cancelled (none)": "'wf_0', '{cancelled}', NULL, 50, NULL, NULL, NULL",
    "prune candidates": "NULL, '{completed,failed,cancelled}', '2025-01-10', 500, NULL, NULL, NULL",
}


@pytest.mark.parametrize("mode", ["auto", "force_generic_plan"])
def test_listing_a_terminal_status_uses_the_terminal_index_at_100k_instances(
    postgresql: Any, mode: str
) -> None:
    query = fsql.queries(None, "fsmflow_transitions")["list_instances"]
    index = fsql.object_name("fsmflow_transitions", "_terminal_idx")
    with postgresql.cursor() as cur:
        cur.execute(FILL)
        cur.execute("ANALYZE fsmflow_transitions")
        cur.execute(f"SET plan_cache_mode = {mode}")
        cur.execute(f"PREPARE q AS {query}")
        for title, args in TERMINAL_ONLY.items():
            cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) EXECUTE q({args})")
            plan = "\n".join(row[0] for row in cur.fetchall())
            assert "Seq Scan" not in plan, f"{title}:\n{plan}"
            assert index in plan, f"{title}:\n{plan}"
            # The branch that walks every instance never ran (its one-time filter is false).
            walked = [line for line in plan.splitlines() if "started_idx" in line]
            assert all("never executed" in line for line in walked), f"{title}:\n{plan}"
        cur.execute("DEALLOCATE q")
