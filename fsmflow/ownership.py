"""Ownership of running instances: session advisory locks on dedicated connections.

Part of the store layer (it knows asyncpg). A process keeps a few *lanes*: dedicated,
unpooled connections, each holding the advisory locks of the instances it serves and
carrying their appends. Appending on the lock's own session is a fence: if the session
died, the write fails instead of racing a new owner; the conditional append stays the
real guarantee. A heartbeat (and asyncpg's termination callback) notices a lost session
and interrupts the steps of the instances it served.

Pooled connections are never used for locks: asyncpg's pool reset unlocks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from .errors import (
    ConcurrentTransitionError,
    DatabaseUnavailableError,
    FsmflowError,
    InstanceLockedError,
    OwnershipLostError,
)

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger("fsmflow.ownership")

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
# The one-bigint form: the whole 64-bit key space (the two-int form left 32 bits for the
# key, and instances like order-29028 / order-42028 shared a lock).
_LOCK_SQL: Final = "SELECT pg_try_advisory_lock($1::int8)"
_UNLOCK_SQL: Final = "SELECT pg_advisory_unlock($1::int8)"


def lock_key(table: str, workflow: str, instance_id: str) -> int:
    """A stable signed 64-bit key for an instance (same in every process; never ``hash()``).

    ``pg_locks`` shows it as ``(classid::bigint << 32) | objid::bigint``.
    """
    raw = f"fsmflow\0{table}\0{workflow}\0{instance_id}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


class Lane:
    """One dedicated connection shared by the instances pinned to it."""

    def __init__(self, store: Store, index: int) -> None:
        self.store = store
        self.index = index
        self.conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()  # one query at a time on the connection
        self.owners: set[Ownership] = set()
        self.generation = 0  # bumped on every new connection: old locks are gone
        self._heartbeat: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Lane(#{self.index}, owners={len(self.owners)}, generation={self.generation})"

    @property
    def alive(self) -> bool:
        """True while the connection is open."""
        return self.conn is not None and not self.conn.is_closed()

    async def ensure_connected(self) -> None:
        """Connect if needed (retrying within the budget). Caller holds ``self.lock``."""
        if self.alive:
            return
        self.conn = await self.store.retry("owner connect", self._connect)
        self.generation += 1
        self.conn.add_termination_listener(self._on_terminated)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _connect(self) -> asyncpg.Connection:
        kwargs = dict(await self.store.connect_kwargs())
        kwargs["server_settings"] = {**kwargs.get("server_settings", {}), **LANE_SETTINGS}
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

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if not self.owners or self.lock.locked():
                continue  # nothing to protect, or a query is proving the session right now
            try:
                async with self.lock:
                    if self.conn is not None and not self.conn.is_closed():
                        await self.conn.fetchval("SELECT 1", timeout=HEARTBEAT_SECONDS)
            except Exception as exc:
                self.lost(f"heartbeat failed: {type(exc).__name__}")

    async def close(self) -> None:
        """Stop the heartbeat and close the connection (releasing its locks)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self.conn is not None and not self.conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), 5)
        self.conn = None


