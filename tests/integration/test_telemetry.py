"""OpenTelemetry traces and metrics of real runs against the real database.

The SDK's in-memory exporter and metric reader capture what fsmflow emits; the assertions
are on spans, their parents and attributes, span events, and metric values.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from fsmflow import RetryPolicy, StepFailedError, Transition, WorkflowContext, WorkflowDefinition

from .reliability_support import Harness, linear_definition
from .telemetry_support import Captured, attrs, captured, events, names

WORKFLOW = "traced"
DEFINITION = linear_definition(WORKFLOW, ("fetch", "think", "report"))
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, jitter=0.0)
SECRET = "card-4111-1111"  # a context value: it must appear in no span


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


@pytest.fixture
def otel() -> Any:
    with captured() as found:
        yield found


async def step(ctx: WorkflowContext) -> WorkflowContext:
    ctx.data.setdefault("visited", []).append("x")
    return ctx


def steps(**overrides: Any) -> dict[str, Any]:
    return {"fetch": step, "think": step, "report": step, **overrides}


def stored_trace_parent(h: Harness, workflow: str, instance_id: str) -> str | None:
    found = h.sql(
        "SELECT trace_parent FROM fsmflow_transitions "
        "WHERE workflow_name = %s AND instance_id = %s AND seq = 0",
        (workflow, instance_id),
    )
    return found[0][0]


def everything_exported(otel: Captured) -> str:
    """Every attribute and event of every span, as text (to look for leaked values)."""
    return json.dumps(
        [
            {"a": attrs(s), "e": [(e.name, dict(e.attributes or {})) for e in s.events]}
            for s in otel.spans("")
        ],
        default=str,
    )


# -- spans of a run ------------------------------------------------------------------------


async def test_a_run_has_a_start_span_a_run_span_and_a_step_span_per_attempt(
    h: Harness, otel: Captured
) -> None:
    runner = h.runner(h.config(), DEFINITION, steps(), instance_id="t-1")
    await runner.run_workflow(context={"card": SECRET})

    (start,) = otel.named("fsmflow.start traced")
    (run,) = otel.named("fsmflow.run traced")
    step_spans = otel.spans("fsmflow.step ")
    assert names(step_spans) == ["fsmflow.step fetch", "fsmflow.step think", "fsmflow.step report"]
    # One trace: start -> run -> steps.
    assert {s.context.trace_id for s in [start, run, *step_spans]} == {start.context.trace_id}
    assert run.parent is not None and run.parent.span_id == start.context.span_id
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in step_spans)
    assert attrs(run) == {
        "fsmflow.workflow": WORKFLOW, "fsmflow.instance_id": "t-1", "fsmflow.resumed": False,
        "fsmflow.outcome": "completed", "fsmflow.seq": 3,
    }  # fmt: skip
    assert [attrs(s) for s in step_spans] == [
        {"fsmflow.workflow": WORKFLOW, "fsmflow.instance_id": "t-1", "fsmflow.state": state,
         "fsmflow.seq": seq, "fsmflow.attempt": 1, "fsmflow.outcome": outcome}
        for state, seq, outcome in [("fetch", 0, "moved"), ("think", 1, "moved"),
                                    ("report", 2, "completed")]
    ]  # fmt: skip
    assert [events(s, "fsmflow.transition_recorded") for s in step_spans] == [
        [{"fsmflow.seq": 1, "fsmflow.status": "running", "fsmflow.source": "fetch",
          "fsmflow.dest": "think", "fsmflow.trigger": "fetch_done"}],
        [{"fsmflow.seq": 2, "fsmflow.status": "running", "fsmflow.source": "think",
          "fsmflow.dest": "report", "fsmflow.trigger": "think_done"}],
        [{"fsmflow.seq": 3, "fsmflow.status": "completed", "fsmflow.source": "report"}],
    ]  # fmt: skip
    assert all(s.status.status_code == StatusCode.UNSET for s in otel.spans())
    assert run.kind == SpanKind.INTERNAL
    # seq 0 stores the start span's context: every later run continues it.
    trace_parent = stored_trace_parent(h, WORKFLOW, "t-1")
    ids = f"00-{start.context.trace_id:032x}-{start.context.span_id:016x}-"
    assert trace_parent is not None and trace_parent.startswith(ids)
    assert SECRET not in everything_exported(otel)


async def test_a_step_span_is_the_current_span_inside_the_step(h: Harness, otel: Captured) -> None:
    tracer = otel.tracer_provider.get_tracer("user-code")

    async def think(ctx: WorkflowContext) -> WorkflowContext:
        with tracer.start_as_current_span("llm call"):
            return ctx

    def report(ctx: WorkflowContext) -> WorkflowContext:  # sync: runs on its own thread
        with tracer.start_as_current_span("write report"):
            return ctx

    runner = h.runner(h.config(), DEFINITION, steps(think=think, report=report))
    await runner.run_workflow()

    by_name = {s.name: s for s in otel.spans("")}
    for inner, outer in [
        ("llm call", "fsmflow.step think"),
        ("write report", "fsmflow.step report"),
    ]:
        parent = by_name[inner].parent
        assert parent is not None and parent.span_id == by_name[outer].context.span_id


async def test_a_program_span_is_the_parent_of_a_new_instance(h: Harness, otel: Captured) -> None:
    tracer = otel.tracer_provider.get_tracer("program")
    with tracer.start_as_current_span("handle request") as request:
        await h.runner(h.config(), DEFINITION, steps(), instance_id="t-2").run_workflow()

    (start,) = otel.named("fsmflow.start traced")
    assert start.parent is not None and start.parent.span_id == request.get_span_context().span_id
    assert start.context.trace_id == request.get_span_context().trace_id


# -- retries and failures ------------------------------------------------------------------


class Flaky:
    """Raises ``errors[n]`` on its n-th execution (None: succeeds)."""

    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, ctx: WorkflowContext) -> WorkflowContext:
        self.calls += 1
        error = self.errors[self.calls - 1] if self.calls <= len(self.errors) else None
        if error is not None:
            raise error
        return ctx


async def test_retried_attempts_have_a_span_each_with_the_exception_type(
    h: Harness, otel: Captured
) -> None:
    flaky = Flaky(ConnectionError("503"), TimeoutError("slow"))
    think = {"think": __import__("fsmflow").WorkflowStep("think", flaky, retry=FAST)}
    await h.runner(h.config(), DEFINITION, steps(**think), instance_id="t-3").run_workflow()

    spans = otel.named("fsmflow.step think")
    assert [(attrs(s)["fsmflow.attempt"], attrs(s)["fsmflow.outcome"]) for s in spans] == [
        (1, "retry"), (2, "retry"), (3, "moved"),
    ]  # fmt: skip
    assert [s.status.status_code for s in spans] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [[e["exception.type"] for e in events(s, "exception")] for s in spans] == [
        ["ConnectionError"], ["TimeoutError"], [],
    ]  # fmt: skip
    assert attrs(spans[0])["error.type"] == "ConnectionError"
    assert events(spans[0], "exception")[0]["exception.message"] == "503"  # not redacted
    assert all(s.context.trace_id == spans[0].context.trace_id for s in spans)
    assert otel.value("fsmflow.step.retries", workflow=WORKFLOW, state="think") == 2
    assert otel.value("fsmflow.step.duration", state="think", outcome="retry") == 2
    assert otel.value("fsmflow.step.duration", state="think", outcome="moved") == 1
    assert otel.value("fsmflow.step.failures", workflow=WORKFLOW) == 0


@pytest.mark.parametrize("redact", [True, False], ids=["redacted", "not redacted"])
async def test_a_failure_records_the_exception_type_and_never_a_context_value(
    h: Harness, otel: Captured, redact: bool
) -> None:
    async def think(ctx: WorkflowContext) -> WorkflowContext:
        raise ValueError(f"card {ctx.data['card']} was declined")

    runner = h.runner(h.config(redact_errors=redact), DEFINITION, steps(think=think))
    with pytest.raises(StepFailedError):
        await runner.run_workflow(context={"card": SECRET})

    (failed,) = otel.named("fsmflow.step think")
    (run,) = otel.named("fsmflow.run traced")
    assert attrs(failed)["fsmflow.outcome"] == "failed"
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "ValueError"
    (exception,) = events(failed, "exception")
    assert exception["exception.type"] == "ValueError"
    assert [e["fsmflow.status"] for e in events(failed, "fsmflow.transition_recorded")] == [
        "failed"
    ]
    assert attrs(run)["fsmflow.outcome"] == "failed"
    assert attrs(run)["error.type"] == "StepFailedError"
    assert run.status.status_code == StatusCode.ERROR
    assert otel.value("fsmflow.step.failures", workflow=WORKFLOW, state="think") == 1
    exported = everything_exported(otel)
    if redact:
        assert set(exception) == {"exception.type"}
        assert SECRET not in exported and "declined" not in exported
    else:  # the message is shown as in the logs and the failed row (FSMFLOW_REDACT_ERRORS=0)
        assert "declined" in exception["exception.message"]


# -- waits and wake-ups ----------------------------------------------------------------------

WAITS = WorkflowDefinition(
    "traced_wait",
    ["ask", "approval", "done"],
    [
        Transition("asked", "ask", "approval"),
        Transition("approved", "approval", "done", event="approval"),
        Transition("finish", "done", None),
    ],
)


async def test_a_wait_suspends_and_the_wake_up_continues_the_same_trace(
    h: Harness, otel: Captured
) -> None:
    config = h.config()
    waits_steps = {"ask": step, "done": step}
    first = await h.runner(config, WAITS, waits_steps, instance_id="w-1").run_workflow(suspend=True)
    assert first.status == "waiting"
    await config.store.send_event("traced_wait", "w-1", "approval", {"ok": SECRET})
    await h.runner(config, WAITS, waits_steps, instance_id="w-1").run_workflow()

    (start,) = otel.named("fsmflow.start traced_wait")
    runs = otel.named("fsmflow.run traced_wait")
    assert [attrs(r)["fsmflow.outcome"] for r in runs] == ["waiting", "completed"]
    assert [attrs(r)["fsmflow.resumed"] for r in runs] == [False, True]
    # The second run is a child of the instance's start, like the first.
    assert all(r.parent is not None and r.parent.span_id == start.context.span_id for r in runs)
    assert {r.context.trace_id for r in runs} == {start.context.trace_id}
    assert events(runs[0], "fsmflow.wait") == [
        {"fsmflow.state": "approval", "fsmflow.events": ("approval",)}
    ]
    assert events(runs[1], "fsmflow.wake") == [
        {"fsmflow.why": "event", "fsmflow.event": "approval"}
    ]
    (ask,) = otel.named("fsmflow.step ask")
    assert attrs(ask)["fsmflow.outcome"] == "waiting"  # it enters a state that only waits
    assert SECRET not in everything_exported(otel)
    assert otel.value("fsmflow.instances", workflow="traced_wait") == 0


async def test_an_instance_waiting_in_process_counts_as_waiting(h: Harness, otel: Captured) -> None:
    config = h.config()
    runner = h.runner(config, WAITS, {"ask": step, "done": step}, instance_id="w-2")
    task = asyncio.ensure_future(runner.run_workflow())
    try:
        await until(lambda: otel.value("fsmflow.instances", status="waiting") == 1)
        assert otel.value("fsmflow.instances", status="running") == 0
        await config.store.send_event("traced_wait", "w-2", "approval", {})
        state = await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
    assert state.completed
    assert otel.value("fsmflow.instances", status="waiting") == 0
    assert otel.value("fsmflow.instances", status="running") == 0
    (run,) = otel.named("fsmflow.run traced_wait")
    assert [e["fsmflow.why"] for e in events(run, "fsmflow.wake")] == ["event"]


async def test_a_timeout_wakes_with_why_timeout(h: Harness, otel: Captured) -> None:
    sleeps = WorkflowDefinition(
        "traced_sleep",
        ["nap", "up"],
        [Transition("rested", "nap", "up", timeout=0.2), Transition("end", "up", None)],
    )
    await h.runner(h.config(), sleeps, {"up": step}).run_workflow()

    (run,) = otel.named("fsmflow.run traced_sleep")
    assert [e["fsmflow.why"] for e in events(run, "fsmflow.wake")] == ["timeout"]
    (wait,) = events(run, "fsmflow.wait")
    assert wait["fsmflow.state"] == "nap" and "fsmflow.deadline" in wait


async def until(condition: Any, limit: float = 60.0) -> None:
    """Poll ``condition()`` (an observable fact: a metric, a span) until it holds, at most
    ``limit`` seconds (a bound on a hang, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the condition")
        await asyncio.sleep(0.01)


# -- metrics --------------------------------------------------------------------------------


async def test_metrics_count_transitions_steps_and_appends(h: Harness, otel: Captured) -> None:
    config = h.config()
    for number in range(3):
        await h.runner(config, DEFINITION, steps(), instance_id=f"m-{number}").run_workflow()

    assert otel.value("fsmflow.transitions", workflow=WORKFLOW) == 9  # 3 rows after seq 0, x3
    assert otel.value("fsmflow.append.duration", workflow=WORKFLOW) == 9
    for state in ("fetch", "think"):
        assert otel.value("fsmflow.step.duration", state=state, outcome="moved") == 3
    assert otel.value("fsmflow.step.duration", state="report", outcome="completed") == 3
    assert otel.value("fsmflow.instances", workflow=WORKFLOW) == 0
    durations = [p for p in otel.points("fsmflow.step.duration")]
    assert all(p.sum >= 0 and p.max < 60 for p in durations)  # seconds, not milliseconds
    assert {tuple(sorted(p.attributes)) for p in durations} == {
        ("fsmflow.outcome", "fsmflow.state", "fsmflow.workflow")
    }  # no instance ids in metrics: their cardinality is unbounded


# -- submission, fork, worker ------------------------------------------------------------


async def test_a_worker_run_of_a_submitted_instance_continues_the_submitters_trace(
    h: Harness, otel: Captured
) -> None:
    from fsmflow import Worker, Workflow

    config = h.config(worker_sweep=0.2, worker_stale=1.0)
    await config.store.init_db()
    workflow = Workflow(DEFINITION, steps())
    tracer = otel.tracer_provider.get_tracer("program")
    with tracer.start_as_current_span("enqueue") as enqueue:
        instance_id = await config.store.submit(workflow, {"card": SECRET})
    worker = Worker(config, [workflow], concurrency=1, handle_signals=False)
    running = asyncio.ensure_future(worker.run())
    try:
        await until(lambda: len(otel.named("fsmflow.run traced")) == 1)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 60)

    (submit,) = otel.named("fsmflow.submit traced")
    (run,) = otel.named("fsmflow.run traced")
    assert submit.kind == SpanKind.PRODUCER
    assert attrs(submit) == {"fsmflow.workflow": WORKFLOW, "fsmflow.instance_id": instance_id}
    assert submit.parent is not None and submit.parent.span_id == enqueue.get_span_context().span_id
    assert run.parent is not None and run.parent.span_id == submit.context.span_id
    assert attrs(run)["fsmflow.outcome"] == "completed" and attrs(run)["fsmflow.resumed"]
    assert SECRET not in everything_exported(otel)


