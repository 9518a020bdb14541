"""fsmflow's SQL: the schema, its migrations and named queries, loaded from the ``.sql``
files here.

``schema.sql`` is the current schema, applied to a new table. ``migrations/NNNN_*.sql``
takes a table from version NNNN - 1 to NNNN (``0001_initial.sql`` is version 1 as fsmflow
0.1 created it); the version of a table is in its comment (``fsmflow schema_version=N``),
which each migration sets last. A migration whose first line is ``-- fsmflow:
no-transaction`` runs statement by statement outside a transaction (``CREATE INDEX
CONCURRENTLY``); every other one runs in one transaction.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

from fsmflow.errors import ConfigError

PLACEHOLDER: Final = "fsmflow_transitions"
EVENTS_SUFFIX: Final = "_events"  # the events table (fsmflow_transitions_events): a table
QUEUE_SUFFIX: Final = "_queue"  # the worker fleet's queue
WORKERS_SUFFIX: Final = "_workers"  # the live workers
TABLE_SUFFIXES: Final = (EVENTS_SUFFIX, QUEUE_SUFFIX, WORKERS_SUFFIX)  # tables, not indexes
SCHEMA_VERSION: Final = 7
SCHEMA_COMMENT: Final = f"fsmflow schema_version={SCHEMA_VERSION}"  # as schema.sql sets it
MAX_NAME_BYTES: Final = 63  # PostgreSQL truncates longer identifiers silently
_VERSION_COMMENT: Final = re.compile(r"^fsmflow schema_version=(\d+)$")
_MIGRATION_FILE: Final = re.compile(r"^(\d{4})_\w+\.sql$")
NO_TRANSACTION: Final = "-- fsmflow: no-transaction"
# A statement ends at a ';' that ends its line, outside a dollar-quoted body ($tag$...$tag$).
_STATEMENT_END: Final = re.compile(r";[ \t]*$", re.MULTILINE)
_DOLLAR_QUOTE: Final = re.compile(r"\$(\w*)\$")
# The columns of a table of every schema version; the store refuses a table that lacks one.
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
# The columns only a table at this version has (added by later migrations).
CURRENT_COLUMNS: Final = REQUIRED_COLUMNS | {
    "waiting_since", "wake_at", "event_id", "state_version", "trace_parent",
}  # fmt: skip
_TABLE_IDENT: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def parse_table_name(value: str) -> tuple[str | None, str]:
    """Split ``[schema.]table`` and validate both parts; raise :class:`ConfigError`."""
    parts = value.split(".")
    if len(parts) > 2 or not all(_TABLE_IDENT.fullmatch(p) for p in parts):
        raise ConfigError(
            f"FSMFLOW_TABLE={value!r} is not a valid table name: use lowercase letters, digits "
            "and '_', starting with a letter or '_', at most 63 characters, optionally "
            "prefixed by 'schema.'"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


_NAME: Final = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_TABLE_WORD: Final = re.compile(rf"\b{PLACEHOLDER}(\w*)")


def read(filename: str) -> str:
    """The text of one packaged ``.sql`` file (``migrations/...`` for a migration)."""
    return resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")


def schema_version(comment: str | None) -> int | None:
    """The schema version a table comment records, or None if it is no fsmflow comment."""
    match = _VERSION_COMMENT.match(comment or "")
    return int(match.group(1)) if match else None


@cache
def migration_files() -> dict[int, str]:
    """Every packaged migration: the version it upgrades to -> its file name."""
    folder = resources.files(__package__).joinpath("migrations")
    found = (_MIGRATION_FILE.match(entry.name) for entry in folder.iterdir())
    return {int(m.group(1)): f"migrations/{m.group(0)}" for m in found if m}


def schema_problem(
    table: str, comment: str | None, columns: Collection[str]
) -> tuple[str | None, bool]:
    """Why this fsmflow cannot run on the existing ``table`` (its label in messages) with
    this comment and these columns (None: it can), and whether init_db can upgrade it."""
    version = schema_version(comment)
    if version is not None and version > SCHEMA_VERSION:
        return (
            f"{table} has fsmflow schema version {version}, newer than this fsmflow knows "
            f"({SCHEMA_VERSION}): upgrade fsmflow to run against it"
        ), False
    missing = REQUIRED_COLUMNS - set(columns)
    if missing or version not in migration_files():
        return (
            f"{table} is not an fsmflow schema version {SCHEMA_VERSION} table (comment "
            f"{comment!r}, missing columns {sorted(missing)}); point FSMFLOW_TABLE at another "
            "table or migrate this one"
        ), False
    if version == SCHEMA_VERSION and CURRENT_COLUMNS - set(columns):
        return (
            f"{table} says fsmflow schema version {version} but lacks columns "
            f"{sorted(CURRENT_COLUMNS - set(columns))}: was it altered by hand? Restore them "
            "(sql/schema.sql has their definitions) or point FSMFLOW_TABLE at another table"
        ), False
    if version < SCHEMA_VERSION:
        return (
            f"{table} has fsmflow schema version {version}; this fsmflow needs version "
            f"{SCHEMA_VERSION}: stop the runners of the old fsmflow, then run `fsmflow "
            "migrate` once with the migrator role (one that may ALTER the table: its owner; "
            "the runtime role has SELECT and INSERT only), see Upgrading in the README"
        ), True
    return None, False


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered migration with the table bound: it takes a table to ``version``."""

    version: int
    name: str  # the file name, e.g. ``0002_context_json.sql``
    statements: tuple[str, ...]  # one item (the whole file) when ``in_transaction``
    in_transaction: bool


