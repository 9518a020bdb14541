"""The SQL gateway of one table: connection arguments, the pool, named queries, the one
reconnect-and-backoff loop, and the translation of driver errors.

Every other part of the store (schema, history, ownership, operations) receives this
object and nothing else of the store; it calls back into none of them. Driver errors are
translated here (the mapping is in :mod:`fsmflow.store.dberrors`); messages name the target
as ``host:port/db`` and never a password.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import asyncpg

from fsmflow import sql
from fsmflow.errors import FsmflowError, StoreError
from fsmflow.store import dberrors
from fsmflow.store.config import StoreConfig

logger = logging.getLogger("fsmflow.store")
T = TypeVar("T")

INSERTED_ONE: Final = "INSERT 0 1"  # what a conditional append that landed reports
_FIRST_DELAY: Final = 0.1
_MAX_DELAY: Final = 5.0


async def no_reset(connection: asyncpg.Connection) -> None:
    """A pool ``reset`` that runs nothing on release."""
    # The default pool reset costs four statements and a round trip per checkout; fsmflow
    # leaves no session state behind on pooled connections, so there is nothing to reset.
    return None


class Backoff:
    """Capped, jittered exponential delays within a budget: the one retry schedule."""

    def __init__(self, budget: float) -> None:
        self._deadline = asyncio.get_running_loop().time() + budget
        self.delay = _FIRST_DELAY

    def spent(self) -> bool:
        """True if sleeping once more would overrun the budget."""
        return asyncio.get_running_loop().time() + self.delay > self._deadline

    async def sleep(self) -> None:
        """Sleep the current delay (jittered), then double it up to the cap."""
        await asyncio.sleep(self.delay * random.uniform(0.8, 1.2))
        self.delay = min(self.delay * 2, _MAX_DELAY)


class Database:
    """Connections and named queries for one table; see the module docstring.

    ``ready`` (set by the store) is awaited once before the first query that needs a
    checked table: the schema check, which sets :attr:`checked`.
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.schema, self.table = sql.parse_table_name(config.table)
        self.qualified_table = f"{self.schema}.{self.table}" if self.schema else self.table
        events = sql.events_table(self.table)
        self.qualified_events = f"{self.schema}.{events}" if self.schema else events
        # Notifications that wake waiting runners: one channel per table.
        self.wake_channel = sql.object_name(self.table, "_wake")
        # The table as the server resolved it (schema always included), set by the schema
        # check: advisory-lock keys use it, so `t` and `public.t` are one lock.
        self.resolved_table = self.qualified_table
        self.queries = sql.queries(self.schema, self.table)
        self.target = config.display_target()
        self.checked = False
        self.closed = False
        self.ready: Callable[[], Awaitable[None]] | None = None
        self._pool: asyncpg.Pool | None = None
        self._connect_kwargs: dict[str, Any] | None = None
        self._open_lock = asyncio.Lock()
        self._check_lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self._pool else "not opened"
        return f"Database(target={self.target!r}, table={self.qualified_table!r}, {state})"

    @property
    def is_open(self) -> bool:
        """True while the pool exists."""
        return self._pool is not None

    @property
    def current_pool(self) -> asyncpg.Pool | None:
        """The pool if it exists (never connects)."""
        return self._pool

    async def pool(self, *, checked: bool = True) -> asyncpg.Pool:
        """The pool, connecting first (retrying transient failures); with ``checked`` the
        table is verified once before it is handed out."""
        if self.closed:
            raise StoreError(
                f"the store for {self.target} is closed; build the runner again from its "
                "DBConfig (which then opens a new store), or create a new DBConfig"
            )
        if self._pool is None:
            async with self._open_lock:
                if self._pool is None:
                    self._pool = await self.retry("connect", self._create_pool)
        if checked and not self.checked and self.ready is not None:
            async with self._check_lock:  # once, not once per instance arriving meanwhile
                if not self.checked:
                    await self.ready()
        return self._pool

    async def close(self) -> None:
        """Close the pool. The gateway cannot be used again."""
        self.closed = True
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
                self.target = f"embedded PostgreSQL ({self._connect_kwargs['host']})"
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
        pool = await asyncpg.create_pool(min_size=1, max_size=size, reset=no_reset, **kwargs)
        assert pool is not None
        return pool

    # -- errors --------------------------------------------------------------------------

    def translate(self, exc: BaseException) -> FsmflowError:
        """Map a driver or OS error to the fsmflow error that says what to do."""
        return dberrors.translate(
            exc,
            target=self.target,
            table=self.qualified_table,
            schema=self.schema,
            secrets=self.config.secrets(),
        )

    async def retry(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying retriable errors with capped, jittered backoff for
        ``FSMFLOW_DB_RETRY_SECONDS``; anything else is translated at once."""
        backoff = Backoff(self.config.retry_budget)
        while True:
            try:
                return await operation()
            except Exception as exc:
                if not dberrors.is_retriable(exc) or backoff.spent():
                    raise self.translate(exc) from None
                failure = type(exc).__name__
            # Sleep outside the handler: a cancellation here must not escape from it.
            logger.warning(
                "%s to %s failed (%s); retrying in %.1fs", what, self.target, failure, backoff.delay
            )
            await backoff.sleep()

    @asynccontextmanager
    async def translated(self) -> AsyncIterator[None]:
        """Translate any driver error raised inside the block (no retry)."""
        try:
            yield
        except FsmflowError:
            raise
        except Exception as exc:
            raise self.translate(exc) from None

    # -- named queries on the pool, retried ------------------------------------------------

    async def fetchrow(self, name: str, *args: Any, checked: bool = True) -> asyncpg.Record | None:
        """One row of the named query (or None)."""
        pool = await self.pool(checked=checked)
        query = self.queries[name]
        return await self.retry(name, lambda: pool.fetchrow(query, *args))

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        """Every row of the named query."""
        pool = await self.pool()
        query = self.queries[name]
        return await self.retry(name, lambda: pool.fetch(query, *args))
