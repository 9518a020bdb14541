"""The telemetry of one run on OpenTelemetry: the run's span, its step spans, the metrics.

One ``fsmflow.run <workflow>`` span per run of an instance, and under it one
``fsmflow.step <state>`` span per step attempt, current while the step runs (spans the
step makes itself nest under it) and ended once its outcome is known: the row it led to
committed (moved, completed, waiting, failed), a retry, or an interruption.

A run that creates its instance first records a short ``fsmflow.start <workflow>`` span
(ended as soon as seq 0 is written, so it is exported even if the process dies next) and
stores its traceparent on seq 0; every run of the instance, this one included, is a child
of that stored context, so all runs of one instance share one trace across crashes.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from fsmflow.errors import WorkflowInterruptedError
from fsmflow.telemetry import _names as n
from fsmflow.telemetry._otel import Telemetry, parent_context, traceparent
from fsmflow.telemetry._trace import RunTrace, TraceParentReader


@dataclass(slots=True)
class _Step:
    """The open span of one step attempt."""

    span: Span
    state: str
    started: float  # perf_counter
    seconds: float | None = None  # the attempt's duration, once it returned
    recorded: n.Outcome | None = None  # a row committed while the step ran (fired by hand)


def record_error(span: Span, error: BaseException, *, redact: bool) -> None:
    """Record ``error`` on ``span`` as the semantic conventions' ``exception`` event: its
    type always, its message and traceback unless ``redact`` (they may quote values)."""
    kind = type(error).__qualname__
    attributes: dict[str, str] = {"exception.type": kind}
    if not redact:
        attributes["exception.message"] = _message(error)
        attributes["exception.stacktrace"] = "".join(traceback.format_exception(error))
    span.add_event("exception", attributes)
    span.set_attribute(n.ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, kind))


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a broken __str__ must not break the run
        return f"<{type(error).__name__}: str() raised>"


def _interrupt(error: BaseException | None) -> bool:
    return isinstance(error, WorkflowInterruptedError | GeneratorExit) or (
        error is not None and not isinstance(error, Exception)
    )


class OtelRunTrace(RunTrace):
    """The telemetry of one run of ``workflow`` (see :class:`RunTrace` for the hooks)."""

    __slots__ = (
        "_caller", "_counted", "_instance_id", "_redact", "_run", "_seq", "_start",
        "_started_ns", "_status", "_step", "_telemetry", "_token", "_workflow",
    )  # fmt: skip

    def __init__(
        self, telemetry: Telemetry, workflow: str, *, redact: bool, status: Callable[[], str]
    ) -> None:
        self._telemetry = telemetry
        self._status = status  # the instance's status (read when the run ends)
        self._workflow = workflow
        self._redact = redact
        self._caller = otel_context.get_current()  # the program's context as the run began
        self._started_ns = time.time_ns()
        self._instance_id: str | None = None
        self._run: Span | None = None
        self._start: Span | None = None  # a new instance's fsmflow.start span
        self._step: _Step | None = None
        self._counted: str | None = None  # what fsmflow.instances counts this run as
        self._token: object | None = None
        self._seq: int | None = None  # the last row this run recorded

    def __repr__(self) -> str:
        return f"OtelRunTrace({self._workflow!r}, {self._instance_id!r})"

    # -- the run ---------------------------------------------------------------------

    def started(self, instance_id: str) -> str | None:
        self._started_ns = time.time_ns()  # the run's span begins with its instance
        start = self._start = self._telemetry.tracer.start_span(
            f"{n.START_SPAN} {self._workflow}",
            context=self._caller,
            attributes={n.WORKFLOW: self._workflow, n.INSTANCE: instance_id},
            start_time=self._started_ns,
        )
        return traceparent(trace.set_span_in_context(start))

    async def opened(
        self, instance_id: str, stored: TraceParentReader, *, created: bool | None = None
    ) -> None:
        start, self._start = self._start, None
        if created is False:
            start = None  # never ended, so never exported: the instance existed already
        if start is not None:  # seq 0 is written: the start span is done
            start.end()
            self._open(instance_id, trace.set_span_in_context(start), (), resumed=False)
        else:  # an existing instance: continue the trace its start stored
            parent = parent_context(await stored(self._workflow, instance_id))
            links = self._caller_link(parent)
            self._open(instance_id, parent or self._caller, links, resumed=True)
        assert self._run is not None
        self._token = otel_context.attach(trace.set_span_in_context(self._run))
        self._count("running")

    def ended(self, error: BaseException | None = None) -> None:
        if self._start is not None:  # writing seq 0 failed
            if error is not None:
                record_error(self._start, error, redact=self._redact)
            self._start.end()
            self._start = None
        if self._run is None:  # it failed before it could open the instance
            self._open(self._instance_id, self._caller, (), resumed=False)
        run = self._run
        assert run is not None
        if self._step is not None:
            self._end_step("interrupted", error)
        if error is not None and _interrupt(error):
            outcome = "interrupted"  # a stop (signal, shutdown) is no error: it resumes
        elif error is not None:
            outcome = "failed"
            record_error(run, error, redact=self._redact)
        else:
            outcome = self._status()
        run.set_attribute(n.OUTCOME, outcome)
        if self._seq is not None:
            run.set_attribute(n.SEQ, self._seq)
        run.end()
        self._count(None)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    def _open(
        self, instance_id: str | None, parent: otel_context.Context, links: Sequence[Link],
        *, resumed: bool,
    ) -> None:  # fmt: skip
        self._instance_id = instance_id
        attributes: dict[str, str | bool] = {n.WORKFLOW: self._workflow, n.RESUMED: resumed}
        if instance_id is not None:
            attributes[n.INSTANCE] = instance_id
        self._run = self._telemetry.tracer.start_span(
            f"{n.RUN_SPAN} {self._workflow}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            start_time=self._started_ns,
        )

    def _caller_link(self, parent: otel_context.Context | None) -> list[Link]:
        """A link to the program's own span, when the run continues another trace."""
        caller = trace.get_current_span(self._caller).get_span_context()
        if parent is None or not caller.is_valid:
            return []
        if trace.get_current_span(parent).get_span_context().trace_id == caller.trace_id:
            return []
        return [Link(caller)]

    def _count(self, status: str | None) -> None:
        """Move this run in ``fsmflow.instances`` from its current status to ``status``."""
        counter = self._telemetry.instruments.instances
        if self._counted is not None:
            counter.add(-1, {n.WORKFLOW: self._workflow, n.STATUS: self._counted})
        if status is not None:
            counter.add(1, {n.WORKFLOW: self._workflow, n.STATUS: status})
        self._counted = status

    # -- step attempts ---------------------------------------------------------------

    def attempt(self, state: str, seq: int, attempt: int) -> AbstractContextManager[None]:
        return self._attempt(state, seq, attempt)

    @contextlib.contextmanager
    def _attempt(self, state: str, seq: int, attempt: int) -> Iterator[None]:
        if self._step is not None:  # the previous attempt came to nothing: a lost session
            self._end_step("interrupted")
        attributes: dict[str, str | int] = {
            n.WORKFLOW: self._workflow, n.INSTANCE: self._instance_id or "", n.STATE: state,
            n.SEQ: seq, n.ATTEMPT: attempt,
        }  # fmt: skip
        parent = None if self._run is None else trace.set_span_in_context(self._run)
        span = self._telemetry.tracer.start_span(
            f"{n.STEP_SPAN} {state}", context=parent, attributes=attributes
        )
        step = self._step = _Step(span, state, time.perf_counter())
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        except BaseException as exc:
            step.seconds = time.perf_counter() - step.started
            self._end_step("interrupted", exc)
            raise
        finally:
            otel_context.detach(token)
        step.seconds = time.perf_counter() - step.started
        if step.recorded is not None:  # a trigger fired by hand recorded where it led
            self._end_step(step.recorded)

    def retrying(self, error: BaseException) -> None:
        step = self._step
        if step is None:
            return
        self._telemetry.instruments.retries.add(1, self._labels(step.state))
        self._end_step("retry", error)

    def failing(self, error: BaseException) -> None:
        span = self._run if self._step is None else self._step.span
        if span is not None:
            record_error(span, error, redact=self._redact)

    def _end_step(self, outcome: n.Outcome, error: BaseException | None = None) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        if error is not None and not _interrupt(error):
            record_error(step.span, error, redact=self._redact)
        seconds = step.seconds if step.seconds is not None else time.perf_counter() - step.started
        step.span.set_attribute(n.OUTCOME, outcome)
        step.span.end()
        labels = {**self._labels(step.state), n.OUTCOME: outcome}
        self._telemetry.instruments.step_duration.record(seconds, labels)

    def _labels(self, state: str) -> dict[str, str]:
        return {n.WORKFLOW: self._workflow, n.STATE: state}

    # -- rows, waits -------------------------------------------------------------------

    def recorded(
        self, seq: int, trigger: str | None, source: str | None, dest: str | None,
        status: str, seconds: float,
    ) -> None:  # fmt: skip
        instruments = self._telemetry.instruments
        workflow = {n.WORKFLOW: self._workflow}
        instruments.append_duration.record(seconds, workflow)
        if status == "failed":
            instruments.failures.add(1, self._labels(source or ""))
        else:
            instruments.transitions.add(1, workflow)
        attributes: dict[str, str | int] = {n.SEQ: seq, n.STATUS: status}
        for key, value in ((n.SOURCE, source), (n.DEST, dest), (n.TRIGGER, trigger)):
            if value is not None:
                attributes[key] = value
        self._seq = seq
        step = self._step
        span = self._run if step is None else step.span
        if span is not None:
            span.add_event(n.TRANSITION_RECORDED, attributes)
        if step is None:
            return
        outcome = n.OUTCOME_OF_STATUS.get(status, "moved")
        if step.seconds is None:  # the step is still running: it fired a trigger by hand
            step.recorded = outcome
        else:
            self._end_step(outcome)

    def waiting(self, state: str, events: Sequence[str], deadline: datetime | None) -> None:
        if self._counted == "waiting" or self._run is None:
            return
        attributes: dict[str, str | Sequence[str]] = {n.STATE: state, n.EVENTS: list(events)}
        if deadline is not None:
            attributes[n.DEADLINE] = deadline.isoformat()
        self._run.add_event(n.WAIT, attributes)
        self._count("waiting")

    def woke(self, why: str, event: str | None = None) -> None:
        if self._run is None:
            return
        attributes = {n.WHY: why} if event is None else {n.WHY: why, n.EVENT: event}
        self._run.add_event(n.WAKE, attributes)
        if self._counted == "waiting":
            self._count("running")
