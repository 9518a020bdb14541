"""fsmflow's SQL: the schema and named queries, loaded once from the ``.sql`` files here."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Final

PLACEHOLDER: Final = "fsmflow_transitions"
SCHEMA_VERSION: Final = 1
SCHEMA_COMMENT: Final = f"fsmflow schema_version={SCHEMA_VERSION}"  # as schema.sql sets it
# The columns of a schema-version-1 table; the store refuses a table that lacks one.
REQUIRED_COLUMNS: Final = frozenset(
    {
        "workflow_name",
        "instance_id",
        "seq",
        "trigger",
        "source_state",
        "dest_state",
        "context",
        "status",
        "completed",
        "created_at",
        "fingerprint",
        "attempt_id",
        "duration_ms",
        "error",
        "definition",
        "forked_from_instance",
        "forked_from_seq",
    }
)
_NAME: Final = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_TABLE_WORD: Final = re.compile(rf"\b{PLACEHOLDER}(\w*)")


def read(filename: str) -> str:
    """The text of one packaged ``.sql`` file."""
    return resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")


@cache
def _blocks(filename: str) -> dict[str, str]:
    text = read(filename)
    found = list(_NAME.finditer(text))
    return {
        match.group(1): text[match.end() : nxt.start() if nxt else len(text)].strip()
        for match, nxt in zip(found, [*found[1:], None], strict=True)
    }


def named(filename: str) -> dict[str, str]:
    """The named blocks of a packaged ``.sql`` file whose queries name no table."""
    return dict(_blocks(filename))


def quote_ident(name: str) -> str:
    """Quote an identifier that was already validated (``[a-z_][a-z0-9_]*``)."""
    return '"' + name.replace('"', '""') + '"'


def bind_table(sql: str, schema: str | None, table: str) -> str:
    """Substitute the configured table (and its index names) for the placeholder."""

    def replace(match: re.Match[str]) -> str:
        suffix = match.group(1)
        if suffix:  # an index name: lives in the table's schema, never qualified
            return quote_ident(table + suffix)
        qualified = quote_ident(table)
        return f"{quote_ident(schema)}.{qualified}" if schema else qualified

    return _TABLE_WORD.sub(replace, sql)


def queries(schema: str | None, table: str) -> dict[str, str]:
    """Every named query with the table bound."""
    return {name: bind_table(sql, schema, table) for name, sql in _blocks("queries.sql").items()}


def schema_ddl(schema: str | None, table: str) -> str:
    """The DDL of ``schema.sql`` with the table bound."""
    return bind_table(read("schema.sql"), schema, table)
