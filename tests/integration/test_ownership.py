"""One owner per instance: advisory locks on dedicated connections (issue 3, item 1).

Real server, real sessions: who holds a lock is read from ``pg_locks``; which session wrote a
row, with which settings and locks, is recorded by a trigger on the history table.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from fsmflow import (
    ContextSerializationError,
    InstanceFailedError,
    InstanceLockedError,
    InvalidTransitionError,
    StepFailedError,
    WorkflowContext,
    WorkflowInterruptedError,
)
from fsmflow.store.dberrors import is_query_cancelled
from fsmflow.store.lanes import session_gone
from fsmflow.store.ownership import lock_key
from tests.conftest import run_python

from .reliability_support import (
    OWNER_APPLICATION_NAME,
    Harness,
    Tracker,
    assert_gap_free,
    finish,
    linear_definition,
    running,
)

WORKFLOW = "ownership_flow"
STATES = ("fetch", "think", "report")
DEFINITION = linear_definition(WORKFLOW, STATES)


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def key_of(instance_id: str) -> int:
    return lock_key("public.fsmflow_transitions", WORKFLOW, instance_id)


# -- a second runner ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "second_settings",
    ["same DBConfig, one lane (in-process registry)", "separate DBConfig (database lock)"],
)
async def test_second_runner_in_same_process_is_refused_while_first_runs(
    h: Harness, second_settings: str
) -> None:
    first_config = h.config(owner_connections=1)
    second_config = first_config if second_settings.startswith("same") else h.config()
    tracker = Tracker()
    release = tracker.hold_first("think")
    first = h.runner(first_config, DEFINITION, tracker.steps(DEFINITION), instance_id="i1")
    second = h.runner(second_config, DEFINITION, tracker.steps(DEFINITION), instance_id="i1")

    async with running(first.run_workflow()) as first_task:
        await tracker.started("think")
        with pytest.raises(InstanceLockedError) as refused:
            await second.run_workflow()
        # Refused at once: the owner is still inside its step, and nothing else ran.
        assert not first_task.done()
        assert tracker.runs == {"fetch": 1, "think": 1}
        assert "'i1'" in str(refused.value) and "wait=True" in str(refused.value)
        assert [r["seq"] for r in h.rows(WORKFLOW, "i1")] == [0, 1]
        assert [key for _, key in h.fsm_locks()] == [key_of("i1")]

        release.set()
        result = await finish(first_task)

    assert result.completed
    assert tracker.runs == {"fetch": 1, "think": 1, "report": 1}
    assert_gap_free(h.rows(WORKFLOW, "i1"))
    assert await h.locks_left() == []


CHILD_RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    from fsmflow import (DBConfig, InstanceLockedError, PersistentWorkflowStateMachine,
                         Transition, WorkflowDefinition)

    STATES = {states!r}
    definition = WorkflowDefinition(
        name={workflow!r}, steps=list(STATES),
        transitions=[Transition(trigger=f"{{a}}_done", source=a, dest=b)
                     for a, b in zip(STATES, STATES[1:])])

    def step(ctx):
        print("EXECUTED A STEP", flush=True)
        return ctx, None

    async def main():
        config = DBConfig(_env_file=None)
        runner = PersistentWorkflowStateMachine(
            config, definition, steps={{s: step for s in STATES}}, instance_id={instance!r},
            handle_signals=False)
        try:
            await runner.run_workflow()
            print("RAN")
        except InstanceLockedError as exc:
            print("REFUSED", type(exc).__name__)
        finally:
            await config.close()

    asyncio.run(main())
    """
)


async def test_runner_in_another_process_is_refused(h: Harness, db_env: dict[str, str]) -> None:
    tracker = Tracker()
    release = tracker.hold_first("think")
    runner = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="i2")
    code = CHILD_RUNNER.format(states=STATES, workflow=WORKFLOW, instance="i2")
    # Another hash seed than ours: only a stable key (never hash()) makes the child collide.
    env = {**db_env, "PYTHONHASHSEED": "4242"}

    async with running(runner.run_workflow()) as task:
        await tracker.started("think")
        child = await asyncio.to_thread(run_python, ["-c", code], env)
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["REFUSED", "InstanceLockedError"]
        assert not task.done()
        release.set()
        assert (await finish(task)).completed

    assert tracker.runs == {"fetch": 1, "think": 1, "report": 1}
    assert_gap_free(h.rows(WORKFLOW, "i2"))


async def test_wait_true_waits_then_returns_the_completed_instance(h: Harness) -> None:
    tracker = Tracker()
    release = tracker.hold_first("think")
    holder = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="i3")
    waiter_tracker = Tracker()
    waiter = h.runner(
        h.config(), DEFINITION, waiter_tracker.steps(DEFINITION), instance_id="i3", wait=True
    )

    async with running(holder.run_workflow()) as holder_task:
        await tracker.started("think")
        async with running(waiter.run_workflow()) as waiter_task:
            await asyncio.sleep(0.3)
            assert not waiter_task.done()  # waiting for the lock, not refused
            release.set()
            holder_result = await finish(holder_task)
            waiter_result = await finish(waiter_task)

    assert holder_result.completed and waiter_result.completed
    assert waiter_result.seq == holder_result.seq == len(STATES)
    assert waiter_tracker.runs == {}  # nothing ran twice
    assert_gap_free(h.rows(WORKFLOW, "i3"))
    assert await h.locks_left() == []


