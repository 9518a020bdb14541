"""The ``fsmflow`` commands about the history table itself: init-db, reset-db and check.

Handlers follow the CLI convention (see :mod:`fsmflow.cli.main`): ``async def
handler(args, config) -> int``. They print results on stdout (text, or JSON with
``--json``); logs go to stderr. Only ``reset-db`` deletes, and asks first.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fsmflow import sql
from fsmflow.cli.arguments import command_parser, json_flag, yes_flag
from fsmflow.cli.output import dumps, jsonable, say
from fsmflow.engine.shutdown import EXIT_FAILED, EXIT_OK
from fsmflow.errors import ConfigError, FsmflowError
from fsmflow.model.records import HealthReport
from fsmflow.settings import DBConfig

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Commands


def add_init_db(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow init-db``."""
    parser = command_parser(
        commands, common, epilog, "init-db", "create the history table, or migrate it",
        "Create the history table (FSMFLOW_TABLE) at the latest schema version if missing, "
        "or apply its pending migrations (like `fsmflow migrate`). Idempotent and safe to run "
        "concurrently. Creating needs a role that may CREATE in the schema, migrating the "
        "table's owner; with nothing to do it issues no DDL, so the runtime role may run it.",
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
        "FSMFLOW_STRICT_DURABILITY). With --workers, also what a worker needs: the fleet's "
        "queue and workers tables, and SELECT, INSERT, UPDATE, DELETE on them. Exit 0 "
        "healthy, 1 not: usable as a probe. For a fast answer set "
        "FSMFLOW_DB_RETRY_SECONDS=0 and FSMFLOW_CONNECT_TIMEOUT=5.",
    )  # fmt: skip
    parser.add_argument(
        "--workers", action="store_true", help="also require what `fsmflow worker` needs"
    )
    json_flag(parser)
    parser.set_defaults(handler=check_command)


async def check_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print the health report; exit 0 when healthy."""
    try:
        report = await config.store.check_health(workers=args.workers)
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
        f", DELETE {yes(report.can_delete)} (only prune needs DELETE; reset-db TRUNCATE)",
        f"  synchronous_commit  {report.synchronous_commit}",
        f"  worker fleet        {'ready' if report.can_run_workers else 'not available'}"
        " (fsmflow worker needs it; check --workers requires it)",
    ]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"problem: {p}" for p in report.problems]
    return lines