async def test_a_fork_starts_a_trace_of_its_own_named_after_its_source(
    h: Harness, otel: Captured
) -> None:
    config = h.config()
    await h.runner(config, DEFINITION, steps(), instance_id="f-1").run_workflow()
    forked = await config.store.fork_instance("traced", "f-1", seq=1, new_instance_id="f-2")
    await h.runner(config, DEFINITION, steps(), instance_id="f-2").run_workflow()

    (fork,) = otel.named("fsmflow.fork traced")
    assert attrs(fork) == {
        "fsmflow.workflow": WORKFLOW, "fsmflow.instance_id": forked.instance_id,
        "fsmflow.forked_from": "f-1", "fsmflow.seq": 1,
    }  # fmt: skip
    second = [
        r for r in otel.named("fsmflow.run traced") if attrs(r)["fsmflow.instance_id"] == "f-2"
    ]
    assert second[0].parent is not None and second[0].parent.span_id == fork.context.span_id


async def test_without_a_provider_nothing_is_recorded_and_nothing_fails(h: Harness) -> None:
    state = await h.runner(h.config(), DEFINITION, steps(), instance_id="off-1").run_workflow()
    assert state.completed
    assert stored_trace_parent(h, WORKFLOW, "off-1") is None


async def test_a_resume_inside_a_program_span_links_to_it(h: Harness, otel: Captured) -> None:
    async def think(ctx: WorkflowContext) -> WorkflowContext:
        raise RuntimeError("down")

    config = h.config()
    with pytest.raises(StepFailedError):
        await h.runner(config, DEFINITION, steps(think=think), instance_id="l-1").run_workflow()
    await config.store.retry_instance(WORKFLOW, "l-1")
    tracer = otel.tracer_provider.get_tracer("program")
    with tracer.start_as_current_span("nightly retry job") as job:
        await h.runner(config, DEFINITION, steps(), instance_id="l-1").run_workflow()

    (start,) = otel.named("fsmflow.start traced")
    first, second = otel.named("fsmflow.run traced")
    assert second.parent is not None and second.parent.span_id == start.context.span_id
    assert second.context.trace_id == first.context.trace_id != job.get_span_context().trace_id
    assert [link.context.span_id for link in second.links] == [job.get_span_context().span_id]
    assert attrs(second)["fsmflow.outcome"] == "completed"


async def test_an_interrupted_step_and_run_are_interrupted_not_failed(
    h: Harness, otel: Captured
) -> None:
    from fsmflow import WorkflowInterruptedError

    entered = asyncio.Event()

    async def think(ctx: WorkflowContext) -> WorkflowContext:
        entered.set()
        await asyncio.Event().wait()  # until the shutdown cancels it
        return ctx

    runner = h.runner(h.config(), DEFINITION, steps(think=think), instance_id="i-1")
    task = asyncio.ensure_future(runner.run_workflow())
    await asyncio.wait_for(entered.wait(), 60)
    runner.interrupt("shutdown")
    with pytest.raises(WorkflowInterruptedError):
        await asyncio.wait_for(task, 60)

    (step_span,) = otel.named("fsmflow.step think")
    (run,) = otel.named("fsmflow.run traced")
    assert attrs(step_span)["fsmflow.outcome"] == "interrupted"
    assert attrs(run)["fsmflow.outcome"] == "interrupted"
    assert step_span.status.status_code == run.status.status_code == StatusCode.UNSET
    assert otel.value("fsmflow.instances", workflow=WORKFLOW) == 0
