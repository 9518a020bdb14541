"""The spans that start an instance without running it: a submission, a fork.

The span's traceparent is stored on the new instance's seq 0, so the runs that follow (a
worker's, after a submission) are its children: one trace from the submitter on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from fsmflow.telemetry import _names as n
from fsmflow.telemetry._otel import Telemetry, traceparent
from fsmflow.telemetry._run import record_error
from fsmflow.telemetry._trace import Start

_KINDS = {n.SUBMIT_SPAN: SpanKind.PRODUCER, n.FORK_SPAN: SpanKind.INTERNAL}


class SpanStart(Start):
    """A :class:`Start` whose span is open while the instance is started."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.trace_parent = traceparent(trace.set_span_in_context(span))

    def named(self, instance_id: str) -> None:
        self._span.set_attribute(n.INSTANCE, instance_id)


@contextlib.contextmanager
def start_span(
    telemetry: Telemetry, name: str, workflow: str, attributes: Mapping[str, str | int],
    *, redact: bool,
) -> Iterator[Start]:  # fmt: skip
    """The span ``name`` (``fsmflow.submit``, ``fsmflow.fork``) of starting an instance of
    ``workflow``, a child of the current span."""
    span = telemetry.tracer.start_span(
        f"{name} {workflow}",
        kind=_KINDS.get(name, SpanKind.INTERNAL),
        attributes={n.WORKFLOW: workflow, **attributes},
    )
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False):
            yield SpanStart(span)
    except BaseException as exc:
        record_error(span, exc, redact=redact)
        raise
    finally:
        span.end()
