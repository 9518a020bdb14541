"""What the runner records and says when things go wrong inside a run: failures with their
tracebacks, storable error texts, redaction, triggers fired by hand, vanished or damaged
history, resumes in the first state, step timeouts, seeds that are no dict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsmflow import (
    Condition,
    ContextSerializationError,
    HistoryCorruptError,
    HistoryDeletedError,
    InstanceFailedError,
    RetryPolicy,
    StepFailedError,
    Transition,
    TransitionLimitError,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowStep,
)

from .reliability_support import Harness, Tracker, finish, linear_definition, running

WORKFLOW = "failures_flow"
STATES = ["fetch", "think", "report"]
LINEAR = linear_definition(WORKFLOW, STATES)
SECRET_AMOUNT = "4111-1111-1111-1111"


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def _failing_steps(think: Any) -> dict[str, Any]:
    steps: dict[str, Any] = Tracker().steps(LINEAR)
    steps["think"] = think
    return steps


async def _parse_amount(ctx: WorkflowContext) -> WorkflowContext:
    ctx.data["cents"] = int(ctx.data["amount"])  # ValueError quoting the value
    return ctx


# -- the traceback of a failed step ------------------------------------------------------


async def test_a_failed_step_is_logged_once_with_its_traceback_and_stored_with_frames(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    runner = h.runner(h.config(), LINEAR, _failing_steps(_parse_amount), instance_id="t1")
    with caplog.at_level(logging.INFO, logger="fsmflow"), pytest.raises(StepFailedError) as raised:
        await runner.run_workflow(context={"amount": "12,50"})

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    logged = errors[0].getMessage()
    assert "Traceback (most recent call last)" in logged
    assert "test_runner_failures.py" in logged and "_parse_amount" in logged
    assert "_parse_amount" in str(raised.value)  # the error says where it was raised

    error = h.rows(WORKFLOW, "t1")[-1]["error"]
    assert error["type"] == "ValueError" and error["attempts"] == 1
    frames = error["traceback"]
    assert frames[-1]["function"] == "_parse_amount"
    assert frames[-1]["file"].endswith("test_runner_failures.py")
    assert isinstance(frames[-1]["line"], int)
    assert not any("fsmflow/" in f["file"] for f in frames)  # the user's frames only


async def test_retried_attempts_log_their_traceback_at_debug(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.0, jitter=0)
    step = WorkflowStep(name="think", execute=_parse_amount, retry=policy)
    runner = h.runner(h.config(), LINEAR, _failing_steps(step), instance_id="t2")
    with caplog.at_level(logging.DEBUG, logger="fsmflow"), pytest.raises(StepFailedError):
        await runner.run_workflow(context={"amount": "x"})
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("attempt 1 failed" in m and "Traceback" in m for m in debug), debug
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


async def test_redacted_errors_keep_messages_out_of_rows_logs_and_errors(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    config = h.config(redact_errors=True)
    runner = h.runner(config, LINEAR, _failing_steps(_parse_amount), instance_id="t3")
    with caplog.at_level(logging.DEBUG), pytest.raises(StepFailedError) as raised:
        await runner.run_workflow(context={"amount": SECRET_AMOUNT})

    assert SECRET_AMOUNT not in str(raised.value)
    assert "ValueError" in str(raised.value) and "_parse_amount" in str(raised.value)
    assert not [r.getMessage() for r in caplog.records if SECRET_AMOUNT in r.getMessage()]
    error = h.rows(WORKFLOW, "t3")[-1]["error"]
    assert "message" not in error and error["type"] == "ValueError"
    assert error["traceback"][-1]["function"] == "_parse_amount"


@pytest.mark.parametrize(
    "message", ["NUL \x00 inside", "lone surrogate \ud800 inside"], ids=["nul", "surrogate"]
)
async def test_an_error_message_jsonb_refuses_is_still_recorded(h: Harness, message: str) -> None:
    async def think(ctx: WorkflowContext) -> WorkflowContext:
        raise RuntimeError(message)

    runner = h.runner(h.config(), LINEAR, _failing_steps(think), instance_id="t4")
    with pytest.raises(StepFailedError):
        await runner.run_workflow()
    last = h.rows(WORKFLOW, "t4")[-1]
    assert last["status"] == "failed"
    assert last["error"]["message"].startswith(message.split()[0])
    assert "\x00" not in last["error"]["message"]


async def test_a_step_timeout_names_the_step_and_the_limit(h: Harness) -> None:
    async def think(ctx: WorkflowContext) -> WorkflowContext:
        await asyncio.sleep(30)
        return ctx

    step = WorkflowStep(name="think", execute=think, retry=RetryPolicy(timeout=0.05))
    runner = h.runner(h.config(), LINEAR, _failing_steps(step), instance_id="t5")
    with pytest.raises(StepFailedError, match=r"TimeoutError: step 'think' did not finish "):
        await runner.run_workflow()
    assert "within its timeout of 0.05s" in h.rows(WORKFLOW, "t5")[-1]["error"]["message"]


# -- triggers fired by hand --------------------------------------------------------------

REVIEW = WorkflowDefinition(
    name=WORKFLOW,
    steps=["review", "rejected", "accepted"],
    transitions=[
        Transition(
            trigger="reject",
            source="review",
            dest="rejected",
            conditions=[Condition(field="score", operator="lt", value=5)],
        ),
        Transition(trigger="accept", source="review", dest="accepted"),
        Transition(trigger="archive", source="rejected", dest=None),
        Transition(trigger="finish", source="accepted", dest=None),
    ],
)


async def test_a_trigger_fired_by_hand_judges_the_context_as_it_is_then(h: Harness) -> None:
    seen: list[bool] = []
    runner: Any = None

    async def review(ctx: WorkflowContext) -> WorkflowContext:
        ctx.data["score"] = 1  # set inside the step, after it started with {}
        seen.append(await runner.may_reject())
        await runner.reject()
        return ctx

    async def done(ctx: WorkflowContext) -> WorkflowContext:
        return ctx

    steps = {"review": review, "rejected": done, "accepted": done}
    runner = h.runner(h.config(), REVIEW, steps, instance_id="m1")
    state = await runner.run_workflow(context={"score": 9})
    assert seen == [True]
    assert state.completed and state.current_state == "rejected"


async def test_an_exception_after_a_trigger_fired_by_hand_never_rewinds_history(
    h: Harness,
) -> None:
    runs: dict[str, int] = {}
    runner: Any = None

    async def review(ctx: WorkflowContext) -> WorkflowContext:
        runs["review"] = runs.get("review", 0) + 1
        await runner.accept()  # committed: the instance is in "accepted" now
        raise RuntimeError("a bug after the trigger")

    async def finish_step(ctx: WorkflowContext) -> WorkflowContext:
        runs["accepted"] = runs.get("accepted", 0) + 1
        return ctx

    steps = {"review": review, "rejected": finish_step, "accepted": finish_step}
    runner = h.runner(h.config(), REVIEW, steps, instance_id="m2")
    with pytest.raises(StepFailedError, match="step 'review'"):
        await runner.run_workflow()
    rows = h.rows(WORKFLOW, "m2")
    assert [(r["source_state"], r["dest_state"], r["status"]) for r in rows] == [
        (None, "review", "running"),
        ("review", "accepted", "running"),
        ("accepted", "accepted", "failed"),  # failed where the history says it is
    ]
    assert rows[-1]["error"]["raised_in"] == "review"

    # A retry resumes in "accepted": the committed step of "review" never runs again.
    retried = h.runner(h.config(), REVIEW, steps, instance_id="m2", retry_failed=True)
    state = await retried.run_workflow()
    assert state.completed and runs == {"review": 1, "accepted": 1}


# -- history that vanished or has a hole -------------------------------------------------


@pytest.mark.parametrize(
    ("state", "delete"),
    [
        pytest.param("think", "DELETE FROM fsmflow_transitions", id="later-step-reset-db"),
        # seq 0 commits asynchronously; a deletion while the session lives is still a
        # deletion (only a lost session, i.e. a server crash, makes the run write its seq
        # 0 again).
        pytest.param(
            "fetch",
            "DELETE FROM fsmflow_transitions WHERE instance_id = 'v1'",
            id="first-step-by-hand",
        ),
    ],
)
async def test_a_runner_whose_history_was_deleted_during_a_step_says_so(
    h: Harness, state: str, delete: str
) -> None:
    tracker = Tracker()
    release = tracker.hold_first(state)
    runner = h.runner(h.config(), LINEAR, tracker.steps(LINEAR), instance_id="v1")
    async with running(runner.run_workflow()) as task:
        await tracker.started(state)
        h.sql(delete)  # the first: what reset-db --force would do
        release.set()
        with pytest.raises(HistoryDeletedError, match="history was deleted"):
            await finish(task)
    assert h.rows(WORKFLOW, "v1") == []  # nothing was written after the deletion


async def test_a_start_lost_with_the_server_is_written_again(h: Harness) -> None:
    # What a server crash right after a start leaves: the owner session gone and the
    # asynchronously committed seq 0 with it. The run retakes the lock, writes its seq 0
    # again (same attempt id) and goes on.
    tracker = Tracker()
    release = tracker.hold_first("fetch")
    runner = h.runner(h.config(), LINEAR, tracker.steps(LINEAR), instance_id="v2")
    async with running(runner.run_workflow()) as task:
        await tracker.started("fetch")
        [(first,)] = h.sql("SELECT attempt_id FROM fsmflow_transitions WHERE instance_id = 'v2'")
        h.sql("DELETE FROM fsmflow_transitions WHERE instance_id = 'v2'")
        [(pid, _)] = h.fsm_locks()
        h.sql("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        release.set()
        state = await finish(task)
    assert state.completed
    rows = h.rows(WORKFLOW, "v2")
    assert [r["seq"] for r in rows] == list(range(len(STATES) + 1))
    [(again,)] = h.sql("SELECT attempt_id FROM fsmflow_transitions WHERE seq = 0")
    assert again == first  # the same start, written again
    # The first step ran again if the loss was seen while it ran (its session's end is
    # noticed asynchronously); else its append met the loss and wrote seq 0 first.
    assert tracker.runs["fetch"] in (1, 2) and tracker.runs["report"] == 1


async def test_a_gap_anywhere_in_history_is_found_on_resume(h: Harness) -> None:
    five = linear_definition(WORKFLOW, ["a", "b", "c", "d", "e"])
    tracker = Tracker()
    tracker.hold_first("e")
    runner = h.runner(h.config(), five, tracker.steps(five), instance_id="g1")
    async with running(runner.run_workflow()) as task:
        await tracker.started("e")
        task.cancel()  # like a crash: rows 0..4 stay
    # Not next to the last row: seq 3 still follows seq 2 there.
    h.sql("DELETE FROM fsmflow_transitions WHERE instance_id = 'g1' AND seq = 1")
    again = h.runner(h.config(), five, tracker.steps(five), instance_id="g1")
    with pytest.raises(HistoryCorruptError, match="a seq before it is missing"):
        await again.run_workflow()
    assert tracker.runs["e"] == 1  # refused before any step ran


# -- resuming in the first state ----------------------------------------------------------


async def test_a_resume_at_seq_0_is_logged_like_any_other(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker()
    tracker.hold_first("fetch")
    runner = h.runner(h.config(), LINEAR, tracker.steps(LINEAR), instance_id="z1")
    async with running(runner.run_workflow(context={"topic": "a"})) as task:
        await tracker.started("fetch")
        task.cancel()  # crashed in its first state: only seq 0 is stored
    with caplog.at_level(logging.INFO, logger="fsmflow"):
        again = h.runner(h.config(), LINEAR, tracker.steps(LINEAR), instance_id="z1")
        state = await again.run_workflow(context={"topic": "another"})
    messages = [r.getMessage() for r in caplog.records]
    assert any("exists: resuming with its stored context" in m for m in messages), messages
    assert any("resumed in state 'fetch' after seq 0" in m for m in messages), messages
    assert state.completed and state.context.data["topic"] == "a"


# -- seeds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [[1, 2], "text", 3], ids=["list", "str", "int"])
async def test_a_seed_context_that_is_no_dict_is_a_named_error(h: Harness, seed: Any) -> None:
    runner = h.runner(h.config(), LINEAR, Tracker().steps(LINEAR), instance_id="s1")
    with pytest.raises(ContextSerializationError, match="the seed context must be a dict"):
        await runner.run_workflow(context=seed)
    assert h.rows(WORKFLOW, "s1") == []


# -- the loop limit ------------------------------------------------------------------------

LOOP = WorkflowDefinition(
    name=WORKFLOW,
    steps=["review", "revise"],
    transitions=[
        Transition(trigger="revise", source="review", dest="revise"),
        Transition(trigger="review", source="revise", dest="review"),
    ],
    max_transitions=7,
)


async def test_a_loop_that_never_ends_fails_at_max_transitions(h: Harness) -> None:
    steps: dict[str, Any] = Tracker().steps(LOOP)
    runner = h.runner(h.config(), LOOP, steps, instance_id="l1")
    with pytest.raises(TransitionLimitError, match=r"max_transitions=7") as raised:
        await runner.run_workflow()
    assert "fsmflow retry" in str(raised.value)
    rows = h.rows(WORKFLOW, "l1")
    assert [r["seq"] for r in rows] == list(range(9))  # start, 7 transitions, the failure
    assert rows[-1]["status"] == "failed"
    assert rows[-1]["error"]["type"] == "TransitionLimitError"
    with pytest.raises(InstanceFailedError):
        await h.runner(h.config(), LOOP, steps, instance_id="l1").run_workflow()


async def test_an_exception_after_a_completing_trigger_fired_by_hand_leaves_it_completed(
    h: Harness,
) -> None:
    runner: Any = None

    async def review(ctx: WorkflowContext) -> WorkflowContext:
        await runner.accept()
        return ctx

    async def accepted(ctx: WorkflowContext) -> WorkflowContext:
        await runner.finish()  # dest=None: this completes the instance
        raise RuntimeError("a bug after the completing trigger")

    steps = {"review": review, "rejected": accepted, "accepted": accepted}
    runner = h.runner(h.config(), REVIEW, steps, instance_id="m3")
    with pytest.raises(StepFailedError, match="step 'accepted'"):
        await runner.run_workflow()
    rows = h.rows(WORKFLOW, "m3")
    assert [r["status"] for r in rows] == ["running", "running", "completed"]
    # Completed is final: running it again returns the completed state, runs nothing.
    state = await h.runner(h.config(), REVIEW, steps, instance_id="m3").run_workflow()
    assert state.completed
