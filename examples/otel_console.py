"""The support-ticket workflow with OpenTelemetry: its spans and metrics on the console.

    pip install -e '.[embedded,otel]' opentelemetry-sdk
    python examples/otel_console.py --instance-id t-7          # spans as JSON on stdout

A crash and a resume, one trace (the second run's ``fsmflow.run`` span has the trace id of
the first, and the instance's ``fsmflow.start`` span as its parent):

    OTEL_CONSOLE_CRASH_IN=escalate python examples/otel_console.py --instance-id t-8  # exits 70
    python examples/otel_console.py --instance-id t-8                                # resumes

or kill it for real: ``SUPPORT_TICKET_STEP_SECONDS=1 python examples/otel_console.py
--instance-id t-9``, ``kill -9`` it mid-run, run it again.

To an OTLP collector (Jaeger, Tempo, an OpenTelemetry Collector) instead of the console,
with the standard variables (``pip install opentelemetry-exporter-otlp-proto-http``):

    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 OTEL_SERVICE_NAME=tickets \\
        python examples/otel_console.py --instance-id t-10

Spans are exported as each one ends (a SimpleSpanProcessor): a process killed mid-run has
printed or sent every span it finished. A real service would use a BatchSpanProcessor,
which may lose the spans of its last moments when killed; the trace of the resumed run
does not depend on them (it continues the context stored on the instance's seq 0).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import support_ticket
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter

from fsmflow import WorkflowContext, run_program

EXIT_CRASHED = 70  # the exit code of OTEL_CONSOLE_CRASH_IN (like FSMFLOW_CRASH_IN elsewhere)


def span_exporter() -> SpanExporter:
    """OTLP over HTTP when an endpoint is configured (OTEL_EXPORTER_OTLP_*), else the console."""
    if not any(k.startswith("OTEL_EXPORTER_OTLP") and k.endswith("ENDPOINT") for k in os.environ):
        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise SystemExit(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed: "
            "pip install opentelemetry-exporter-otlp-proto-http"
        ) from None
    return OTLPSpanExporter()  # reads the endpoint, headers, ... from OTEL_EXPORTER_OTLP_*


def configure_opentelemetry() -> tuple[TracerProvider, MeterProvider]:
    """Global tracer and meter providers (fsmflow uses the global ones by default)."""
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tickets")})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter()))
    trace.set_tracer_provider(tracer_provider)
    # Metrics once, at the end (shutdown exports them), to stderr: stdout keeps the spans.
    reader = PeriodicExportingMetricReader(
        ConsoleMetricExporter(out=sys.stderr), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


def crashing_steps(crash_in: str | None) -> Mapping[str, Any]:
    """The ticket's steps; with ``crash_in``, that state's step ends the process at once."""
    if crash_in is None:
        return support_ticket.STEPS

    def crash(ctx: WorkflowContext) -> WorkflowContext:
        logging.getLogger("otel_console").warning("crashing inside %r (exit 70)", crash_in)
        os._exit(EXIT_CRASHED)  # like a kill -9: no cleanup, no flush

    return {**support_ticket.STEPS, crash_in: crash}


async def main() -> None:
    """Run (or resume) one ticket with tracing and metrics on."""
    tracer_provider, meter_provider = configure_opentelemetry()
    steps = crashing_steps(os.environ.get("OTEL_CONSOLE_CRASH_IN") or None)
    try:
        await support_ticket.main(support_ticket.parse_args(), steps=steps)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


if __name__ == "__main__":
    support_ticket.configure_logging()
    raise SystemExit(run_program(main()))
