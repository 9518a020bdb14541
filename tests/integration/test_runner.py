"""The runner against a real PostgreSQL: steps, branching, completion, resume after a crash,
instance choice, isolation, conflicts, definition drift and the ``transitions`` model.

A "crash" is simulated in-process: a step (or a listener, or an ``after`` callback) raises a
``BaseException`` that no library code catches, or the running task is cancelled; then a
runner on fresh settings (a new "process") resumes the instance. Step executions are counted
so that "never runs a finished step again" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from typing import Any

import pytest

from fsmflow import (
    ConcurrentTransitionError,
    Condition,
    DefinitionChangedError,
    FsmflowError,
    InstanceFailedError,
    InstanceLockedError,
    InvalidTransitionError,
    NoTransitionError,
    PersistentWorkflowStateMachine,
    RunnerEvent,
    StepFailedError,
    Transition,
    UnknownStateError,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowError,
    WorkflowStep,
)

from .reliability_support import (
    SAFETY_TIMEOUT,
    Harness,
    Tracker,
    assert_gap_free,
    finish,
    linear_definition,
    running,
)

WORKFLOW = "runner_flow"
STATES = ("fetch", "think", "report")
LINEAR = linear_definition(WORKFLOW, STATES)


class Crash(BaseException):
    """Stands for the process dying: nothing in fsmflow catches it."""


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def assert_chain(rows: list[dict[str, Any]]) -> None:
    """Gap-free, and each row leaves the state the previous row entered: no fork."""
    assert_gap_free(rows)
    for before, row in pairwise(rows):
        assert row["source_state"] == before["dest_state"], (before, row)
    assert all(r["status"] == "running" for r in rows[:-1])


def transitions_of(rows: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, str]]:
    return [(r["trigger"], r["source_state"], r["dest_state"], r["status"]) for r in rows]


class Recorder:
    """Steps that count executions and remember the context each one received."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.received: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)

    def step(
        self,
        state: str,
        trigger: str | None = None,
        update: dict[str, Any] | None = None,
        *,
        sync: bool = False,
    ) -> Callable[[WorkflowContext], Any]:
        def body(ctx: WorkflowContext) -> tuple[WorkflowContext, str | None]:
            self.runs[state] += 1
            self.received[state].append(ctx.model_copy(deep=True).data)
            ctx.data.setdefault("visited", []).append(state)
            ctx.data.update(update or {})
            return ctx, trigger

        if sync:
            return body

        async def execute(ctx: WorkflowContext) -> tuple[WorkflowContext, str | None]:
            return body(ctx)

        return execute


# -- steps: sync and async -------------------------------------------------------------------


class AsyncCallable:
    """An object with ``async __call__`` (runs on the event loop)."""

    def __init__(self, threads: dict[str, str]) -> None:
        self.threads = threads

    async def __call__(self, ctx: WorkflowContext) -> WorkflowContext:
        self.threads["e"] = threading.current_thread().name
        ctx.data["e"] = True
        return ctx


