"""Names a workflow declares: identifiers (workflow names, instance ids) and the names the
runner itself uses, which states and triggers must not take."""

from __future__ import annotations

from typing import Final

from fsmflow.errors import InvalidIdentifierError

MAX_IDENTIFIER_LENGTH: Final = 200

# Names the runner (a transitions model) already uses. transitions adds a method per
# trigger, ``may_<trigger>`` and ``is_<state>`` to the model; a clash would overwrite one.
# (tests/unit/test_definition.py checks this list against the runner's public attributes.)
RESERVED_NAMES: Final = frozenset(
    {
        "state",
        "context",
        "condition_context",
        "steps",
        "definition",
        "machine",
        "instance_id",
        "workflow_name",
        "seq",
        "store",
        "run_workflow",
        "trigger",
        "may_trigger",
        "workflow_state",
        "setup",
        "close",
        "allow_definition_change",
        "retry_failed",
        "options",
        "status",
        "interrupt",
        "on_manual_transition",
    }
)


def check_identifier(value: object, what: str) -> str:
    """Validate a workflow name or instance id; raise :class:`InvalidIdentifierError`."""
    if not isinstance(value, str):
        raise InvalidIdentifierError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidIdentifierError(f"{what} must not be empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidIdentifierError(
            f"{what} is {len(value)} characters long; the limit is {MAX_IDENTIFIER_LENGTH}"
        )
    if "\x00" in value:
        raise InvalidIdentifierError(f"{what} contains a NUL character, which PostgreSQL rejects")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidIdentifierError(f"{what} contains a lone surrogate") from None
    return value
