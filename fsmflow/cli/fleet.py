"""The ``fsmflow`` commands of the worker fleet: submit, worker and workers.

``submit`` writes an instance for the workers without running it; ``worker`` is one
process of the fleet (:class:`~fsmflow.Worker`) and runs until SIGTERM/SIGINT;
``workers`` lists the live ones from the database. Which worker runs an instance is
shown by ``list`` and ``show`` (:mod:`fsmflow.cli.instances`). Handlers follow the CLI
convention (see :mod:`fsmflow.cli.main`): ``async def handler(args, config) -> int``;
results go to stdout, logs to stderr. Context values are never printed or logged.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from fsmflow.cli.arguments import (
    bounded,
    command_parser,
    definition_change_flag,
    definition_of,
    identifier,
    json_flag,
    json_object,
    load_target,
)
from fsmflow.cli.output import age, dumps, say, table
from fsmflow.engine.shutdown import EXIT_OK
from fsmflow.engine.worker import DEFAULT_CONCURRENCY, Worker
from fsmflow.engine.workflow import Workflow
from fsmflow.errors import ConfigError
from fsmflow.model.definition import WorkflowDefinition
from fsmflow.model.records import WorkerInfo
from fsmflow.settings import DBConfig

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Commands

logger = logging.getLogger("fsmflow.cli")

WORKFLOW_EXAMPLE: Final = "examples.support_ticket:WORKFLOW"
MAX_CONCURRENCY: Final = 10_000  # instances one worker runs at once; far above sane use
ID_SHOWN: Final = 8  # characters of a worker id in the table (--json has all)


# -- submit ------------------------------------------------------------------------------


def add_submit(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow submit``."""
    parser = command_parser(
        commands, common, epilog, "submit", "start an instance for the workers to run",
        "Start an instance of a workflow for the worker fleet (`fsmflow worker`) without "
        "running it here: seq 0 (trigger fsmflow:submit) and its queue entry are one "
        "durable write, and the workers are woken. MODULE:ATTRIBUTE (importable from the "
        "current directory) names a fsmflow.Workflow or a WorkflowDefinition, e.g. "
        f"{WORKFLOW_EXAMPLE}. Prints the instance id (--json: the workflow and the id). "
        "Refused with nothing written: an --id that exists (InstanceExistsError, exit 1), "
        "a context that breaks the context rules or size cap (exit 1), a context that is "
        "not a JSON object (exit 2).",
    )  # fmt: skip
    parser.add_argument("target", metavar="MODULE:ATTRIBUTE", help="the Workflow or definition")
    parser.add_argument("--id", type=identifier, help="the instance id (default: a new one)")
    parser.add_argument(
        "--context",
        type=json_object,
        metavar="JSON",
        help="the initial context, a JSON object: as text, @FILE to read it from a file, "
        "or - to read it from standard input (default: {})",
    )
    json_flag(parser)
    parser.set_defaults(handler=submit_command)


async def submit_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Submit; print the new instance's id."""
    found = load_target(args.target, "the workflow", WORKFLOW_EXAMPLE)
    definition = definition_of(found, args.target)
    instance_id = await config.store.submit(definition, args.context, instance_id=args.id)
    logger.info(
        "submitted instance %r of workflow %r to table %s: a worker serving %r runs it",
        instance_id, definition.name, config.store.qualified_table, definition.name,
    )  # fmt: skip
    if args.json:
        print(dumps({"workflow": definition.name, "instance_id": instance_id}))
    else:
        say(instance_id)
    return EXIT_OK


# -- worker ------------------------------------------------------------------------------


