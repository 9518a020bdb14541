"""The ``fsmflow`` sub-commands about instances: list, show, graph, fork, retry, cancel, prune.

Handlers follow the CLI convention (see :mod:`fsmflow.cli`): ``async def handler(args,
config) -> int``. They print results on stdout (a table, or JSON with ``--json``); logs
go to stderr. Only prune deletes (finished instances, and asks first): fork writes a new
instance, retry and cancel append one row.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from fsmflow.cli.arguments import (
    assignment,
    command_parser,
    definition_change_flag,
    duration,
    duration_text,
    identifier,
    instance_arguments,
    json_flag,
    load_definition,
    positive,
    seq_number,
    text_assignment,
    yes_flag,
)
from fsmflow.cli.output import (
    dumps,
    history_notes,
    history_table,
    instances_table,
    jsonable,
    printable_lines,
    record_json,
    say,
    timestamp,
    worker_line,
)
from fsmflow.cli.waits import pending_json, pending_lines, wait_lines, wait_of
from fsmflow.engine.machine import WorkflowMachine
from fsmflow.engine.shutdown import EXIT_OK
from fsmflow.errors import InstanceNotFoundError, PermissionDeniedError
from fsmflow.model.records import (
    STATUSES,
    TERMINAL_STATUSES,
    InstanceSummary,
    PruneResult,
    TransitionRecord,
    WorkerInfo,
    WorkflowState,
)
from fsmflow.settings import DBConfig

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Commands

logger = logging.getLogger("fsmflow.cli")

Key = tuple[str, str]
SAMPLE_SIZE: Final = 20  # instances a prune shows (its dry run lists them)
PENDING_SHOWN: Final = 100  # pending events show lists, oldest first


# -- list, show, graph -------------------------------------------------------------------


def add_list(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow list``."""
    parser = command_parser(
        commands, common, epilog, "list", "list instances, newest first",
        "List instances, newest first: status (running, waiting, completed, failed, "
        "cancelled), current state, last seq, how long ago each started and was last "
        "updated, and the worker (host:pid) running it if one of the fleet's workers does "
        "(with --json: that worker's row as `fsmflow workers --json` shows it, or null).",
    )  # fmt: skip
    parser.add_argument("--workflow", type=identifier, help="only this workflow")
    parser.add_argument(
        "--status", action="append", choices=STATUSES, help="only this status (repeatable)"
    )
    parser.add_argument("--limit", type=positive, default=50, help="at most this many (50)")
    json_flag(parser)
    parser.set_defaults(handler=list_command)


async def list_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print the newest instances."""
    store = config.store
    found = await store.list_instances(args.workflow, status=args.status, limit=args.limit + 1)
    shown = found[: args.limit]
    workers = await running_workers(config, [s for s in shown if s.status not in TERMINAL_STATUSES])
    if args.json:
        print(dumps([{**jsonable(s), "worker": _worker_json(workers, s)} for s in shown]))
    elif not shown:
        say(f"no instances in table {store.qualified_table}")
    else:
        say(instances_table(shown, workers))
        if len(found) > args.limit:
            say(f"(only the newest {args.limit} shown: raise --limit to see more)")
    return EXIT_OK


def _worker_json(workers: dict[Key, WorkerInfo], s: InstanceSummary) -> dict[str, Any] | None:
    found = workers.get((s.workflow_name, s.instance_id))
    return None if found is None else found.to_dict()


async def running_workers(
    config: DBConfig, instances: Sequence[InstanceSummary | TransitionRecord]
) -> dict[Key, WorkerInfo]:
    """The live worker running each of these (unfinished) instances, where one does.

    A role that may not read the fleet's tables (a deployment without workers needs no
    grant on them) gets a warning and no worker, not a failed ``list`` or ``show``.
    """
    keys = [(i.workflow_name, i.instance_id) for i in instances]
    if not keys:
        return {}
    try:
        return await config.store.instance_workers(keys)
    except PermissionDeniedError:
        fleet = config.store.fleet
        logger.warning(
            "the database role may not read the worker fleet's tables %s and %s, so no "
            "worker is shown: GRANT SELECT ON them to see which worker runs what",
            fleet.queue_table, fleet.workers_table,
        )  # fmt: skip
        return {}


def add_show(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow show`` (alias ``history``)."""
    parser = command_parser(
        commands, common, epilog, "show", "one instance's transitions, in order",
        "Show one instance's transitions in order. Context values are not printed: the "
        "table shows each context's key count and size, and the keys of the latest one. "
        "--context prints the values too (also with --json). Stored error messages may "
        "quote context values: without --errors (or --context) only the error type, the "
        "attempts and where it was raised are shown. For a waiting instance: the events "
        "and timeouts it waits for, since when, its deadlines; for an unfinished one, the "
        "events sent to it and not delivered yet (their payloads only with --context); "
        "for one a worker of the fleet runs, that worker (host, pid and id).",
        aliases=["history"],
    )  # fmt: skip
    instance_arguments(parser)
    parser.add_argument(
        "--context", action="store_true", help="also print context values (may be sensitive)"
    )
    parser.add_argument(
        "--errors", action="store_true", help="also print stored error messages (may quote values)"
    )
    json_flag(parser)
    parser.set_defaults(handler=show_command)


