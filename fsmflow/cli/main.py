"""The ``fsmflow`` command line: set up the table, inspect, fork, retry, cancel and prune
instances, check health, draw a workflow.

``fsmflow COMMAND --help`` documents each command. The database comes from the same
settings as the library (:class:`~fsmflow.settings.DBConfig`: ``~/.env``, then ``./.env``,
which wins; the environment beats both). Exit codes: ``0`` ok, ``1`` failure (one line
``fsmflow: error: ...`` on stderr, no traceback, no secrets), ``2`` usage or configuration
error, ``3`` reset-db refused because runners hold instances, ``75`` a worker stopped by
a signal had to cancel a step, ``130`` Ctrl-C, ``141`` stdout was a closed pipe.

Each sub-command registers ``set_defaults(handler=fn)`` with
``async def fn(args: argparse.Namespace, config: DBConfig) -> int``; a command that
deletes data also sets ``confirm=fn(args, config) -> str | None`` (the question to ask, or
None). :func:`main` is the only place that calls :func:`asyncio.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, Final

from pydantic import AliasChoices

from fsmflow import __version__
from fsmflow.cli.bench_parser import add_bench_parser
from fsmflow.cli.commands import COMMANDS
from fsmflow.cli.embedded import add_embedded_parser
from fsmflow.cli.output import printable, printable_lines
from fsmflow.engine.shutdown import EXIT_FAILED, EXIT_USAGE
from fsmflow.errors import ConfigError, FsmflowError, ResetRefusedError
from fsmflow.settings import DBConfig

EXIT_REFUSED: Final = 3
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, what a shell reports for a killed writer
EXIT_INTERRUPTED_BY_USER: Final = 130
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
Handler = Callable[[argparse.Namespace, DBConfig], Any]

logger = logging.getLogger("fsmflow.cli")


def environment_variables() -> list[str]:
    """The variables :class:`DBConfig` reads, as ``NAME`` or ``NAME | ALIAS``."""
    names = []
    for field in DBConfig.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            upper = [c for c in alias.choices if isinstance(c, str) and c.isupper()]
            names.append(" | ".join(upper))
    return names


def _epilog() -> str:
    variables = textwrap.fill(", ".join(environment_variables()), 86)
    return (
        "environment (also read from ~/.env, then ./.env (which wins); real environment\n"
        "variables beat both):\n"
        + textwrap.indent(variables, "  ")
        + "\n  With neither DB_URL nor DB_HOST, a local embedded PostgreSQL is used.\n\n"
        "exit codes: 0 ok, 1 failure, 2 usage or configuration error, 3 reset-db refused,\n"
        "  75 a worker stopped by a signal had to cancel a step (it runs again elsewhere),\n"
        "  130 interrupted, 141 output pipe closed"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``fsmflow`` argument parser with every sub-command."""
    epilog = _epilog()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="log level on stderr (default: FSMFLOW_LOG_LEVEL, else INFO)",
    )
    parser = argparse.ArgumentParser(
        prog="fsmflow",
        description="Operate fsmflow workflow instances stored in PostgreSQL.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"fsmflow {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in COMMANDS:
        register(commands, common, epilog)
    add_bench_parser(commands)
    add_embedded_parser(commands, common, epilog)
    for sub in commands.choices.values():  # commands registered elsewhere get the epilog too
        if sub.epilog is None:
            sub.epilog = epilog
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``fsmflow`` command; returns its exit code (see the module docstring).

    Output to a closed pipe (``fsmflow list | head -1``) ends quietly with exit 141, like
    a program killed by SIGPIPE.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where the error would print
    except BrokenPipeError:
        return _stdout_closed()
    return code


def _stdout_closed() -> int:
    """Point stdout at /dev/null so the final flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    config = _load_config()
    if config is None or not _configure_logging(args, config):
        return EXIT_USAGE
    return _execute(handler, args, config)


def _execute(handler: Handler, args: argparse.Namespace, config: DBConfig) -> int:
    """Confirm if needed, run the handler on a fresh event loop, map errors to exit codes."""
    try:
        refused = _confirm(args, config)
        if refused is not None:
            return refused
        return int(asyncio.run(_run(handler, args, config)))
    except KeyboardInterrupt:
        _error_line("interrupted")
        return EXIT_INTERRUPTED_BY_USER
    except FsmflowError as exc:
        _error_line(f"{type(exc).__name__}: {exc}", config)
        return _exit_code(exc)


def _exit_code(exc: FsmflowError) -> int:
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_REFUSED if isinstance(exc, ResetRefusedError) else EXIT_FAILED


async def _run(handler: Handler, args: argparse.Namespace, config: DBConfig) -> int:
    try:
        result: int = await handler(args, config)
        return result
    finally:
        await config.close()


def _load_config() -> DBConfig | None:
    """The settings, or None after printing which variable is wrong (never its value)."""
    try:
        return DBConfig()
    except ConfigError as exc:  # DBConfig reports every bad setting as one
        _error_line(str(exc))
    return None


def _configure_logging(args: argparse.Namespace, config: DBConfig) -> bool:
    """Log to stderr at --log-level, else FSMFLOW_LOG_LEVEL; False if that is invalid."""
    level = getattr(args, "log_level", None) or config.log_level.upper()
    if level not in LOG_LEVELS:
        _error_line(f"FSMFLOW_LOG_LEVEL={config.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
        return False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler])
    logging.getLogger().setLevel(level)
    return True


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped: a logged id cannot restyle the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record, escaped (newlines of tracebacks kept)."""
        return printable_lines(super().format(record))


def _confirm(args: argparse.Namespace, config: DBConfig) -> int | None:
    """Ask before a destructive command: None to go on, else the exit code to stop with."""
    ask: Callable[[argparse.Namespace, DBConfig], str | None] | None = getattr(
        args, "confirm", None
    )
    question = None if ask is None else ask(args, config)
    if question is None or getattr(args, "yes", False):
        return None
    if not sys.stdin.isatty():
        _error_line(f"{question}; refusing without a terminal to confirm on: pass --yes")
        return EXIT_USAGE
    try:
        answer = input(f"{printable(question)}.\nContinue? [y/N] ")
    except EOFError:  # Ctrl-D
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return None
    print("aborted: nothing was changed", file=sys.stderr)
    return EXIT_FAILED


def _error_line(message: str, config: DBConfig | None = None) -> None:
    """``fsmflow: error: ...`` on stderr, on one line, scrubbed of configured secrets."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    if config is not None:
        text = config.scrub(text)
    print(f"fsmflow: error: {printable(text)}", file=sys.stderr)
