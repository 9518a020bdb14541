"""Group commit: the appends of the instances that share an owner connection, batched.

Part of the store layer (it knows asyncpg). When several instances pinned to one lane
append at the same moment, their rows go in one statement (one transaction, one WAL
flush) instead of queueing for one commit each. The batch forms by itself, with no timer:

- on a lane that serves only the appending instance, the row is sent at once, from the
  caller's own task (a lone instance pays nothing for the batching);
- on a shared lane, the row is handed to the lane's flusher task, which starts once the
  event loop has run the callbacks that were ready with it: typically the other
  instances woken by the same commit, whose steps append in that same pass. The wait is
  bounded by that work, never by a clock or by another instance's I/O;
- the appends that arrive while a statement is in flight are sent together as soon as it
  returns.

Every row stays conditional on its own instance's last seq, and the statement reports
which rows landed, so a conflict fails only the instance it belongs to. A batch that
fails as a whole for a reason that is not the session's (a constraint, a bad value) is
sent again row by row, so that only the row at fault gets the error. A lost session fails
every row in flight with :class:`SessionLost`: each instance then resolves its unknown
outcome by itself (its own read-back, by attempt id).
"""

from __future__ import annotations

import _json
import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import asyncpg

from fsmflow.errors import FsmflowError
from fsmflow.store.database import INSERTED_ONE
from fsmflow.store.dberrors import is_query_cancelled, is_retriable
from fsmflow.store.lanes import Lane, SessionLost, StatementFailed, session_gone

logger = logging.getLogger("fsmflow.ownership")

MAX_BATCH: Final = 200  # rows per statement: bounds the statement's size, not its wait


def _json_default(value: object) -> str:
    if isinstance(value, datetime):  # a naive one is UTC, as asyncpg sends it
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    raise TypeError(f"{type(value).__name__} in an append's arguments")


# A batch's rows as one JSON text (see append_batch): a C encoder built once. Sixteen typed
# arrays cost asyncpg several abstract-class checks per element, more than the statement.
_encode_rows: Final = _json.make_encoder(
    None, _json_default, _json.encode_basestring, None, ":", ",", False, False, False
)


class BatchOwner(Protocol):
    """What the batcher needs of an instance's ownership."""

    generation: int
    is_lost: bool


@dataclass(slots=True)
class _Pending:
    owner: BatchOwner
    key: tuple[str, str, int]  # workflow, instance, seq: how RETURNING names the row
    args: tuple[Any, ...]
    future: asyncio.Future[bool] = field(repr=False)
    sent: bool = False
    ended: asyncio.Future[None] | None = field(default=None, repr=False)  # its statement's

    def settle(self, landed: bool | None = None, error: BaseException | None = None) -> None:
        """Resolve the row (``error`` else ``landed``), unless its caller went away (a
        cancelled caller cancels the future it awaits)."""
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(bool(landed))


