"""The ``fsmflow`` sub-commands: each ``add_*`` registers one parser and its handler.

Handlers follow the CLI convention (see :mod:`fsmflow.cli`): ``async def handler(args,
config) -> int``. They print results on stdout (a table, or JSON with ``--json``); logs
and progress go to stderr. Only ``reset-db`` and ``prune`` delete; both ask first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from . import sql
from .cli_output import (
    dumps,
    history_notes,
    history_table,
    instances_table,
    jsonable,
    record_json,
    scrub,
    timestamp,
)
from .definition import WorkflowDefinition, check_identifier
from .errors import ConfigError, FsmflowError, InstanceNotFoundError
from .machine import WorkflowMachine
from .operations import STATUSES
from .records import HealthReport, InstanceSummary, PruneResult, WorkflowState
from .settings import DBConfig
from .shutdown import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from typing import TypeAlias

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    Register: TypeAlias = Callable[[Commands, argparse.ArgumentParser, str], None]

SAMPLE_SIZE: Final = 20
_DURATION: Final = re.compile(r"(\d+)([smhdw])")
_UNITS: Final = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


# -- argument types ----------------------------------------------------------------------


def identifier(value: str) -> str:
    """argparse type: a workflow name or instance id fsmflow can store."""
    try:
        return check_identifier(value, "the name or id")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(value: str) -> timedelta:
    """argparse type: ``30d``, ``12h``, ``90m``, ``1d12h`` (units w, d, h, m, s)."""
    text = value.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration: use e.g. 30d, 12h, 90m or 1d12h"
        )
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def duration_text(span: timedelta) -> str:
    """``timedelta(days=1, hours=12)`` -> ``1d12h``."""
    seconds, out = int(span.total_seconds()), ""
    for unit in "dhms":
        count, seconds = divmod(seconds, _UNITS[unit])
        out += f"{count}{unit}" if count else ""
    return out or "0s"


def assignment(value: str) -> tuple[str, Any]:
    """argparse type: ``KEY=VALUE``; VALUE is parsed as JSON, else taken as a string."""
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r}: use KEY=VALUE (VALUE as JSON, or text)")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def positive(value: str) -> int:
    """argparse type: an integer of at least 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return number


def seq_number(value: str) -> int:
    """argparse type: a seq (an integer of at least 0)."""
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"seq {value} is negative")
    return number


# -- registration helpers ----------------------------------------------------------------


def _command(
    commands: Commands,
    common: argparse.ArgumentParser,
    epilog: str,
    name: str,
    summary: str,
    description: str,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        aliases=list(aliases),
        help=summary,
        description=textwrap.fill(description, 88),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    return parser


def _instance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", metavar="WORKFLOW", type=identifier, help="workflow name")
    parser.add_argument("instance", metavar="INSTANCE", type=identifier, help="instance id")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _yes_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (needed without a TTY)"
    )


# -- init-db, reset-db, check ------------------------------------------------------------