def migration(version: int, schema: str | None, table: str) -> Migration:
    """Migration ``version`` (a packaged file) with the table bound."""
    path = migration_files()[version]
    text = bind_table(read(path), schema, table)
    in_transaction = not text.startswith(NO_TRANSACTION)
    statements: tuple[str, ...]
    if in_transaction:
        statements = (text,)
    else:  # each statement on its own: CONCURRENTLY refuses a multi-statement string
        parts = (_strip_comments(part) for part in split_statements(text))
        statements = tuple(part for part in parts if part)
    return Migration(version, path.removeprefix("migrations/"), statements, in_transaction)


def split_statements(text: str) -> list[str]:
    """``text`` cut after every ``;`` that ends a line, except inside a dollar-quoted body
    (a ``DO $x$ ... $x$`` block has statements of its own)."""
    statements: list[str] = []
    start = position = 0
    while True:
        end = _STATEMENT_END.search(text, position)
        quote = _DOLLAR_QUOTE.search(text, position)
        if quote is not None and (end is None or quote.start() < end.start()):
            closing = text.find(quote.group(0), quote.end())
            position = len(text) if closing < 0 else closing + len(quote.group(0))
            continue
        if end is None:
            statements.append(text[start:])
            return statements
        statements.append(text[start : end.start()])
        start = position = end.end()


def _strip_comments(statement: str) -> str:
    lines = (line for line in statement.splitlines() if not line.lstrip().startswith("--"))
    return "\n".join(lines).strip()


def migrations(schema: str | None, table: str, from_version: int) -> list[Migration]:
    """Every migration after ``from_version``, in order, with the table bound."""
    return [migration(v, schema, table) for v in range(from_version + 1, SCHEMA_VERSION + 1)]


def drop_index_concurrently(schema: str, index: str) -> str:
    """The DDL that drops ``schema.index`` (names read from the catalog) without blocking
    the table: how a migration clears an INVALID index an interrupted build left."""
    return f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(schema)}.{quote_ident(index)}"


LEGACY_SUFFIX: Final = "_started_idx"  # the only index fsmflow 0.1 created
FSMFLOW_INDEX_SUFFIXES: Final = (LEGACY_SUFFIX, "_terminal_idx", "_event_idx", "_wake_idx")


def object_name(table: str, suffix: str) -> str:
    """The name of the table's index or constraint ``table + suffix``, made to fit 63 bytes.

    PostgreSQL truncates a longer name to 63 bytes. For a table name shorter than that the
    truncated name is still the table's own (and is what fsmflow 0.1 created, so upgraded
    tables keep their index); for a 63-byte table name it would be the table's name itself
    and ``IF NOT EXISTS`` would skip the index: there the table part is cut and a short hash
    of the whole table name keeps names of different tables apart.
    """
    name = table + suffix
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    if suffix == LEGACY_SUFFIX and len(table.encode("utf-8")) < MAX_NAME_BYTES:
        # The one name fsmflow 0.1 created truncated: keep it, so upgraded tables keep
        # their index. Any other truncated name could equal another (a 62-byte table
        # would give `<table>_` twice): those get the hash below.
        return name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore")
    digest = hashlib.blake2b(table.encode("utf-8"), digest_size=4).hexdigest()
    keep = MAX_NAME_BYTES - len(suffix) - len(digest) - 1
    return f"{table[:keep]}_{digest}{suffix}"


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
        if suffix and suffix not in TABLE_SUFFIXES:  # an index or constraint: in the table's
            return quote_ident(object_name(table, suffix))  # schema, never qualified
        qualified = quote_ident(object_name(table, suffix) if suffix else table)
        return f"{quote_ident(schema)}.{qualified}" if schema else qualified

    return _TABLE_WORD.sub(replace, sql)


def events_table(table: str) -> str:
    """The name of the events table that goes with history table ``table``."""
    return object_name(table, EVENTS_SUFFIX)


def table_of(table: str, suffix: str) -> str:
    """The name of the helper table ``suffix`` (:data:`TABLE_SUFFIXES`) of ``table``."""
    return object_name(table, suffix)


QUERY_FILES: Final = ("queries.sql", "fleet.sql", "ui.sql")


def queries(schema: str | None, table: str) -> dict[str, str]:
    """Every named query (of :data:`QUERY_FILES`) with the table bound."""
    return {
        name: bind_table(text, schema, table)
        for filename in QUERY_FILES
        for name, text in _blocks(filename).items()
    }


def drop_scratch_ddl(schema: str | None, table: str) -> str:
    """The DDL that drops a scratch table and its helper tables (the bench's and the test
    kit's own tables; never run on a real one: history is deleted by reset_db and prune)."""
    helpers = ", ".join(f"{PLACEHOLDER}{suffix}" for suffix in TABLE_SUFFIXES)
    return "DROP TABLE IF EXISTS " + bind_table(f"{helpers}, {PLACEHOLDER}", schema, table)


def schema_ddl(schema: str | None, table: str) -> str:
    """The DDL of ``schema.sql`` (the current version, for a new table) with the table bound."""
    return bind_table(read("schema.sql"), schema, table)