class AppendBatcher:
    """The group commit of one lane: ``append`` resolves once the row's statement has
    committed (True: it landed; False: the instance's last row was not ``seq - 1``)."""

    def __init__(
        self,
        lane: Lane,
        queries: dict[str, str],
        translate: Callable[[BaseException], FsmflowError],
    ) -> None:
        self.lane = lane
        self._one = queries["append"]
        self._many = queries["append_batch"]
        self._translate = translate
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._inflight: list[_Pending] = []
        self.statements = 0  # sent, and the rows they carried: for the bench and the tests
        self.rows = 0

    def __repr__(self) -> str:
        return f"AppendBatcher(lane={self.lane.index}, queued={len(self._queue)})"

    async def append(self, owner: BatchOwner, args: tuple[Any, ...]) -> bool:
        """Append one row (the ``append`` query's arguments) with whatever else is due on
        this lane. Raises what the single append raises: :class:`SessionLost`,
        :class:`StatementFailed`, ``asyncpg.UniqueViolationError`` or a translated error.

        A caller cancelled before its row was sent takes it out (nothing is written); one
        cancelled after waits for the statement to end first, as any shared-connection
        statement does, so the connection is never left half-way.
        """
        pending = _Pending(owner, (args[0], args[1], args[2]), args, self._new_future())
        # Alone on an idle lane, nobody can join: send now. A shared lane's first row goes
        # by the flusher, so that what its co-owners append in this pass of the loop joins
        # it (sent at once, a lone row per commit was a third of all rows at 32 in flight).
        lane = self.lane
        idle = self._flusher is None and not self._queue and not lane.lock.locked()
        if idle and len(lane.owners) <= 1:
            return await self._lead(pending)
        self._queue.append(pending)
        if self._flusher is None:
            self._flusher = self.lane.spawn(self._flush())
        try:
            # Not shielded (a shield per row costs two callbacks and a future): a
            # cancellation cancels the row's future, which the flusher then leaves alone.
            return await pending.future
        except asyncio.CancelledError:
            if not pending.sent:
                with contextlib.suppress(ValueError):
                    self._queue.remove(pending)
            elif pending.ended is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait({pending.ended})
            raise

    async def _lead(self, pending: _Pending) -> bool:
        """An idle lane serving only this instance: the row is sent at once, from the
        caller's own task (no task, no hand-over). Rows that arrive meanwhile (from an
        instance pinned to the lane since) queue up; their flusher waits for the lane's
        lock. A caller cancelled here cancels its statement (asyncpg cancels it on the
        server and holds the next statement until that is done): its outcome is unknown,
        as after a lost session."""
        async with self.lane.lock:
            pending.sent = True
            await self._send([pending])
        return pending.future.result()

    @staticmethod
    def _new_future() -> asyncio.Future[bool]:
        return asyncio.get_running_loop().create_future()

    async def _flush(self) -> None:
        try:
            while self._queue:
                async with self.lane.lock:
                    self._inflight = batch = self._take()
                    ended = asyncio.get_running_loop().create_future()
                    for pending in batch:
                        pending.ended = ended
                    try:
                        await self._send(batch)
                    finally:
                        ended.set_result(None)
                    self._inflight = []
        finally:
            self._flusher = None
            # Only if the flusher itself was cancelled or broke: never leave a waiter.
            for pending in [*self._inflight, *self._queue]:
                pending.settle(error=SessionLost())
            self._inflight, self._queue = [], []

    def _take(self) -> list[_Pending]:
        """The next batch: one row per instance (a second row of one instance must see the
        first committed), at most MAX_BATCH; the rest waits for the next statement."""
        batch: list[_Pending] = []
        seen: set[tuple[str, str]] = set()
        rest: list[_Pending] = []
        for pending in self._queue:
            instance = pending.key[:2]
            if len(batch) >= MAX_BATCH or instance in seen:
                rest.append(pending)
                continue
            seen.add(instance)
            pending.sent = True
            batch.append(pending)
        self._queue = rest
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        lane, live = self.lane, []
        for pending in batch:
            owner = pending.owner
            if owner.is_lost or owner.generation != lane.generation or not lane.alive:
                owner.is_lost = True  # the fence: never write on a session that is not ours
                pending.settle(error=SessionLost())
            else:
                live.append(pending)
        if len(live) == 1:
            await self._send_one(live[0])
        elif live:
            await self._send_many(live)

    async def _send_one(self, pending: _Pending) -> None:
        self.rows += 1
        try:
            result = await self._run(lambda conn: conn.execute(self._one, *pending.args))
        except Exception as exc:  # a cancellation is the caller's (or close's): it goes on
            pending.settle(error=exc)
            return
        pending.settle(str(result) == INSERTED_ONE)

    async def _send_many(self, batch: list[_Pending]) -> None:
        self.rows += len(batch)
        try:
            payload = "".join(_encode_rows([p.args for p in batch], 0))
            rows = await self._run(lambda conn: conn.fetch(self._many, payload))
        except SessionLost:
            for pending in batch:
                pending.settle(error=SessionLost())
            return
        except StatementFailed as exc:  # cancelled or timed out: nothing of it was written
            for pending in batch:
                pending.settle(error=StatementFailed(exc.cause))
            return
        except Exception:
            # The batch failed as a whole (a constraint, a value): row by row, so only the
            # row at fault gets the error. Nothing of the batch was written.
            logger.warning("group commit of %d rows failed; sending them one by one", len(batch))
            for pending in batch:
                await self._send_one(pending)
            return
        landed = {(r["workflow_name"], r["instance_id"], r["seq"]) for r in rows}
        for pending in batch:
            pending.settle(pending.key in landed)

    async def _run(self, statement: Callable[[asyncpg.Connection], Any]) -> Any:
        """Run one statement on the lane's session (caller holds the lane's lock)."""
        lane = self.lane
        conn = lane.conn
        if conn is None or not lane.alive:
            raise SessionLost()
        self.statements += 1
        try:
            return await statement(conn)
        except asyncpg.UniqueViolationError:
            raise
        except FsmflowError:
            raise
        except Exception as exc:
            if session_gone(exc) or not lane.alive:
                lane.lost(type(exc).__name__)
                raise SessionLost() from exc
            if is_query_cancelled(exc) or is_retriable(exc):
                raise StatementFailed(exc) from exc  # the session and its locks stand
            raise self._translate(exc) from None
