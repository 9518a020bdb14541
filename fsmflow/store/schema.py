"""The table's schema: the one check of a table (at open, and for ``fsmflow check``),
creating it, and upgrading an older one in place with the numbered migrations.

The schema's text and the migrations live in :mod:`fsmflow.sql`; this module runs them.
"""

from __future__ import annotations

import asyncio
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

_ADVISORY_MIGRATE_KEY: Final = 0x0F5A1  # one migrator (init_db, migrate) at a time
_LOCK_POLL_SECONDS: Final = 0.2
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


def describe(facts: TableFacts, applied: list[sql.Migration]) -> str:
    """What :meth:`Schema.migrate` did to a table that was as ``facts`` said, in words."""
    if not applied:
        return "nothing to do (another migrator was first)"
    if applied[0].name == "schema.sql":
        return f"created at schema version {sql.SCHEMA_VERSION}"
    names = ", ".join(m.name for m in applied)
    return f"upgraded from schema version {facts.version} to {applied[-1].version} ({names})"


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
        row = await db.fetchrow(
            "check_schema", db.qualified_table, db.qualified_events, checked=False
        )
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
        if not (row["can_select"] and row["can_insert"] and row["can_send"]):
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
        row = await self.db.fetchrow(
            "health", self.db.qualified_table, self.db.qualified_events, checked=False
        )
        assert row is not None
        return self.facts(row)

    async def init_db(self) -> None:
        """Make the table usable at this version: create it if missing, apply pending
        migrations (as :meth:`migrate`), then check it.

        On an up-to-date table it issues no DDL and takes no lock, so the runtime role
        (SELECT, INSERT) may call it at every start. Creating or migrating needs the
        migrator role; under any other role a pending migration is a
        :class:`PermissionDeniedError` naming the role to use.
        """
        db = self.db
        where = (db.qualified_table, db.target)
        facts = await self.health_facts()
        if facts.exists and facts.version == sql.SCHEMA_VERSION:
            logger.debug("table %s in %s is at schema version %d already", *where, facts.version)
        else:
            applied = await self.migrate()
            level = logging.INFO if applied else logging.DEBUG
            logger.log(level, "initialized table %s in %s: %s", *where, describe(facts, applied))
        db.checked = False
        await self.check()

    async def migrate(self, *, dry_run: bool = False) -> list[sql.Migration]:
        """Create the table, or apply each pending migration in order (each in its own
        transaction, or statement by statement for a ``no-transaction`` one); return
        what was applied (with ``dry_run``: what would be, changing nothing).

        One migrator at a time: a session advisory lock on a dedicated connection, then
        the version is read again. Resumable: a migration records its version last, and
        an INVALID index left by an interrupted concurrent build is dropped first.
        :class:`SchemaMismatchError` for a foreign or newer table.
        """
        db = self.db
        conn = await self._connect()
        try:
            async with db.translated():
                await self._wait_for_lock(conn)
                return await self._migrate_locked(conn, dry_run)
        finally:
            await conn.close()  # ends the session: the advisory lock goes with it

    async def _connect(self) -> asyncpg.Connection:
        """The migrator's dedicated connection, without the runtime's timeouts: rewriting
        or indexing a big table takes longer than any command should at run time."""
        kwargs = dict(await self.db.connect_kwargs())
        settings = {**kwargs.get("server_settings", {}), "statement_timeout": "0"}
        kwargs.update(command_timeout=None, server_settings=settings)
        async with self.db.translated():
            return await asyncpg.connect(**kwargs)

    async def _wait_for_lock(self, conn: asyncpg.Connection) -> None:
        """Take the migrators' lock, polling: a session blocked in ``pg_advisory_lock``
        sits in a transaction, and CREATE INDEX CONCURRENTLY of the migrator holding the
        lock would wait for that transaction to end: a deadlock."""
        waiting = False
        while not await conn.fetchval(self.db.queries["try_migrate_lock"], _ADVISORY_MIGRATE_KEY):
            if not waiting:
                logger.info("waiting for another fsmflow migrator on %s", self.db.target)
                waiting = True
            await asyncio.sleep(_LOCK_POLL_SECONDS)

    async def _migrate_locked(self, conn: asyncpg.Connection, dry_run: bool) -> list[sql.Migration]:
        db = self.db
        row = await conn.fetchrow(
            db.queries["check_schema"], db.qualified_table, db.qualified_events
        )
        assert row is not None
        facts = self.facts(row)
        if not facts.exists:
            created = sql.Migration(sql.SCHEMA_VERSION, "schema.sql", (self._ddl(),), True)
            if not dry_run:
                await self._apply(conn, created)
            return [created]
        if facts.problem is not None and not facts.upgradable:
            raise SchemaMismatchError(facts.problem)
        pending = (
            sql.migrations(db.schema, db.table, facts.version or 0) if facts.upgradable else []
        )
        if dry_run or not pending:
            return pending
        await self._require_owner(conn, facts.version, pending)
        for migration in pending:
            await self._apply(conn, migration)
        return pending

    def _ddl(self) -> str:
        return sql.schema_ddl(self.db.schema, self.db.table)

    async def _require_owner(
        self, conn: asyncpg.Connection, version: int | None, pending: list[sql.Migration]
    ) -> None:
        """Refuse, before any DDL, a role that may not ALTER the table."""
        db = self.db
        row = await conn.fetchrow(db.queries["migration_facts"], db.qualified_table)
        if row is None or row["may_alter"]:
            return
        names = ", ".join(m.name for m in pending)
        raise PermissionDeniedError(
            f"table {db.qualified_table!r} in {db.target} is at fsmflow schema version "
            f"{version} and needs migrations {names}, but role {row['role']!r} may not ALTER "
            f"it: run `fsmflow migrate` as the migrator role (the table's owner "
            f"{row['owner']!r}); the runtime role needs only SELECT and INSERT"
        )

    async def _apply(self, conn: asyncpg.Connection, migration: sql.Migration) -> None:
        db = self.db
        where = (db.qualified_table, db.target)
        logger.info("migrating table %s in %s: applying %s", *where, migration.name)
        if migration.in_transaction:
            async with conn.transaction():
                for statement in migration.statements:
                    await conn.execute(statement)
            return
        own = [sql.object_name(db.table, suffix) for suffix in sql.FSMFLOW_INDEX_SUFFIXES]
        for stale in await conn.fetch(db.queries["invalid_indexes"], db.qualified_table, own):
            logger.warning(
                "dropping index %s.%s left INVALID by an interrupted build; building it again",
                stale["schema_name"], stale["index_name"],
            )  # fmt: skip
            await conn.execute(
                sql.drop_index_concurrently(stale["schema_name"], stale["index_name"])
            )
        for statement in migration.statements:
            await conn.execute(statement)
