"""The table's schema: the one check of a table (at open, and for ``fsmflow check``),
creating it, and upgrading an older one in place with the numbered migrations.

The schema's text and the migrations live in :mod:`fsmflow.sql`; this module runs them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from fsmflow import sql
from fsmflow.errors import (
    PermissionDeniedError,
    SchemaMismatchError,
    SchemaMissingError,
    StoreError,
)
from fsmflow.store import dberrors
from fsmflow.store.database import Database

logger = logging.getLogger("fsmflow.store")

_ADVISORY_INIT_KEY: Final = 0x0F5A1  # serializes concurrent init_db calls
DURABLE_COMMIT: Final = ("on", "remote_write", "remote_apply", "local")


@dataclass(frozen=True, slots=True)
class TableFacts:
    """What the server says about the table: the one reading both checks judge."""

    exists: bool
    version: int | None
    missing_columns: tuple[str, ...]
    problem: str | None  # why this fsmflow cannot run on the table (None: it can, or absent)
    upgradable: bool
    row: dict[str, Any]


def durability_problem(setting: str, target: str) -> str | None:
    """Why ``synchronous_commit=setting`` can lose acknowledged transitions, or None."""
    if setting in DURABLE_COMMIT:
        return None
    return (
        f"synchronous_commit={setting} on {target}: a crash can lose acknowledged "
        "transitions; set it to on for the fsmflow role (ALTER ROLE ... SET synchronous_commit=on)"
    )


class Schema:
    """Checks, creates and upgrades the table of one :class:`Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def facts(self, row: asyncpg.Record | dict[str, Any]) -> TableFacts:
        """Judge a ``check_schema``/``health`` row."""
        values = dict(row.items())
        label = f"table {self.db.qualified_table!r} in {self.db.target}"
        problem, upgradable = sql.schema_problem(label, values["comment"], values["columns"])
        return TableFacts(
            exists=bool(values["exists"]),
            version=sql.schema_version(values["comment"]),
            missing_columns=tuple(sorted(sql.REQUIRED_COLUMNS - set(values["columns"] or ()))),
            problem=problem if values["exists"] else None,
            upgradable=upgradable,
            row=values,
        )

    async def check(self) -> None:
        """At open: the table exists at this version, is readable and writable, and commits
        are durable (a warning, or a refusal with ``FSMFLOW_STRICT_DURABILITY``)."""
        db = self.db
        row = await db.fetchrow("check_schema", db.qualified_table, checked=False)
        assert row is not None
        facts = self.facts(row)
        if not facts.exists:
            raise SchemaMissingError(
                f"table {db.qualified_table!r} does not exist in {db.target}; run "
                "`fsmflow init-db` (or `await DBConfig().init_db()`) once with a role that may "
                "CREATE, or apply sql/schema.sql with psql"
            )
        if facts.problem is not None:
            raise SchemaMismatchError(facts.problem)
        if not (row["can_select"] and row["can_insert"]):
            raise PermissionDeniedError(
                dberrors.grants_message(db.qualified_table, db.schema, db.target)
            )
        db.resolved_table = f"{row['schema_name']}.{db.table}"
        problem = durability_problem(row["synchronous_commit"], db.target)
        if problem is not None:
            if db.config.strict_durability:
                raise StoreError(problem + " (refused because FSMFLOW_STRICT_DURABILITY is set)")
            logger.warning(problem)
        db.checked = True

    async def health_facts(self) -> TableFacts:
        """The ``health`` query judged (never raises for a missing or foreign table)."""
        row = await self.db.fetchrow("health", self.db.qualified_table, checked=False)
        assert row is not None
        return self.facts(row)

    async def init_db(self) -> None:
        """Create the table and its indexes if missing, or upgrade an older fsmflow table in
        place (applying each migration after its version; an upgrade rewrites the table).

        Idempotent and safe to run concurrently: one transaction, under an advisory lock.
        :class:`SchemaMismatchError` for a table that is not fsmflow's or is newer.
        """
        db = self.db
        pool = await db.pool(checked=False)
        async with db.translated(), pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_INIT_KEY)
            done = await self._create_or_upgrade(conn)
        db.checked = False
        await self.check()
        where = (db.qualified_table, db.target)
        if done:
            logger.info("initialized table %s in %s: %s", *where, done)
        else:
            logger.debug(
                "table %s in %s is at schema version %d already", *where, sql.SCHEMA_VERSION
            )

    async def _create_or_upgrade(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> str:
        """Inside init_db's transaction: what it did to the table ("" if nothing)."""
        db = self.db
        row = await conn.fetchrow(db.queries["check_schema"], db.qualified_table)
        assert row is not None
        facts = self.facts(row)
        if not facts.exists:
            await conn.execute(sql.schema_ddl(db.schema, db.table))
            return f"created at schema version {sql.SCHEMA_VERSION}"
        if facts.problem is not None and not facts.upgradable:
            raise SchemaMismatchError(facts.problem)
        done = []
        if facts.upgradable:
            for _, ddl in sql.migrations_ddl(db.schema, db.table, facts.version or 0):
                await conn.execute(ddl)
            done.append(f"upgraded from schema version {facts.version} to {sql.SCHEMA_VERSION}")
        # The current DDL again (IF NOT EXISTS): creates an index an older fsmflow failed to
        # create, and, like creating, needs the migrator role (COMMENT needs the owner).
        before = await conn.fetchval(db.queries["table_indexes"], db.qualified_table)
        await conn.execute(sql.schema_ddl(db.schema, db.table))
        after = await conn.fetchval(db.queries["table_indexes"], db.qualified_table)
        done += [f"created index {name}" for name in sorted(set(after) - set(before))]
        return "; ".join(done)
