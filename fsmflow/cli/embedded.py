"""``fsmflow embedded status|stop``: see and stop the zero-config local PostgreSQL.

The embedded server keeps running after a program exits (so the next start is instant);
these commands look at the data directory fsmflow would use (``FSMFLOW_EMBEDDED_DIR``, else
``~/.local/share/fsmflow/pgdata``). Neither starts a server nor connects to one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from typing import TYPE_CHECKING

from fsmflow.cli.arguments import command_parser, json_flag
from fsmflow.cli.output import dumps
from fsmflow.engine.shutdown import EXIT_OK, EXIT_USAGE
from fsmflow.store.embedded import EmbeddedStatus, data_dir_of, server_status, stop_server

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Commands
    from fsmflow.settings import DBConfig


def add_embedded_parser(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """Register ``fsmflow embedded`` and its ``status`` and ``stop`` actions."""
    parser = command_parser(
        commands, common, epilog, "embedded", "status or stop the zero-config local PostgreSQL",
        "The local PostgreSQL fsmflow starts when no database is configured keeps running "
        "after your program exits. 'status' shows its data directory and whether it runs "
        "(pid, port, socket directory); 'stop' stops it cleanly (fast shutdown: clients are "
        "disconnected). The data directory is FSMFLOW_EMBEDDED_DIR, else "
        "~/.local/share/fsmflow/pgdata. Neither starts a server.",
    )  # fmt: skip
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    status = _action(actions, common, epilog, "status", "show whether the server runs (exit 0)")
    json_flag(status)
    status.set_defaults(handler=status_command)
    stop = _action(
        actions, common, epilog, "stop", "stop the server (exit 0 if stopped or not running)"
    )
    stop.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for it to stop (60)"
    )
    stop.set_defaults(handler=stop_command)

    async def usage(args: argparse.Namespace, config: DBConfig) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    parser.set_defaults(handler=usage)


def _action(
    actions: Commands, common: argparse.ArgumentParser, epilog: str, name: str, summary: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(
        name,
        help=summary,
        description=textwrap.fill(summary[0].upper() + summary[1:] + ".", 88),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    return parser


def _status_lines(status: EmbeddedStatus) -> list[str]:
    lines = [f"data directory: {status.data_dir}"]
    if not status.initialized:
        return [*lines, "state: not created yet (it is created on first use)"]
    if not status.running:
        return [*lines, "state: not running (it starts on first use)"]
    return [
        *lines,
        f"state: running, pid {status.pid}",
        f"socket directory: {status.socket_dir}",
        f"port: {status.port}",
    ]


async def status_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Print the embedded server's status; exit 0 whether it runs or not."""
    status = await asyncio.to_thread(server_status, data_dir_of(config))
    print(dumps(status.as_dict()) if args.json else "\n".join(_status_lines(status)))
    return EXIT_OK


async def stop_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Stop the embedded server; exit 0 once it is stopped or if it was not running."""
    data_dir = data_dir_of(config)
    was_running = await asyncio.to_thread(stop_server, data_dir, args.timeout)
    state = "stopped" if was_running else "was not running"
    print(f"embedded PostgreSQL in {data_dir}: {state}")
    return EXIT_OK
