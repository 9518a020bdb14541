"""fsmflow.telemetry without a database: the no-op default, the choice of providers, the
traceparent round trip, and what an error puts on a span."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fsmflow.telemetry import NO_TRACE, active, run_trace, submitting, using
from fsmflow.telemetry._otel import Telemetry, parent_context, traceparent
from fsmflow.telemetry._run import record_error


def in_fresh_python(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_without_a_provider_a_run_gets_the_no_op_trace() -> None:
    assert active() is None  # this process sets no global provider
    assert run_trace("w", False, lambda: "completed") is NO_TRACE


def test_the_no_op_trace_accepts_every_hook() -> None:
    with NO_TRACE as t:
        assert t.started("i") is None
        with t.attempt("s", 0, 1):
            pass
        t.retrying(ValueError())
        t.failing(ValueError())
        t.recorded(1, "go", "a", "b", "running", 0.001)
        t.waiting("s", ["e"], None)
        t.woke("event", "e")
    with submitting("w", redact=True) as start:
        assert start.trace_parent is None
        start.named("i")


def test_fsmflow_never_imports_opentelemetry_itself() -> None:
    found = in_fresh_python(
        "import json, sys, fsmflow, fsmflow.telemetry as t\n"
        "trace = t.run_trace('w', False, lambda: 'completed')\n"
        "print(json.dumps({'noop': trace is t.NO_TRACE,\n"
        "  'loaded': sorted(m for m in sys.modules if m.startswith('opentelemetry'))}))"
    )
    assert found == {"noop": True, "loaded": []}


def test_fsmflow_runs_without_the_opentelemetry_package() -> None:
    found = in_fresh_python(
        "import json, sys\n"
        "sys.modules['opentelemetry'] = None  # as if the package were not installed\n"
        "import fsmflow, fsmflow.telemetry as t\n"
        "trace = t.run_trace('w', False, lambda: 'completed')\n"
        "with trace, trace.attempt('s', 0, 1):\n"
        "    trace.recorded(1, None, 's', None, 'completed', 0.0)\n"
        "print(json.dumps({'noop': trace is t.NO_TRACE}))"
    )
    assert found == {"noop": True}


def test_with_only_the_api_imported_nothing_is_recorded() -> None:
    found = in_fresh_python(
        "import json, opentelemetry.trace, opentelemetry.metrics, fsmflow.telemetry as t\n"
        "print(json.dumps({'active': t.active() is not None}))"
    )
    assert found == {"active": False}


def test_a_global_provider_turns_it_on() -> None:
    found = in_fresh_python(
        "import json\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "import fsmflow.telemetry as t\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "run = t.run_trace('w', False, lambda: 'completed')\n"
        "print(json.dumps({'active': t.active() is not None, 'otel': run is not t.NO_TRACE}))"
    )
    assert found == {"active": True, "otel": True}


def test_using_chooses_the_providers_for_a_block() -> None:
    chosen = Telemetry(TracerProvider())
    with using(chosen):
        assert active() is chosen
        assert run_trace("w", False, lambda: "completed") is not NO_TRACE
    assert active() is None


@pytest.mark.parametrize(
    "stored",
    [None, "", "garbage", "00-00000000000000000000000000000000-0000000000000000-01", "01-zz"],
)
def test_a_missing_or_invalid_stored_traceparent_is_no_parent(stored: str | None) -> None:
    assert parent_context(stored) is None


def test_a_traceparent_round_trips() -> None:
    provider = TracerProvider()
    span = provider.get_tracer("t").start_span("s")
    text = traceparent(trace.set_span_in_context(span))
    assert text is not None
    context = parent_context(text)
    assert context is not None
    restored = trace.get_current_span(context).get_span_context()
    assert (restored.trace_id, restored.span_id) == (
        span.get_span_context().trace_id,
        span.get_span_context().span_id,
    )
    span.end()


@pytest.mark.parametrize("redact", [True, False])
def test_an_error_on_a_span_has_its_type_and_a_message_only_unless_redacted(redact: bool) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("t").start_span("s")
    try:
        raise KeyError("the customer's secret")
    except KeyError as exc:
        record_error(span, exc, redact=redact)
    span.end()
    (finished,) = exporter.get_finished_spans()
    (event,) = finished.events
    assert event.name == "exception"
    assert finished.status.status_code == StatusCode.ERROR
    assert finished.status.description == "KeyError"
    assert dict(finished.attributes or {}) == {"error.type": "KeyError"}
    attributes = dict(event.attributes or {})
    if redact:
        assert attributes == {"exception.type": "KeyError"}
    else:
        assert "secret" in str(attributes["exception.message"])
        assert "Traceback" in str(attributes["exception.stacktrace"])


async def test_a_start_path_that_found_the_instance_drops_its_start_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stored_span = provider.get_tracer("t").start_span("the instance's start")
    stored = traceparent(trace.set_span_in_context(stored_span))

    async def read(workflow: str, instance_id: str) -> str | None:
        return stored

    with using(Telemetry(provider)), run_trace("w", False, lambda: "completed") as run:
        assert run.started("i") is not None  # asked before the instance was looked up
        await run.opened("i", read, created=False)
    (exported,) = exporter.get_finished_spans()  # the run span only: no start span
    assert exported.name == "fsmflow.run w"
    assert exported.parent is not None
    assert exported.parent.span_id == stored_span.get_span_context().span_id