def add_worker(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow worker``."""
    parser = command_parser(
        commands, common, epilog, "worker", "run submitted instances until SIGTERM",
        "Run the submitted instances of the given workflows that nobody runs, at most "
        "--concurrency at a time, oldest ready first, until SIGTERM or SIGINT. Each "
        "MODULE:ATTRIBUTE (importable from the current directory) must name a "
        "fsmflow.Workflow (a definition and its steps), e.g. "
        f"{WORKFLOW_EXAMPLE}. Start as many workers as you like, on any machines: each "
        "instance runs in one worker at a time. A worker is woken by submissions, events "
        "and retries, and every FSMFLOW_WORKER_SWEEP_SECONDS (default 2) by its sweep: "
        "it heartbeats, takes over the instances of workers that died (session gone, or "
        "no heartbeat for FSMFLOW_WORKER_STALE_SECONDS) and finds due deadlines. On "
        "SIGTERM (or SIGINT) it stops claiming, lets running steps finish within "
        "FSMFLOW_SHUTDOWN_GRACE_SECONDS (default 20) and records them, gives its claims "
        "back (the other workers take them at once) and exits 0; 75 if a step had to be "
        "cancelled at the end of the grace period (that step runs again in the worker "
        "that takes the instance next). A second signal cancels running steps at once. "
        "Exit 2 for a target that is not a fsmflow.Workflow.",
    )  # fmt: skip
    parser.add_argument(
        "targets",
        metavar="MODULE:ATTRIBUTE",
        nargs="+",
        help="a fsmflow.Workflow to serve (repeatable: one worker may serve several)",
    )
    parser.add_argument(
        "--concurrency",
        type=bounded(1, MAX_CONCURRENCY),
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"instances run at once (default {DEFAULT_CONCURRENCY})",
    )
    definition_change_flag(parser)
    parser.set_defaults(handler=worker_command)


async def worker_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Run a worker until it is stopped; 0, or 75 if a step had to be cancelled."""
    workflows = [load_workflow(target) for target in args.targets]
    worker = Worker(
        config,
        workflows,
        concurrency=args.concurrency,
        allow_definition_change=args.allow_definition_change,
    )
    store = config.store
    logger.info(
        "fsmflow worker %s serving %s, concurrency %d, table %s at %s",
        worker.worker_id[:ID_SHOWN], _served(workflows, args.targets), args.concurrency,
        store.qualified_table, store.target,
    )  # fmt: skip
    report = await worker.run()
    return report.exit_code


def load_workflow(target: str) -> Workflow:
    """The :class:`~fsmflow.Workflow` at ``module:attribute`` (:class:`ConfigError` if not)."""
    found = load_target(target, "the workflow", WORKFLOW_EXAMPLE)
    if isinstance(found, WorkflowDefinition):
        raise ConfigError(
            f"{target!r} is a WorkflowDefinition: a worker needs its steps too; wrap it as "
            "fsmflow.Workflow(DEFINITION, STEPS) in your module and name that"
        )
    if not isinstance(found, Workflow):
        raise ConfigError(f"{target!r} is a {type(found).__name__}, not a fsmflow.Workflow")
    return found


def _served(workflows: Sequence[Workflow], targets: Sequence[str]) -> str:
    return ", ".join(f"{w.name!r} ({t})" for w, t in zip(workflows, targets, strict=True))


# -- workers -----------------------------------------------------------------------------


def add_workers(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow workers``."""
    parser = command_parser(
        commands, common, epilog, "workers", "the live workers of the fleet",
        "List the live workers (`fsmflow worker` processes) of this table, oldest first, "
        "as the database knows them: id, host, pid, the workflows each serves, instances "
        "running (as of its last heartbeat) out of its concurrency, instances finished, "
        "when it started and when it last heartbeated. A worker that died is gone from "
        "the list once its session is (or once its heartbeat is older than "
        "FSMFLOW_WORKER_STALE_SECONDS).",
    )  # fmt: skip
    json_flag(parser)
    parser.set_defaults(handler=workers_command)


async def workers_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print the live workers."""
    store = config.store
    found = await store.list_workers()  # a role that may not read them: the store says so
    if args.json:
        print(dumps([worker.to_dict() for worker in found]))
    elif not found:
        say(f"no live workers for table {store.qualified_table}")
    else:
        say(workers_table(found))
        stopping = [w.worker_id[:ID_SHOWN] for w in found if w.stopping]
        if stopping:
            say(f"stopping (claiming nothing new): {', '.join(stopping)}")
    return EXIT_OK


def workers_table(workers: Sequence[WorkerInfo], now: datetime | None = None) -> str:
    """The ``fsmflow workers`` table."""
    now = now or datetime.now(UTC)
    rows = [
        (
            w.worker_id[:ID_SHOWN],
            w.host,
            str(w.pid),
            ", ".join(w.workflows),
            f"{w.running}/{w.concurrency}",
            str(w.finished),
            age(w.started_at, now) + " ago",
            age(w.heartbeat_at, now) + " ago",
        )
        for w in workers
    ]
    headers = (
        "WORKER", "HOST", "PID", "WORKFLOWS", "RUNNING", "FINISHED", "STARTED", "HEARTBEAT",
    )  # fmt: skip
    return table(headers, rows, right=(2, 4, 5, 6, 7))
