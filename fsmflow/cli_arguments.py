"""Argument types and registration helpers shared by the ``fsmflow`` sub-commands.

The types turn a command-line string into a checked value or an
:class:`argparse.ArgumentTypeError` (argparse then exits 2 with usage); the helpers give
every sub-command the same ``--help`` layout and the same ``--json``/``--yes`` flags.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from .definition import check_identifier
from .errors import ConfigError

if TYPE_CHECKING:
    from typing import TypeAlias

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    Register: TypeAlias = Callable[[Commands, argparse.ArgumentParser, str], None]

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


def command_parser(
    commands: Commands,
    common: argparse.ArgumentParser,
    epilog: str,
    name: str,
    summary: str,
    description: str,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """Register sub-command ``name``: ``summary`` in the command list, ``description``
    (wrapped) and ``epilog`` in its ``--help``, the ``common`` options included."""
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


def instance_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional ``WORKFLOW INSTANCE`` pair."""
    parser.add_argument("workflow", metavar="WORKFLOW", type=identifier, help="workflow name")
    parser.add_argument("instance", metavar="INSTANCE", type=identifier, help="instance id")


def json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json``."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def yes_flag(parser: argparse.ArgumentParser) -> None:
    """``--yes``."""
    parser.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (needed without a TTY)"
    )


def definition_change_flag(parser: argparse.ArgumentParser) -> None:
    """``--allow-definition-change``."""
    parser.add_argument(
        "--allow-definition-change",
        action="store_true",
        help="accept a definition that differs from the one the instance started with",
    )
