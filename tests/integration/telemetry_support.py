"""OpenTelemetry for the telemetry tests: the SDK's in-memory span exporter and metric
reader, chosen for the runs of one test with :func:`fsmflow.telemetry.using`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fsmflow.telemetry import using
from fsmflow.telemetry._otel import Telemetry


@dataclass
class Captured:
    """What the runs of one test exported."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    def spans(self, prefix: str = "fsmflow.") -> list[ReadableSpan]:
        """The finished spans whose name starts with ``prefix``, in the order they ended."""
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(prefix)]

    def named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called exactly ``name``."""
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def points(self, metric: str) -> list[Any]:
        """The data points of ``metric`` (cumulative), across every scope."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found

    def value(self, metric: str, **attributes: str) -> float:
        """The sum (counter) or count (histogram) of ``metric`` over the points whose
        attributes include ``attributes`` (keys without their ``fsmflow.`` prefix)."""
        wanted = {f"fsmflow.{k}": v for k, v in attributes.items()}
        total = 0.0
        for point in self.points(metric):
            if wanted.items() <= dict(point.attributes).items():
                total += getattr(point, "value", None) or getattr(point, "count", 0)
        return total


@contextlib.contextmanager
def captured() -> Iterator[Captured]:
    """Runs inside the block export to memory."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    try:
        with using(Telemetry(tracer_provider, meter_provider)):
            yield Captured(exporter, reader, tracer_provider)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    """The span's attributes as a plain dict."""
    return dict(span.attributes or {})


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    """The attributes of each of ``span``'s events called ``name``."""
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def names(spans: Sequence[ReadableSpan]) -> list[str]:
    """The spans' names."""
    return [s.name for s in spans]
