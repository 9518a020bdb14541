"""fsmflow's OpenTelemetry traces and metrics (``pip install 'fsmflow[otel]'``).

Off, and free, unless the program configures OpenTelemetry: with no provider set (or the
package not installed) every hook of the engine is a no-op method of :data:`NO_TRACE`.
Configure the SDK as usual (``trace.set_tracer_provider(...)``, ``metrics.set_meter_provider
(...)``) and every run records:

* a span ``fsmflow.run <workflow>`` per run of an instance, and under it a span
  ``fsmflow.step <state>`` per step attempt, with the ``fsmflow.*`` attributes of
  :mod:`fsmflow.telemetry._names`; span events for each recorded row, wait and wake-up;
* the metrics ``fsmflow.transitions``, ``fsmflow.step.duration``, ``fsmflow.step.failures``,
  ``fsmflow.step.retries``, ``fsmflow.instances`` and ``fsmflow.append.duration``.

An instance's first run (or its submission, its fork) stores its span's W3C traceparent on
seq 0; every later run of the instance is a child of it, so one trace spans crashes.
Context values are never put in spans or metrics.

:class:`Telemetry` and :func:`using` pick other providers for the runs in a block (tests,
benchmarks); they need the ``opentelemetry-api`` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fsmflow.telemetry._api import active, forking, run_trace, submitting, using
from fsmflow.telemetry._trace import NO_TRACE, RunTrace, Start

if TYPE_CHECKING:
    from fsmflow.telemetry._otel import Telemetry

__all__ = [
    "NO_TRACE",
    "RunTrace",
    "Start",
    "Telemetry",
    "active",
    "forking",
    "run_trace",
    "submitting",
    "using",
]


def __getattr__(name: str) -> Any:
    # Telemetry needs the OpenTelemetry API: imported only when a program asks for it.
    if name == "Telemetry":
        from fsmflow.telemetry._otel import Telemetry

        return Telemetry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