async def test_wait_true_resumes_after_the_holder_stops(h: Harness) -> None:
    tracker = Tracker()
    tracker.hold_first("think")  # never released: the holder is interrupted inside it
    holder = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="i4")
    waiter = h.runner(
        h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="i4", wait=True
    )

    async with running(holder.run_workflow()) as holder_task:
        await tracker.started("think")
        async with running(waiter.run_workflow()) as waiter_task:
            await asyncio.sleep(0.3)
            assert not waiter_task.done()
            holder.interrupt("shutdown")
            with pytest.raises(WorkflowInterruptedError):
                await finish(holder_task)
            result = await finish(waiter_task)

    assert result.completed
    # The interrupted step ran again in the waiter; the finished one did not.
    assert tracker.runs == {"fetch": 1, "think": 2, "report": 1}
    rows = h.rows(WORKFLOW, "i4")
    assert_gap_free(rows)
    assert [r["status"] for r in rows] == ["running"] * len(STATES) + ["completed"]
    assert rows[-1]["context"]["visited"] == list(STATES)


async def test_lock_timeout_expires_with_instance_locked_error(h: Harness) -> None:
    tracker = Tracker()
    release = tracker.hold_first("think")
    holder = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="i5")
    waiter = h.runner(
        h.config(),
        DEFINITION,
        tracker.steps(DEFINITION),
        instance_id="i5",
        wait=True,
        lock_timeout=0.5,
    )

    async with running(holder.run_workflow()) as holder_task:
        await tracker.started("think")
        with pytest.raises(InstanceLockedError):
            await asyncio.wait_for(waiter.run_workflow(), 30)
        assert not holder_task.done()
        release.set()
        assert (await finish(holder_task)).completed

    assert tracker.runs == {"fetch": 1, "think": 1, "report": 1}
    assert_gap_free(h.rows(WORKFLOW, "i5"))


# -- the lock key ------------------------------------------------------------------------

KEY_PROBE = (
    "import json; from fsmflow.store.ownership import lock_key; "
    "print(json.dumps({'key': lock_key('public.fsmflow_transitions', 'ownership_flow', 'i6'), "
    "'hash': hash('ownership_flow\\0i6')}))"
)


async def test_lock_key_is_stable_across_processes_and_is_the_held_lock(
    h: Harness, db_env: dict[str, str]
) -> None:
    probes = []
    for seed in ("1", "2"):
        child = run_python(["-c", KEY_PROBE], {**db_env, "PYTHONHASHSEED": seed})
        assert child.returncode == 0, child.stderr
        probes.append(json.loads(child.stdout))

    key = key_of("i6")
    assert probes[0]["key"] == probes[1]["key"] == key
    assert probes[0]["hash"] != probes[1]["hash"]  # hash() would differ per process
    assert -(2**63) <= key < 2**63

    tracker = Tracker()
    release = tracker.hold_first("fetch")
    runner = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="i6")
    async with running(runner.run_workflow()) as task:
        await tracker.started("fetch")
        locks = h.fsm_locks()
        assert [k for _, k in locks] == [key]
        assert [pid for pid, _ in locks] == h.owner_pids()  # held by the owner connection
        release.set()
        await finish(task)
    assert await h.locks_left() == []


# -- release -----------------------------------------------------------------------------


async def _fails(ctx: WorkflowContext) -> Any:
    raise RuntimeError("boom")


async def _raises_fsmflow_error(ctx: WorkflowContext) -> Any:
    raise ContextSerializationError("ctx['x']", "raised by the step itself")


async def _bad_trigger(ctx: WorkflowContext) -> Any:
    return ctx, "no_such_trigger"


async def _unstorable(ctx: WorkflowContext) -> Any:
    ctx.data["when"] = object()
    return ctx, None