class Ownership:
    """This process's claim on one instance; appends go through it.

    ``on_lost`` is called (synchronously) when the session holding the lock dies, so the
    runner can interrupt the step it is running.
    """

    def __init__(self, store: Store, lane: Lane, workflow: str, instance_id: str) -> None:
        self.store = store
        self.lane = lane
        self.workflow = workflow
        self.instance_id = instance_id
        self.key = lock_key(store.resolved_table, workflow, instance_id)
        self.generation = -1
        self.is_lost = False
        self.locked = False  # the lock was taken at least once (release gives it back)
        self.on_lost: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "lost" if self.is_lost else "held"
        return (
            f"Ownership({self.workflow!r}, {self.instance_id!r}, {state}, lane={self.lane.index})"
        )

    def mark_lost(self) -> None:
        """Called when the lane's session died (once per loss)."""
        if self.is_lost:
            return
        self.is_lost = True
        if self.on_lost is not None:
            self.on_lost()

    async def try_lock(self) -> bool:
        """Take the advisory lock on the lane's session (reconnecting within the budget)."""
        return await self.store.retry("lock", self._try_lock_once)

    async def _try_lock_once(self) -> bool:
        lane = self.lane
        async with lane.lock:
            await lane.ensure_connected()
            assert lane.conn is not None
            try:
                got = bool(await lane.conn.fetchval(_LOCK_SQL, self.key))
            except Exception:
                lane.lost("lock query failed")
                raise
            if got:
                self.generation = lane.generation
                self.is_lost = False
                self.locked = True
                lane.owners.add(self)
            return got

    async def reacquire(self) -> None:
        """After a lost session: retake the lock on a new one, or :class:`OwnershipLostError`."""
        if not await self.try_lock():
            raise OwnershipLostError(
                self.workflow,
                self.instance_id,
                "the database session holding this instance's lock was lost and another "
                "runner holds the lock now; this runner stopped without writing",
            )
        logger.info(
            "workflow %r instance %r: ownership re-acquired", self.workflow, self.instance_id
        )

    async def execute(self, query: str, *args: Any) -> str:
        """Run one statement on the owning session; raise if that session is not ours."""
        lane = self.lane
        async with lane.lock:
            if self.is_lost or self.generation != lane.generation or not lane.alive:
                self.is_lost = True
                raise _SessionLost()
            assert lane.conn is not None
            try:
                return str(await lane.conn.execute(query, *args))
            except (asyncpg.UniqueViolationError, FsmflowError):
                raise
            except Exception as exc:
                if self.store.is_retriable(exc):
                    lane.lost(type(exc).__name__)
                    raise _SessionLost() from exc
                raise self.store.translate(exc) from None

    async def append(self, seq: int, attempt_id: str, args: tuple[Any, ...], query: str) -> None:
        """Append row ``seq`` exactly once, resolving an unknown outcome by reading it back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.store.config.retry_budget
        delay = 0.1
        while True:
            try:
                if self.is_lost:
                    await self.reacquire()
                    if await self._landed(seq, attempt_id):
                        return
                result = await self.execute(query, *args)
            except asyncpg.UniqueViolationError:
                raise ConcurrentTransitionError(self.workflow, self.instance_id, seq) from None
            except (_SessionLost, DatabaseUnavailableError) as exc:
                if loop.time() + delay > deadline:
                    raise DatabaseUnavailableError(self.store.target, "retry budget spent") from exc
                logger.warning(
                    "workflow %r instance %r: session lost while appending seq %d; "
                    "reconnecting in %.1fs",
                    self.workflow,
                    self.instance_id,
                    seq,
                    delay,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 5.0)
                continue
            if result != "INSERT 0 1":
                raise ConcurrentTransitionError(self.workflow, self.instance_id, seq)
            return

    async def _landed(self, seq: int, attempt_id: str) -> bool:
        """After an unknown outcome: did our row land (True), or nothing (False)?"""
        record = await self.store.record_at(self.workflow, self.instance_id, seq)
        if record is None:
            return False
        if record.attempt_id is not None and record.attempt_id.replace("-", "") == attempt_id:
            logger.info(
                "workflow %r instance %r: seq %d had landed before the connection was lost",
                self.workflow,
                self.instance_id,
                seq,
            )
            return True
        raise ConcurrentTransitionError(self.workflow, self.instance_id, seq)

    async def release(self) -> None:
        """Give the lock back (a lost session already released it)."""
        lane = self.lane
        lane.owners.discard(self)
        self.store.forget_owner(self)
        if self.is_lost or self.generation != lane.generation:
            return
        async with lane.lock:
            if lane.alive and self.generation == lane.generation:
                assert lane.conn is not None
                try:
                    await lane.conn.fetchval(_UNLOCK_SQL, self.key)
                except Exception as exc:
                    lane.lost(type(exc).__name__)


class _SessionLost(Exception):
    """Internal: the owning session is gone; the outcome of the last statement is unknown."""


async def acquire(
    store: Store,
    lanes: list[Lane],
    workflow: str,
    instance_id: str,
    *,
    wait: bool,
    lock_timeout: float | None,
) -> Ownership:
    """Claim an instance on the least busy lane; :class:`InstanceLockedError` if owned."""
    loop = asyncio.get_running_loop()
    deadline = None if lock_timeout is None else loop.time() + lock_timeout
    delay = 0.05
    while True:
        if not store.owned_here(workflow, instance_id):
            lane = min(lanes, key=lambda ln: (len(ln.owners), ln.index))
            owner = Ownership(store, lane, workflow, instance_id)
            # Reserve the lane before awaiting, so that instances claimed concurrently
            # spread over the lanes instead of all choosing the same least-busy one.
            lane.owners.add(owner)
            try:
                got = await owner.try_lock()
            finally:
                if not owner.locked:
                    lane.owners.discard(owner)
            if got:
                store.remember_owner(owner)
                return owner
        if not wait or (deadline is not None and loop.time() + delay > deadline):
            raise InstanceLockedError(
                workflow,
                instance_id,
                "another runner is running this instance right now (it holds its lock); "
                "wait for it, or pass wait=True to wait for the lock",
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
