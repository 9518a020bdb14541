"""Owner connections ("lanes"): dedicated sessions shared by the instances pinned to them.

Part of the store layer (it knows asyncpg). A lane runs one query at a time, notices a
lost session (heartbeat, asyncpg's termination callback) and tells the instances it
served. Only errors that mean the session itself is gone (:func:`session_gone`) count as
a loss: a cancelled statement or a full lock table leaves the session and every lock on
it as they were.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol, TypeVar

import asyncpg

from fsmflow import sql

logger = logging.getLogger("fsmflow.ownership")
T = TypeVar("T")

HEARTBEAT_SECONDS: Final = 5.0
LANE_SETTINGS: Final = {
    "application_name": "fsmflow-owner",
    # asyncpg sets no keepalives; server defaults would keep a dead peer's locks ~2 h.
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "idle_session_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
}
QUERIES: Final = sql.named("ownership.sql")
# The server ended the session (admin shutdown, crash shutdown, cannot connect now).
_SESSION_ENDED: Final = ("57P01", "57P02", "57P03")
_PIDS_KEPT: Final = 3


class SessionLost(Exception):
    """The owning session is gone (and its locks); the last statement's outcome is unknown."""


class StatementFailed(Exception):
    """A statement failed (cancelled, timed out...) but its session lives on."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


class Connector(Protocol):
    """What a lane needs from the store: connection arguments and the retry loop."""

    async def connect_kwargs(self) -> dict[str, Any]:
        """asyncpg connect arguments."""

    async def retry(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying retriable errors within the budget."""


class Owner(Protocol):
    """What a lane needs from an instance it serves: to be told its session is gone."""

    def mark_lost(self) -> None:
        """The session holding this instance's lock died."""


def session_gone(exc: BaseException) -> bool:
    """True if ``exc`` means the database session itself is gone, and every lock with it.

    Only these may mark a lane lost: a cancelled statement (57014), a full lock table
    (53200) or a timed-out call leave the session, and the other instances' locks, as
    they were.
    """
    if isinstance(exc, TimeoutError | asyncpg.InterfaceWarning):
        return False  # TimeoutError is an OSError, but the session still answers
    if isinstance(
        exc, asyncpg.InterfaceError | asyncpg.InternalClientError | ConnectionError | OSError
    ):
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and (state.startswith("08") or state in _SESSION_ENDED)


