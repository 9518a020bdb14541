"""How long ``fsmflow migrate`` takes on a version-1 table of 1,000,000 rows, and which lock
it holds for how long (run with ``-m stress``; prints the figures the README quotes).

Nothing is asserted about time: the test checks that the upgrade completes, that a concurrent
reader is blocked only while the rewrite holds ACCESS EXCLUSIVE, and reports the durations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsmflow import sql as fsql
from tests.integration.reliability_support import Harness

pytestmark = [pytest.mark.stress, pytest.mark.timeout(1800)]
TABLE = "big_history"
FILL = f"""
INSERT INTO {TABLE} (workflow_name, instance_id, seq, trigger, source_state, dest_state,
                     context, status, created_at)
SELECT 'wf_' || (i % 4), 'inst-' || i, s, CASE WHEN s > 0 THEN 'next' END,
       CASE WHEN s > 0 THEN 'state_' || (s - 1) END, 'state_' || s,
       jsonb_build_object('i', i, 'payload', repeat('x', 100), 'items', jsonb_build_array(1, 2, 3)),
       CASE WHEN s < 9 THEN 'running' WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END,
       timestamptz '2025-01-01' + make_interval(secs => i * 10 + s)
FROM generate_series(1, 100000) i, generate_series(0, 9) s
"""


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


async def test_migrating_a_million_row_version_1_table(h: Harness) -> None:
    h.sql(fsql.bind_table(fsql.read("migrations/0001_initial.sql"), None, TABLE))
    h.sql(FILL)
    h.sql(f"ANALYZE {TABLE}")
    assert h.count(TABLE) == 1_000_000
    size = h.sql(f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))")[0][0]
    store = h.config(table=TABLE).store
    locks: list[tuple[float, str]] = []

    async def watch() -> None:  # the strongest lock held on the table, sampled
        start = time.monotonic()
        while True:
            held = h.sql(
                "SELECT string_agg(DISTINCT mode, ',') FROM pg_locks "
                "WHERE relation = %s::regclass AND granted",
                (TABLE,),
            )[0][0]
            locks.append((time.monotonic() - start, held or ""))
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    timings: dict[str, float] = {}
    start = time.monotonic()
    original = store._schema._apply

    async def timed(conn: Any, migration: fsql.Migration) -> None:
        began = time.monotonic()
        await original(conn, migration)
        timings[migration.name] = time.monotonic() - began

    store._schema._apply = timed  # type: ignore[method-assign]
    applied = await store.migrate()
    total = time.monotonic() - start
    watcher.cancel()
    exclusive = [t for t, modes in locks if "AccessExclusiveLock" in modes]
    print(f"\n1,000,000 rows ({size}) migrated in {total:.1f}s: {timings}")
    if exclusive:
        print(f"ACCESS EXCLUSIVE seen from {exclusive[0]:.1f}s to {exclusive[-1]:.1f}s")
    print("lock modes seen:", sorted({m for _, m in locks if m}))
    assert [m.version for m in applied] == [2, 3]
    assert exclusive  # the rewrite's lock
