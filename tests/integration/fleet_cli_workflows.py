"""Workflows for ``fsmflow submit`` and ``fsmflow worker`` run as subprocesses
(tests/integration/test_cli_fleet.py): importable from the repository root as
``tests.integration.fleet_cli_workflows:NAME``.

``GATED``'s first step touches the file named by ``ctx.data["started"]`` and then blocks
until the file ``ctx.data["release"]`` exists, so a test sees it running (a fact, not a
sleep) and decides when it ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import fsmflow
from fsmflow import Transition, WorkflowContext, WorkflowDefinition

GATE_LIMIT: Final = 300.0  # seconds a gated step waits for its release file at most

PIPELINE_DEFINITION: Final = WorkflowDefinition(
    name="cli_pipeline",
    steps=["fetch", "store"],
    transitions=[
        Transition("fetched", "fetch", "store"),
        Transition("stored", "store", None),
    ],
)

GATED_DEFINITION: Final = WorkflowDefinition(
    name="cli_gated",
    steps=["hold", "finish"],
    transitions=[
        Transition("released", "hold", "finish"),
        Transition("finished", "finish", None),
    ],
)


async def fetch(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
    """Record the step in the context's trail."""
    ctx.data.setdefault("trail", []).append("fetch")
    return ctx, "fetched"


async def store(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
    """Record the step in the context's trail."""
    ctx.data.setdefault("trail", []).append("store")
    return ctx, "stored"


async def hold(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
    """Say it started (a file), then wait for the release file (bounded: never hangs a test)."""
    await asyncio.to_thread(Path(ctx.data["started"]).touch)
    release = Path(ctx.data["release"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GATE_LIMIT
    while not await asyncio.to_thread(release.exists):
        if loop.time() > deadline:
            raise TimeoutError(f"release file {release} never appeared")
        await asyncio.sleep(0.02)
    ctx.data.setdefault("trail", []).append("hold")
    return ctx, "released"


async def finish(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
    """Record the step in the context's trail."""
    ctx.data.setdefault("trail", []).append("finish")
    return ctx, "finished"


PIPELINE: Final = fsmflow.Workflow(PIPELINE_DEFINITION, {"fetch": fetch, "store": store})
GATED: Final = fsmflow.Workflow(GATED_DEFINITION, {"hold": hold, "finish": finish})
NOT_A_WORKFLOW: Final = "cli_pipeline"