async def show_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print an instance's history (and its wait and pending events)."""
    records = await config.store.history(args.workflow, args.instance)
    if not records:
        raise InstanceNotFoundError(
            args.workflow, args.instance, "no such instance; `fsmflow list` shows the instances"
        )
    last = records[-1]
    state = WorkflowState.from_record(last).current_state
    wait = wait_of(records)
    pending = [] if last.terminal else await config.store.instance_events(
        args.workflow, args.instance, pending_only=True, limit=PENDING_SHOWN + 1
    )  # fmt: skip
    runs = await running_workers(config, [] if last.terminal else [last])
    worker = runs.get((args.workflow, args.instance))
    if args.json:
        shown = args.errors or args.context
        rows = [record_json(r, with_context=args.context, with_errors=shown) for r in records]
        head = {"workflow_name": args.workflow, "instance_id": args.instance}
        events = [pending_json(e, with_payload=args.context) for e in pending[:PENDING_SHOWN]]
        facts = {
            "waiting": wait,
            "pending_events": events,
            "worker": None if worker is None else worker.to_dict(),
        }
        print(dumps({**head, "status": last.status, "current_state": state, **facts, "rows": rows}))
        return EXIT_OK
    say(
        f"workflow {args.workflow!r}, instance {args.instance!r}: {last.status}, state "
        f"{state!r}, seq {last.seq}, started {timestamp(records[0].created_at)} UTC"
    )
    if worker is not None:
        say(worker_line(worker))
    say(history_table(records))
    say("\n".join(history_notes(records, with_errors=args.errors or args.context)))
    if args.context:
        for record in records:
            say(f"context at seq {record.seq}: {json.dumps(record.context, ensure_ascii=False)}")
    if wait is not None:
        say("\n".join(wait_lines(wait)))
    if wait is not None or pending:  # events sent before the instance waits are pending too
        lines = pending_lines(pending, shown=PENDING_SHOWN, with_payloads=args.context)
        say("\n".join(lines))
    return EXIT_OK


