"""What fsmflow stores and logs about a failed step: bounded, storable, no local values.

A failed row's ``error`` is JSON: ``{"type", "message", "attempts", "traceback"}`` where
``traceback`` lists the frames (file, line, function: never local values) from the
step's own code to where it raised, innermost last, at most :data:`MAX_FRAMES`. With
``redact`` (``FSMFLOW_REDACT_ERRORS``) the message, which may quote context values, is
neither stored nor logged. Texts are made storable: jsonb refuses NUL characters and lone
surrogates, and a failure that could not be recorded would leave the instance running.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Final

from fsmflow.model.context import compact_json

MAX_FRAMES: Final = 20
MAX_MESSAGE: Final = 2000
_INTERNAL: Final = (
    str(Path(__file__).resolve().parent.parent),  # fsmflow itself: it calls the step
    str(Path(traceback.__file__).resolve().parent / "asyncio"),
    str(Path(traceback.__file__).resolve().parent / "threading.py"),
)


def storable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with NUL and lone surrogates escaped."""
    text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not keep the failure from being recorded
        return f"<{type(exc).__name__}: str() raised>"


def frames(exc: BaseException) -> list[dict[str, Any]]:
    """The frames of ``exc``'s traceback in user code (fsmflow's and asyncio's left out,
    unless nothing else is left), innermost last, at most :data:`MAX_FRAMES`."""
    summary = traceback.extract_tb(exc.__traceback__)
    own = [f for f in summary if not f.filename.startswith(_INTERNAL)] or list(summary)
    return [
        {
            "file": storable(f.filename, 500),
            "line": f.lineno or 0,
            "function": storable(f.name, 200),
        }
        for f in own[-MAX_FRAMES:]
    ]


def location(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost user frame, or None."""
    found = frames(exc)
    if not found:
        return None
    last = found[-1]
    return f"{last['file']}:{last['line']} in {last['function']}"


def error_json(
    exc: BaseException, attempts: int, *, redact: bool, raised_in: str | None = None
) -> str:
    """The ``error`` column of a failed row (always storable as jsonb)."""
    error: dict[str, Any] = {"type": storable(type(exc).__name__, 200), "attempts": attempts}
    if not redact:
        error["message"] = storable(_message(exc), MAX_MESSAGE)
    if raised_in is not None:
        error["raised_in"] = raised_in
    error["traceback"] = frames(exc)
    return compact_json(error)


def traceback_text(exc: BaseException, *, redact: bool) -> str:
    """The traceback to log: Python's own, or with ``redact`` only the frames and type."""
    if not redact:
        return "".join(traceback.format_exception(exc)).rstrip()
    listing = traceback.format_list(traceback.extract_tb(exc.__traceback__))
    return ("Traceback (most recent call last):\n" + "".join(listing) + type(exc).__name__).rstrip()
