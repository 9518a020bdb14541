"""Appending one row exactly once on the owning session: the conditional append, retried
through lost sessions and failed statements, an unknown outcome resolved by reading the
row back (by its attempt id), never by writing twice.

Part of the store layer; :class:`AppendOnce` is a base of
:class:`~fsmflow.store.ownership.Ownership`, which provides the lock and the batcher.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from fsmflow.errors import ConcurrentTransitionError, DatabaseUnavailableError, StoreError
from fsmflow.model.records import TransitionRecord
from fsmflow.store.batching import AppendBatcher
from fsmflow.store.database import Backoff, Database
from fsmflow.store.dberrors import is_query_cancelled
from fsmflow.store.lanes import SessionLost, StatementFailed

logger = logging.getLogger("fsmflow.ownership")

ReadRow = Callable[[str, str, int], Awaitable[TransitionRecord | None]]


class AppendOnce:
    """The append of an owned instance; the ownership sets these attributes."""

    db: Database
    batcher: AppendBatcher
    workflow: str
    instance_id: str
    is_lost: bool
    generation: int  # of the lane's session the lock was taken on
    _read_row: ReadRow

    async def reacquire(self) -> None:
        """Retake a lost lock (the ownership's)."""
        raise NotImplementedError

    async def append(self, seq: int, attempt_id: str, args: tuple[Any, ...]) -> None:
        """Append row ``seq`` (the ``append`` query's arguments ``args``) exactly once, with
        the rows other instances on this lane append at the same moment (group commit);
        an unknown outcome is resolved by reading the row back."""
        backoff: Backoff | None = None  # the retry budget runs from the first failure
        uncertain = False  # an earlier attempt may have landed: read back before writing
        while True:
            try:
                if self.is_lost:
                    await self.reacquire()
                    uncertain = True
                if uncertain and await self._landed(seq, attempt_id):
                    return
                landed = await self.batcher.append(self, args)
            except asyncpg.UniqueViolationError:
                raise ConcurrentTransitionError(self.workflow, self.instance_id, seq) from None
            except (SessionLost, StatementFailed, DatabaseUnavailableError) as exc:
                failure: Exception = exc
            else:
                if not landed:
                    raise ConcurrentTransitionError(self.workflow, self.instance_id, seq)
                return
            # Outside the handler: a cancellation during the sleep is a plain one.
            uncertain = True
            backoff = backoff or Backoff(self.db.config.retry_budget)
            if backoff.spent():
                raise self._gave_up(seq, failure) from failure
            logger.warning(
                "workflow %r instance %r: appending seq %d failed (%s); retrying in %.1fs",
                self.workflow,
                self.instance_id,
                seq,
                failure,
                backoff.delay,
            )
            await backoff.sleep()

    def _gave_up(self, seq: int, failure: Exception) -> StoreError:
        cause = failure.__cause__
        if isinstance(failure, StatementFailed) and is_query_cancelled(failure.cause):
            return StoreError(
                f"workflow {self.workflow!r}, instance {self.instance_id!r}: appending seq "
                f"{seq} was cancelled by the server on every attempt (SQLSTATE 57014, query "
                "canceled: statement_timeout or pg_cancel_backend) for the whole retry "
                f"budget ({self.db.config.retry_budget:g} s, FSMFLOW_DB_RETRY_SECONDS); "
                "nothing was written for this seq. Raise statement_timeout for the fsmflow "
                "role or stop what cancels its queries, then run the instance again"
            )
        detail = type(cause).__name__ if cause is not None else "retry budget spent"
        return DatabaseUnavailableError(self.db.target, f"retry budget spent: {detail}")

    async def _landed(self, seq: int, attempt_id: str) -> bool:
        """After an unknown outcome: did our row land (True), or nothing (False)?"""
        record = await self._read_row(self.workflow, self.instance_id, seq)
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
