"""fsmflow's tracer, meter and instruments on OpenTelemetry providers (needs the API).

Imported only once the program has imported OpenTelemetry itself (see
:func:`fsmflow.telemetry.active`): a program without it never loads this module.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Final

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fsmflow.telemetry import _names as n

# Histogram buckets, in seconds. Steps run from milliseconds (a lookup) to many minutes (an
# LLM pipeline, a person's approval is a wait, not a step); appends take about a millisecond.
STEP_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
APPEND_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_TRACEPARENT: Final = "traceparent"


def _version() -> str:
    try:
        return importlib.metadata.version("fsmflow")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0+unknown"


class Instruments:
    """fsmflow's metrics, created once per meter."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.transitions = meter.create_counter(
            n.TRANSITIONS, unit="{transition}", description="History rows recorded (not failed)"
        )
        self.step_duration = meter.create_histogram(
            n.STEP_DURATION,
            unit="s",
            description="Duration of each step attempt",
            explicit_bucket_boundaries_advisory=STEP_BUCKETS,
        )
        self.failures = meter.create_counter(
            n.STEP_FAILURES, unit="{failure}", description="Instances recorded as failed"
        )
        self.retries = meter.create_counter(
            n.STEP_RETRIES, unit="{retry}", description="Step attempts that failed and are retried"
        )
        self.instances = meter.create_up_down_counter(
            n.INSTANCES, unit="{instance}", description="Instances this process runs, by status"
        )
        self.append_duration = meter.create_histogram(
            n.APPEND_DURATION,
            unit="s",
            description="Duration of each append of a history row",
            explicit_bucket_boundaries_advisory=APPEND_BUCKETS,
        )


class Telemetry:
    """fsmflow's tracer and meter on the given providers (None: the global ones, as set by
    ``opentelemetry.trace.set_tracer_provider`` and ``metrics.set_meter_provider``).

    Runners use the global providers by default; ``with fsmflow.telemetry.using(t):``
    makes the runs started inside the block use ``t`` instead (tests, benchmarks).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        version = _version()
        self.tracer = trace.get_tracer(n.TRACER_NAME, version, tracer_provider=tracer_provider)
        meter = metrics.get_meter(n.TRACER_NAME, version, meter_provider=meter_provider)
        self.instruments = Instruments(meter)

    def __repr__(self) -> str:
        return f"Telemetry(tracer={type(self.tracer).__name__})"


def configured() -> bool:
    """True once the program set a global tracer or meter provider (not a no-op one)."""
    tracing = trace.get_tracer_provider()
    if not isinstance(tracing, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return True
    meter_provider = metrics.get_meter_provider()
    # Until a provider is set, the API hands out its proxy, a private class: what is not
    # that proxy, nor the no-op, was set by the program.
    return not isinstance(meter_provider, metrics.NoOpMeterProvider) and (
        type(meter_provider).__name__ != "_ProxyMeterProvider"
    )


@functools.cache
def global_telemetry() -> Telemetry:
    """The :class:`Telemetry` of the global providers (created once: OpenTelemetry sets
    each global provider at most once per process)."""
    return Telemetry()


def traceparent(context: Context) -> str | None:
    """The W3C traceparent of the span current in ``context`` (None: no valid span)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier.get(_TRACEPARENT)


def parent_context(stored: str | None) -> Context | None:
    """The context a stored traceparent names (None: none stored, or not a valid one)."""
    if not stored:
        return None
    context = _PROPAGATOR.extract({_TRACEPARENT: stored})
    valid = trace.get_current_span(context).get_span_context().is_valid
    return context if valid else None