async def finish(task: asyncio.Task[T]) -> T:
    """``await task``, except that a cancelled caller first waits for the task to end
    (a second cancellation leaves it running on its own): releases and statements on a
    shared connection are never cut short."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})
        raise


class Lane:
    """One dedicated connection shared by the instances pinned to it."""

    def __init__(self, store: Connector, index: int) -> None:
        self.store = store
        self.index = index
        self.conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()  # one query at a time on the connection
        self.owners: set[Owner] = set()
        self.generation = 0  # bumped on every new connection: old locks are gone
        # Server pids of this lane's last sessions: recent ones only, so that a pid the
        # OS has since given to another backend is never taken for one of ours.
        self._pids: collections.deque[int] = collections.deque(maxlen=_PIDS_KEPT)
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"Lane(#{self.index}, owners={len(self.owners)}, generation={self.generation})"

    @property
    def alive(self) -> bool:
        """True while the connection is open."""
        return self.conn is not None and not self.conn.is_closed()

    def previous_pids(self) -> set[int]:
        """Server pids of this lane's earlier sessions (a stalled one may still hold locks)."""
        current = self.conn.get_server_pid() if self.alive and self.conn is not None else None
        return {pid for pid in self._pids if pid != current}

    async def start(
        self, operation: Callable[[], Awaitable[T]], *, connect: bool
    ) -> asyncio.Task[T]:
        """Take the session (connecting first if ``connect``) and start ``operation`` on
        it as a task that gives the session back when it ends; a cancelled caller cannot
        stop it half-way."""
        await self.lock.acquire()
        try:
            if connect:
                await self.ensure_connected()
        except BaseException:
            self.lock.release()
            raise
        return self.spawn(self._holding_lock(operation))

    async def exclusive(self, operation: Callable[[], Awaitable[T]], *, connect: bool) -> T:
        """Run ``operation`` alone on the session (connecting first if ``connect``).

        A cancelled caller lets a started statement finish before it goes: a statement
        cut short leaves the shared connection busy for the next instance's query.
        """
        return await finish(await self.start(operation, connect=connect))

    async def _holding_lock(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        finally:
            self.lock.release()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task that a cancelled caller cannot stop (kept until done)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def ensure_connected(self) -> None:
        """Connect if needed (retrying within the budget). Caller holds ``self.lock``."""
        if self.alive:
            return
        self.conn = await self.store.retry("owner connect", self._connect)
        self.generation += 1
        self._pids.append(self.conn.get_server_pid())
        self.conn.add_termination_listener(self._on_terminated)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _connect(self) -> asyncpg.Connection:
        kwargs = dict(await self.store.connect_kwargs())
        settings = {**kwargs.get("server_settings", {}), **LANE_SETTINGS}
        # The time limit of a statement on a lane is the server's statement_timeout, not a
        # client timer: the same bound (a cancelled statement fails with 57014 and the
        # session lives on) without a timer per append; the keepalives above bound a
        # silent network.
        timeout = kwargs.pop("command_timeout", None)
        if timeout and "statement_timeout" not in kwargs.get("server_settings", {}):
            settings["statement_timeout"] = str(max(1, round(timeout * 1000)))
        kwargs["server_settings"] = settings
        conn: asyncpg.Connection = await asyncpg.connect(**kwargs)
        return conn

    def _on_terminated(self, conn: Any) -> None:
        if conn is self.conn:
            self.lost("connection closed")

    def lost(self, why: str) -> None:
        """The session is gone: every lock it held is gone too."""
        if self.conn is not None and not self.conn.is_closed():
            self.conn.terminate()
        if self.owners:
            logger.warning(
                "owner connection #%d lost (%s): %d instance(s) affected",
                self.index,
                why,
                len(self.owners),
            )
        for owner in list(self.owners):
            owner.mark_lost()

    async def fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        """Run the ownership query ``name`` on this lane's session (connecting if needed)."""
        return await self.exclusive(lambda: self._fetchrow(name, args), connect=True)

    async def _fetchrow(self, name: str, args: tuple[Any, ...]) -> asyncpg.Record | None:
        assert self.conn is not None
        try:
            return await self.conn.fetchrow(QUERIES[name], *args)
        except Exception as exc:
            if session_gone(exc) or not self.alive:
                self.lost(f"{name} query failed: {type(exc).__name__}")
            raise

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if not self.owners or self.lock.locked():
                continue  # nothing to protect, or a query is proving the session right now
            why = await self._probe()
            if why is not None:
                self.lost(why)

    async def _probe(self) -> str | None:
        """Why the session is gone, or None if it answered (or failed but lives on)."""
        try:
            async with self.lock:
                if self.conn is not None and not self.conn.is_closed():
                    await self.conn.fetchval(QUERIES["heartbeat"], timeout=HEARTBEAT_SECONDS)
        except TimeoutError:
            return "heartbeat timed out: the session did not answer"
        except Exception as exc:
            if session_gone(exc) or not self.alive:
                return f"heartbeat failed: {type(exc).__name__}"
            logger.warning(
                "owner connection #%d: heartbeat failed (%s) but the session lives; "
                "its locks stand",
                self.index,
                type(exc).__name__,
            )
        return None

    async def close(self) -> None:
        """Stop the heartbeat and close the connection (releasing its locks)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._tasks:  # releases in flight: let them finish, briefly
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.conn is not None and not self.conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), 5)
        self.conn = None
