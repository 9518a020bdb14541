"""The history API on the store: listing instances, cancel, retry, prune, health, and the
query plans at scale. Everything runs against the real test server.

The instance factories here (:func:`make_instance`) are shared with ``test_fork`` and
``test_cli``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, Literal

import pytest

from fsmflow import (
    DBConfig,
    InstanceCancelledError,
    InstanceLockedError,
    InstanceNotFoundError,
    InstanceStateError,
    InstanceSummary,
    PermissionDeniedError,
    PruneResult,
    RunnerEvent,
    StepFailedError,
    WorkflowContext,
    WorkflowDefinition,
)
from fsmflow import sql as fsql
from fsmflow.model.records import CANCEL_TRIGGER, RETRY_TRIGGER
from fsmflow.store.ownership import lock_key

from .reliability_support import Harness, Tracker, linear_definition, running

WORKFLOW = "ops_flow"
DEFINITION = linear_definition(WORKFLOW, ("fetch", "think", "report"))
OTHER = linear_definition("other_flow", ("only",))
Outcome = Literal["completed", "failed", "running"]


class StopHere(Exception):
    """Raised by a listener to stop a run just before a step starts (a 'crash')."""


def _stop_before(state: str) -> Any:
    def listener(event: RunnerEvent) -> None:
        if event.point == "step_started" and event.state == state:
            raise StopHere(state)

    return listener


async def _explodes(ctx: WorkflowContext) -> WorkflowContext:
    raise RuntimeError("boom")


async def make_instance(
    config: DBConfig,
    instance_id: str,
    outcome: Outcome = "completed",
    *,
    at: str = "think",
    context: dict[str, Any] | None = None,
    definition: WorkflowDefinition = DEFINITION,
) -> Tracker:
    """Create an instance that ends ``completed``, ``failed`` in state ``at``, or is left
    ``running`` with state ``at`` next to run (as after a crash)."""
    from fsmflow import PersistentWorkflowStateMachine

    tracker = Tracker()
    steps = tracker.steps(definition)
    listeners = [_stop_before(at)] if outcome == "running" else []
    if outcome == "failed":
        steps[at] = _explodes
    runner = PersistentWorkflowStateMachine(
        config,
        definition,
        steps=steps,
        instance_id=instance_id,
        handle_signals=False,
        listeners=listeners,
    )
    try:
        await runner.run_workflow(context=context or {"n": 1})
    except (StopHere, StepFailedError):
        assert outcome != "completed"
    return tracker


async def run_to_end(config: DBConfig, instance_id: str, **kwargs: Any) -> Tracker:
    """Run (resume) an instance of DEFINITION to its end."""
    from fsmflow import PersistentWorkflowStateMachine

    tracker = Tracker()
    runner = PersistentWorkflowStateMachine(
        config,
        DEFINITION,
        steps=tracker.steps(DEFINITION),
        instance_id=instance_id,
        handle_signals=False,
        **kwargs,
    )
    state = await runner.run_workflow()
    assert state.completed
    return tracker


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def _ids(summaries: Sequence[InstanceSummary]) -> list[str]:
    return [s.instance_id for s in summaries]


# -- listing -----------------------------------------------------------------------------


async def test_list_reports_status_current_state_seq_and_times(db_config: DBConfig) -> None:
    await make_instance(db_config, "c1", "completed")
    await make_instance(db_config, "f1", "failed", at="think")
    await make_instance(db_config, "r1", "running", at="report")
    await make_instance(db_config, "o1", definition=OTHER)

    listed = await db_config.store.list_instances(WORKFLOW)

    assert _ids(listed) == ["r1", "f1", "c1"]  # newest first
    by_id = {s.instance_id: s for s in listed}
    assert (by_id["c1"].status, by_id["c1"].current_state, by_id["c1"].seq) == (
        "completed",
        "report",
        3,
    )
    assert (by_id["f1"].status, by_id["f1"].current_state, by_id["f1"].seq) == (
        "failed",
        "think",
        2,
    )
    assert (by_id["r1"].status, by_id["r1"].current_state, by_id["r1"].seq) == (
        "running",
        "report",
        2,
    )
    for summary in listed:
        assert summary.workflow_name == WORKFLOW
        assert summary.started_at <= summary.updated_at
        assert summary.forked_from_instance is None


async def test_list_filters_by_workflow_and_status(db_config: DBConfig) -> None:
    await make_instance(db_config, "c1", "completed")
    await make_instance(db_config, "f1", "failed")
    await make_instance(db_config, "r1", "running")
    await make_instance(db_config, "o1", definition=OTHER)
    store = db_config.store

    assert _ids(await store.list_instances(WORKFLOW, status="failed")) == ["f1"]
    assert _ids(await store.list_instances(WORKFLOW, status=["running", "failed"])) == ["r1", "f1"]
    assert _ids(await store.list_instances(status="completed")) == ["o1", "c1"]
    assert _ids(await store.list_instances("other_flow")) == ["o1"]
    assert await store.list_instances("no_such_flow") == []
    with pytest.raises(ValueError, match="unknown status"):
        await store.list_instances(status="done")  # type: ignore[arg-type]


async def test_pages_neither_skip_nor_repeat_while_instances_start(db_config: DBConfig) -> None:
    for i in range(7):
        await make_instance(db_config, f"i{i}", definition=OTHER if i % 2 else DEFINITION)
    store = db_config.store
    everything = await store.list_instances()
    assert len(everything) == 7

    pages = [await store.list_instances(limit=3)]
    await make_instance(db_config, "newcomer")  # newer than every page: never shows up
    while len(pages[-1]) == 3:
        pages.append(await store.list_instances(limit=3, after=pages[-1][-1]))

    assert [s for page in pages for s in page] == everything


async def test_last_record_and_history_are_typed(db_config: DBConfig) -> None:
    await make_instance(db_config, "c1", "completed", context={"k": "v"})
    store = db_config.store

    history = await store.history(WORKFLOW, "c1")
    last = await store.last_record(WORKFLOW, "c1")

    assert [r.seq for r in history] == [0, 1, 2, 3]
    assert last == history[-1]
    assert last.completed and last.source_state == "report" and last.dest_state is None
    assert last.context == {"k": "v", "visited": ["fetch", "think", "report"]}
    assert await store.last_record(WORKFLOW, "missing") is None
    assert await store.history(WORKFLOW, "missing") == []


# -- cancel ------------------------------------------------------------------------------


async def test_cancel_appends_a_terminal_row_and_runs_refuse(db_config: DBConfig) -> None:
    await make_instance(db_config, "r1", "running", at="think", context={"k": 1})
    store = db_config.store
    before = await store.history(WORKFLOW, "r1")

    row = await store.cancel_instance(WORKFLOW, "r1", reason="customer withdrew")

    assert (row.seq, row.status, row.trigger) == (2, "cancelled", CANCEL_TRIGGER)
    assert (row.source_state, row.dest_state) == ("think", "think")
    assert row.context == before[-1].context
    assert row.error == {"type": "Cancelled", "message": "customer withdrew"}
    assert await store.history(WORKFLOW, "r1") == [*before, row]
    with pytest.raises(InstanceCancelledError):
        await run_to_end(db_config, "r1")
    with pytest.raises(InstanceStateError, match="already cancelled at seq 2"):
        await store.cancel_instance(WORKFLOW, "r1")


async def test_cancel_refuses_finished_and_missing_instances(db_config: DBConfig) -> None:
    await make_instance(db_config, "c1", "completed")
    store = db_config.store
    with pytest.raises(InstanceStateError, match="already completed"):
        await store.cancel_instance(WORKFLOW, "c1")
    with pytest.raises(InstanceNotFoundError, match="no such instance to cancel"):
        await store.cancel_instance(WORKFLOW, "ghost")
    assert len(await store.history(WORKFLOW, "c1")) == 4
    assert await store.history(WORKFLOW, "ghost") == []


async def test_cancel_refuses_an_instance_a_live_runner_owns(h: Harness) -> None:
    from fsmflow import PersistentWorkflowStateMachine

    config = h.config()
    tracker = Tracker()
    release = tracker.hold_first("think")
    runner = PersistentWorkflowStateMachine(
        config, DEFINITION, steps=tracker.steps(DEFINITION), instance_id="live",
        handle_signals=False,
    )  # fmt: skip
    other = h.config()  # another process's view
    async with running(runner.run_workflow()) as task:
        await tracker.started("think")
        with pytest.raises(InstanceLockedError, match="a live runner owns this instance"):
            await other.store.cancel_instance(WORKFLOW, "live")
        release.set()
        assert (await task).completed
    assert [r["status"] for r in h.rows(WORKFLOW, "live")][-1] == "completed"
    assert all(r["trigger"] != CANCEL_TRIGGER for r in h.rows(WORKFLOW, "live"))


# -- retry -------------------------------------------------------------------------------


async def test_retry_makes_a_failed_instance_resume_at_the_failed_step(
    db_config: DBConfig,
) -> None:
    await make_instance(db_config, "f1", "failed", at="think")
    store = db_config.store

    row = await store.retry_instance(WORKFLOW, "f1")

    assert (row.seq, row.status, row.trigger) == (3, "running", RETRY_TRIGGER)
    assert (row.source_state, row.dest_state) == ("think", "think")
    assert row.context == {"n": 1, "visited": ["fetch"]}  # what the failed step started from
    tracker = await run_to_end(db_config, "f1")  # no retry_failed needed
    assert tracker.runs == {"think": 1, "report": 1}
    statuses = [r.status for r in await store.history(WORKFLOW, "f1")]
    assert statuses == ["running", "running", "failed", "running", "running", "completed"]


async def test_retry_refuses_instances_that_did_not_fail(db_config: DBConfig) -> None:
    await make_instance(db_config, "c1", "completed")
    await make_instance(db_config, "r1", "running")
    store = db_config.store
    with pytest.raises(InstanceStateError, match="completed at seq 3: nothing to retry"):
        await store.retry_instance(WORKFLOW, "c1")
    with pytest.raises(InstanceStateError, match="did not fail"):
        await store.retry_instance(WORKFLOW, "r1")
    with pytest.raises(InstanceNotFoundError):
        await store.retry_instance(WORKFLOW, "ghost")
    await store.cancel_instance(WORKFLOW, "r1")
    with pytest.raises(InstanceStateError, match="stays cancelled"):
        await store.retry_instance(WORKFLOW, "r1")


# -- prune -------------------------------------------------------------------------------


async def _mixed(config: DBConfig) -> None:
    await make_instance(config, "c1", "completed")
    await make_instance(config, "f1", "failed")
    await make_instance(config, "x1", "running")
    await config.store.cancel_instance(WORKFLOW, "x1")
    await make_instance(config, "r1", "running")


async def test_prune_deletes_finished_instances_and_never_running_ones(h: Harness) -> None:
    config = h.config()
    await _mixed(config)
    running_rows = h.rows(WORKFLOW, "r1")

    result = await config.store.prune_instances(timedelta(0))

    assert (result.instances, result.rows, result.skipped, result.dry_run) == (3, 10, 0, False)
    assert _ids(await config.store.list_instances()) == ["r1"]
    assert h.rows(WORKFLOW, "r1") == running_rows
    assert h.count() == len(running_rows)


async def test_prune_dry_run_deletes_nothing(h: Harness) -> None:
    config = h.config()
    await _mixed(config)
    before = h.sql("SELECT t::text FROM fsmflow_transitions t ORDER BY 1")

    result = await config.store.prune_instances(timedelta(0), dry_run=True)

    assert (result.instances, result.rows, result.dry_run) == (3, 10, True)
    assert h.sql("SELECT t::text FROM fsmflow_transitions t ORDER BY 1") == before


async def test_prune_keeps_instances_updated_within_the_window(h: Harness) -> None:
    config = h.config()
    await make_instance(config, "old")
    await make_instance(config, "recent")
    h.sql(
        "UPDATE fsmflow_transitions SET created_at = created_at - interval '40 days' "
        "WHERE instance_id = 'old'"
    )

    result = await config.store.prune_instances(timedelta(days=30), workflow=WORKFLOW)

    assert result.instances == 1
    assert _ids(await config.store.list_instances()) == ["recent"]


async def test_prune_skips_an_instance_whose_lock_is_held(h: Harness) -> None:
    config = h.config()
    await make_instance(config, "f1", "failed")
    await make_instance(config, "c1", "completed")
    key = lock_key(config.store.resolved_table, WORKFLOW, "f1")
    holder = h.connect_as(h.info.user)  # a runner retrying f1, in another session
    holder.execute("SELECT pg_advisory_lock(%s::int8)", (key,))

    result = await config.store.prune_instances(timedelta(0))

    assert (result.instances, result.skipped) == (1, 1)
    assert _ids(await config.store.list_instances()) == ["f1"]


async def test_prune_works_in_batches_and_reports_progress(h: Harness) -> None:
    config = h.config()
    for i in range(5):
        await make_instance(config, f"c{i}")
    seen: list[tuple[int, PruneResult]] = []

    result = await config.store.prune_instances(
        timedelta(0), batch_size=2, on_batch=lambda batch, totals: seen.append((len(batch), totals))
    )

    assert [size for size, _ in seen] == [2, 2, 1]
    assert [totals.instances for _, totals in seen] == [2, 4, 5]
    assert (result.instances, result.rows) == (5, 20)
    assert h.count() == 0


async def test_prune_refuses_a_span_reaching_before_year_one(db_config: DBConfig) -> None:
    with pytest.raises(ValueError, match="before year 1"):
        await db_config.store.prune_instances(timedelta(days=740000))


async def test_prune_needs_delete_and_says_so(h: Harness) -> None:
    await make_instance(h.config(), "c1")
    runtime = h.create_role("runtime")
    h.sql(f"GRANT SELECT, INSERT ON fsmflow_transitions, fsmflow_transitions_events TO {runtime}")
    with pytest.raises(PermissionDeniedError, match="prune needs DELETE"):
        await h.config(user=runtime).store.prune_instances(timedelta(0))
    assert h.count() == 4


# -- health ------------------------------------------------------------------------------


async def test_check_health_reports_table_privileges_and_durability(h: Harness) -> None:
    report = await h.config().store.check_health()
    assert report.healthy and report.table_exists and report.schema_version_ok
    assert report.can_select and report.can_insert and report.synchronous_commit == "on"

    missing = await h.config(table="no_such_table").store.check_health()
    assert not missing.healthy
    assert "does not exist: run `fsmflow init-db`" in missing.problems[0]

    reader = h.create_role("reader")
    h.sql(f"GRANT SELECT ON fsmflow_transitions TO {reader}")
    unprivileged = await h.config(user=reader).store.check_health()
    assert not unprivileged.healthy and not unprivileged.can_insert
    assert "lacks SELECT and INSERT" in unprivileged.problems[0]

    h.sql(f"ALTER DATABASE {h.dbname} SET synchronous_commit = off")
    lax = await h.config().store.check_health()
    assert lax.healthy and "synchronous_commit=off" in lax.warnings[0]
    strict = await h.config(strict_durability=True).store.check_health()
    assert not strict.healthy and "FSMFLOW_STRICT_DURABILITY" in strict.problems[0]


# -- query plans at scale ----------------------------------------------------------------

_FILL = """
INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, trigger, source_state,
                                 dest_state, context, status, created_at)