async def test_sync_and_async_steps_of_every_shape(h: Harness) -> None:
    threads: dict[str, str] = {}

    async def a(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        threads["a"] = threading.current_thread().name
        await asyncio.sleep(0)
        ctx.data["a"] = 1
        return ctx, None

    def b(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        threads["b"] = threading.current_thread().name
        ctx.data["b"] = ctx.data["a"] + 1
        return ctx, "b_done"

    def c(ctx: WorkflowContext) -> WorkflowContext:  # the context alone
        threads["c"] = threading.current_thread().name
        ctx.data["c"] = ctx.data["b"] + 1
        return ctx

    def d(tag: str, ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        threads["d"] = threading.current_thread().name
        ctx.data["d"] = tag
        return ctx, None

    definition = linear_definition(WORKFLOW, ("a", "b", "c", "d", "e"))
    steps = {
        "a": a,
        "b": WorkflowStep(name="b", execute=b),
        "c": c,
        "d": functools.partial(d, "partial"),
        "e": AsyncCallable(threads),
    }
    state = await h.runner(h.config(), definition, steps, instance_id="i1").run_workflow()

    assert state.completed and state.status == "completed"
    assert (state.current_state, state.instance_id, state.workflow_name) == ("e", "i1", WORKFLOW)
    assert state.context.data == {"a": 1, "b": 2, "c": 3, "d": "partial", "e": True}
    loop_thread = threading.current_thread().name
    assert threads["a"] == threads["e"] == loop_thread  # async: on the event loop
    for sync_step in ("b", "c", "d"):  # sync: on a worker thread
        assert threads[sync_step] != loop_thread
    rows = h.rows(WORKFLOW, "i1")
    assert_chain(rows)
    assert [r["context"] for r in rows][-1] == state.context.data
    assert [r["context"].get("c") for r in rows] == [None, None, None, 3, 3, 3]


@pytest.mark.parametrize(
    "returned",
    [{"not": "a context"}, None, ("ctx", None), (WorkflowContext(), 5), 42],
    ids=["dict", "None", "tuple of str", "int trigger", "int"],
)
async def test_step_returning_something_else_is_an_error(h: Harness, returned: Any) -> None:
    steps: dict[str, Any] = Tracker().steps(LINEAR)

    async def think(ctx: WorkflowContext) -> Any:
        return returned

    steps["think"] = think
    with pytest.raises(WorkflowError, match="step 'think' returned"):
        await h.runner(h.config(), LINEAR, steps, instance_id="i1").run_workflow()
    # A bug in the step: recorded as failed (in its state, with the context it was
    # given), so that no rerun repeats the step until someone retries it.
    rows = h.rows(WORKFLOW, "i1")
    assert [(r["seq"], r["status"], r["source_state"]) for r in rows] == [
        (0, "running", None),
        (1, "running", "fetch"),
        (2, "failed", "think"),
    ]
    assert rows[2]["error"]["type"] == "WorkflowError"
    assert rows[2]["context"] == rows[1]["context"]


# -- branching and loops ---------------------------------------------------------------------


async def slow_vip(value: Any) -> bool:
    await asyncio.sleep(0)
    return value == "vip"


TRIAGE = WorkflowDefinition(
    name=WORKFLOW,
    steps=["triage", "escalate", "vip", "normal", "close"],
    transitions=[
        Transition(
            trigger="route",
            source="triage",
            dest="escalate",
            conditions=[
                Condition(field="ticket.priority", operator="eq", value="high"),
                Condition(field="ticket.score", operator="ge", value=0.5),
            ],
        ),
        Transition(
            trigger="route",
            source="triage",
            dest="vip",
            conditions=[
                Condition(field="ticket.tier", operator="custom", custom_function=slow_vip)
            ],
        ),
        Transition(trigger="route", source="triage", dest="normal"),  # the fallback
        Transition(trigger="finish", source=["escalate", "vip", "normal"], dest="close"),
    ],
)


@pytest.mark.parametrize(
    ("ticket", "branch"),
    [
        ({"priority": "high", "score": 0.9, "tier": "vip"}, "escalate"),  # first match wins
        ({"priority": "high", "score": 0.1, "tier": "vip"}, "vip"),  # all conditions must hold
        ({"priority": "low", "tier": "vip"}, "vip"),  # async custom condition
        ({"priority": "low", "tier": "basic"}, "normal"),
        ({}, "normal"),  # missing fields: conditions false
    ],
)
async def test_first_transition_whose_conditions_hold_is_taken(
    h: Harness, ticket: dict[str, Any], branch: str
) -> None:
    recorder = Recorder()
    steps = {s: recorder.step(s) for s in TRIAGE.steps}
    runner = h.runner(h.config(), TRIAGE, steps, instance_id="t1")
    state = await runner.run_workflow(context={"ticket": ticket})
    assert state.completed and state.current_state == "close"
    assert state.context.data["visited"] == ["triage", branch, "close"]
    assert transitions_of(h.rows(WORKFLOW, "t1"))[1:] == [
        ("route", "triage", branch, "running"),
        ("finish", branch, "close", "running"),
        (None, "close", None, "completed"),
    ]


async def test_the_conditions_see_the_context_the_step_returned(h: Harness) -> None:
    recorder = Recorder()
    steps = {s: recorder.step(s) for s in TRIAGE.steps}
    steps["triage"] = recorder.step("triage", update={"ticket": {"priority": "high", "score": 1}})
    runner = h.runner(h.config(), TRIAGE, steps, instance_id="t1")
    state = await runner.run_workflow(context={"ticket": {"priority": "low"}})
    assert state.context.data["visited"] == ["triage", "escalate", "close"]


REVIEW = WorkflowDefinition(
    name=WORKFLOW,
    steps=["draft", "review", "publish", "reject"],
    transitions=[
        Transition(trigger="submit", source="draft", dest="review"),
        # Loop back to an earlier state until approved, at most three rounds.
        Transition(
            trigger="revise",
            source="review",
            dest="draft",
            conditions=[Condition(field="rounds", operator="lt", value=3)],
        ),
        Transition(trigger="approve", source="review", dest="publish"),
        Transition(trigger="decline", source="review", dest="reject"),
        Transition(trigger="done", source=["publish", "reject"], dest=None),
    ],
)


async def test_a_loop_runs_until_its_condition_stops_holding(h: Harness) -> None:
    recorder = Recorder()
    rounds = Counter[str]()

    async def review(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        recorder.runs["review"] += 1
        rounds["n"] += 1
        ctx.data["rounds"] = rounds["n"]
        return ctx, None  # "revise" while rounds < 3, then the first other match: approve

    steps = {s: recorder.step(s) for s in REVIEW.steps}
    steps["review"] = review
    state = await h.runner(h.config(), REVIEW, steps, instance_id="r1").run_workflow()
    assert state.completed and state.current_state == "publish"
    assert recorder.runs == {"draft": 3, "review": 3, "publish": 1}
    rows = h.rows(WORKFLOW, "r1")
    assert_chain(rows)
    assert [r["trigger"] for r in rows[1:]] == [
        "submit", "revise", "submit", "revise", "submit", "approve", "done",
    ]  # fmt: skip
    assert rows[-1]["status"] == "completed" and rows[-1]["dest_state"] is None


async def test_a_returned_trigger_picks_the_transition(h: Harness) -> None:
    recorder = Recorder()
    steps = {s: recorder.step(s) for s in REVIEW.steps}
    steps["review"] = recorder.step("review", "decline", {"rounds": 0})
    state = await h.runner(h.config(), REVIEW, steps, instance_id="r1").run_workflow()
    assert state.context.data["visited"] == ["draft", "review", "reject"]
    assert transitions_of(h.rows(WORKFLOW, "r1"))[-2:] == [
        ("decline", "review", "reject", "running"),
        ("done", "reject", None, "completed"),
    ]


async def test_a_returned_trigger_whose_conditions_fail_is_no_transition(h: Harness) -> None:
    recorder = Recorder()
    steps = {s: recorder.step(s) for s in REVIEW.steps}
    steps["review"] = recorder.step("review", "revise", {"rounds": 7})
    with pytest.raises(NoTransitionError) as raised:
        await h.runner(h.config(), REVIEW, steps, instance_id="r1").run_workflow()
    assert raised.value.state == "review"
    assert raised.value.failed == ["revise: review -> draft: rounds lt 3"]
    rows = h.rows(WORKFLOW, "r1")
    assert [r["status"] for r in rows] == ["running", "running", "failed"]
    assert rows[-1]["error"]["type"] == "NoTransitionError"


# -- choosing the next state: errors -------------------------------------------------------------


async def test_invalid_trigger_names_state_and_valid_triggers_and_fails_the_instance(
    h: Harness,
) -> None:
    recorder = Recorder()
    steps = {s: recorder.step(s) for s in REVIEW.steps}
    steps["review"] = recorder.step("review", "publish_now")
    with pytest.raises(InvalidTransitionError) as raised:
        await h.runner(h.config(), REVIEW, steps, instance_id="r1").run_workflow()
    error = raised.value
    assert (error.state, error.trigger) == ("review", "publish_now")
    assert error.valid_triggers == ["approve", "decline", "revise"]
    for text in ("'review'", "'publish_now'", "'approve'", "'decline'", "'revise'", "'r1'"):
        assert text in str(error)
    rows = h.rows(WORKFLOW, "r1")
    assert [r["status"] for r in rows] == ["running", "running", "failed"]
    assert (rows[-1]["source_state"], rows[-1]["error"]["type"]) == (
        "review",
        "InvalidTransitionError",
    )

    # Failed in "review": a plain rerun refuses; a retry with the fixed step resumes there.
    steps["review"] = recorder.step("review", "approve")
    with pytest.raises(InstanceFailedError):
        await h.runner(h.config(), REVIEW, steps, instance_id="r1").run_workflow()
    runner = h.runner(h.config(), REVIEW, steps, instance_id="r1", retry_failed=True)
    state = await runner.run_workflow()
    assert state.completed and recorder.runs == {"draft": 1, "review": 2, "publish": 1}


async def test_invalid_trigger_from_a_final_state(h: Harness) -> None:
    steps: dict[str, Any] = Tracker().steps(LINEAR)
    steps["report"] = Recorder().step("report", "again")
    with pytest.raises(InvalidTransitionError, match=r"none \(final state\)") as raised:
        await h.runner(h.config(), LINEAR, steps, instance_id="i1").run_workflow()
    assert raised.value.valid_triggers == []
    assert h.rows(WORKFLOW, "i1")[-1]["status"] == "failed"


async def test_no_matching_transition_names_the_conditions_and_fails_the_instance(
    h: Harness,
) -> None:
    definition = WorkflowDefinition(
        name=WORKFLOW,
        steps=["check", "pay", "review"],
        transitions=[
            Transition(
                trigger="pay",
                source="check",
                dest="pay",
                conditions=[
                    Condition(field="order.total", operator="gt", value=0),
                    Condition(field="order.currency", operator="in", value=["EUR", "USD"]),
                ],
            ),
            Transition(
                trigger="review",
                source="check",
                dest="review",
                conditions=[Condition(field="order.flagged", operator="eq", value=True)],
            ),
        ],
    )
    recorder = Recorder()
    steps = {s: recorder.step(s) for s in definition.steps}
    runner = h.runner(h.config(), definition, steps, instance_id="o1")
    with pytest.raises(NoTransitionError) as raised:
        await runner.run_workflow(context={"order": {"total": 5, "currency": "GBP"}})
    error = raised.value
    assert error.state == "check"
    assert error.failed == [
        "pay: check -> pay: order.currency in ['EUR', 'USD']",
        "review: check -> review: order.flagged eq True",
    ]
    for line in error.failed:
        assert line in str(error)
    assert "GBP" not in str(error)  # never a context value
    rows = h.rows(WORKFLOW, "o1")
    assert [r["status"] for r in rows] == ["running", "failed"]  # failed, never completed
    assert "GBP" not in str(rows[-1]["error"])

    # Failed in "check": retried once its step produces a matching context, it continues.
    steps["check"] = recorder.step("check", update={"order": {"total": 5, "currency": "EUR"}})
    runner = h.runner(h.config(), definition, steps, instance_id="o1", retry_failed=True)
    state = await runner.run_workflow()
    assert state.completed and recorder.runs == {"check": 2, "pay": 1}


# -- completion ------------------------------------------------------------------------------


async def test_dest_none_completes_and_after_runs_once(h: Harness) -> None:
    afters: list[tuple[str, dict[str, Any]]] = []

    def after_sync(ctx: WorkflowContext) -> None:
        afters.append(("sync", dict(ctx.data)))

    async def after_async(ctx: WorkflowContext) -> None:
        await asyncio.sleep(0)
        afters.append(("async", dict(ctx.data)))

    definition = WorkflowDefinition(
        name=WORKFLOW,
        steps=["a", "b"],
        transitions=[
            Transition(trigger="go", source="a", dest="b", after=after_sync),
            Transition(trigger="done", source="b", dest=None, after=after_async),
            Transition(trigger="never", source="b", dest="a"),
        ],
    )
    recorder = Recorder()
    steps = {"a": recorder.step("a"), "b": recorder.step("b")}
    state = await h.runner(h.config(), definition, steps, instance_id="i1").run_workflow()
    assert state.completed and state.current_state == "b" and state.seq == 2
    assert transitions_of(h.rows(WORKFLOW, "i1")) == [
        (None, None, "a", "running"),
        ("go", "a", "b", "running"),
        ("done", "b", None, "completed"),
    ]
    assert afters == [("sync", {"visited": ["a"]}), ("async", {"visited": ["a", "b"]})]


async def test_a_state_without_outgoing_transitions_completes(h: Harness) -> None:
    tracker = Tracker()
    state = await h.runner(
        h.config(), LINEAR, tracker.steps(LINEAR), instance_id="i1"
    ).run_workflow()
    assert state.completed and state.current_state == "report" and state.seq == 3
    assert transitions_of(h.rows(WORKFLOW, "i1"))[-1] == (None, "report", None, "completed")
    assert state.context.data == {"visited": list(STATES)}


async def test_a_completed_instance_returns_its_final_state_and_runs_nothing(
    h: Harness,
) -> None:
    first = await h.runner(
        h.config(), LINEAR, Tracker().steps(LINEAR), instance_id="i1"
    ).run_workflow(context={"n": 1})
    rows = h.rows(WORKFLOW, "i1")

    tracker = Tracker()
    for context in (None, {"n": 2}):
        again = h.runner(h.config(), LINEAR, tracker.steps(LINEAR), instance_id="i1")
        state = await again.run_workflow(context=context)
        assert state == first
        assert state.context.data == {"n": 1, "visited": list(STATES)}
    assert tracker.runs == {}
    assert h.rows(WORKFLOW, "i1") == rows
    assert await again.run_workflow() == first  # the same runner object, run again


# -- resume after a crash --------------------------------------------------------------------

# Where the "process dies" while the instance is in "think", and whether think runs again.
CRASH_POINTS = {
    "async step raises": True,
    "sync step raises": True,
    "task cancelled mid-step": True,
    "step returned, row not written": True,
    "row written, before the next step": False,
    "in the after callback": False,
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
async def test_resume_runs_only_the_unfinished_step_with_the_last_stored_context(
    h: Harness, point: str
) -> None:
    reruns = CRASH_POINTS[point]
    recorder = Recorder()
    afters = Counter[str]()
    entered = asyncio.Event()
    crash_armed = True

    def crash_once() -> None:
        nonlocal crash_armed
        if crash_armed:
            crash_armed = False
            raise Crash(point)

    def think_sync(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        result = recorder.step("think", sync=True)(ctx)
        crash_once()
        return result

    async def think_async(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        result = await recorder.step("think")(ctx)
        nonlocal crash_armed
        if point == "task cancelled mid-step" and crash_armed:
            crash_armed = False
            entered.set()
            await asyncio.Event().wait()  # cancelled here
        if point == "async step raises":
            crash_once()
        return result

    def listener(event: RunnerEvent) -> None:
        if event.state != "think":
            return
        if (point, event.point) in {
            ("step returned, row not written", "step_finished"),
            ("row written, before the next step", "transition_recorded"),
        }:
            crash_once()

    def after(ctx: WorkflowContext) -> None:
        afters[ctx.data["visited"][-1]] += 1
        if point == "in the after callback" and ctx.data["visited"][-1] == "think":
            crash_once()

    definition = WorkflowDefinition(
        name=WORKFLOW,
        steps=list(STATES),
        transitions=[
            Transition(trigger="fetched", source="fetch", dest="think", after=after),
            Transition(trigger="thought", source="think", dest="report", after=after),
        ],
    )
    steps = {s: recorder.step(s) for s in STATES}
    steps["think"] = think_sync if point == "sync step raises" else think_async
    first = h.runner(h.config(), definition, steps, instance_id="c1", listeners=[listener])
    if point == "task cancelled mid-step":
        async with running(first.run_workflow(context={"seed": 1})) as task:
            await asyncio.wait_for(entered.wait(), SAFETY_TIMEOUT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    else:
        with pytest.raises(Crash):
            await first.run_workflow(context={"seed": 1})
    stored = h.rows(WORKFLOW, "c1")
    assert [r["dest_state"] for r in stored] == (
        ["fetch", "think"] if reruns else ["fetch", "think", "report"]
    )

    # A new process: fresh settings, fresh runner, same instance.
    resumed = h.runner(h.config(), definition, steps, instance_id="c1")
    state = await resumed.run_workflow(context={"ignored": True})
    assert state.completed
    assert recorder.runs == {"fetch": 1, "think": 2 if reruns else 1, "report": 1}
    # Each after callback ran once; a crash between a row and its callback skips the
    # callback (README: after the row was committed nothing runs again).
    skipped = point == "row written, before the next step"
    assert afters == ({"fetch": 1} if skipped else {"fetch": 1, "think": 1})
    if reruns:  # the second execution got exactly what fetch left, not what the first made
        assert recorder.received["think"] == [{"seed": 1, "visited": ["fetch"]}] * 2
    assert state.context.data == {"seed": 1, "visited": list(STATES)}
    rows = h.rows(WORKFLOW, "c1")
    assert_chain(rows)
    assert transitions_of(rows) == [
        (None, None, "fetch", "running"),
        ("fetched", "fetch", "think", "running"),
        ("thought", "think", "report", "running"),
        (None, "report", None, "completed"),
    ]


async def test_resume_after_repeated_crashes_never_reruns_finished_steps(h: Harness) -> None:
    states = tuple(f"s{i}" for i in range(6))
    definition = linear_definition(WORKFLOW, states)
    recorder = Recorder()
    crash_in = {"s1", "s3", "s4"}

    def make(state: str) -> Callable[[WorkflowContext], Any]:
        async def execute(ctx: WorkflowContext) -> Any:
            result = await recorder.step(state)(ctx)
            if state in crash_in:
                crash_in.discard(state)
                raise Crash(state)
            return result

        return execute

    steps = {s: make(s) for s in states}
    for _ in range(3):
        with pytest.raises(Crash):
            await h.runner(h.config(), definition, steps, instance_id="i1").run_workflow()
    state = await h.runner(h.config(), definition, steps, instance_id="i1").run_workflow()
    assert state.completed
    assert recorder.runs == {"s0": 1, "s1": 2, "s2": 1, "s3": 2, "s4": 2, "s5": 1}
    assert_chain(h.rows(WORKFLOW, "i1"))


# -- which instance ------------------------------------------------------------------------


async def crash_in(
    h: Harness,
    instance_id: str | None,
    state: str = "think",
    definition: WorkflowDefinition = LINEAR,
    **context: Any,
) -> str:
    """Run an instance until ``state``'s step "crashes" (left unfinished there); its id."""
    steps: dict[str, Any] = Tracker().steps(definition)

    async def crash(ctx: WorkflowContext) -> Any:
        raise Crash(state)

    steps[state] = crash
    runner = h.runner(h.config(), definition, steps, instance_id=instance_id)
    with pytest.raises(Crash):
        await runner.run_workflow(context=context)
    assert runner.instance_id is not None
    return runner.instance_id


async def test_without_instance_id_a_new_instance_starts(h: Harness) -> None:
    tracker = Tracker()
    runner = h.runner(h.config(), LINEAR, tracker.steps(LINEAR))
    assert runner.instance_id is None
    state = await runner.run_workflow(context={"k": "v"})
    assert state.completed and runner.instance_id == state.instance_id
    assert len(state.instance_id) >= 16
    assert h.rows(WORKFLOW, state.instance_id)[0]["context"] == {"k": "v"}
    other = await h.runner(h.config(), LINEAR, tracker.steps(LINEAR)).run_workflow()
    assert other.instance_id != state.instance_id  # a completed one is not resumed


async def test_without_instance_id_the_latest_started_unfinished_instance_resumes(
    h: Harness,
) -> None:
    oldest = await crash_in(h, "zz_oldest", n=1)
    newest = await crash_in(h, "aa_newest", n=2)
    await h.runner(
        h.config(), LINEAR, Tracker().steps(LINEAR), instance_id="mm_done"
    ).run_workflow()
    # Another workflow's unfinished instance, started last, is not a candidate.
    await crash_in(h, "other", definition=linear_definition("other_flow", STATES))

    resumed = []
    for _ in range(2):
        tracker = Tracker()
        runner = h.runner(h.config(), LINEAR, tracker.steps(LINEAR))
        state = await runner.run_workflow(context={"n": 99})
        assert tracker.runs == {"think": 1, "report": 1}
        resumed.append((state.instance_id, state.context.data["n"]))
    assert resumed == [(newest, 2), (oldest, 1)]

    fresh = await h.runner(h.config(), LINEAR, Tracker().steps(LINEAR)).run_workflow()
    assert fresh.instance_id not in {oldest, newest, "mm_done", "other"}
    assert [r["status"] for r in h.rows("other_flow", "other")] == ["running", "running"]


async def test_start_time_not_recent_activity_picks_the_instance(h: Harness) -> None:
    first = await crash_in(h, "first")
    second = await crash_in(h, "second")
    # "first" moves on (think -> report) after "second" started: still the older start.
    await crash_in(h, first, "report")
    assert [r["dest_state"] for r in h.rows(WORKFLOW, first)] == ["fetch", "think", "report"]
    state = await h.runner(h.config(), LINEAR, Tracker().steps(LINEAR)).run_workflow()
    assert state.instance_id == second


async def test_context_seeds_a_new_instance_only(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Tracker()
    seeded = await h.runner(
        h.config(), LINEAR, tracker.steps(LINEAR), instance_id="d"
    ).run_workflow(context={"order": {"id": 7}})
    assert seeded.context.data == {"order": {"id": 7}, "visited": list(STATES)}
    as_model = await h.runner(
        h.config(), LINEAR, tracker.steps(LINEAR), instance_id="m"
    ).run_workflow(context=WorkflowContext(data={"x": [1]}))
    assert h.rows(WORKFLOW, "m")[0]["context"] == {"x": [1]}
    assert as_model.context.data["x"] == [1]
    empty = await h.runner(
        h.config(), LINEAR, tracker.steps(LINEAR), instance_id="e"
    ).run_workflow()
    assert h.rows(WORKFLOW, "e")[0]["context"] == {}
    assert empty.context.data == {"visited": list(STATES)}

    await crash_in(h, "existing", original=True)
    caplog.set_level(logging.INFO, logger="fsmflow")
    state = await h.runner(
        h.config(), LINEAR, tracker.steps(LINEAR), instance_id="existing"
    ).run_workflow(context={"original": False, "secret": "Ctx-Value-Never-Logged"})
    assert state.context.data == {"original": True, "visited": list(STATES)}
    assert any(
        "the given context seeds new instances only" in r.getMessage() for r in caplog.records
    )
    assert not any("Ctx-Value-Never-Logged" in r.getMessage() for r in caplog.records)


# -- isolation -------------------------------------------------------------------------------


async def test_instances_of_one_workflow_run_side_by_side_in_isolation(h: Harness) -> None:
    config = h.config()
    seen: defaultdict[str, list[Any]] = defaultdict(list)

    def make(state: str) -> Callable[[WorkflowContext], Any]:
        async def execute(ctx: WorkflowContext) -> WorkflowContext:
            await asyncio.sleep(0)
            seen[ctx.data["who"]].append(state)
            ctx.data.setdefault("trail", []).append(f"{ctx.data['who']}:{state}")
            return ctx

        return execute

    steps = {s: make(s) for s in STATES}
    runners = [h.runner(config, LINEAR, steps, instance_id=f"i{n}") for n in range(5)]
    results = await asyncio.gather(
        *(r.run_workflow(context={"who": f"i{n}"}) for n, r in enumerate(runners))
    )
    for n, state in enumerate(results):
        who = f"i{n}"
        assert state.instance_id == who and state.completed
        assert state.context.data["trail"] == [f"{who}:{s}" for s in STATES]
        rows = h.rows(WORKFLOW, who)
        assert_chain(rows)
        assert all(r["context"]["who"] == who for r in rows)
        assert seen[who] == list(STATES)
    assert h.count() == 5 * 4


async def test_two_workflows_in_one_table_never_see_each_other(h: Harness) -> None:
    alpha = linear_definition("alpha", ("one", "two"))
    beta = WorkflowDefinition(
        name="beta",
        steps=["one", "other"],
        transitions=[Transition(trigger="go", source="one", dest="other")],
    )
    tracker = Tracker()
    # Same instance id, same first state name, in both workflows.
    await crash_in(h, "shared")  # runner_flow too, unfinished
    a = await h.runner(h.config(), alpha, tracker.steps(alpha), instance_id="shared").run_workflow(
        context={"w": "alpha"}
    )
    b = await h.runner(h.config(), beta, tracker.steps(beta), instance_id="shared").run_workflow(
        context={"w": "beta"}
    )
    assert a.context.data == {"w": "alpha", "visited": ["one", "two"]}
    assert b.context.data == {"w": "beta", "visited": ["one", "other"]}
    assert [r["dest_state"] for r in h.rows("alpha", "shared")] == ["one", "two", None]
    assert [r["dest_state"] for r in h.rows("beta", "shared")] == ["one", "other", None]
    assert [r["dest_state"] for r in h.rows(WORKFLOW, "shared")] == ["fetch", "think"]
    # The unfinished runner_flow instance is still there to resume, untouched.
    resumed = await h.runner(h.config(), LINEAR, tracker.steps(LINEAR)).run_workflow()
    assert resumed.instance_id == "shared" and resumed.completed


# -- two writers -----------------------------------------------------------------------------


async def test_runner_loses_to_another_writer_and_writes_nothing(h: Harness) -> None:
    tracker = Tracker()
    release = tracker.hold_first("think")
    runner = h.runner(h.config(), LINEAR, tracker.steps(LINEAR), instance_id="w1")
    intruder = h.config().store
    async with running(runner.run_workflow()) as task:
        await tracker.started("think")
        # Someone else (not honouring the lock) records think's transition first.
        await intruder.append(
            WORKFLOW, "w1", 2, trigger="think_done", source="think", dest="report",
            context_json='{"by": "intruder"}', status="running", fingerprint="x",
            attempt_id="0" * 32, duration_ms=None,
        )  # fmt: skip
        release.set()
        with pytest.raises(ConcurrentTransitionError) as raised:
            await finish(task)
    assert raised.value.seq == 2 and raised.value.instance_id == "w1"
    rows = h.rows(WORKFLOW, "w1")
    assert_chain(rows)
    assert rows[-1]["context"] == {"by": "intruder"}
    assert tracker.runs == {"fetch": 1, "think": 1}


async def test_runner_that_lost_its_session_loses_to_the_runner_that_took_over(
    h: Harness,
) -> None:
    entered, gate = threading.Event(), threading.Event()
    first_runs, second_runs = Recorder(), Recorder()

    def blocked_think(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        entered.set()
        gate.wait(SAFETY_TIMEOUT)  # a sync step: it cannot be cancelled, only abandoned
        return first_runs.step("think", sync=True)(ctx)

    first_steps = {s: first_runs.step(s) for s in STATES}
    first_steps["think"] = blocked_think
    second_steps = {s: second_runs.step(s) for s in STATES}
    first = h.runner(h.config(), LINEAR, first_steps, instance_id="w2")
    second = h.runner(
        h.config(), LINEAR, second_steps, instance_id="w2", wait=True, lock_timeout=SAFETY_TIMEOUT
    )
    try:
        async with running(first.run_workflow()) as task:
            assert await asyncio.to_thread(entered.wait, SAFETY_TIMEOUT)
            [(pid, _)] = h.fsm_locks()
            h.sql("SELECT pg_terminate_backend(%s)", (pid,))  # the first runner's session dies
            state = await asyncio.wait_for(second.run_workflow(), SAFETY_TIMEOUT)
            assert state.completed
            gate.set()
            with pytest.raises(ConcurrentTransitionError):
                await finish(task)
    finally:
        gate.set()
    assert second_runs.runs == {"think": 1, "report": 1}
    assert first_runs.runs == {"fetch": 1, "think": 1}
    rows = h.rows(WORKFLOW, "w2")
    assert_chain(rows)
    assert rows[-1]["context"]["visited"] == list(STATES)
    assert await h.locks_left() == []


async def test_one_table_spelled_two_ways_is_still_one_lock(h: Harness) -> None:
    tracker = Tracker()
    release = tracker.hold_first("think")
    first = h.runner(h.config(), LINEAR, tracker.steps(LINEAR), instance_id="w3")
    qualified = h.config(table="public.fsmflow_transitions")  # the same table
    second = h.runner(qualified, LINEAR, tracker.steps(LINEAR), instance_id="w3")
    async with running(first.run_workflow()) as task:
        await tracker.started("think")
        try:
            with pytest.raises(InstanceLockedError):
                await second.run_workflow()
        finally:
            release.set()
        assert (await finish(task)).completed
    assert tracker.runs == {"fetch": 1, "think": 1, "report": 1}
    assert_chain(h.rows(WORKFLOW, "w3"))


# -- definition drift --------------------------------------------------------------------------


async def test_stored_state_missing_from_the_definition_is_unknown_state(h: Harness) -> None:
    await crash_in(h, "u1", n=1)
    rows = h.rows(WORKFLOW, "u1")
    without_think = linear_definition(WORKFLOW, ("fetch", "report"))
    for allow in (False, True):
        tracker = Tracker()
        runner = h.runner(
            h.config(), without_think, tracker.steps(without_think), instance_id="u1",
            allow_definition_change=allow,
        )  # fmt: skip
        with pytest.raises(UnknownStateError) as raised:
            await runner.run_workflow()
        assert (raised.value.state, raised.value.seq) == ("think", 1)
        assert "'think'" in str(raised.value) and "seq 1" in str(raised.value)
        assert tracker.runs == {}  # never restarted from the initial state
    assert h.rows(WORKFLOW, "u1") == rows


async def test_changed_definition_is_refused_unless_allowed(h: Harness) -> None:
    await crash_in(h, "d1", n=1)
    rows = h.rows(WORKFLOW, "d1")
    changed = WorkflowDefinition(
        name=WORKFLOW,
        steps=["fetch", "think", "review", "report"],
        transitions=[
            Transition(trigger="fetch_done", source="fetch", dest="think"),
            Transition(trigger="think_done", source="think", dest="review"),
            Transition(trigger="approve", source="review", dest="report"),
        ],
    )
    tracker = Tracker()
    with pytest.raises(DefinitionChangedError) as raised:
        await h.runner(h.config(), changed, tracker.steps(changed), instance_id="d1").run_workflow()
    assert sorted(raised.value.changes) == sorted(
        [
            "state 'review' added",
            "transition removed: think_done: think -> report",
            "transition added: think_done: think -> review",
            "transition added: approve: review -> report",
        ]
    )
    assert "allow_definition_change=True" in str(raised.value)
    assert tracker.runs == {} and h.rows(WORKFLOW, "d1") == rows

    state = await h.runner(
        h.config(), changed, tracker.steps(changed), instance_id="d1", allow_definition_change=True
    ).run_workflow()
    assert state.completed
    assert tracker.runs == {"think": 1, "review": 1, "report": 1}
    new_rows = h.rows(WORKFLOW, "d1")
    assert_chain(new_rows)
    assert {r["fingerprint"] for r in new_rows[len(rows) :]} == {changed.fingerprint}


async def test_a_condition_change_is_a_definition_change(h: Harness) -> None:
    await crash_in(h, "d2")
    guarded = WorkflowDefinition(
        name=WORKFLOW,
        steps=list(STATES),
        transitions=[
            Transition(trigger="fetch_done", source="fetch", dest="think"),
            Transition(
                trigger="think_done",
                source="think",
                dest="report",
                conditions=[Condition(field="ok", operator="is_not_none")],
            ),
        ],
    )
    with pytest.raises(DefinitionChangedError) as raised:
        await h.runner(
            h.config(), guarded, Tracker().steps(guarded), instance_id="d2"
        ).run_workflow()
    assert "transition added: think_done: think -> report if ok is_not_none" in raised.value.changes


# -- the runner is a transitions model -----------------------------------------------------------

GATED = WorkflowDefinition(
    name=WORKFLOW,
    steps=["a", "b", "c"],
    transitions=[
        Transition(
            trigger="go",
            source="a",
            dest="b",
            conditions=[Condition(field="ok", operator="eq", value=True)],
        ),
        Transition(trigger="fin", source="b", dest="c"),
    ],
)


async def test_the_runner_is_a_transitions_model_while_it_runs(h: Harness) -> None:
    runner: Any = None
    seen: dict[str, Any] = {}

    async def a(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        seen["state"] = runner.state
        seen["is_a"], seen["is_b"] = runner.is_a(), runner.is_b()
        seen["triggers"] = callable(runner.go) and callable(runner.fin)
        seen["may_go (stored context)"] = await runner.may_go()
        seen["may_fin"] = await runner.may_fin()
        seen["model"] = runner in runner.machine.models
        seen["go refused by its condition"] = await runner.go()
        ctx.data["ok"] = True
        return ctx, None

    async def b(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        seen["state in b"] = runner.state
        seen["may_go in b"] = await runner.may_go()
        return ctx, None

    runner = h.runner(
        h.config(), GATED, {"a": a, "b": b, "c": Recorder().step("c")}, instance_id="t"
    )
    assert isinstance(runner, PersistentWorkflowStateMachine)
    state = await runner.run_workflow(context={"ok": False})
    assert state.completed
    assert seen == {
        "state": "a",
        "is_a": True,
        "is_b": False,
        "triggers": True,
        "may_go (stored context)": False,
        "may_fin": False,
        "model": True,
        "go refused by its condition": False,
        "state in b": "b",
        "may_go in b": False,
    }
    assert runner.state == "c"
    assert runner not in runner.machine.models  # detached once the run ended
    assert [r["trigger"] for r in h.rows(WORKFLOW, "t")] == [None, "go", "fin", None]


async def test_a_second_run_of_one_runner_joins_the_machine_again(h: Harness) -> None:
    runner: Any = None
    joined: list[tuple[str, bool]] = []  # (run, the runner on the machine after is_<state>)
    run = "first"

    async def fetch(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        joined.append((run, runner.is_fetch() and runner in runner.machine.models))
        if run == "first":
            raise RuntimeError("the first run fails here")
        return ctx, None

    steps = {"fetch": fetch, "think": Recorder().step("think"), "report": Recorder().step("report")}
    runner = h.runner(h.config(), LINEAR, steps, instance_id="again", retry_failed=True)
    with pytest.raises(StepFailedError):
        await runner.run_workflow(context={})
    assert runner not in runner.machine.models and callable(runner.is_fetch)  # still bound
    run = "second"
    assert (await runner.run_workflow()).completed
    assert joined[0] == ("first", True) and joined[-1] == ("second", True)


async def test_a_trigger_fired_by_hand_is_recorded_once(h: Harness) -> None:
    definition = linear_definition(WORKFLOW, ("a", "b", "c"))
    runner: Any = None
    recorder = Recorder()

    async def a(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        recorder.runs["a"] += 1
        assert await runner.may_a_done()
        await runner.a_done()  # fired by hand: a -> b
        assert runner.state == "b"
        return ctx, None

    steps = {"a": a, "b": recorder.step("b"), "c": recorder.step("c")}
    runner = h.runner(h.config(), definition, steps, instance_id="t")
    state = await runner.run_workflow()
    assert state.completed
    assert recorder.runs == {"a": 1, "b": 1, "c": 1}
    rows = h.rows(WORKFLOW, "t")
    assert_chain(rows)  # no second transition out of "a"
    assert transitions_of(rows) == [
        (None, None, "a", "running"),
        ("a_done", "a", "b", "running"),
        ("b_done", "b", "c", "running"),
        (None, "c", None, "completed"),
    ]


async def test_an_invalid_trigger_fired_by_hand_is_an_invalid_transition(h: Harness) -> None:
    runner: Any = None
    raised: list[BaseException] = []

    async def a(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        try:
            await runner.fin()  # only valid from "b"
        except Exception as exc:
            raised.append(exc)
        ctx.data["ok"] = True
        return ctx, None

    steps = {"a": a, "b": Recorder().step("b"), "c": Recorder().step("c")}
    runner = h.runner(h.config(), GATED, steps, instance_id="t")
    assert (await runner.run_workflow(context={"ok": False})).completed
    [error] = raised
    assert isinstance(error, InvalidTransitionError), repr(error)
    assert (error.state, error.trigger, error.valid_triggers) == ("a", "fin", ["go"])
    assert_chain(h.rows(WORKFLOW, "t"))


async def test_a_trigger_fired_by_hand_after_completion_writes_nothing(h: Harness) -> None:
    definition = WorkflowDefinition(
        name=WORKFLOW,
        steps=["a", "b"],
        transitions=[
            Transition(trigger="go", source="a", dest="b"),
            Transition(trigger="done", source="b", dest=None),
        ],
    )
    recorder = Recorder()
    runner: Any = h.runner(
        h.config(), definition, {"a": recorder.step("a"), "b": recorder.step("b")}, instance_id="t"
    )
    assert (await runner.run_workflow()).completed
    rows = h.rows(WORKFLOW, "t")
    # Loud misuse (an fsmflow error, or no trigger method left on a detached model)...
    with pytest.raises((FsmflowError, AttributeError)):
        await runner.done()
    assert h.rows(WORKFLOW, "t") == rows  # ...and never a row after the completed one


async def test_listeners_see_every_step_and_record(h: Harness) -> None:
    events: list[tuple[str, str, int]] = []

    def listener(event: RunnerEvent) -> None:
        assert (event.workflow_name, event.instance_id) == (WORKFLOW, "l1")
        events.append((event.point, event.state, event.seq))

    runner = h.runner(
        h.config(), LINEAR, Tracker().steps(LINEAR), instance_id="l1", listeners=[listener]
    )
    await runner.run_workflow()
    expected = []
    for seq, state in enumerate(STATES):
        expected += [
            ("step_started", state, seq),
            ("step_finished", state, seq),
            ("transition_recorded", state, seq + 1),
        ]
    assert events == expected
