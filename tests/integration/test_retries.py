"""Step retries, timeouts and failure, in-process against the real database (issue 3 item 3).

What is checked is what got stored: one row per finished step, a terminal failed row with the
error's type, message and attempt count, and never the context a failing attempt produced.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fsmflow import (
    InstanceFailedError,
    RetryPolicy,
    StepFailedError,
    WorkflowContext,
    WorkflowStep,
)

from .reliability_support import Harness, Tracker, assert_gap_free, linear_definition

WORKFLOW = "retry_flow"
STATES = ("fetch", "think", "report")
DEFINITION = linear_definition(WORKFLOW, STATES)
FAST = {"initial_backoff": 0.01, "jitter": 0.0}


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


class Flaky:
    """A step that marks the context, then raises ``errors[n]`` on its n-th execution
    (``None``: succeed). Records the context each execution received."""

    def __init__(self, *errors: BaseException | None, sync: bool = False) -> None:
        self.errors = list(errors)
        self.received: list[dict[str, Any]] = []
        self.sync = sync

    @property
    def executions(self) -> int:
        return len(self.received)

    def _run(self, ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        self.received.append(copy.deepcopy(ctx.data))
        attempt = len(self.received)
        ctx.data[f"touched_by_attempt_{attempt}"] = True
        ctx.data.setdefault("visited", []).append("think")
        error = self.errors[attempt - 1] if attempt <= len(self.errors) else None
        if error is not None:
            raise error  # RAISE_LINE
        return ctx, None

    def step(self, retry: RetryPolicy | None = None) -> WorkflowStep:
        if self.sync:
            return WorkflowStep(name="think", execute=self._run, retry=retry)

        async def run_async(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
            return self._run(ctx)  # RUN_ASYNC_LINE

        return WorkflowStep(name="think", execute=run_async, retry=retry)


_SOURCE = Path(__file__).read_text().splitlines()
RAISE_LINE = next(i for i, line in enumerate(_SOURCE, 1) if line.endswith("# RAISE_LINE"))
RUN_ASYNC_LINE = next(i for i, line in enumerate(_SOURCE, 1) if line.endswith("# RUN_ASYNC_LINE"))


def steps_with(think: WorkflowStep) -> dict[str, Any]:
    steps: dict[str, Any] = Tracker().steps(DEFINITION)
    steps["think"] = think
    return steps


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]


# -- a step that fails, then succeeds ----------------------------------------------------

POLICY_SOURCES = ["step retry=", "definition default_retry="]


@pytest.mark.parametrize("sync", [False, True], ids=["async step", "sync step"])
@pytest.mark.parametrize("source", POLICY_SOURCES)
async def test_step_raising_twice_then_succeeding_runs_three_times_and_records_once(
    h: Harness, caplog: pytest.LogCaptureFixture, source: str, sync: bool
) -> None:
    caplog.set_level(logging.INFO, logger="fsmflow")
    policy = RetryPolicy(max_attempts=3, **FAST)
    flaky = Flaky(ConnectionError("503 from the API"), TimeoutError("slow API"), sync=sync)
    if source == "step retry=":
        definition, think = DEFINITION, flaky.step(policy)
    else:
        definition = linear_definition(WORKFLOW, STATES, default_retry=policy)
        think = flaky.step()
    runner = h.runner(h.config(), definition, steps_with(think), instance_id="r1")

    result = await runner.run_workflow()

    assert result.completed
    assert flaky.executions == 3
    rows = h.rows(WORKFLOW, "r1")
    assert_gap_free(rows)
    assert [r["source_state"] for r in rows] == [None, "fetch", "think", "report"]
    assert [r["status"] for r in rows] == ["running", "running", "running", "completed"]
    # Each attempt started from the stored context; only the successful one was kept.
    assert all("touched_by_attempt_1" not in received for received in flaky.received)
    stored = rows[2]["context"]
    assert stored["touched_by_attempt_3"] is True
    assert "touched_by_attempt_1" not in stored and "touched_by_attempt_2" not in stored
    assert stored["visited"] == ["fetch", "think"]
    warnings = retry_warnings(caplog)
    assert len(warnings) == 2
    assert "attempt 1/3" in warnings[0] and "ConnectionError" in warnings[0]


async def test_step_policy_overrides_the_definition_default(h: Harness) -> None:
    definition = linear_definition(
        WORKFLOW, STATES, default_retry=RetryPolicy(max_attempts=5, **FAST)
    )
    flaky = Flaky(ValueError("bad input"), None)
    think = flaky.step(RetryPolicy(max_attempts=1))
    runner = h.runner(h.config(), definition, steps_with(think), instance_id="r2")

    with pytest.raises(StepFailedError) as failed:
        await runner.run_workflow()

    assert flaky.executions == 1
    assert failed.value.attempts == 1


# -- which errors are retried ------------------------------------------------------------


async def test_error_not_in_retry_on_fails_at_once(h: Harness) -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=(ConnectionError,), **FAST)
    flaky = Flaky(ValueError("unparseable answer"), None)
    runner = h.runner(h.config(), DEFINITION, steps_with(flaky.step(policy)), instance_id="r3")

    with pytest.raises(StepFailedError) as failed:
        await runner.run_workflow()

    assert flaky.executions == 1
    assert (failed.value.state, failed.value.attempts, failed.value.error_type) == (
        "think",
        1,
        "ValueError",
    )
    error = h.rows(WORKFLOW, "r3")[-1]["error"]
    assert error.pop("traceback") == [
        {"file": __file__, "line": RUN_ASYNC_LINE, "function": "run_async"},
        {"file": __file__, "line": RAISE_LINE, "function": "_run"},
    ]
    assert error == {"type": "ValueError", "message": "unparseable answer", "attempts": 1}


async def test_error_in_retry_on_is_retried(h: Harness) -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=(ConnectionError,), **FAST)
    flaky = Flaky(ConnectionResetError("reset"), ConnectionRefusedError("refused"), None)
    runner = h.runner(h.config(), DEFINITION, steps_with(flaky.step(policy)), instance_id="r4")

    assert (await runner.run_workflow()).completed
    assert flaky.executions == 3


# -- timeouts ----------------------------------------------------------------------------


class Hangs:
    """An async step whose first ``hangs`` executions never finish on their own."""

    def __init__(self, hangs: int) -> None:
        self.hangs = hangs
        self.executions = 0
        self.cancelled = 0

    async def __call__(self, ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        self.executions += 1
        if self.executions <= self.hangs:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return ctx, None


async def test_timed_out_attempt_is_cancelled_and_retried(h: Harness) -> None:
    hangs = Hangs(1)
    think = WorkflowStep(
        name="think", execute=hangs, retry=RetryPolicy(max_attempts=2, timeout=0.2, **FAST)
    )
    runner = h.runner(h.config(), DEFINITION, steps_with(think), instance_id="r5")

    assert (await runner.run_workflow()).completed
    assert (hangs.executions, hangs.cancelled) == (2, 1)
    assert [r["status"] for r in h.rows(WORKFLOW, "r5")].count("failed") == 0


async def test_timeout_on_the_last_attempt_fails_the_step(h: Harness) -> None:
    hangs = Hangs(2)
    think = WorkflowStep(
        name="think", execute=hangs, retry=RetryPolicy(max_attempts=2, timeout=0.2, **FAST)
    )
    runner = h.runner(h.config(), DEFINITION, steps_with(think), instance_id="r6")

    with pytest.raises(StepFailedError) as failed:
        await runner.run_workflow()

    assert (hangs.executions, hangs.cancelled) == (2, 2)
    assert failed.value.error_type == "TimeoutError"
    last = h.rows(WORKFLOW, "r6")[-1]
    assert (last["status"], last["error"]["type"], last["error"]["attempts"]) == (
        "failed",
        "TimeoutError",
        2,
    )


async def test_sync_step_timeout_never_overlaps_its_retry(h: Harness) -> None:
    lock = threading.Lock()
    first_may_finish = threading.Event()
    state = {"calls": 0, "active": 0, "max_active": 0}

    def think(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        with lock:
            state["calls"] += 1
            call = state["calls"]
            state["active"] += 1
            state["max_active"] = max(state["max_active"], state["active"])
        try:
            if call == 1:
                first_may_finish.wait(5)  # outlives its timeout
            return ctx, None
        finally:
            with lock:
                state["active"] -= 1

    step = WorkflowStep(
        name="think", execute=think, retry=RetryPolicy(max_attempts=2, timeout=0.2, **FAST)
    )
    runner = h.runner(h.config(), DEFINITION, steps_with(step), instance_id="r7")
    try:
        assert (await runner.run_workflow()).completed
    finally:
        first_may_finish.set()
    assert state["calls"] == 2
    assert state["max_active"] == 1


# -- exhausted: failed row, InstanceFailedError, retry_failed ----------------------------


async def test_exhausted_step_records_failure_and_never_its_context(h: Harness) -> None:
    policy = RetryPolicy(max_attempts=2, **FAST)
    broken = Flaky(RuntimeError("model overloaded"), RuntimeError("model overloaded"))
    runner = h.runner(h.config(), DEFINITION, steps_with(broken.step(policy)), instance_id="r8")

    with pytest.raises(StepFailedError) as failed:
        await runner.run_workflow()

    assert (failed.value.state, failed.value.attempts, failed.value.error_type) == (
        "think",
        2,
        "RuntimeError",
    )
    rows = h.rows(WORKFLOW, "r8")
    assert_gap_free(rows)
    before, failure = rows[1], rows[2]
    assert (failure["status"], failure["source_state"], failure["dest_state"]) == (
        "failed",
        "think",
        "think",
    )
    error = failure["error"]
    assert [f["function"] for f in error.pop("traceback")] == ["run_async", "_run"]
    assert error == {"type": "RuntimeError", "message": "model overloaded", "attempts": 2}
    # The failed row carries the context as it was before the step, not what it produced.
    assert failure["context"] == before["context"] == {"visited": ["fetch"]}
    # Nor does the runner's in-memory view: still in the failed state with the old context.
    assert runner.state == "think"
    assert runner.context.data == {"visited": ["fetch"]}
    assert (runner.status, runner.seq) == ("failed", 2)
    assert await h.locks_left() == []


async def test_failed_instance_is_reported_until_retried_explicitly(h: Harness) -> None:
    broken = Flaky(RuntimeError("quota exceeded"))
    runner = h.runner(h.config(), DEFINITION, steps_with(broken.step()), instance_id="r9")
    with pytest.raises(StepFailedError):
        await runner.run_workflow()
    failed_rows = h.rows(WORKFLOW, "r9")

    again = Flaky()  # would succeed, but must not even run
    with pytest.raises(InstanceFailedError) as reported:
        await h.runner(
            h.config(), DEFINITION, steps_with(again.step()), instance_id="r9"
        ).run_workflow()
    assert again.executions == 0
    assert "retry_failed=True" in str(reported.value) and "'think'" in str(reported.value)
    assert h.rows(WORKFLOW, "r9") == failed_rows

    fixed = Flaky()
    result = await h.runner(
        h.config(), DEFINITION, steps_with(fixed.step()), instance_id="r9", retry_failed=True
    ).run_workflow()

    assert result.completed
    assert fixed.received == [{"visited": ["fetch"]}]  # resumed from the last good context
    rows = h.rows(WORKFLOW, "r9")
    assert_gap_free(rows)
    assert [r["status"] for r in rows] == ["running", "running", "failed", "running", "completed"]
    assert rows[-1]["context"]["visited"] == ["fetch", "think", "report"]


async def test_retry_failed_that_fails_again_appends_another_failed_row(h: Harness) -> None:
    for attempt in range(2):
        broken = Flaky(RuntimeError(f"still broken {attempt}"))
        runner = h.runner(
            h.config(),
            DEFINITION,
            steps_with(broken.step()),
            instance_id="r10",
            retry_failed=attempt > 0,
        )
        with pytest.raises(StepFailedError):
            await runner.run_workflow()

    rows = h.rows(WORKFLOW, "r10")
    assert_gap_free(rows)
    assert [r["status"] for r in rows] == ["running", "running", "failed", "failed"]
    assert [r["error"]["message"] for r in rows[2:]] == ["still broken 0", "still broken 1"]
    assert rows[2]["context"] == rows[3]["context"] == rows[1]["context"]