SELECT 'wf_' || (i % 3), 'inst-' || i, s,
       CASE WHEN s > 0 THEN 'next' END,
       CASE WHEN s > 0 THEN 'state_' || (s - 1) END,
       CASE WHEN s = 9 AND i % 10 < 6 THEN NULL ELSE 'state_' || s END,
       jsonb_build_object('i', i),
       CASE WHEN s < 9 THEN 'running' WHEN i % 10 < 6 THEN 'completed'
            WHEN i % 10 = 6 THEN 'failed' ELSE 'running' END,
       timestamptz '2025-01-01' + make_interval(mins => i, secs => s)
FROM generate_series(1, 20000) i, generate_series(0, 9) s
"""

_PLANS = {
    "list one workflow": ("list_instances", "'wf_1', NULL, NULL, 50, NULL, NULL, NULL"),
    "list every workflow, failed": (
        "list_instances",
        "NULL, '{failed}', NULL, 50, NULL, NULL, NULL",
    ),
    "list next page": (
        "list_instances",
        "'wf_1', NULL, NULL, 50, '2025-01-10', 'wf_1', 'inst-12000'",
    ),
    "prune candidates": (
        "list_instances",
        "NULL, '{completed,failed,cancelled}', '2025-01-10', 500, NULL, NULL, NULL",
    ),
    "last_record": ("last_record", "'wf_1', 'inst-10000'"),
    "history": ("history", "'wf_1', 'inst-10000'"),
}


@pytest.mark.parametrize("mode", ["auto", "force_generic_plan"])
def test_queries_are_index_backed_at_200k_rows(postgresql: Any, mode: str) -> None:
    queries = fsql.queries(None, "fsmflow_transitions")
    with postgresql.cursor() as cur:
        cur.execute(_FILL)
        cur.execute("ANALYZE fsmflow_transitions")
        cur.execute(f"SET plan_cache_mode = {mode}")
        for title, (name, args) in _PLANS.items():
            cur.execute(f"PREPARE q AS {queries[name]}")
            cur.execute(f"EXPLAIN (COSTS OFF) EXECUTE q({args})")
            plan = "\n".join(row[0] for row in cur.fetchall())
            cur.execute("DEALLOCATE q")
            assert "Seq Scan" not in plan, f"{title}:\n{plan}"
            assert "Index" in plan, f"{title}:\n{plan}"


# -- reset_db ----------------------------------------------------------------------------


async def test_reset_db_refuses_while_a_runner_holds_an_instance_mid_step(h: Harness) -> None:
    from fsmflow import PersistentWorkflowStateMachine, ResetRefusedError

    config = h.config()
    await make_instance(config, "c1")
    tracker = Tracker()
    release = tracker.hold_first("think")
    runner = PersistentWorkflowStateMachine(
        config, DEFINITION, steps=tracker.steps(DEFINITION), instance_id="live",
        handle_signals=False,
    )  # fmt: skip
    async with running(runner.run_workflow()) as task:
        await tracker.started("think")
        before = h.count()
        with pytest.raises(ResetRefusedError, match=r"1 instance.*'live'.*--force"):
            await config.reset_db()
        assert h.count() == before > 0
        release.set()
        assert (await task).completed  # no false ConcurrentTransitionError
    await config.reset_db()
    assert h.count() == 0


async def test_reset_db_refuses_while_another_session_holds_a_lock_unless_forced(
    h: Harness,
) -> None:
    from fsmflow import ResetRefusedError

    config = h.config()
    for instance in ("a1", "b1", "c1"):
        await make_instance(config, instance)
    holder = h.connect_as(h.info.user)
    for instance in ("a1", "b1"):
        key = lock_key(config.store.resolved_table, WORKFLOW, instance)
        holder.execute("SELECT pg_advisory_lock(%s::int8)", (key,))

    with pytest.raises(ResetRefusedError, match=r"2 instance") as refused:
        await config.store.reset_db()
    assert "'a1'" in str(refused.value) and "'b1'" in str(refused.value)
    assert h.count() == 12

    await config.store.reset_db(force=True)
    assert h.count() == 0


# -- hand-altered rows -------------------------------------------------------------------


async def test_a_hand_altered_context_stops_the_runner_with_a_clear_error(h: Harness) -> None:
    from fsmflow import HistoryCorruptError

    config = h.config()
    await make_instance(config, "r1", "running", at="think")
    h.sql("UPDATE fsmflow_transitions SET context = '[1]' WHERE instance_id = 'r1' AND seq = 1")
    with pytest.raises(HistoryCorruptError, match=r"'r1'.*seq 1 is a JSON array.*intact seq"):
        await run_to_end(config, "r1")


async def test_a_run_without_an_id_after_a_failure_starts_a_new_instance(
    db_config: DBConfig,
) -> None:
    # As the README says where it describes how an instance is chosen.
    await make_instance(db_config, "f1", "failed", at="think")
    from fsmflow import PersistentWorkflowStateMachine

    tracker = Tracker()
    runner = PersistentWorkflowStateMachine(
        db_config, DEFINITION, steps=tracker.steps(DEFINITION), handle_signals=False
    )
    state = await runner.run_workflow()
    assert state.completed and state.instance_id != "f1"
    assert tracker.runs == {"fetch": 1, "think": 1, "report": 1}
    statuses = {s.instance_id: s.status for s in await db_config.store.list_instances()}
    assert statuses == {"f1": "failed", state.instance_id: "completed"}