def add_init_db(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow init-db``."""
    parser = _command(
        commands, common, epilog, "init-db", "create the history table if missing",
        "Create the history table (FSMFLOW_TABLE) and its indexes if missing. Idempotent and "
        "safe to run concurrently; needs a role that may CREATE in the schema.",
    )  # fmt: skip
    parser.set_defaults(handler=init_db_command)


async def init_db_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Create the table; print where."""
    await config.init_db()
    store = config.store
    print(
        f"table {store.qualified_table} is ready in {store.target} "
        f"(fsmflow schema version {sql.SCHEMA_VERSION})"
    )
    return EXIT_OK


def add_reset_db(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow reset-db``."""
    parser = _command(
        commands, common, epilog, "reset-db", "delete ALL history (asks first)",
        "Delete every row of the history table: all instances of all workflows. "
        "Irreversible. Asks for confirmation on a terminal; without one, --yes is required "
        "(else exit 2).",
    )  # fmt: skip
    _yes_flag(parser)
    parser.set_defaults(handler=reset_db_command, confirm=_reset_question)


def _reset_question(args: argparse.Namespace, config: DBConfig) -> str:
    return (
        f"reset-db deletes ALL history of every workflow in table {config.table!r} "
        f"at {config.display_target()}"
    )


async def reset_db_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Truncate the table."""
    await config.reset_db()
    store = config.store
    print(f"deleted all history in table {store.qualified_table} at {store.target}")
    return EXIT_OK


def add_check(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow check``."""
    parser = _command(
        commands, common, epilog, "check", "health check: exit 0 healthy, 1 not",
        "Connect and verify what running workflows needs: the table exists with this "
        "schema version, the role may SELECT and INSERT, the server is writable, and "
        "synchronous_commit is on (off is a warning, a failure with "
        "FSMFLOW_STRICT_DURABILITY). Exit 0 healthy, 1 not: usable as a probe. For a fast "
        "answer set FSMFLOW_DB_RETRY_SECONDS=0 and FSMFLOW_CONNECT_TIMEOUT=5.",
    )  # fmt: skip
    _json_flag(parser)
    parser.set_defaults(handler=check_command)


async def check_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print the health report; exit 0 when healthy."""
    try:
        report = await config.store.check_health()
    except FsmflowError as exc:
        if args.json and not isinstance(exc, ConfigError):
            error = scrub(f"{type(exc).__name__}: {exc}", config)
            print(dumps({"healthy": False, "target": config.display_target(), "error": error}))
        raise
    if args.json:
        print(dumps({"healthy": report.healthy, **jsonable(report)}))
    else:
        print("\n".join(_health_lines(report)))
    return EXIT_OK if report.healthy else EXIT_FAILED


def _health_lines(report: HealthReport) -> list[str]:
    verdict = "healthy" if report.healthy else "UNHEALTHY"
    role = "standby (read-only)" if report.in_recovery else "primary"
    schema = "schema version ok" if report.schema_version_ok else "NOT a usable fsmflow table"

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    lines = [
        f"{verdict}: table {report.table} at {report.target}",
        f"  server              PostgreSQL {report.server_version} ({role})",
        f"  table               {'exists, ' + schema if report.table_exists else 'missing'}",
        f"  privileges          SELECT {yes(report.can_select)}, INSERT {yes(report.can_insert)}"
        f", DELETE {yes(report.can_delete)} (only prune and reset-db need DELETE)",
        f"  synchronous_commit  {report.synchronous_commit}",
    ]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"problem: {p}" for p in report.problems]
    return lines


# -- list, show, graph -------------------------------------------------------------------


def add_list(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow list``."""
    parser = _command(
        commands, common, epilog, "list", "list instances, newest first",
        "List instances, newest first: status (running, completed, failed, cancelled), "
        "current state, last seq, and how long ago each started and was last updated.",
    )  # fmt: skip
    parser.add_argument("--workflow", type=identifier, help="only this workflow")
    parser.add_argument(
        "--status", action="append", choices=STATUSES, help="only this status (repeatable)"
    )
    parser.add_argument("--limit", type=positive, default=50, help="at most this many (50)")
    _json_flag(parser)
    parser.set_defaults(handler=list_command)


async def list_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print the newest instances."""
    store = config.store
    found = await store.list_instances(args.workflow, status=args.status, limit=args.limit + 1)
    shown = found[: args.limit]
    if args.json:
        print(dumps(shown))
    elif not shown:
        print(f"no instances in table {store.qualified_table}")
    else:
        print(instances_table(shown))
        if len(found) > args.limit:
            print(f"(only the newest {args.limit} shown: raise --limit to see more)")
    return EXIT_OK


def add_show(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow show`` (alias ``history``)."""
    parser = _command(
        commands, common, epilog, "show", "one instance's transitions, in order",
        "Show one instance's transitions in order. Context values are not printed: the "
        "table shows each context's key count and size, and the keys of the latest one. "
        "--context prints the values too (also with --json).",
        aliases=["history"],
    )  # fmt: skip
    _instance_arguments(parser)
    parser.add_argument(
        "--context", action="store_true", help="also print context values (may be sensitive)"
    )
    _json_flag(parser)
    parser.set_defaults(handler=show_command)


async def show_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print an instance's history."""
    records = await config.store.history(args.workflow, args.instance)
    if not records:
        raise InstanceNotFoundError(
            args.workflow, args.instance, "no such instance; `fsmflow list` shows the instances"
        )
    last = records[-1]
    state = WorkflowState.from_record(last).current_state
    if args.json:
        rows = [record_json(r, with_context=args.context) for r in records]
        head = {"workflow_name": args.workflow, "instance_id": args.instance}
        print(dumps({**head, "status": last.status, "current_state": state, "rows": rows}))
        return EXIT_OK
    print(
        f"workflow {args.workflow!r}, instance {args.instance!r}: {last.status}, state "
        f"{state!r}, seq {last.seq}, started {timestamp(records[0].created_at)} UTC"
    )
    print(history_table(records))
    print("\n".join(history_notes(records)))
    if args.context:
        for record in records:
            print(f"context at seq {record.seq}: {json.dumps(record.context, ensure_ascii=False)}")
    return EXIT_OK


def add_graph(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow graph``."""
    parser = _command(
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
    print(WorkflowMachine.of(definition).get_graph_mermaid(highlight), end="")
    return EXIT_OK


def load_definition(target: str) -> WorkflowDefinition:
    """The :class:`WorkflowDefinition` at ``module:attribute`` (:class:`ConfigError` if not)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"{target!r}: name the definition as MODULE:ATTRIBUTE, "
            "e.g. examples.support_ticket:DEFINITION"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except FsmflowError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot load {target!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(found, WorkflowDefinition):
        raise ConfigError(f"{target!r} is a {type(found).__name__}, not a WorkflowDefinition")
    return found


# -- fork, retry, cancel -----------------------------------------------------------------


def add_fork(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow fork``."""
    parser = _command(
        commands, common, epilog, "fork", "start a new instance from another's state",
        "Start a new instance from INSTANCE's row --seq (default: its last row). It "
        "resumes in the state the source was about to run after that row, with that row's "
        "context plus --set overrides. The source's history is not touched. A completion "
        "row cannot be forked (nothing left to run): give an earlier --seq. The new "
        "instance runs when a program runs it by id.",
    )  # fmt: skip
    _instance_arguments(parser)
    parser.add_argument("--seq", type=seq_number, help="fork from this row (default: the last)")
    parser.add_argument("--new-id", type=identifier, help="id of the new instance (default: new)")
    parser.add_argument(
        "--set",
        type=assignment,
        action="append",
        metavar="KEY=VALUE",
        help="set a top-level context key in the fork (VALUE as JSON, else text; repeatable)",
    )
    _json_flag(parser)
    parser.set_defaults(handler=fork_command)


async def fork_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Fork; print the new instance."""
    record = await config.store.fork_instance(
        args.workflow,
        args.instance,
        seq=args.seq,
        new_instance_id=args.new_id,
        overrides=dict(args.set or []),
    )
    if args.json:
        print(dumps(record_json(record, with_context=False)))
        return EXIT_OK
    print(
        f"forked instance {args.instance!r} at seq {record.forked_from_seq} into instance "
        f"{record.instance_id!r}: its first run by that id starts with the step of state "
        f"{record.dest_state!r}"
    )
    return EXIT_OK


def add_retry(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow retry``."""
    parser = _command(
        commands, common, epilog, "retry", "make a failed instance runnable again",
        "Mark a failed instance for retry: append a running row in the state whose step "
        "failed, with the context that step started from. The next run of the instance "
        "(your program, by id or as the latest unfinished one) runs that step again. "
        "Refused while a runner owns the instance, and for an instance that did not fail.",
    )  # fmt: skip
    _instance_arguments(parser)
    _json_flag(parser)
    parser.set_defaults(handler=retry_command)


async def retry_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Append the retry row."""
    record = await config.store.retry_instance(args.workflow, args.instance)
    if args.json:
        print(dumps(record_json(record, with_context=False)))
    else:
        print(
            f"instance {args.instance!r} is marked for retry (seq {record.seq}): its next run "
            f"runs the step of state {record.dest_state!r} again"
        )
    return EXIT_OK


def add_cancel(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow cancel``."""
    parser = _command(
        commands, common, epilog, "cancel", "end an unfinished instance",
        "Append a cancelled row: the instance ends and runs of it raise "
        "InstanceCancelledError. Refused while a live runner owns the instance (stop it "
        "first) and for an instance that already ended. Fork it to run it again later.",
    )  # fmt: skip
    _instance_arguments(parser)
    parser.add_argument("--reason", help="why (stored with the cancelled row)")
    _json_flag(parser)
    parser.set_defaults(handler=cancel_command)


async def cancel_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Append the cancelled row."""
    record = await config.store.cancel_instance(args.workflow, args.instance, reason=args.reason)
    if args.json:
        print(dumps(record_json(record, with_context=False)))
    else:
        print(
            f"cancelled instance {args.instance!r} at seq {record.seq}, in state "
            f"{record.dest_state!r}"
        )
    return EXIT_OK


# -- prune -------------------------------------------------------------------------------


def add_prune(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow prune``."""
    parser = _command(
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
    _yes_flag(parser)
    _json_flag(parser)
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
            print(
                f"{verb} {totals.instances} instances ({totals.rows} rows) so far", file=sys.stderr
            )

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
        print("\n".join(_prune_lines(result, sample)))
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


COMMANDS: Final[tuple[Register, ...]] = (
    add_init_db,
    add_reset_db,
    add_check,
    add_list,
    add_show,
    add_graph,
    add_fork,
    add_retry,
    add_cancel,
    add_prune,
)
