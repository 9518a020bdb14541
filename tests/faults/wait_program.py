"""Programs for the durable-wait fault tests: a runner that dies at a chosen point of a
delivery, a counter that loops on events, and event senders.

Run from the repository root with the database in the environment:

* ``python -m tests.faults.wait_program review LEDGER INSTANCE`` runs workflow ``review``:
  ``prepare`` (a step) -> ``review`` (waits for event ``approval``; ``{"ok": true}`` takes
  it on) -> ``publish`` (a step) -> completed, waiting in-process. ``WAIT_EXIT_AT`` makes
  it ``os._exit(70)`` at one point: ``POINT:STATE`` for a :class:`RunnerEvent` (e.g.
  ``transition_recorded:prepare``: the waiting row is committed, nothing read yet;
  ``transition_recorded:review``: the delivery row is committed, the next step not
  started), or ``condition`` (the event was read and its payload is being judged: nothing
  recorded). ``WAIT_HOLD_FILE``: ``prepare`` waits until that file exists.
* ``python -m tests.faults.wait_program counter LEDGER INSTANCE N`` runs workflow
  ``counter``: ``inbox`` waits for event ``item``; ``count`` appends its payload to
  ``seen`` and goes back to ``inbox`` until it has ``N`` items, then completes.
* ``python -m tests.faults.wait_program send WORKFLOW INSTANCE EVENT FIRST COUNT [GATE]``
  connects, waits for file ``GATE`` (if given), then sends ``COUNT`` events one after the
  other, payload ``{"n": i, "by": pid}``, with key ``k<i>`` when ``GATE`` is given (racing
  senders) and none otherwise; prints one JSON line per send.

Every step execution appends ``start <instance> <state>`` to ``LEDGER`` (fsync'd).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Final

from fsmflow import (
    Condition,
    DBConfig,
    PersistentWorkflowStateMachine,
    RunnerEvent,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    run_program,
)
from tests.faults.waits_program import note

EXIT_CODE: Final = 70
EXIT_AT: Final = os.environ.get("WAIT_EXIT_AT", "")
HOLD_FILE: Final = os.environ.get("WAIT_HOLD_FILE")


def die(where: str) -> None:
    """Hard exit, like ``kill -9``: no cleanup, no unlock, no goodbye to the server."""
    print(f"exiting at {where}", file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)


def wait_for_file(path: Path, pause: float) -> None:
    """Block until ``path`` exists (in a thread: the event loop goes on)."""
    while not path.exists():
        time.sleep(pause)


def approved(ok: Any) -> bool:
    """The condition of ``review``'s transition; the ``condition`` exit point."""
    if EXIT_AT == "condition":
        die("condition")
    return ok is True


REVIEW: Final = WorkflowDefinition(
    name="review",
    steps=["prepare", "review", "publish"],
    transitions=[
        Transition("ready", "prepare", "review"),
        Transition(
            "approved",
            "review",
            "publish",
            [Condition(field="approval.ok", operator="custom", custom_function=approved)],
            event="approval",
        ),
        Transition("done", "publish", None),
    ],
)

COUNTER: Final = WorkflowDefinition(
    name="counter",
    steps=["inbox", "count"],
    transitions=[
        Transition("got", "inbox", "count", event="item"),
        Transition("more", "count", "inbox"),
        Transition("finished", "count", None),
    ],
)


def exit_listener(event: RunnerEvent) -> None:
    """``os._exit`` at the point ``WAIT_EXIT_AT`` names."""
    if f"{event.point}:{event.state}" == EXIT_AT:
        die(f"{EXIT_AT} (seq {event.seq})")


async def run_review(config: DBConfig, ledger: Path, instance: str) -> None:
    async def prepare(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        note(ledger, f"start {instance} prepare")
        if HOLD_FILE:
            await asyncio.to_thread(wait_for_file, Path(HOLD_FILE), 0.02)
        ctx.data["prepared"] = True
        return ctx, None

    async def publish(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
        note(ledger, f"start {instance} publish")
        ctx.data["published"] = ctx.data["approval"]
        return ctx, None

    machine = PersistentWorkflowStateMachine(
        config, REVIEW, steps={"prepare": prepare, "publish": publish}, instance_id=instance,
        wait=True, lock_timeout=60, listeners=[exit_listener],
    )  # fmt: skip
    state = await machine.run_workflow()
    print(f"{state.status} {instance}", flush=True)


async def run_counter(config: DBConfig, ledger: Path, instance: str, wanted: int) -> None:
    async def count(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        note(ledger, f"start {instance} count")
        ctx.data.setdefault("seen", []).append(ctx.data["item"]["n"])
        return ctx, "finished" if len(ctx.data["seen"]) >= wanted else "more"

    machine = PersistentWorkflowStateMachine(
        config, COUNTER, steps={"count": count}, instance_id=instance, wait=True,
        lock_timeout=60,
    )  # fmt: skip
    state = await machine.run_workflow()
    print(f"{state.status} {instance}", flush=True)


async def send(config: DBConfig, args: list[str]) -> None:
    workflow, instance, event, first, count = args[0], args[1], args[2], int(args[3]), int(args[4])
    gate = Path(args[5]) if len(args) > 5 else None
    store = config.store
    await store.open()
    print("connected", flush=True)
    if gate is not None:  # spin: both senders leave the gate within a millisecond
        await asyncio.to_thread(wait_for_file, gate, 0.001)
    for i in range(first, first + count):
        key = f"k{i}" if gate is not None else None
        payload = {"n": i, "by": os.getpid()}
        sent = await store.send_event(workflow, instance, event, payload, key=key)
        line = {"n": i, "event_id": sent.event.event_id, "duplicate": sent.duplicate}
        print(json.dumps(line), flush=True)


async def main(argv: list[str]) -> None:
    config = DBConfig()
    try:
        if argv[0] == "review":
            await run_review(config, Path(argv[1]), argv[2])
        elif argv[0] == "counter":
            await run_counter(config, Path(argv[1]), argv[2], int(argv[3]))
        else:
            await send(config, argv[1:])
    finally:
        await config.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sys.exit(run_program(main(sys.argv[1:])))
