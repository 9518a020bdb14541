"""The worker-fleet fault tests' program: a :class:`fsmflow.Worker` process, or a plain
program on one instance, and the workflows both run.

Run from the repository root with the database in the environment (``DB_HOST`` ...)::

    python -m tests.faults.fleet_program worker [--concurrency N] [--barrier]
    python -m tests.faults.fleet_program program INSTANCE [--barrier]

``worker`` serves every workflow below until SIGTERM/SIGINT and exits with the worker's
``report.exit_code`` (0, or 75 if a step had to be cancelled); ``program`` runs one
instance of the linear workflow with ``workflow.runner(...).run_workflow()`` like any
program (``InstanceLockedError``: exit 1). Both print ``ready`` once connected (with
``--barrier`` they then wait for a line on stdin) and a ``summary {json}`` line at the end.

The workflows, configured from the environment (so ``fsmflow worker
tests.faults.fleet_program:LINEAR`` would run the same steps):

- ``LINEAR``: the fault tests' linear workflow (``tests/faults/worker.py``: name
  ``faults``, states ``s00..``, a hash chain whose final context is known in advance),
  ``FLEET_STATES`` states (6); odd states are sync steps (in a thread), even ones async;
  each sleeps ``FLEET_SLEEP`` (``MIN:MAX`` seconds, the same in every process, from
  ``FLEET_SEED``);
- ``WAIT_EVENT`` (``ask`` -> wait in ``decide`` for an ``approval`` event -> ``done``) and
  ``WAIT_DEADLINE`` (the same, or the ``expired`` timeout after
  :data:`DEADLINE_SECONDS`).

A step whose ``instance:state`` (or ``*:state``) is listed in ``FLEET_GATED`` waits, after
its sleep, until the file ``FLEET_GATE`` exists: it stays in flight until the test lets it
go, so a kill or a signal lands inside it without any race.

Every step writes to the ledger ``FLEET_LEDGER`` (the format of ``tests/faults/worker.py``,
appended with ``O_APPEND`` and fsync'd, so lines of all processes keep their order): a
``start`` line before its work and an ``end`` line after it (``abort`` when an async step
is cancelled), with the seq the state entry started after (``fsmflow.step_info().seq``)
and the attempt; and the runner's listener writes a ``rec`` line once the row that ends a
state entry is committed (the acknowledgement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from fsmflow import (
    DBConfig,
    RunnerEvent,
    Store,
    Transition,
    Worker,
    WorkerReport,
    Workflow,
    WorkflowContext,
    WorkflowDefinition,
    run_program,
    step_info,
)
from fsmflow.engine.runner import PersistentWorkflowStateMachine

from .worker import Ledger, advance, definition, state_names, step_seconds

logger = logging.getLogger("tests.faults.fleet_program")

DEFAULT_STATES: Final = 6
DEADLINE_SECONDS: Final = 5.0  # long enough that a test stops worker A well before it
GATE_POLL_SECONDS: Final = 0.02
WAIT_STATES: Final = ("ask", "done")
StepFunction = Callable[[WorkflowContext], Any]


@dataclass(frozen=True)
class FleetConfig:
    """What the steps do, from the ``FLEET_*`` environment variables."""

    ledger: str | None = None
    states: int = DEFAULT_STATES
    sleep: tuple[float, float] = (0.02, 0.08)
    seed: int = 0
    gate: str | None = None
    gated: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @classmethod
    def from_env(cls) -> FleetConfig:
        """The configuration of this process."""
        low, high = (float(x) for x in os.environ.get("FLEET_SLEEP", "0.02:0.08").split(":"))
        gated = (
            tuple(item.rsplit(":", 1))
            for item in os.environ.get("FLEET_GATED", "").split(",")
            if item
        )
        return cls(
            ledger=os.environ.get("FLEET_LEDGER") or None,
            states=int(os.environ.get("FLEET_STATES", str(DEFAULT_STATES))),
            sleep=(low, high),
            seed=int(os.environ.get("FLEET_SEED", "0")),
            gate=os.environ.get("FLEET_GATE") or None,
            gated=frozenset((i, s) for i, s in gated),
        )

    def env(self) -> dict[str, str]:
        """The environment variables that give a child process this configuration."""
        found = {
            "FLEET_STATES": str(self.states),
            "FLEET_SLEEP": f"{self.sleep[0]}:{self.sleep[1]}",
            "FLEET_SEED": str(self.seed),
            "FLEET_GATED": ",".join(f"{i}:{s}" for i, s in sorted(self.gated)),
        }
        if self.ledger:
            found["FLEET_LEDGER"] = self.ledger
        if self.gate:
            found["FLEET_GATE"] = self.gate
        return found


# -- the workflows -----------------------------------------------------------------------


def linear_definition(states: int = DEFAULT_STATES) -> WorkflowDefinition:
    """The linear workflow (``faults``: ``s00 -> s01 -> ...``) with ``states`` states."""
    return definition(state_names(states))


def wait_definition(name: str, *, deadline: float | None) -> WorkflowDefinition:
    """``ask`` -> waits in ``decide`` for ``approval`` (or ``deadline`` s) -> ``done``."""
    transitions = [
        Transition("asked", "ask", "decide"),
        Transition("approved", "decide", "done", event="approval"),
        Transition("finished", "done", None),
    ]
    if deadline is not None:
        transitions.insert(2, Transition("expired", "decide", "done", timeout=deadline))
    return WorkflowDefinition(name=name, steps=["ask", "decide", "done"], transitions=transitions)


WAIT_EVENT_DEFINITION: Final = wait_definition("fleet_wait_event", deadline=None)
WAIT_DEADLINE_DEFINITION: Final = wait_definition("fleet_wait_deadline", deadline=DEADLINE_SECONDS)


class LedgerWorkflow(Workflow):
    """A :class:`fsmflow.Workflow` whose runners (a worker's or a program's) write a ``rec``
    line to the ledger each time a row that ends a state entry is committed."""

    def __init__(self, definition: WorkflowDefinition, steps: Any, ledger: Ledger | None):
        super().__init__(definition, steps)
        self.ledger = ledger

    def runner(self, db: DBConfig | Store, **options: Any) -> PersistentWorkflowStateMachine:
        """A runner like :meth:`fsmflow.Workflow.runner`'s, with the ledger's listener."""
        listeners = [*options.pop("listeners", ()), self._recorded]
        return super().runner(db, listeners=listeners, **options)

    def _recorded(self, event: RunnerEvent) -> None:
        if event.point == "transition_recorded" and self.ledger is not None:
            # event.seq is the committed row's; the entry it ends began one row earlier.
            entry = event.seq - 1
            self.ledger.write("rec", event.instance_id, entry, event.state, str(event.seq))


class Steps:
    """The steps of one process: ledger lines around the work, sleeps and gates."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.ledger = Ledger(config.ledger) if config.ledger else None

    def note(self, kind: str, state: str) -> None:
        """A ledger line for the running step (``start``, ``end``, ``abort``)."""
        if self.ledger is not None:
            info = step_info()
            self.ledger.write(kind, info.instance_id, info.seq, state, str(info.attempt))

    def _gated(self, state: str) -> bool:
        instance = step_info().instance_id
        gated = self.config.gated
        return self.config.gate is not None and bool({(instance, state), ("*", state)} & gated)

    def _opened(self) -> bool:
        return self.config.gate is not None and os.path.exists(self.config.gate)

    def _seconds(self, state: str) -> float:
        low, high = self.config.sleep
        return step_seconds(self.config.seed, step_info().instance_id, state, low, high)

    def linear(self) -> dict[str, StepFunction]:
        """One step per state of the linear workflow: odd states sync, even async."""
        return {
            state: self._sync(state, self._sync_advance)
            if i % 2
            else self._async(state, self._async_advance)
            for i, state in enumerate(state_names(self.config.states))
        }

    def waits(self) -> dict[str, StepFunction]:
        """``ask`` and ``done`` of the waiting workflows (async)."""
        return {state: self._async(state, self._async_mark) for state in WAIT_STATES}

    @staticmethod
    def _async(state: str, body: Callable[[str, WorkflowContext], Awaitable[Any]]) -> StepFunction:
        async def execute(ctx: WorkflowContext) -> Any:
            return await body(state, ctx)

        execute.__name__ = f"step_{state}"
        return execute

    @staticmethod
    def _sync(state: str, body: Callable[[str, WorkflowContext], Any]) -> StepFunction:
        def execute(ctx: WorkflowContext) -> Any:
            return body(state, ctx)

        execute.__name__ = f"step_{state}"
        return execute

    async def _async_work(self, state: str) -> None:
        self.note("start", state)
        try:
            await asyncio.sleep(self._seconds(state))
            await self._through_gate(state)
        except asyncio.CancelledError:
            self.note("abort", state)
            raise
        self.note("end", state)

    async def _through_gate(self, state: str) -> None:
        # The gate is a file another process creates: polled, there is no event to await.
        while self._gated(state):
            if self._opened():
                return
            await asyncio.sleep(GATE_POLL_SECONDS)

    async def _async_advance(self, state: str, ctx: WorkflowContext) -> tuple[Any, None]:
        await self._async_work(state)
        return WorkflowContext(data=advance(ctx.data, state)), None

    async def _async_mark(self, state: str, ctx: WorkflowContext) -> tuple[Any, None]:
        await self._async_work(state)
        ctx.data.setdefault("visited", []).append(state)
        return ctx, None

    def _sync_advance(self, state: str, ctx: WorkflowContext) -> tuple[Any, None]:
        self.note("start", state)
        try:
            time.sleep(self._seconds(state))
            while self._gated(state) and not self._opened():
                time.sleep(GATE_POLL_SECONDS)
            data = advance(ctx.data, state)
        finally:  # a sync step cannot be cancelled: it always runs to its end
            self.note("end", state)
        return WorkflowContext(data=data), None


