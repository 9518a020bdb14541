"""Argument types and registration helpers shared by the ``fsmflow`` sub-commands.

The types turn a command-line string into a checked value or an
:class:`argparse.ArgumentTypeError` (argparse then exits 2 with usage): identifiers,
durations, ``KEY=VALUE`` pairs, bounded integers, and JSON given as text, ``@FILE`` or
``-`` (``send-event --data``, ``submit --context``); the helpers give
every sub-command the same ``--help`` layout and the same ``--json``/``--yes`` flags.
:func:`load_target` imports what a ``MODULE:ATTRIBUTE`` argument names (a definition or a
:class:`~fsmflow.Workflow`); it runs in the handlers, never while parsing.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fsmflow.engine.workflow import Workflow
from fsmflow.errors import ConfigError, FsmflowError
from fsmflow.model.definition import WorkflowDefinition, check_identifier

if TYPE_CHECKING:
    from typing import TypeAlias

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    Register: TypeAlias = Callable[[Commands, argparse.ArgumentParser, str], None]

_DURATION: Final = re.compile(r"(\d+)([smhdw])")
_UNITS: Final = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_LOOKS_LIKE_JSON: Final = re.compile(r"\s*([\[{\"\d-]|(true|false|null)\b)")
MAX_DURATION: Final = timedelta(days=36500)
MAX_COUNT: Final = 1_000_000  # --limit, --batch-size: far below PostgreSQL's int4 bounds
MAX_SEQ: Final = 2**31 - 1  # seq is an integer column
_CONSTANTS: Final = ("NaN", "Infinity", "-Infinity")  # Python's json reads them; JSON has none


# -- argument types ----------------------------------------------------------------------


def identifier(value: str) -> str:
    """argparse type: a workflow name or instance id fsmflow can store."""
    try:
        return check_identifier(value, "the name or id")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(value: str) -> timedelta:
    """argparse type: ``30d``, ``12h``, ``90m``, ``1d12h`` (units w, d, h, m, s), at most
    :data:`MAX_DURATION` (a cutoff that far back is still a valid timestamp)."""
    text = value.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration: use e.g. 30d, 12h, 90m or 1d12h"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds > MAX_DURATION.total_seconds():
        raise argparse.ArgumentTypeError(
            f"{value!r} is too long: at most {MAX_DURATION.days}d (100 years)"
        )
    return timedelta(seconds=seconds)


def duration_text(span: timedelta) -> str:
    """``timedelta(days=1, hours=12)`` -> ``1d12h``."""
    seconds, out = int(span.total_seconds()), ""
    for unit in "dhms":
        count, seconds = divmod(seconds, _UNITS[unit])
        out += f"{count}{unit}" if count else ""
    return out or "0s"


def assignment(value: str) -> tuple[str, Any]:
    """argparse type: ``KEY=VALUE``; VALUE is JSON if it starts like JSON (``[``, ``{``,
    ``"``, a digit, ``-``, ``true``/``false``/``null``) and must then parse; else text."""
    key, raw = _key_value(value, "VALUE as JSON, or text")
    if not _LOOKS_LIKE_JSON.match(raw):
        return key, raw
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} at character {exc.pos}"
    except RecursionError:
        reason = "nested too deeply"
    raise argparse.ArgumentTypeError(
        f"key {key!r}: the value starts like JSON but is not valid JSON ({reason}); "
        f"pass text with --set-str {key}=TEXT"
    )


def text_assignment(value: str) -> tuple[str, str]:
    """argparse type: ``KEY=TEXT``; TEXT is kept as a string, whatever it looks like."""
    return _key_value(value, "TEXT is kept as a string")


def _key_value(value: str, hint: str) -> tuple[str, str]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r}: use KEY=VALUE ({hint})")
    return key, raw


def bounded(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """argparse type: an integer from ``low`` to ``high``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{what}{value} is not between {low} and {high}")
        return number

    parse.__name__ = "integer"
    return parse


positive = bounded(1, MAX_COUNT)
seq_number = bounded(0, MAX_SEQ, "seq ")


def json_data(value: str) -> Any:
    """argparse type: a JSON text, ``@FILE`` (the file's text) or ``-`` (standard input).

    Errors name where the JSON breaks, never what it holds.
    """
    if value == "-":
        text, where = sys.stdin.read(), "standard input"
    elif value.startswith("@"):
        text, where = _read(value[1:]), f"file {value[1:]!r}"
    else:
        text, where = value, "the text"
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} at {_position(text, exc.pos)}"
    except _ConstantError as exc:
        reason = f"{exc} at {_position(text, _constant_at(text))}: JSON has no NaN or Infinity"
    except RecursionError:
        reason = "nested too deeply"
    raise argparse.ArgumentTypeError(f"{where} is not valid JSON: {reason}")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        message = f"file {path!r} is not UTF-8 text (byte {exc.start})"
    except OSError as exc:
        message = f"cannot read file {path!r}: {exc.strerror or type(exc).__name__}"
    raise argparse.ArgumentTypeError(message)


class _ConstantError(ValueError):
    """A ``NaN`` or ``Infinity`` in the JSON text."""


def _refuse_constant(name: str) -> Any:
    raise _ConstantError(name)


def _position(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line} column {column} (char {pos})"


def _constant_at(text: str) -> int:
    """Where the first NaN/Infinity outside a string starts (json.loads does not say)."""
    in_string = escaped = False
    for i, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif text.startswith(_CONSTANTS, i):
            return i
    return 0


def json_object(value: str) -> dict[str, Any]:
    """argparse type: like :func:`json_data`, but the JSON must be an object (a context)."""
    found = json_data(value)
    if not isinstance(found, dict):
        example = '{"ticket": 7}'
        raise argparse.ArgumentTypeError(
            f"a context is a JSON object, not {_json_kind(found)}: pass one, e.g. "
            f"'{example}', as text, as @FILE or as - (standard input)"
        )
    return found


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = ((bool, "a boolean"), (int | float, "a number"), (str, "a string"), (list, "an array"))
    return next(name for kind, name in kinds if isinstance(value, kind))


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


# -- MODULE:ATTRIBUTE targets (graph, fork --definition, submit, worker) ------------------


DEFINITION_EXAMPLE: Final = "examples.support_ticket:DEFINITION"


def load_definition(target: str) -> WorkflowDefinition:
    """The :class:`WorkflowDefinition` at ``module:attribute``, or the definition of the
    :class:`~fsmflow.Workflow` there (:class:`ConfigError` if neither)."""
    return definition_of(load_target(target), target)


def definition_of(found: Any, target: str) -> WorkflowDefinition:
    """``found`` (loaded from ``target``) as a definition: a Workflow gives its own."""
    if isinstance(found, Workflow):
        return found.definition
    if not isinstance(found, WorkflowDefinition):
        raise ConfigError(
            f"{target!r} is a {type(found).__name__}, not a WorkflowDefinition or a "
            "fsmflow.Workflow"
        )
    return found


def load_target(
    target: str, what: str = "the definition", example: str = DEFINITION_EXAMPLE
) -> Any:
    """The object at ``module:attribute`` (``module`` importable from the current
    directory); :class:`ConfigError` naming ``what`` to pass, like ``example``, if not."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{target!r}: name {what} as MODULE:ATTRIBUTE, e.g. {example}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current directory
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except FsmflowError:
        raise
    except SystemExit as exc:  # the module is a script: it exited while being imported
        raise ConfigError(
            f"cannot load {target!r}: importing {module_name!r} exited with code "
            f"{exc.code if exc.code is not None else 0}; name a module that defines "
            f"{what} without running a program at import"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"cannot load {target!r}: {type(exc).__name__}: {exc}; name {what} as "
            f"MODULE:ATTRIBUTE with MODULE importable from the current directory, e.g. {example}"
        ) from None
    return found