ENDINGS: dict[str, tuple[Callable[[WorkflowContext], Awaitable[Any]] | None, Any]] = {
    "completed": (None, None),
    "step failed": (_fails, StepFailedError),
    "fsmflow error raised in the step": (_raises_fsmflow_error, StepFailedError),
    "invalid trigger returned": (_bad_trigger, InvalidTransitionError),
    "unstorable context returned": (_unstorable, ContextSerializationError),
    "interrupted (shutdown)": (None, WorkflowInterruptedError),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_lock_is_released_however_the_run_ends(h: Harness, ending: str) -> None:
    bad_step, expected = ENDINGS[ending]
    tracker = Tracker()
    interrupted = expected is WorkflowInterruptedError
    if interrupted:
        tracker.hold_first("think")  # never released: the run is interrupted inside it
    steps = tracker.steps(DEFINITION)
    if bad_step is not None:
        steps["think"] = bad_step
    runner = h.runner(h.config(), DEFINITION, steps, instance_id="i7")

    async with running(runner.run_workflow()) as task:
        if interrupted:
            await tracker.started("think")
            runner.interrupt("shutdown")
        if expected is None:
            assert (await finish(task)).completed
        else:
            with pytest.raises(expected):
                await finish(task)

    # Released explicitly: the owner connection is still open, but holds nothing.
    assert h.owner_pids() != []
    assert await h.locks_left() == []
    # And another runner can take the instance now (not InstanceLockedError).
    again = h.runner(h.config(), DEFINITION, Tracker().steps(DEFINITION), instance_id="i7")
    if ending not in ("completed", "interrupted (shutdown)"):  # each is recorded as failed
        with pytest.raises(InstanceFailedError):
            await again.run_workflow()
    else:
        assert (await again.run_workflow()).completed
    assert_gap_free(h.rows(WORKFLOW, "i7"))


# -- the owner connection ----------------------------------------------------------------


async def test_owner_connection_settings_and_fenced_appends(h: Harness) -> None:
    h.install_append_audit()
    tracker = Tracker()
    runner = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="i8")
    assert (await runner.run_workflow()).completed

    appends = [row for row in h.audit() if row["seq"] > 0]
    assert [row["seq"] for row in appends] == [1, 2, 3]
    for row in appends:
        assert row["application_name"] == OWNER_APPLICATION_NAME
        assert (row["keepalives_idle"], row["keepalives_interval"], row["keepalives_count"]) == (
            "10",
            "5",
            "3",
        )
        assert row["idle_session_timeout"] == "0"
        assert row["idle_in_transaction_session_timeout"] == "0"
        # Written by the session that held the instance's lock at that moment.
        assert row["fsm_locks"] == [key_of("i8")]
    assert len({row["pid"] for row in appends}) == 1
    assert [row["pid"] for row in appends[:1]] == h.owner_pids()


async def test_terminated_owner_connection_mid_step_reruns_the_step_once(h: Harness) -> None:
    h.install_append_audit()
    tracker = Tracker()
    tracker.hold_first("think")  # the first execution only ends by being cancelled
    runner = h.runner(h.config(), DEFINITION, tracker.steps(DEFINITION), instance_id="i9")

    async with running(runner.run_workflow()) as task:
        await tracker.started("think")
        [(killed_pid, key)] = h.fsm_locks()
        assert key == key_of("i9")
        h.sql("SELECT pg_terminate_backend(%s)", (killed_pid,))
        result = await finish(task)

    assert result.completed
    assert tracker.runs == {"fetch": 1, "think": 2, "report": 1}
    rows = h.rows(WORKFLOW, "i9")
    assert_gap_free(rows)
    assert [r["status"] for r in rows] == ["running"] * len(STATES) + ["completed"]
    assert rows[-1]["context"]["visited"] == list(STATES)
    audit = {row["seq"]: row for row in h.audit()}
    assert audit[1]["pid"] == killed_pid
    for seq in (2, 3):  # written by the new session, which had retaken the lock
        assert audit[seq]["pid"] != killed_pid
        assert audit[seq]["fsm_locks"] == [key_of("i9")]
    assert await h.locks_left() == []


# -- what counts as a lost session; cancelling a waiting runner ----------------------------


@pytest.mark.parametrize(
    ("error", "gone"),
    [
        (asyncpg.exceptions.AdminShutdownError("57P01"), True),
        (asyncpg.exceptions.CrashShutdownError("57P02"), True),
        (asyncpg.exceptions.CannotConnectNowError("57P03"), True),
        (asyncpg.exceptions.ConnectionFailureError("08006"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), True),
        (ConnectionResetError("reset"), True),
        (asyncpg.exceptions.QueryCanceledError("57014"), False),
        (asyncpg.exceptions.OutOfMemoryError("53200"), False),
        (asyncpg.exceptions.TooManyConnectionsError("53300"), False),
        (TimeoutError(), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_only_errors_of_a_dead_session_count_as_a_lost_session(
    error: BaseException, gone: bool
) -> None:
    assert session_gone(error) is gone
    assert is_query_cancelled(error) is isinstance(error, asyncpg.QueryCanceledError)


async def test_cancelling_a_runner_waiting_for_the_lock_leaves_nothing_behind(
    h: Harness,
) -> None:
    config = h.config(owner_connections=1)
    tracker = Tracker()
    release = tracker.hold_first("think")
    holder = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="i10")
    waiter = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="i10", wait=True)

    async with running(holder.run_workflow()) as task:
        await tracker.started("think")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(waiter.run_workflow(), 0.5)
        assert config.store.owned_here(WORKFLOW, "i10")  # the holder's claim, not the waiter's
        assert [key for _, key in h.fsm_locks()] == [key_of("i10")]
        release.set()
        assert (await finish(task)).completed

    assert not config.store.owned_here(WORKFLOW, "i10")
    assert tracker.runs == {"fetch": 1, "think": 1, "report": 1}
    assert await h.locks_left() == []
