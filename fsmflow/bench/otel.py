"""``fsmflow bench --otel``: what fsmflow's OpenTelemetry instrumentation costs.

The same fsmflow workload (``--steps`` trivial async steps per instance, ``--instances``
instances per run, sequential and ``--concurrency`` in flight) runs under three setups,
interleaved over ``--rounds`` rounds in rotating order:

* ``off``: no provider configured, the default: every hook is the no-op ``NO_TRACE``;
* ``api``: fsmflow's spans and metrics on the OpenTelemetry API's no-op tracer and meter
  (what the hooks themselves cost when nothing records);
* ``sdk``: the SDK's ``TracerProvider`` (a ``BatchSpanProcessor`` to an exporter that
  drops the spans) and ``MeterProvider`` (every instrument aggregated): recording for real.

Reported per setup and mode: transitions/s (median), the client's CPU per transition, and
the ratio to ``off`` (median of the per-round ratios; 1.0 is no cost). The database makes
those figures noisy on a busy machine, so each setup's hooks are also timed alone, without
the database: the CPU the hooks of one transition take (``hooks_us``, a run of 20 steps
driven through the same calls the engine makes).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fsmflow.bench.measure import Run, linear_definition, run_fsmflow, sample_context, trivial_steps
from fsmflow.settings import DBConfig

logger = logging.getLogger("fsmflow.bench")

SETUPS = ("off", "api", "sdk")


@dataclass(frozen=True)
class OtelOptions:
    """The workload of ``--otel`` (the bench's own options)."""

    steps: int = 20
    instances: int = 100
    concurrency: int = 32
    rounds: int = 3
    context_bytes: int = 200


def _setups() -> dict[str, Any]:
    """Each setup's :class:`~fsmflow.telemetry.Telemetry` (None: off), or why it cannot run."""
    try:
        from opentelemetry import metrics, trace

        from fsmflow.telemetry import Telemetry
    except ImportError:
        return {"skipped": "the OpenTelemetry API is not installed: pip install 'fsmflow[otel]'"}
    found: dict[str, Any] = {
        "off": None,
        "api": Telemetry(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider()),
    }
    try:
        found["sdk"] = _sdk_telemetry()
    except ImportError:
        found["sdk_skipped"] = (
            "the OpenTelemetry SDK is not installed: pip install opentelemetry-sdk"
        )
    return found


def _sdk_telemetry() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from fsmflow.telemetry import Telemetry

    class Dropping(SpanExporter):
        """Takes every batch and keeps nothing: the cost of recording, not of shipping."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Dropping()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return Telemetry(tracer_provider, meter_provider)


@contextlib.contextmanager
def _chosen(telemetry: Any) -> Iterator[None]:
    if telemetry is None:
        yield
        return
    from fsmflow.telemetry import using

    with using(telemetry):
        yield


async def otel_check(
    table: Callable[[str], Awaitable[DBConfig]], options: OtelOptions
) -> dict[str, Any]:
    """Transitions/s with and without OpenTelemetry (see the module docstring)."""
    setups = _setups()
    if "skipped" in setups:
        return {"skipped": setups["skipped"]}
    skipped = setups.pop("sdk_skipped", None)
    config = await table("_otel")
    modes = {"sequential": 1, "concurrent": options.concurrency}
    runs: dict[tuple[str, str], list[Run]] = {(m, s): [] for m in modes for s in setups}
    definition = linear_definition("bench_otel", options.steps)
    steps, context = trivial_steps(definition), sample_context(options.context_bytes)

    async def one(mode: str, setup: str, instances: int) -> Run:
        with _chosen(setups[setup]):
            return await run_fsmflow(
                config, definition, steps, instances=instances, concurrency=modes[mode],
                context=context, prefix=f"{setup}-{uuid.uuid4().hex[:8]}",
            )  # fmt: skip

    try:
        logger.info("otel: warming up")
        for mode in modes:
            for setup in setups:
                await one(mode, setup, max(1, options.instances // 5))
        names = list(setups)
        for round_ in range(options.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for mode in modes:
                for setup in order:
                    run = runs[(mode, setup)]
                    run.append(await one(mode, setup, options.instances))
                    logger.info("otel round %d %s %s: %.0f transitions/s",
                                round_ + 1, mode, setup, run[-1].rate)  # fmt: skip
    finally:
        await config.close()
    result: dict[str, Any] = {mode: _mode(runs, mode, list(setups)) for mode in modes}
    result["hooks_us"] = {name: await _hook_cost(setups[name]) for name in setups}
    if skipped:
        result["sdk_skipped"] = skipped
    return result


async def _hook_cost(telemetry: Any, runs: int = 300, steps: int = 20) -> float:
    """CPU microseconds the telemetry hooks of one transition take (no database)."""
    from fsmflow.telemetry import run_trace

    async def no_parent(workflow: str, instance_id: str) -> str | None:
        return None

    with _chosen(telemetry):
        began = time.process_time()
        for run in range(runs):
            with run_trace("bench_hooks", False, lambda: "completed") as trace:
                trace.started(f"i-{run}")
                await trace.opened(f"i-{run}", no_parent)
                for seq in range(steps):
                    with trace.attempt(f"s{seq}", seq, 1):
                        pass
                    trace.recorded(seq + 1, "next", f"s{seq}", f"s{seq + 1}", "running", 0.001)
        return (time.process_time() - began) / (runs * steps) * 1e6


def _mode(runs: dict[tuple[str, str], list[Run]], mode: str, setups: list[str]) -> dict[str, Any]:
    off = runs[(mode, "off")]
    out: dict[str, Any] = {}
    for setup in setups:
        mine = runs[(mode, setup)]
        ratios = [m.rate / o.rate for m, o in zip(mine, off, strict=True)]
        cpu = sum(r.cpu_seconds for r in mine) / sum(r.transitions for r in mine) * 1e6
        out[setup] = {
            "rate_median": statistics.median(r.rate for r in mine),
            "client_cpu_us": cpu,
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return out


def format_otel(report: dict[str, Any]) -> str:
    """The ``--otel`` part of the text report ("" when it did not run)."""
    otel = report.get("otel")
    if otel is None:
        return ""
    lines = ["", "OpenTelemetry (fsmflow bench --otel): transitions/s, client CPU, ratio to off"]
    if "skipped" in otel:
        return "\n".join([*lines, f"  skipped: {otel['skipped']}"])
    for mode in ("sequential", "concurrent"):
        for setup, figures in otel[mode].items():
            lines.append(
                f"  {mode:<10}  {setup:<3}  {figures['rate_median']:>8.0f}/s  "
                f"{figures['client_cpu_us']:>6.0f} us CPU  ratio {figures['ratio_median']:.3f} "
                f"({figures['ratio_min']:.3f}-{figures['ratio_max']:.3f})"
            )
    hooks = ", ".join(f"{name} {us:.1f} us" for name, us in otel["hooks_us"].items())
    lines.append(f"  the hooks alone, CPU per transition: {hooks}")
    if "sdk_skipped" in otel:
        lines.append(f"  sdk skipped: {otel['sdk_skipped']}")
    return "\n".join(lines)
