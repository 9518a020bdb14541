"""One run of a crash test, in a process of its own: ``python -m fsmflow.testing._child``.

It reads its order from stdin (JSON: ``target``, ``steps``, ``instance_id``, ``context``,
``kill``, ``result``, ``env``), or is forked with it by :mod:`fsmflow.testing._forkserver`;
its database comes from the environment (``DB_*``, ``FSMFLOW_TABLE`` ...,
never a ``.env`` file), runs or resumes the instance until it completes, fails or waits,
and writes what it saw to the ``result`` file: the outcome (status, state, context, and
the error's type if the run raised one) and the boundaries it passed. With ``kill`` it
SIGKILLs itself at that boundary instead, and writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fsmflow.engine.runner import PersistentWorkflowStateMachine
from fsmflow.engine.steps import normalize_steps
from fsmflow.errors import FsmflowError
from fsmflow.model.records import WorkflowState
from fsmflow.settings import DBConfig
from fsmflow.testing._probe import Point, Probe
from fsmflow.testing._target import load_workflow

# Long enough for the server to notice that a killed process's session is gone.
LOCK_TIMEOUT = 30.0


async def run(order: dict[str, Any]) -> dict[str, Any]:
    """Run the ordered instance; what the result file holds."""
    definition, steps = load_workflow(order["target"], order.get("steps"))
    kill = None if order.get("kill") is None else Point.from_json(order["kill"])
    probe = Probe(kill)
    instance_id = order["instance_id"]
    config = DBConfig(_env_file=None)
    error = None
    try:
        runner = PersistentWorkflowStateMachine(
            config,
            definition,
            steps=probe.wrap(normalize_steps(steps)),
            instance_id=instance_id,
            wait=True,
            lock_timeout=LOCK_TIMEOUT,
            handle_signals=False,
            listeners=[probe.listen],
        )
        try:
            await runner.run_workflow(context=order.get("context"), suspend=True)
        except FsmflowError as exc:
            error = f"{type(exc).__name__}: {exc}"
        record = await config.store.last_record(definition.name, instance_id)
    finally:
        await config.close()
    if record is None:
        raise RuntimeError(f"instance {instance_id!r} has no history: {error}")
    state = WorkflowState.from_record(record)
    outcome = {
        "status": state.status,
        "state": state.current_state,
        "context": state.context.data,
        "error": None if error is None else error.split(":", 1)[0],
    }
    return {
        "workflow": definition.name,
        "outcome": outcome,
        "error": error,
        "passed": [p.as_json() for p in probe.passed],
    }


def execute(order: dict[str, Any]) -> int:
    """Run ``order`` in this process (its ``env`` applied first) and write the result
    file; 0 once it is written (a killed run never returns)."""
    os.environ.update(order.get("env", {}))
    result = asyncio.run(run(order))
    Path(order["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


def configure_logging() -> None:
    """Warnings and errors of the run go to stderr (the kit keeps its end)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> int:
    """Run the order on stdin (one fresh interpreter per run)."""
    configure_logging()
    return execute(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    raise SystemExit(main())