def workflows(config: FleetConfig) -> tuple[LedgerWorkflow, LedgerWorkflow, LedgerWorkflow]:
    """``LINEAR``, ``WAIT_EVENT``, ``WAIT_DEADLINE`` for ``config``."""
    steps = Steps(config)
    return (
        LedgerWorkflow(linear_definition(config.states), steps.linear(), steps.ledger),
        LedgerWorkflow(WAIT_EVENT_DEFINITION, steps.waits(), steps.ledger),
        LedgerWorkflow(WAIT_DEADLINE_DEFINITION, steps.waits(), steps.ledger),
    )


LINEAR, WAIT_EVENT, WAIT_DEADLINE = workflows(FleetConfig.from_env())


# -- the processes -----------------------------------------------------------------------


async def _connected(db: DBConfig, barrier: bool) -> None:
    await db.store.open()
    print("ready", flush=True)
    if barrier:
        await asyncio.to_thread(sys.stdin.readline)


async def serve(concurrency: int, barrier: bool, result: dict[str, Any]) -> None:
    """Run a worker of every workflow until SIGTERM; its report goes into ``result``."""
    db = DBConfig()
    try:
        worker = Worker(db, [LINEAR, WAIT_EVENT, WAIT_DEADLINE], concurrency=concurrency)
        await _connected(db, barrier)
        report: WorkerReport = await worker.run()
    finally:
        await db.close()
    result.update(asdict(report), exit_code=report.exit_code, worker_id=worker.worker_id)


async def program(instance: str, barrier: bool, result: dict[str, Any]) -> None:
    """Run one submitted instance of ``LINEAR`` as a plain program would."""
    db = DBConfig()
    try:
        await _connected(db, barrier)
        state = await LINEAR.runner(db, instance_id=instance).run_workflow()
    finally:
        await db.close()
    result.update(status=state.status, seq=state.seq, exit_code=0)


def main(argv: Sequence[str]) -> int:
    """Parse, run, print the summary; the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("worker", "program"))
    parser.add_argument("instance", nargs="?", help="program: the instance to run")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--barrier", action="store_true", help="start on a line on stdin")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    if args.mode == "worker":
        code = run_program(serve(args.concurrency, args.barrier, result))
    elif args.instance:
        code = run_program(program(args.instance, args.barrier, result))
    else:
        parser.error("program needs an INSTANCE")
    print("summary " + json.dumps(result), flush=True)
    # run_program says 0 for a run that returned; the worker's own code may be 75.
    return code or int(result.get("exit_code", 0))


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("fsmflow.worker").setLevel(logging.INFO)
    sys.exit(main(sys.argv[1:]))
