"""Ownership of running instances: session advisory locks on dedicated connections.

Part of the store layer (it knows asyncpg). A process keeps a few *lanes*
(:mod:`fsmflow.lanes`): dedicated, unpooled connections, each holding the advisory locks
of the instances it serves and carrying their appends. Appending on the lock's own
session is a fence: if the session died, the write fails instead of racing a new owner;
the conditional append stays the real guarantee. A lost session interrupts the steps of
the instances it served.

Pooled connections are never used for locks: asyncpg's pool reset unlocks them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any, Final

import asyncpg

from fsmflow.errors import (
    InstanceLockedError,
    LockTableFullError,
    OwnershipLostError,
)
from fsmflow.store.appending import AppendOnce, ReadRow
from fsmflow.store.batching import AppendBatcher
from fsmflow.store.database import Backoff, Database
from fsmflow.store.lanes import QUERIES, Lane, finish, session_gone

__all__ = ["Lane", "Owners", "Ownership", "lock_key"]

logger = logging.getLogger("fsmflow.ownership")

# The one-bigint lock form: the whole 64-bit key space (the two-int form left 32 bits for
# the key, and instances like order-29028 / order-42028 shared a lock).
LOCK_TABLE_FULL: Final = "53200"  # out of shared memory: the server's lock table is full
_END_SESSION_WAIT_MS: Final = 500


def lock_key(table: str, workflow: str, instance_id: str) -> int:
    """A stable signed 64-bit key for an instance (same in every process; never ``hash()``).

    ``pg_locks`` shows it as ``(classid::bigint << 32) | objid::bigint``.
    """
    raw = f"fsmflow\0{table}\0{workflow}\0{instance_id}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


class Ownership(AppendOnce):
    """This process's claim on one instance; appends go through it.

    ``on_lost`` is called (synchronously) when the session holding the lock dies, so the
    runner can interrupt the step it is running.
    """

    def __init__(
        self,
        db: Database,
        lane: Lane,
        batcher: AppendBatcher,
        workflow: str,
        instance_id: str,
        *,
        read_row: ReadRow,
        forget: Callable[[Ownership], None],
    ) -> None:
        self.db = db
        self.lane = lane
        self.batcher = batcher
        self.workflow = workflow
        self.instance_id = instance_id
        self.key = lock_key(db.resolved_table, workflow, instance_id)
        self._read_row = read_row
        self._forget = forget
        self.generation = -1
        self.is_lost = False
        self.locked = False  # the lock is held on the lane's session (release gives it back)
        self.opened: asyncpg.Record | None = None  # the open query's row, once locked by it
        self.releasing: asyncio.Task[None] | None = None  # release_soon's task
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

    async def try_lock(self, opening: tuple[str, tuple[Any, ...]] | None = None) -> bool:
        """Take the advisory lock on the lane's session (reconnecting within the budget).

        With ``opening`` (the ``open`` query and its arguments after the lock key) the lock
        is taken by that query, which also reads the instance's last row (and may start
        it): its row is kept in :attr:`opened`. :class:`LockTableFullError` if the server
        has no room for the lock. Cancelling the caller never leaves the lock granted on
        the server: a lock query in flight is let finish and what it got is given back.
        """
        return await self.db.retry("lock", lambda: self._try_lock_once(opening))

    async def _try_lock_once(self, opening: tuple[str, tuple[Any, ...]] | None) -> bool:
        lane = self.lane
        query = await lane.start(lambda: self._lock_query(opening), connect=True)
        try:
            got, generation, row = await asyncio.shield(query)
        except asyncio.CancelledError:
            # The lock may be granted on the server by now: give back what it got.
            await finish(lane.spawn(self._undo_lock(query)))
            raise
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == LOCK_TABLE_FULL:
                raise self._lock_table_full() from None
            raise
        if got:
            self.generation = generation
            self.locked = True
            self.opened = row
            # The session may have died since the query answered: then the lock is gone.
            self.is_lost = generation != lane.generation or not lane.alive
            lane.owners.add(self)
        return got

    async def _lock_query(
        self, opening: tuple[str, tuple[Any, ...]] | None
    ) -> tuple[bool, int, asyncpg.Record | None]:
        """The lock (or open) query on the lane's current session: (granted, session
        generation, the open query's row)."""
        lane = self.lane
        assert lane.conn is not None
        conn, generation = lane.conn, lane.generation
        try:
            if opening is None:
                return bool(await conn.fetchval(QUERIES["lock"], self.key)), generation, None
            query, args = opening
            # fetch, not fetchrow: the statement runs to its end (CommandComplete), not
            # to a suspended portal; it always answers exactly one row.
            [row] = await conn.fetch(query, self.key, *args)
            return bool(row["got"]), generation, row
        except Exception as exc:
            # Only a dead session drops the lane: a full lock table fails this one lock.
            if session_gone(exc) or conn.is_closed():
                lane.lost(f"lock query failed: {type(exc).__name__}")
            elif opening is not None:
                await self._unlock_if_held(conn)
            raise

    async def _unlock_if_held(self, conn: asyncpg.Connection) -> None:
        """The open statement failed after it may have taken the lock (a full lock table
        met by its insert, a cancelled statement): a session lock outlives the failure, so
        give it back. No other runner of this process holds this key on this lane: the
        registry admits one owner per instance, and a release in flight was waited for."""
        try:
            await conn.fetch(QUERIES["unlock_if_held"], self.key)
        except Exception as exc:
            if session_gone(exc) or conn.is_closed():
                self.lane.lost(f"unlock after a failed open: {type(exc).__name__}")
                return
            logger.error(
                "workflow %r instance %r: could not check for its lock after a failed open "
                "(%s); it may stay held until owner connection #%d closes",
                self.workflow, self.instance_id, type(exc).__name__, self.lane.index,
            )  # fmt: skip

    async def _undo_lock(self, query: asyncio.Task[tuple[bool, int, Any]]) -> None:
        """The caller was cancelled during the lock query: give back what it got."""
        try:
            got, generation, _ = await query
        except (Exception, asyncio.CancelledError):
            return  # no lock was granted
        if got:
            await self._unlock(generation)

    def _lock_table_full(self) -> LockTableFullError:
        return LockTableFullError(
            self.workflow,
            self.instance_id,
            "cannot take this instance's lock: the database server's lock table is full "
            "(SQLSTATE 53200, out of shared memory); raise max_locks_per_transaction on the "
            "server (a restart is needed) or run fewer instances per server. Other "
            "instances' locks are untouched; nothing was written for this one",
        )

    async def reacquire(self) -> None:
        """After a lost session: retake the lock on a new one, or :class:`OwnershipLostError`.

        A lock still held by this lane's own previous session (a stalled backend that
        never saw its connection close) is freed by ending that session, within the
        retry budget; a lock held by any other session is another runner's.
        """
        backoff = Backoff(self.db.config.retry_budget)
        while not await self.try_lock():
            holder = await self.db.retry(
                "lock holder", lambda: self.lane.fetchrow("lock_holder", self.key)
            )
            if holder is not None:
                pid, name = int(holder["pid"]), str(holder["application_name"])
                if pid not in self.lane.previous_pids():
                    raise self._lost_to(pid, name)
                if backoff.spent():
                    raise self._stuck(pid, name)
                await self._end_session(pid, name)
            elif backoff.spent():
                raise self._stuck(None, "")
            await backoff.sleep()
        logger.info(
            "workflow %r instance %r: ownership re-acquired", self.workflow, self.instance_id
        )

    async def _end_session(self, pid: int, name: str) -> None:
        logger.warning(
            "workflow %r instance %r: the lock is still held by this runner's previous "
            "session (pid %d, application_name %r); ending it",
            self.workflow,
            self.instance_id,
            pid,
            name,
        )
        try:
            await self.lane.fetchrow("end_session", pid, _END_SESSION_WAIT_MS)
        except Exception as exc:  # tried again on the next round, within the budget
            logger.warning("ending session pid %d failed: %s", pid, type(exc).__name__)

    def _lost_to(self, pid: int, name: str) -> OwnershipLostError:
        return OwnershipLostError(
            self.workflow,
            self.instance_id,
            "the database session holding this instance's lock was lost, and the lock is "
            f"now held by session pid {pid} (application_name {name!r}), not by this "
            "runner; this runner stopped without writing",
        )

    def _stuck(self, pid: int | None, name: str) -> OwnershipLostError:
        budget = self.db.config.retry_budget
        holder = "a session that ended meanwhile" if pid is None else (
            f"this runner's previous session pid {pid} (application_name {name!r}), which "
            "did not end when terminated"
        )  # fmt: skip
        return OwnershipLostError(
            self.workflow,
            self.instance_id,
            f"the database session holding this instance's lock was lost and the lock "
            f"stayed held by {holder} for the whole retry budget ({budget:g} s, "
            "FSMFLOW_DB_RETRY_SECONDS); this runner stopped without writing",
        )

    async def release(self) -> None:
        """Give the lock back (a lost session already released it) and leave the registry.

        Runs to the end even if the caller is cancelled meanwhile (it is shielded).
        """
        await finish(self.release_soon())

    def release_soon(self) -> asyncio.Task[None]:
        """Start giving the lock back and return at once: no round trip on the caller's
        path. The lane runs the unlock before its next statement; a runner of this
        process that takes the instance again first waits for it; closing the store
        waits for it too."""
        if self.releasing is None:
            self.releasing = self.lane.spawn(self._release())
        return self.releasing

    async def _release(self) -> None:
        self.lane.owners.discard(self)
        try:
            if self.locked and not self.is_lost:
                await self._unlock(self.generation)
        finally:
            self.locked = False
            self._forget(self)

    async def _unlock(self, generation: int) -> None:
        """Unlock on the session of ``generation``; nothing to do if that session is gone."""
        await self.lane.exclusive(lambda: self._unlock_now(generation), connect=False)

    async def _unlock_now(self, generation: int) -> None:
        lane = self.lane
        for attempt in (1, 2):
            if not lane.alive or lane.generation != generation:
                return  # the session ended: its locks went with it
            assert lane.conn is not None
            try:
                await lane.conn.fetchval(QUERIES["unlock"], self.key)
                return
            except Exception as exc:
                if session_gone(exc) or not lane.alive:
                    lane.lost(type(exc).__name__)
                    return
                if attempt == 2:
                    logger.error(
                        "workflow %r instance %r: could not give back its lock (%s); "
                        "it stays held until owner connection #%d closes",
                        self.workflow,
                        self.instance_id,
                        type(exc).__name__,
                        lane.index,
                    )


