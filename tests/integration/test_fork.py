"""Forking instances: from the latest row or a given seq, pinned or generated ids, context
overrides, refusals, and a source history that stays byte-identical."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsmflow import (
    ConfigError,
    ContextSerializationError,
    DBConfig,
    DefinitionChangedError,
    InstanceExistsError,
    InstanceNotFoundError,
    InstanceStateError,
)

from .reliability_support import Harness, linear_definition
from .test_history import DEFINITION, WORKFLOW, make_instance, run_to_end


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def rows_as_text(h: Harness, instance_id: str) -> list[str]:
    """Every column of every row of an instance, as PostgreSQL prints the row."""
    return [
        text
        for (text,) in h.sql(
            "SELECT t::text FROM fsmflow_transitions t "
            "WHERE workflow_name = %s AND instance_id = %s ORDER BY seq",
            (WORKFLOW, instance_id),
        )
    ]


async def test_fork_from_latest_resumes_where_the_source_stopped(h: Harness) -> None:
    config = h.config()
    await make_instance(config, "src", "running", at="think", context={"k": 1})
    source_before = rows_as_text(h, "src")
    store = config.store
    source = await store.history(WORKFLOW, "src")

    fork = await store.fork_instance(WORKFLOW, "src")

    assert fork.instance_id != "src" and len(fork.instance_id) == 32  # generated
    assert (fork.seq, fork.status, fork.trigger) == (0, "running", None)
    assert (fork.source_state, fork.dest_state) == (None, "think")
    assert (fork.forked_from_instance, fork.forked_from_seq) == ("src", 1)
    assert fork.context == source[1].context == {"k": 1, "visited": ["fetch"]}
    # The source's seq-0 definition and fingerprint travel with the fork (drift checks).
    assert (fork.definition, fork.fingerprint) == (source[0].definition, source[0].fingerprint)
    assert rows_as_text(h, "src") == source_before


async def test_a_fork_resumes_by_id_and_leaves_the_source_alone(h: Harness) -> None:
    config = h.config()
    await make_instance(config, "src", "running", at="think")
    source_before = rows_as_text(h, "src")
    fork = await config.store.fork_instance(WORKFLOW, "src", new_instance_id="copy")

    tracker = await run_to_end(config, "copy")

    assert tracker.runs == {"think": 1, "report": 1}  # fetch is not run again
    copy = await config.store.history(WORKFLOW, "copy")
    assert copy[0] == fork
    assert copy[-1].context["visited"] == ["fetch", "think", "report"]
    assert rows_as_text(h, "src") == source_before
    statuses = {s.instance_id: s.status for s in await config.store.list_instances()}
    assert statuses == {"src": "running", "copy": "completed"}


async def test_fork_from_a_seq_of_a_completed_instance(h: Harness) -> None:
    config = h.config()
    await make_instance(config, "done", "completed", context={"k": 1})
    source_before = rows_as_text(h, "done")

    fork = await config.store.fork_instance(
        WORKFLOW, "done", seq=2, overrides={"k": 2, "extra": [1, "x"]}
    )

    assert fork.dest_state == "report" and fork.forked_from_seq == 2
    assert fork.context == {"k": 2, "extra": [1, "x"], "visited": ["fetch", "think"]}
    tracker = await run_to_end(config, fork.instance_id)
    assert tracker.runs == {"report": 1}
    assert rows_as_text(h, "done") == source_before
    listed = {s.instance_id: s for s in await config.store.list_instances(WORKFLOW)}
    assert listed[fork.instance_id].forked_from_instance == "done"


async def test_fork_from_seq_zero_starts_over_with_the_initial_context(db_config: DBConfig) -> None:
    await make_instance(db_config, "done", "completed", context={"k": 1})
    fork = await db_config.store.fork_instance(WORKFLOW, "done", seq=0)
    assert (fork.dest_state, fork.context, fork.forked_from_seq) == ("fetch", {"k": 1}, 0)


async def test_fork_of_a_failed_instance_runs_the_failed_step_again(db_config: DBConfig) -> None:
    await make_instance(db_config, "bad", "failed", at="think")
    fork = await db_config.store.fork_instance(WORKFLOW, "bad", new_instance_id="bad-2")
    assert (fork.dest_state, fork.forked_from_seq) == ("think", 2)
    tracker = await run_to_end(db_config, "bad-2")
    assert tracker.runs == {"think": 1, "report": 1}
    statuses = {s.instance_id: s.status for s in await db_config.store.list_instances()}
    assert statuses == {"bad": "failed", "bad-2": "completed"}


async def test_a_pinned_id_that_exists_is_refused_and_nothing_is_overwritten(h: Harness) -> None:
    config = h.config()
    await make_instance(config, "src", "running")
    await make_instance(config, "taken", "completed")
    first = await config.store.fork_instance(WORKFLOW, "src", new_instance_id="copy")
    taken_before, copy_before = rows_as_text(h, "taken"), rows_as_text(h, "copy")

    for existing in ("copy", "taken", "src"):
        with pytest.raises(InstanceExistsError, match="already exists"):
            await config.store.fork_instance(WORKFLOW, "src", new_instance_id=existing)

    assert rows_as_text(h, "taken") == taken_before
    assert rows_as_text(h, "copy") == copy_before
    assert first.instance_id == "copy"


async def test_missing_source_and_unknown_seq_are_clear_errors(h: Harness) -> None:
    config = h.config()
    await make_instance(config, "src", "running")  # seq 0 and 1
    with pytest.raises(InstanceNotFoundError, match="'ghost': no such instance to fork from"):
        await config.store.fork_instance(WORKFLOW, "ghost")
    with pytest.raises(InstanceNotFoundError, match=r"no seq 7 to fork from \(.* seq 0 to 1\)"):
        await config.store.fork_instance(WORKFLOW, "src", seq=7)
    with pytest.raises(InstanceNotFoundError, match="has no seq -1"):
        await config.store.fork_instance(WORKFLOW, "src", seq=-1)
    assert [s.instance_id for s in await config.store.list_instances()] == ["src"]


async def test_forking_a_completion_row_is_refused(db_config: DBConfig) -> None:
    await make_instance(db_config, "done", "completed")
    store = db_config.store
    with pytest.raises(InstanceStateError, match=r"its last row \(seq 3\) completed the instance"):
        await store.fork_instance(WORKFLOW, "done")
    with pytest.raises(InstanceStateError, match="seq 2 runs the step of state 'report' again"):
        await store.fork_instance(WORKFLOW, "done", seq=3)
    assert len(await store.list_instances()) == 1


async def test_overrides_are_validated_before_anything_is_written(db_config: DBConfig) -> None:
    await make_instance(db_config, "src", "running")
    with pytest.raises(ContextSerializationError, match=r"ctx\['when'\]"):
        await db_config.store.fork_instance(WORKFLOW, "src", overrides={"when": {1, 2}})
    with pytest.raises(ContextSerializationError, match="not finite"):
        await db_config.store.fork_instance(WORKFLOW, "src", overrides={"x": float("nan")})
    assert len(await db_config.store.list_instances()) == 1


async def test_drift_checks_apply_to_forks(db_config: DBConfig) -> None:
    await make_instance(db_config, "src", "running", at="think")
    await db_config.store.fork_instance(WORKFLOW, "src", new_instance_id="copy")
    changed = linear_definition(WORKFLOW, ("fetch", "think", "report", "archive"))
    from fsmflow import PersistentWorkflowStateMachine

    runner = PersistentWorkflowStateMachine(
        db_config, changed, steps={s: _noop for s in changed.steps}, instance_id="copy",
        handle_signals=False,
    )  # fmt: skip
    with pytest.raises(DefinitionChangedError):
        await runner.run_workflow()
    assert DEFINITION.fingerprint != changed.fingerprint


async def _noop(ctx: Any) -> Any:
    return ctx, None


# The code changed after instances started: state 'think' was renamed 'ponder'.
RENAMED = linear_definition(WORKFLOW, ("fetch", "ponder", "report"))


async def test_an_instance_in_a_dropped_state_is_forked_onto_a_state_of_the_new_code(
    db_config: DBConfig,
) -> None:
    from fsmflow import PersistentWorkflowStateMachine, UnknownStateError

    await make_instance(db_config, "old", "running", at="think")
    steps = {s: _noop for s in RENAMED.steps}
    stuck = PersistentWorkflowStateMachine(
        db_config, RENAMED, steps=steps, instance_id="old", handle_signals=False
    )
    with pytest.raises(
        UnknownStateError,
        match="fork the instance onto a known state of the current code: `fsmflow fork",
    ):
        await stuck.run_workflow()

    fork = await db_config.store.fork_instance(
        WORKFLOW, "old", new_instance_id="new", state="ponder", definition=RENAMED,
        allow_definition_change=True,
    )  # fmt: skip

    assert (fork.dest_state, fork.forked_from_seq) == ("ponder", 1)
    assert fork.fingerprint == RENAMED.fingerprint and fork.definition == RENAMED.summary()
    runner = PersistentWorkflowStateMachine(
        db_config, RENAMED, steps=steps, instance_id="new", handle_signals=False
    )
    state = await runner.run_workflow()
    assert state.completed and state.context.data["visited"] == ["fetch"]


async def test_fork_onto_a_state_is_validated_against_the_definition(
    db_config: DBConfig,
) -> None:
    await make_instance(db_config, "old", "running", at="think")
    store = db_config.store
    with pytest.raises(InstanceStateError, match=r"'nowhere' is not a state.*'ponder'"):
        await store.fork_instance(
            WORKFLOW, "old", state="nowhere", definition=RENAMED, allow_definition_change=True
        )
    with pytest.raises(InstanceStateError, match=r"'ponder' is not a state.*'think'"):
        await store.fork_instance(WORKFLOW, "old", state="ponder")  # the stored definition
    with pytest.raises(DefinitionChangedError, match="allow_definition_change"):
        await store.fork_instance(WORKFLOW, "old", state="ponder", definition=RENAMED)
    other = linear_definition("other_flow", ("a",))
    with pytest.raises(ConfigError, match="'other_flow'"):
        await store.fork_instance(WORKFLOW, "old", definition=other)
    assert len(await store.list_instances()) == 1
    same = await store.fork_instance(WORKFLOW, "old", state="report", definition=DEFINITION)
    assert same.dest_state == "report" and same.fingerprint == DEFINITION.fingerprint


async def test_a_completion_row_can_be_forked_onto_a_chosen_state(db_config: DBConfig) -> None:
    await make_instance(db_config, "done", "completed")
    fork = await db_config.store.fork_instance(WORKFLOW, "done", state="report")
    assert (fork.dest_state, fork.forked_from_seq) == ("report", 3)
    assert (await run_to_end(db_config, fork.instance_id)).runs == {"report": 1}
