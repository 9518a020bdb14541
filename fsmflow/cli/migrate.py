"""``fsmflow migrate``: create the table or bring it to this fsmflow's schema version.

Run it with the migrator role (the table's owner) after stopping the old version's runners
and before starting the new ones (README, "Upgrading"). Exit 0 when the table is at this
version (or, with ``--dry-run``, whatever is pending), 1 on failure, 2 on a configuration
error, like every command.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fsmflow import sql
from fsmflow.cli.arguments import command_parser, json_flag
from fsmflow.cli.output import dumps, say
from fsmflow.engine.shutdown import EXIT_OK
from fsmflow.settings import DBConfig

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Commands


def add_migrate(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow migrate [--dry-run] [--json]``."""
    parser = command_parser(
        commands, common, epilog, "migrate", "create the table or apply pending migrations",
        "Create the history table (FSMFLOW_TABLE) at this fsmflow's schema version, or apply "
        "the pending numbered migrations to an older one, in order, each in its own "
        "transaction (an index on a big table: CREATE INDEX CONCURRENTLY, outside one). One "
        "migrator at a time (an advisory lock); safe to run again after an interruption. "
        "Needs the migrator role (the table's owner); stop the runners of an older fsmflow "
        "first. Prints what it applied.",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be applied; change nothing"
    )
    json_flag(parser)
    parser.set_defaults(handler=migrate_command)


async def migrate_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Apply (or with ``--dry-run`` list) the pending migrations; print them."""
    store = config.store
    steps = await store.migrate(dry_run=args.dry_run)
    if args.json:
        print(dumps(_report(store.qualified_table, store.target, args.dry_run, steps)))
        return EXIT_OK
    verb = "would apply" if args.dry_run else "applied"
    where = f"table {store.qualified_table} in {store.target}"
    if not steps:
        say(f"{where} is at fsmflow schema version {sql.SCHEMA_VERSION}: nothing to apply")
    for step in steps:
        say(f"{verb} {step.name} (schema version {step.version}) to {where}")
    return EXIT_OK


def _report(table: str, target: str, dry_run: bool, steps: list[sql.Migration]) -> dict[str, Any]:
    return {
        "table": table,
        "target": target,
        "dry_run": dry_run,
        "schema_version": sql.SCHEMA_VERSION,
        "pending" if dry_run else "applied": [
            {"version": s.version, "name": s.name, "in_transaction": s.in_transaction}
            for s in steps
        ],
    }
