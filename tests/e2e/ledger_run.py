"""Run ``examples/support_ticket.py`` with every step execution written to a ledger file.

Test instrumentation for the crash tests, kept out of the example: this script imports the
example module, wraps each of its steps, and runs its ``main``. Before a step's body runs,
one line ``<pid> <seq> <state>`` is appended to the file named by ``E2E_LEDGER``, flushed
and fsync'd, so the line survives a SIGKILL that follows immediately. ``seq`` is the seq of
the instance's last committed row when the step started (a runner listener tracks it): the
step's own row, if it gets committed, is ``seq + 1``.

``E2E_HOLD=<state>:<seconds>`` makes that state's step wait that long after its ledger
line and before its body (``time.sleep`` in a sync step, ``asyncio.sleep`` in an async one),
so a test can signal the process while that step is surely in flight.

Usage: ``E2E_LEDGER=/path/ledger python tests/e2e/ledger_run.py [support_ticket options]``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from fsmflow import RunnerEvent, WorkflowContext, run_program

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as module ``name`` (examples are not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Ledger:
    """Appends ``<pid> <seq> <state>`` lines, durably, before each step execution."""

    def __init__(self, path: str, hold: str = "") -> None:
        self.path = path
        self.seq = -1
        state, _, seconds = hold.partition(":")
        self.hold_state, self.hold_seconds = state, float(seconds or 0)

    def listener(self, event: RunnerEvent) -> None:
        if event.point == "step_started":
            self.seq = event.seq

    def write(self, state: str) -> None:
        line = f"{os.getpid()} {self.seq} {state}\n".encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def wrap(self, state: str, step: Any) -> Any:
        """``step`` with a ledger line written first; sync stays sync, async stays async."""
        if inspect.iscoroutinefunction(step):

            async def async_step(ctx: WorkflowContext) -> Any:
                self.write(state)
                if state == self.hold_state:
                    await asyncio.sleep(self.hold_seconds)
                return await step(ctx)

            return async_step

        def sync_step(ctx: WorkflowContext) -> Any:
            self.write(state)
            if state == self.hold_state:
                time.sleep(self.hold_seconds)
            return step(ctx)

        return sync_step


def main() -> int:
    example = load_example("support_ticket")
    ledger = Ledger(os.environ["E2E_LEDGER"], os.environ.get("E2E_HOLD", ""))
    steps = {state: ledger.wrap(state, step) for state, step in example.STEPS.items()}
    example.configure_logging()
    options = example.parse_args()
    return run_program(example.main(options, steps=steps, listeners=[ledger.listener]))


if __name__ == "__main__":
    raise SystemExit(main())