def add_graph(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow graph``."""
    parser = command_parser(
        commands, common, epilog, "graph", "Mermaid state diagram of a workflow",
        "Print a Mermaid stateDiagram-v2 of a workflow definition, loaded from "
        "MODULE:ATTRIBUTE (importable from the current directory), e.g. "
        "examples.support_ticket:DEFINITION. With --instance, that instance's current "
        "state is highlighted (this reads the database).",
    )  # fmt: skip
    parser.add_argument("target", metavar="MODULE:ATTRIBUTE", help="the WorkflowDefinition")
    parser.add_argument("--instance", type=identifier, help="highlight this instance's state")
    parser.set_defaults(handler=graph_command)


async def graph_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print the Mermaid diagram."""
    definition = load_definition(args.target)
    highlight = None
    if args.instance is not None:
        last = await config.store.last_record(definition.name, args.instance)
        if last is None:
            raise InstanceNotFoundError(definition.name, args.instance, "no such instance")
        highlight = WorkflowState.from_record(last).current_state
    diagram = WorkflowMachine.of(definition).get_graph_mermaid(highlight)
    print(printable_lines(diagram), end="")  # the highlighted state is read from the table
    return EXIT_OK


# -- fork, retry, cancel -----------------------------------------------------------------


def add_fork(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow fork``."""
    parser = command_parser(
        commands, common, epilog, "fork", "start a new instance from another's state",
        "Start a new instance from INSTANCE's row --seq (default: its last row). It "
        "resumes in the state the source was about to run after that row, with that row's "
        "context plus --set overrides. The source's history is not touched. A completion "
        "row cannot be forked (nothing left to run): give an earlier --seq, or --state. "
        "--state resumes the fork in that state instead; --definition makes the fork run "
        "under that definition (its fingerprint and summary), the way out of an "
        "UnknownStateError after a state was dropped from the code. The new instance runs "
        "when a program runs it by id.",
    )  # fmt: skip
    instance_arguments(parser)
    parser.add_argument("--seq", type=seq_number, help="fork from this row (default: the last)")
    parser.add_argument("--new-id", type=identifier, help="id of the new instance (default: new)")
    parser.add_argument(
        "--set",
        type=assignment,
        action="append",
        metavar="KEY=VALUE",
        help="set a top-level context key in the fork (repeatable): VALUE is JSON when it "
        'starts like JSON ([ { " a digit - true false null) and must then parse; else text',
    )
    parser.add_argument(
        "--set-str",
        dest="set",
        type=text_assignment,
        action="append",
        metavar="KEY=TEXT",
        help="set a top-level context key to TEXT as a string, e.g. --set-str code=007",
    )
    parser.add_argument("--state", help="resume the fork in this state (a state of the definition)")
    parser.add_argument(
        "--definition",
        metavar="MODULE:ATTRIBUTE",
        help="the WorkflowDefinition the fork runs under, e.g. examples.support_ticket:DEFINITION",
    )
    definition_change_flag(parser)
    json_flag(parser)
    parser.set_defaults(handler=fork_command)


async def fork_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Fork; print the new instance."""
    record = await config.store.fork_instance(
        args.workflow,
        args.instance,
        seq=args.seq,
        new_instance_id=args.new_id,
        overrides=dict(args.set or []),
        state=args.state,
        definition=None if args.definition is None else load_definition(args.definition),
        allow_definition_change=args.allow_definition_change,
    )
    return _report(
        args,
        record,
        f"forked instance {args.instance!r} at seq {record.forked_from_seq} into instance "
        f"{record.instance_id!r}: its first run by that id starts with the step of state "
        f"{record.dest_state!r}",
    )


def _report(args: argparse.Namespace, record: TransitionRecord, text: str) -> int:
    """Print the row a command wrote: as JSON (without context values) or as ``text``."""
    if args.json:
        print(dumps(record_json(record, with_context=False)))
    else:
        say(text)
    return EXIT_OK


def add_retry(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow retry``."""
    parser = command_parser(
        commands, common, epilog, "retry", "make a failed instance runnable again",
        "Mark a failed instance for retry: append a running row in the state whose step "
        "failed, with the context that step started from. The next run of the instance "
        "(your program, by id or as the latest unfinished one) runs that step again. "
        "Refused while a runner owns the instance, and for an instance that did not fail.",
    )  # fmt: skip
    instance_arguments(parser)
    json_flag(parser)
    parser.set_defaults(handler=retry_command)


async def retry_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Append the retry row."""
    record = await config.store.retry_instance(args.workflow, args.instance)
    return _report(
        args,
        record,
        f"instance {args.instance!r} is marked for retry (seq {record.seq}): its next run "
        f"runs the step of state {record.dest_state!r} again",
    )


def add_cancel(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow cancel``."""
    parser = command_parser(
        commands, common, epilog, "cancel", "end an unfinished instance",
        "Append a cancelled row: the instance ends and runs of it raise "
        "InstanceCancelledError. Refused while a live runner owns the instance (stop it "
        "first), unless it waits there for an event or a deadline (that runner stops with "
        "InstanceCancelledError), and for an instance that already ended. Fork it to run "
        "it again later.",
    )  # fmt: skip
    instance_arguments(parser)
    parser.add_argument("--reason", help="why (stored with the cancelled row)")
    json_flag(parser)
    parser.set_defaults(handler=cancel_command)


async def cancel_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Append the cancelled row."""
    record = await config.store.cancel_instance(args.workflow, args.instance, reason=args.reason)
    return _report(
        args,
        record,
        f"cancelled instance {args.instance!r} at seq {record.seq}, in state {record.dest_state!r}",
    )


# -- prune -------------------------------------------------------------------------------


def add_prune(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow prune``."""
    parser = command_parser(
        commands, common, epilog, "prune", "delete old finished instances (asks first)",
        "Delete the completed, failed and cancelled instances last updated longer ago than "
        "--older-than (by the database server's clock), in batches. Running instances, and "
        "instances a runner owns, are never deleted. --dry-run only shows what would go. "
        "Asks for confirmation on a terminal; without one, --yes is required (else exit 2).",
    )  # fmt: skip
    parser.add_argument(
        "--older-than", type=duration, required=True, metavar="DURATION", help="e.g. 30d, 12h"
    )
    parser.add_argument("--workflow", type=identifier, help="only this workflow")
    parser.add_argument("--dry-run", action="store_true", help="show what would go; delete nothing")
    parser.add_argument("--batch-size", type=positive, default=500, help="instances per batch")
    yes_flag(parser)
    json_flag(parser)
    parser.set_defaults(handler=prune_command, confirm=_prune_question)


def _prune_question(args: argparse.Namespace, config: DBConfig) -> str | None:
    if args.dry_run:
        return None
    scope = f"workflow {args.workflow!r}" if args.workflow else "every workflow"
    return (
        f"prune deletes the completed, failed and cancelled instances of {scope} last "
        f"updated more than {duration_text(args.older_than)} ago from table {config.table!r} "
        f"at {config.display_target()}"
    )


async def prune_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Prune (or list what would be pruned)."""
    sample: list[InstanceSummary] = []

    def progress(batch: Sequence[InstanceSummary], totals: PruneResult) -> None:
        sample.extend(batch[: SAMPLE_SIZE - len(sample)])
        if len(batch) == args.batch_size and not args.json:
            verb = "found" if totals.dry_run else "deleted"
            say(f"{verb} {totals.instances} instances ({totals.rows} rows) so far", file=sys.stderr)

    result = await config.store.prune_instances(
        args.older_than,
        workflow=args.workflow,
        dry_run=args.dry_run,
        batch_size=args.batch_size,
        on_batch=progress,
    )
    if args.json:
        print(dumps({**jsonable(result), "sample": sample if args.dry_run else []}))
    else:
        say("\n".join(_prune_lines(result, sample)))
    return EXIT_OK


def _prune_lines(result: PruneResult, sample: Sequence[InstanceSummary]) -> list[str]:
    cutoff = f"last updated before {timestamp(result.cutoff)} UTC"
    if not result.dry_run:
        lines = [f"deleted {result.instances} instances ({result.rows} rows) {cutoff}"]
        if result.skipped:
            lines.append(f"skipped {result.skipped} (owned by a runner, or retried meanwhile)")
        return lines
    lines = [
        f"dry run: would delete {result.instances} instances ({result.rows} rows) {cutoff}; "
        "nothing was deleted"
    ]
    if sample:
        lines.append(instances_table(sample))
    if result.instances > len(sample):
        lines.append(f"... and {result.instances - len(sample)} more")
    return lines
