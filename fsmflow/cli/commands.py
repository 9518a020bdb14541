"""The ``fsmflow`` sub-commands: :data:`COMMANDS` registers them all, in ``--help`` order.

Here are the commands about the table itself: init-db, reset-db, check and prune; the
commands about instances are in :mod:`fsmflow.cli_instances`, the argument types and
registration helpers in :mod:`fsmflow.cli_arguments`. Each ``add_*`` registers one parser
and its handler. Handlers follow the CLI convention (see :mod:`fsmflow.cli`): ``async def
handler(args, config) -> int``. They print results on stdout (a table, or JSON with
``--json``); logs and progress go to stderr. Only ``reset-db`` and ``prune`` delete; both
ask first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from fsmflow import sql
from fsmflow.cli.arguments import (
    command_parser,
    duration,
    duration_text,
    identifier,
    json_flag,
    positive,
    yes_flag,
)
from fsmflow.cli.instances import add_cancel, add_fork, add_graph, add_list, add_retry, add_show
from fsmflow.cli.output import dumps, instances_table, jsonable, say, timestamp
from fsmflow.engine.shutdown import EXIT_FAILED, EXIT_OK
from fsmflow.errors import ConfigError, FsmflowError
from fsmflow.model.records import HealthReport, InstanceSummary, PruneResult
from fsmflow.settings import DBConfig

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Commands, Register

SAMPLE_SIZE: Final = 20


# -- init-db, reset-db, check ------------------------------------------------------------


def add_init_db(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow init-db``."""
    parser = command_parser(
        commands, common, epilog, "init-db", "create the history table if missing",
        "Create the history table (FSMFLOW_TABLE) and its indexes if missing. Idempotent and "
        "safe to run concurrently; needs a role that may CREATE in the schema.",
    )  # fmt: skip
    parser.set_defaults(handler=init_db_command)


async def init_db_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Create the table; print where."""
    await config.init_db()
    store = config.store
    say(
        f"table {store.qualified_table} is ready in {store.target} "
        f"(fsmflow schema version {sql.SCHEMA_VERSION})"
    )
    return EXIT_OK


def add_reset_db(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow reset-db``."""
    parser = command_parser(
        commands, common, epilog, "reset-db", "delete ALL history (asks first)",
        "Delete every row of the history table: all instances of all workflows. "
        "Irreversible. Refused (exit 3, nothing deleted) while a runner holds an instance, "
        "unless --force. Asks for confirmation on a terminal; without one, --yes is "
        "required (else exit 2).",
    )  # fmt: skip
    yes_flag(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="delete even while runners hold instances (those runners then fail)",
    )
    parser.set_defaults(handler=reset_db_command, confirm=_reset_question)


def _reset_question(args: argparse.Namespace, config: DBConfig) -> str:
    return (
        f"reset-db deletes ALL history of every workflow in table {config.table!r} "
        f"at {config.display_target()}"
    )


async def reset_db_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Truncate the table."""
    await config.reset_db(force=args.force)
    store = config.store
    say(f"deleted all history in table {store.qualified_table} at {store.target}")
    return EXIT_OK


def add_check(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow check``."""
    parser = command_parser(
        commands, common, epilog, "check", "health check: exit 0 healthy, 1 not",
        "Connect and verify what running workflows needs: the table exists with this "
        "schema version, the role may SELECT and INSERT, the server is writable, and "
        "synchronous_commit is on (off is a warning, a failure with "
        "FSMFLOW_STRICT_DURABILITY). Exit 0 healthy, 1 not: usable as a probe. For a fast "
        "answer set FSMFLOW_DB_RETRY_SECONDS=0 and FSMFLOW_CONNECT_TIMEOUT=5.",
    )  # fmt: skip
    json_flag(parser)
    parser.set_defaults(handler=check_command)


async def check_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print the health report; exit 0 when healthy."""
    try:
        report = await config.store.check_health()
    except FsmflowError as exc:
        if args.json and not isinstance(exc, ConfigError):
            error = config.scrub(f"{type(exc).__name__}: {exc}")
            print(dumps({"healthy": False, "target": config.display_target(), "error": error}))
        raise
    if args.json:
        print(dumps({"healthy": report.healthy, **jsonable(report)}))
    else:
        say("\n".join(_health_lines(report)))
    return EXIT_OK if report.healthy else EXIT_FAILED


def _health_lines(report: HealthReport) -> list[str]:
    verdict = "healthy" if report.healthy else "UNHEALTHY"
    role = "standby (read-only)" if report.in_recovery else "primary"
    schema = f"schema version {report.schema_version}" + (
        "" if report.schema_version_ok else " (NOT usable: see problems)"
    )

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
