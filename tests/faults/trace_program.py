"""A program for the trace-continuity fault test: runs instance ``TRACE_INSTANCE`` of a
three-step workflow with an OpenTelemetry SDK that writes every finished span to the
JSON-lines file ``TRACE_FILE`` (one line per span, written as it ends: a SIGKILL loses only
the spans still open).

With ``TRACE_HANG_IN=b`` the step of state ``b`` prints ``entered b`` and never returns:
the test SIGKILLs the process there, then runs the program again to resume.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from fsmflow import (
    DBConfig,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
)

DEFINITION = WorkflowDefinition(
    "trace_resume",
    ["a", "b", "c"],
    [Transition("next", "a", "b"), Transition("next", "b", "c"), Transition("done", "c", None)],
)


class JsonLinesExporter(SpanExporter):
    """Appends each span to a file as one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a", encoding="utf-8") as out:
            for span in spans:
                parent = span.parent
                out.write(
                    json.dumps(
                        {
                            "pid": os.getpid(),
                            "name": span.name,
                            "trace_id": f"{span.context.trace_id:032x}",
                            "span_id": f"{span.context.span_id:016x}",
                            "parent_id": None if parent is None else f"{parent.span_id:016x}",
                            "attributes": dict(span.attributes or {}),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


async def step(ctx: WorkflowContext) -> WorkflowContext:
    return ctx


async def step_b(ctx: WorkflowContext) -> WorkflowContext:
    if os.environ.get("TRACE_HANG_IN") == "b":
        print("entered b", flush=True)
        await asyncio.Event().wait()  # until SIGKILL
    return ctx


async def main() -> int:
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(Path(os.environ["TRACE_FILE"])))
    )
    trace.set_tracer_provider(provider)
    db = DBConfig()
    try:
        runner = PersistentWorkflowStateMachine(
            db, DEFINITION, steps={"a": step, "b": step_b, "c": step},
            instance_id=os.environ["TRACE_INSTANCE"],
        )  # fmt: skip
        state = await runner.run_workflow()
        print(f"finished: {state.status}", flush=True)
    finally:
        await db.close()
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