class Owners:
    """This process's owner connections (lanes) and the registry of instances it owns.

    Locks are session-level and re-entrant, so the registry, not the lock, keeps two
    runners of one process apart.
    """

    def __init__(self, db: Database, read_row: ReadRow) -> None:
        self.db = db
        self._read_row = read_row
        self.lanes = [Lane(db, i) for i in range(db.config.owner_connections)]
        self._batchers = {lane.index: self._batcher(lane) for lane in self.lanes}
        self._owners: dict[tuple[str, str], Ownership] = {}

    def __repr__(self) -> str:
        return f"Owners(lanes={len(self.lanes)}, owned={len(self._owners)})"

    def _batcher(self, lane: Lane) -> AppendBatcher:
        return AppendBatcher(lane, self.db.queries, self.db.translate)

    @property
    def batch_counts(self) -> tuple[int, int]:
        """(statements, rows) the group commit sent so far, over every lane."""
        batchers = self._batchers.values()
        return sum(b.statements for b in batchers), sum(b.rows for b in batchers)

    def owned_here(self, workflow: str, instance_id: str) -> bool:
        """True if a runner in this process owns or is taking the instance (one whose run
        ended and whose lock is being given back does not count)."""
        owner = self._owners.get((workflow, instance_id))
        return owner is not None and owner.releasing is None

    def _claim(self, workflow: str, instance_id: str) -> Ownership | None:
        """Register a new ownership (no await: atomic in the loop), or None if taken."""
        if (workflow, instance_id) in self._owners:
            return None
        # Least busy: fewest owners, then one whose session is free (a run that just
        # ended may be giving its lock back on its lane: the next start goes elsewhere
        # rather than wait a round trip for that unlock).
        lane = min(self.lanes, key=lambda ln: (len(ln.owners), ln.lock.locked(), ln.index))
        batcher = self._batchers[lane.index]
        owner = Ownership(
            self.db, lane, batcher, workflow, instance_id,
            read_row=self._read_row, forget=self._forget,
        )  # fmt: skip
        self._owners[(workflow, instance_id)] = owner
        # Reserve the lane too, so that instances claimed concurrently spread over the
        # lanes instead of all choosing the same least-busy one.
        lane.owners.add(owner)
        return owner

    def _forget(self, owner: Ownership) -> None:
        key = (owner.workflow, owner.instance_id)
        if self._owners.get(key) is owner:
            del self._owners[key]

    async def acquire(
        self,
        workflow: str,
        instance_id: str,
        *,
        wait: bool,
        lock_timeout: float | None,
        opening: tuple[str, tuple[Any, ...]] | None = None,
    ) -> Ownership:
        """Claim an instance on the least busy lane; :class:`InstanceLockedError` if owned.

        The registry is claimed before the lock is taken and given back if the lock is
        not taken, fails or the caller is cancelled. With ``opening`` the lock is taken by
        the ``open`` query (see :meth:`Ownership.try_lock`).
        """
        # The table must be checked first: lock keys use the name the server resolved.
        await self.db.pool()
        loop = asyncio.get_running_loop()
        deadline = None if lock_timeout is None else loop.time() + lock_timeout
        delay = 0.05
        while True:
            await self._released(workflow, instance_id)
            owner = self._claim(workflow, instance_id)
            if owner is not None and await self._lock_claimed(owner, opening):
                return owner
            if not wait or (deadline is not None and loop.time() + delay > deadline):
                who = "in this process" if owner is None else "(it holds the instance's lock)"
                raise InstanceLockedError(
                    workflow,
                    instance_id,
                    f"another runner {who} is running this instance right now; "
                    "wait for it, or pass wait=True to wait for the lock",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def settle(self) -> None:
        """Wait for the releases in flight of this process's runs that just ended (what
        reset and prune judge by the server's lock table)."""
        pending = [o.releasing for o in self._owners.values() if o.releasing is not None]
        if pending:
            await asyncio.wait(pending)

    async def _released(self, workflow: str, instance_id: str) -> None:
        """Wait for this process's own release of the instance, if one is in flight (a run
        that just ended gave its lock back without waiting)."""
        previous = self._owners.get((workflow, instance_id))
        if previous is not None and previous.releasing is not None:
            await finish(previous.releasing)

    async def _lock_claimed(
        self, owner: Ownership, opening: tuple[str, tuple[Any, ...]] | None
    ) -> bool:
        """Take the claimed owner's lock; undo the claim unless it was taken."""
        try:
            got = await owner.try_lock(opening)
        finally:
            if not owner.locked:
                owner.lane.owners.discard(owner)
                self._forget(owner)
        return got

    async def close(self) -> None:
        """Close every owner connection (the server frees their locks)."""
        for lane in self.lanes:
            await lane.close()
