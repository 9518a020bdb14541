"""The store: fsmflow's only module that talks to PostgreSQL (through asyncpg).

It owns the connection pool, applies the schema, appends transitions conditionally and
reads history back as typed records. Driver errors are translated into fsmflow errors at
this one boundary (the mapping is in :mod:`fsmflow.dberrors`); messages name the target as
``host:port/db`` and never a password.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from fsmflow import sql
from fsmflow.errors import (
    ConcurrentTransitionError,
    FsmflowError,
    HistoryCorruptError,
    PermissionDeniedError,
    ResetRefusedError,
    SchemaMismatchError,
    SchemaMissingError,
    StoreError,
)
from fsmflow.model.records import InstanceSummary, TransitionRecord, to_record, to_summary
from fsmflow.settings import parse_table_name
from fsmflow.sql import REQUIRED_COLUMNS
from fsmflow.store import dberrors, operations
from fsmflow.store.dberrors import is_retriable
from fsmflow.store.ownership import Lane, Ownership, acquire, lock_key

if TYPE_CHECKING:
    from fsmflow.settings import DBConfig

logger = logging.getLogger("fsmflow.store")
T = TypeVar("T")

_ADVISORY_INIT_KEY = 0x0F5A1  # serializes concurrent init_db calls


async def _no_reset(connection: asyncpg.Connection) -> None:
    # The default pool reset costs four statements and a round trip per checkout; fsmflow
    # leaves no session state behind on pooled connections, so there is nothing to reset.
    return None


class Store:
    """Connections and SQL for one table. Open lazily; ``async with`` closes it.

    Every method that writes is a single statement in its own transaction.
    """

    def __init__(self, config: DBConfig) -> None:
        self.config = config
        self.schema, self.table = parse_table_name(config.table)
        self.qualified_table = f"{self.schema}.{self.table}" if self.schema else self.table
        # The table as the server resolved it (schema always included), set at open:
        # advisory-lock keys use it, so `t` and `public.t` are one lock.
        self.resolved_table = self.qualified_table
        self._q = sql.queries(self.schema, self.table)
        self._pool: asyncpg.Pool | None = None
        self._target = config.display_target()
        self._connect_kwargs: dict[str, Any] | None = None
        self._schema_checked = False
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._lanes = [Lane(self, i) for i in range(config.owner_connections)]
        self._owners: dict[tuple[str, str], Ownership] = {}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._pool else "not opened"
        return f"Store(target={self._target!r}, table={self.qualified_table!r}, {state})"

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def target(self) -> str:
        """Where the database is, safe to show (no password)."""
        return self._target

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The asyncpg pool while the store is open, else None (the seed's ``DBConfig.pool``)."""
        return self._pool

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self, *, check_schema: bool = True) -> Store:
        """Connect (retrying transient failures) and verify the table; idempotent."""
        if self._closed:
            raise StoreError(
                f"the store for {self._target} is closed; build the runner again from its "
                "DBConfig (which then opens a new store), or create a new DBConfig"
            )
        async with self._open_lock:
            if self._pool is None:
                self._pool = await self.retry("connect", self._create_pool)
            if check_schema and not self._schema_checked:
                await self._check_schema()
        return self

    async def close(self) -> None:
        """Close every connection (releasing any held locks). The store cannot be reopened."""
        self._closed = True
        for lane in self._lanes:
            await lane.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def connect_kwargs(self) -> dict[str, Any]:
        """asyncpg connect arguments, starting the embedded server if none is configured."""
        if self._connect_kwargs is None:
            if self.config.configured:
                self._connect_kwargs = self.config.connect_kwargs()
            else:
                from fsmflow.store.embedded import embedded_connect_kwargs

                self._connect_kwargs = await asyncio.to_thread(embedded_connect_kwargs, self.config)
                self._target = f"embedded PostgreSQL ({self._connect_kwargs['host']})"
        return self._connect_kwargs

    async def connect(self) -> asyncpg.Connection:
        """A dedicated (unpooled) connection with the same settings."""
        kwargs = await self.connect_kwargs()
        try:
            return await asyncpg.connect(**kwargs)
        except Exception as exc:
            raise self.translate(exc) from None

    async def _create_pool(self) -> asyncpg.Pool:
        kwargs = await self.connect_kwargs()
        size = self.config.pool_size
        pool = await asyncpg.create_pool(min_size=1, max_size=size, reset=_no_reset, **kwargs)
        assert pool is not None
        return pool

    async def _check_schema(self) -> None:
        row = await self._fetchrow("check_schema", self.qualified_table)
        assert row is not None
        if not row["exists"]:
            raise SchemaMissingError(
                f"table {self.qualified_table!r} does not exist in {self._target}; run "
                "`fsmflow init-db` (or `await DBConfig().init_db()`) once with a role that may "
                "CREATE, or apply sql/schema.sql with psql"
            )
        problem, _ = self._schema_problem(row["comment"], row["columns"])
        if problem is not None:
            raise SchemaMismatchError(problem)
        if not (row["can_select"] and row["can_insert"]):
            raise PermissionDeniedError(
                dberrors.grants_message(self.qualified_table, self.schema, self._target)
            )
        self.resolved_table = f"{row['schema_name']}.{self.table}"
        self._check_durability(row["synchronous_commit"])
        self._schema_checked = True

    def _schema_problem(
        self, comment: str | None, columns: Sequence[str]
    ) -> tuple[str | None, bool]:
        """:func:`fsmflow.sql.schema_problem` for this store's table."""
        label = f"table {self.qualified_table!r} in {self._target}"
        return sql.schema_problem(label, comment, columns)

    def _check_durability(self, setting: str) -> None:
        if setting in ("on", "remote_write", "remote_apply", "local"):
            return
        message = (
            f"synchronous_commit={setting} on {self._target}: a crash can lose acknowledged "
            "transitions; set it to on for the fsmflow role "
            "(ALTER ROLE ... SET synchronous_commit=on)"
        )
        if self.config.strict_durability:
            raise StoreError(message + " (refused because FSMFLOW_STRICT_DURABILITY is set)")
        logger.warning(message)

    # -- error handling ----------------------------------------------------------------

    def translate(self, exc: BaseException) -> FsmflowError:
        """Map a driver or OS error to the fsmflow error that says what to do."""
        return dberrors.translate(
            exc,
            target=self._target,
            table=self.qualified_table,
            schema=self.schema,
            secrets=self.config.secrets(),
        )

    def scrub(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``***``."""
        return self.config.scrub(text)

    def is_retriable(self, exc: BaseException) -> bool:
        """True for errors that a reconnect may cure."""
        return is_retriable(exc)

    async def retry(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying retriable errors with capped, jittered backoff."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.retry_budget
        delay = 0.1
        while True:
            try:
                return await operation()
            except Exception as exc:
                if not is_retriable(exc) or loop.time() + delay > deadline:
                    raise self.translate(exc) from None
                failure = type(exc).__name__
            # Sleep outside the handler: a cancellation here must not escape from it.
            logger.warning(
                "%s to %s failed (%s); retrying in %.1fs", what, self._target, failure, delay
            )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 5.0)

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        try:
            yield
        except FsmflowError:
            raise
        except Exception as exc:
            raise self.translate(exc) from None

    async def _pool_or_open(self) -> asyncpg.Pool:
        if self._pool is None or not self._schema_checked:
            await self.open()
        assert self._pool is not None
        return self._pool

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        if self._pool is None:
            await self.open(check_schema=False)
        assert self._pool is not None
        pool = self._pool
        return await self.retry(query, lambda: pool.fetchrow(self._q[query], *args))

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        pool = await self._pool_or_open()
        return await self.retry(query, lambda: pool.fetch(self._q[query], *args))

    # -- administration ----------------------------------------------------------------

    async def init_db(self) -> None:
        """Create the table and its indexes if missing, or upgrade an older fsmflow table in
        place (applying each migration after its version; an upgrade rewrites the table).

        Idempotent and safe to run concurrently: one transaction, under an advisory lock.
        :class:`SchemaMismatchError` for a table that is not fsmflow's or is newer.
        """
        await self.open(check_schema=False)
        assert self._pool is not None
        async with self._translated(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_INIT_KEY)
            done = await self._create_or_upgrade(conn)
        self._schema_checked = False
        await self._check_schema()
        where = (self.qualified_table, self._target)
        if done:
            logger.info("initialized table %s in %s: %s", *where, done)
        else:
            logger.debug(
                "table %s in %s is at schema version %d already", *where, sql.SCHEMA_VERSION
            )

    async def _create_or_upgrade(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> str:
        """Inside init_db's transaction: what it did to the table ("" if nothing)."""
        row = await conn.fetchrow(self._q["check_schema"], self.qualified_table)
        assert row is not None
        if not row["exists"]:
            await conn.execute(sql.schema_ddl(self.schema, self.table))
            return f"created at schema version {sql.SCHEMA_VERSION}"
        problem, upgradable = self._schema_problem(row["comment"], row["columns"])
        if problem is not None and not upgradable:
            raise SchemaMismatchError(problem)
        done = []
        if upgradable:
            version = sql.schema_version(row["comment"])
            for _, ddl in sql.migrations_ddl(self.schema, self.table, version or 0):
                await conn.execute(ddl)
            done.append(f"upgraded from schema version {version} to {sql.SCHEMA_VERSION}")
        # The current DDL again (IF NOT EXISTS): creates an index an older fsmflow failed to
        # create, and, like creating, needs the migrator role (COMMENT needs the owner).
        before = await conn.fetchval(self._q["table_indexes"], self.qualified_table)
        await conn.execute(sql.schema_ddl(self.schema, self.table))
        after = await conn.fetchval(self._q["table_indexes"], self.qualified_table)
        done += [f"created index {name}" for name in sorted(set(after) - set(before))]
        return "; ".join(done)

    async def reset_db(self, *, force: bool = False) -> None:
        """Delete every row of the table: all history of all workflows. Irreversible.

        Refused with :class:`ResetRefusedError` while any session holds an instance's lock
        (a live runner would fail on its next append), unless ``force``. One transaction:
        the table is locked first, so no runner reads or appends between check and delete.
        """
        pool = await self._pool_or_open()

        async def reset() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(self._q["reset_lock_table"])
                if not force:
                    await self._refuse_if_held(conn)
                await conn.execute(self._q["reset"])

        await self.retry("reset", reset)
        logger.warning(
            "reset table %s in %s: all history deleted", self.qualified_table, self._target
        )

    # -- ownership ---------------------------------------------------------------------

    async def acquire(
        self,
        workflow: str,
        instance_id: str,
        *,
        wait: bool = False,
        lock_timeout: float | None = None,
    ) -> Ownership:
        """Own an instance: its lock on a dedicated connection, which also carries its
        appends. :class:`InstanceLockedError` if another runner owns it (unless ``wait``)."""
        await self._pool_or_open()
        return await acquire(
            self, self._lanes, workflow, instance_id, wait=wait, lock_timeout=lock_timeout
        )

    def owned_here(self, workflow: str, instance_id: str) -> bool:
        """True if a runner in this process owns or is taking the instance (locks are
        re-entrant, so this registry, not the lock, keeps two runners of one process
        apart)."""
        return (workflow, instance_id) in self._owners

    def claim_owner(self, owner: Ownership) -> bool:
        """Register ``owner`` unless another ownership of its instance is registered; True
        if registered. Called before the lock is taken (no await: atomic in the loop)."""
        key = (owner.workflow, owner.instance_id)
        if key in self._owners:
            return False
        self._owners[key] = owner
        return True

    def forget_owner(self, owner: Ownership) -> None:
        """Unregister an ownership released by this process."""
        if self._owners.get((owner.workflow, owner.instance_id)) is owner:
            del self._owners[(owner.workflow, owner.instance_id)]

    # -- writing -----------------------------------------------------------------------

    async def start(
        self,
        workflow: str,
        instance_id: str,
        state: str,
        context_json: str,
        *,
        fingerprint: str | None,
        attempt_id: str,
        definition_json: str | None,
        forked_from: tuple[str, int] | None = None,
    ) -> None:
        """Record seq 0 of a new instance; :class:`ConcurrentTransitionError` if it exists."""
        pool = await self._pool_or_open()
        fork_instance, fork_seq = forked_from or (None, None)
        args = (
            workflow,
            instance_id,
            state,
            context_json,
            fingerprint,
            attempt_id,
            definition_json,
            fork_instance,
            fork_seq,
        )
        try:
            await pool.execute(self._q["start"], *args)
            return
        except asyncpg.UniqueViolationError:
            pass
        except Exception as exc:
            if not is_retriable(exc):
                raise self.translate(exc) from None
            # Unknown outcome (lost connection): the read-back below decides.
        first = await self.record_at(workflow, instance_id, 0)
        if first is None:
            await self.retry("start", lambda: pool.execute(self._q["start"], *args))
        elif (first.attempt_id or "").replace("-", "") != attempt_id:
            raise ConcurrentTransitionError(workflow, instance_id, 0)

    async def append(
        self,
        workflow: str,
        instance_id: str,
        seq: int,
        *,
        trigger: str | None,
        source: str | None,
        dest: str | None,
        context_json: str,
        status: str,
        fingerprint: str | None,
        attempt_id: str,
        duration_ms: float | None,
        error_json: str | None = None,
        owner: Ownership | None = None,
    ) -> None:
        """Append ``seq`` if the instance's last row is ``seq - 1`` — one statement, one
        round trip. :class:`ConcurrentTransitionError` if another writer got there first.

        With ``owner`` the row is written on the owning session, and a lost connection is
        resolved by reading the row back (by ``attempt_id``), never by writing twice.
        """
        args = (
            workflow, instance_id, seq, trigger, source, dest, context_json, status,
            fingerprint, attempt_id, duration_ms, error_json,
        )  # fmt: skip
        if owner is not None:
            await owner.append(seq, attempt_id, args, self._q["append"])
            return
        pool = await self._pool_or_open()
        try:
            result = await pool.execute(self._q["append"], *args)
        except asyncpg.UniqueViolationError:
            raise ConcurrentTransitionError(workflow, instance_id, seq) from None
        except Exception as exc:
            raise self.translate(exc) from None
        if result != "INSERT 0 1":
            raise ConcurrentTransitionError(workflow, instance_id, seq)

    # -- reading -----------------------------------------------------------------------

    async def last_record(self, workflow: str, instance_id: str) -> TransitionRecord | None:
        """The latest row of an instance (index lookups), or None.

        :class:`HistoryCorruptError` if a seq before it is missing.
        """
        await self._pool_or_open()
        row = await self._fetchrow("last_record", workflow, instance_id)
        if row is None:
            return None
        expected = row["seq"] - 1 if row["seq"] > 0 else None
        if row["prev_seq"] != expected:
            missing = (-1 if row["prev_seq"] is None else row["prev_seq"]) + 1
            raise HistoryCorruptError(
                workflow, instance_id,
                f"stored history has a gap: seq {missing} is missing before seq {row['seq']}; "
                "rows were deleted by hand — fork the instance from an intact seq",
            )  # fmt: skip
        if row["row_count"] != row["seq"] + 1:
            raise HistoryCorruptError(
                workflow, instance_id,
                f"stored history has {row['row_count']} rows up to seq {row['seq']}: a seq "
                "before it is missing (rows were deleted by hand); `fsmflow history` names "
                "it — fork the instance from an intact seq",
            )  # fmt: skip
        return to_record(row)

    async def record_at(self, workflow: str, instance_id: str, seq: int) -> TransitionRecord | None:
        """The row at ``seq`` of an instance, or None."""
        await self._pool_or_open()
        row = await self._fetchrow("record_at", workflow, instance_id, seq)
        return None if row is None else to_record(row)

    async def history(self, workflow: str, instance_id: str) -> list[TransitionRecord]:
        """Every row of an instance, in seq order (empty if it has none).

        :class:`HistoryCorruptError` names the first missing seq if there is a gap.
        """
        records = [to_record(r) for r in await self._fetch("history", workflow, instance_id)]
        for expected, record in enumerate(records):
            if record.seq != expected:
                raise HistoryCorruptError(
                    workflow, instance_id, f"stored history has a gap: seq {expected} is missing"
                )
        return records

    async def latest_unfinished(self, workflow: str) -> str | None:
        """The id of the most recently started instance of ``workflow`` that has not ended."""
        await self._pool_or_open()
        row = await self._fetchrow("latest_unfinished", workflow)
        return None if row is None else str(row["instance_id"])

    # -- operations: implemented in operations.py, bound here as methods ------------------

    list_instances = operations.list_instances
    fork_instance = operations.fork_instance
    cancel_instance = operations.cancel_instance
    retry_instance = operations.retry_instance
    prune_instances = operations.prune_instances
    check_health = operations.check_health

    async def _instance_page(
        self,
        workflow: str | None,
        statuses: Sequence[str] | None,
        updated_before: datetime | None,
        limit: int,
        after: InstanceSummary | None,
    ) -> list[InstanceSummary]:
        """One page of the ``list_instances`` query (keyset: ``after`` the given instance)."""
        cursor = (None, None, None) if after is None else (
            after.started_at, after.workflow_name, after.instance_id
        )  # fmt: skip
        wanted = None if statuses is None else list(statuses)
        rows = await self._fetch("list_instances", workflow, wanted, updated_before, limit, *cursor)
        return [to_summary(row) for row in rows]

    async def _server_now(self) -> datetime:
        """The database server's clock."""
        row = await self._fetchrow("server_time")
        assert row is not None
        now: datetime = row["now"]
        return now

    async def _delete_instances(
        self, batch: Sequence[InstanceSummary], updated_before: datetime
    ) -> tuple[int, int]:
        """Delete the instances of ``batch`` that no runner owns and whose last row is still
        terminal and older than ``updated_before``: ``(instances, rows)`` deleted.

        One transaction: it takes the instances' advisory locks first (a runner holding one
        keeps its instance), then re-reads their last rows in a fresh snapshot and deletes.
        Running it again after an unknown outcome is harmless.
        """
        pool = await self._pool_or_open()
        names = [s.workflow_name for s in batch]
        ids = [s.instance_id for s in batch]
        keys = [lock_key(self.resolved_table, s.workflow_name, s.instance_id) for s in batch]

        async def delete() -> tuple[int, int]:
            async with pool.acquire() as conn, conn.transaction():
                locked = await conn.fetch(self._q["lock_instances"], names, ids, keys)
                if not locked:
                    return 0, 0
                args = ([r["workflow_name"] for r in locked], [r["instance_id"] for r in locked])
                row = await conn.fetchrow(self._q["delete_instances"], *args, updated_before)
            assert row is not None
            return int(row["instances"]), int(row["rows"])

        return await self.retry("prune", delete)

    async def _health_facts(self) -> dict[str, Any]:
        """What ``check_health`` judges: the ``health`` query's answers, plus the schema
        version, the columns this version needs that the table lacks, and why this fsmflow
        cannot run on the table (``schema_problem``, None if it can or it is missing)."""
        row = await self._fetchrow("health", self.qualified_table)
        assert row is not None
        facts = dict(row.items())
        facts["missing_columns"] = sorted(REQUIRED_COLUMNS - set(row["columns"]))
        facts["schema_version"] = version = sql.schema_version(row["comment"])
        facts["schema_version_ok"] = version == sql.SCHEMA_VERSION
        problem, _ = self._schema_problem(row["comment"], row["columns"])
        facts["schema_problem"] = problem if row["exists"] else None
        return facts

    async def _refuse_if_held(self, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        """:class:`ResetRefusedError` if a session holds the lock of an instance in the table
        (run inside ``reset_db``'s transaction, under its table lock)."""
        instances = await conn.fetch(self._q["reset_instances"])
        names = [r["workflow_name"] for r in instances]
        ids = [r["instance_id"] for r in instances]
        keys = [lock_key(self.resolved_table, n, i) for n, i in zip(names, ids, strict=True)]
        held = await conn.fetch(self._q["held_instances"], names, ids, keys)
        if not held:
            return
        shown = ", ".join(
            f"workflow {r['workflow_name']!r} instance {r['instance_id']!r}" for r in held[:5]
        )
        more = f" and {len(held) - 5} more" if len(held) > 5 else ""
        raise ResetRefusedError(
            f"reset_db refused: {len(held)} instance(s) of table {self.qualified_table!r} in "
            f"{self._target} are held by a runner right now ({shown}{more}); nothing was "
            "deleted. Stop those runners first (SIGTERM stops one at the next step boundary), "
            "or pass force=True / --force to delete anyway (their runners then fail)"
        )
