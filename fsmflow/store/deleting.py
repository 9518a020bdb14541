"""Deleting history: prune (ended instances older than a cutoff, in batches) and reset
(every row). The only deletes fsmflow ever runs; both spare instances a runner holds
(reset refuses unless forced). Each batch, and the reset, is one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from fsmflow.errors import PermissionDeniedError, ResetRefusedError
from fsmflow.model.definition import check_identifier
from fsmflow.model.records import TERMINAL_STATUSES, InstanceSummary, PruneResult
from fsmflow.store.database import Database
from fsmflow.store.operations import Parts
from fsmflow.store.ownership import lock_key

logger = logging.getLogger("fsmflow.store")
PruneProgress = Callable[[Sequence[InstanceSummary], PruneResult], None]


# -- prune -------------------------------------------------------------------------------


async def prune_instances(
    parts: Parts,
    older_than: timedelta,
    *,
    workflow: str | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    on_batch: PruneProgress | None = None,
) -> PruneResult:
    """Delete every row of the completed, failed and cancelled instances whose last row is
    older than ``older_than`` (measured on the database server's clock). Irreversible.

    Running instances are never deleted, nor is an instance a runner owns right now.
    Works in batches of ``batch_size`` instances, each its own short transaction;
    ``on_batch(batch, totals_so_far)`` is called after each. ``dry_run`` deletes nothing
    and reports what would go.
    """
    if older_than < timedelta(0) or batch_size < 1:
        raise ValueError("older_than must not be negative and batch_size must be at least 1")
    if workflow is not None:
        check_identifier(workflow, "workflow name")
    totals = PruneResult(
        cutoff=_cutoff(await parts.history.server_now(), older_than), dry_run=dry_run
    )
    after: InstanceSummary | None = None
    while batch := await parts.history.instance_page(
        workflow, sorted(TERMINAL_STATUSES), totals.cutoff, batch_size, after
    ):
        after = batch[-1]
        instances, rows = await _prune_batch(parts, batch, totals)
        totals = replace(
            totals,
            instances=totals.instances + instances,
            rows=totals.rows + rows,
            skipped=totals.skipped + len(batch) - instances,
        )
        if on_batch is not None:
            on_batch(batch, totals)
    return totals


def _cutoff(now: datetime, older_than: timedelta) -> datetime:
    try:
        return now - older_than
    except OverflowError:
        raise ValueError(
            f"older_than={older_than.days} days reaches back before year 1: use a shorter span"
        ) from None


async def _prune_batch(
    parts: Parts, batch: Sequence[InstanceSummary], totals: PruneResult
) -> tuple[int, int]:
    if totals.dry_run:
        return len(batch), sum(s.seq + 1 for s in batch)
    try:
        return await _delete_instances(parts, batch, totals.cutoff)
    except PermissionDeniedError:
        raise PermissionDeniedError(
            f"prune needs DELETE on {parts.db.qualified_table!r} in {parts.db.target}: "
            f"GRANT DELETE ON {parts.db.qualified_table} TO <role> (use the migrator role, not "
            "the runtime role)"
        ) from None


# -- deleting: prune's batches, reset --------------------------------------------------


async def _delete_instances(
    parts: Parts, batch: Sequence[InstanceSummary], updated_before: datetime
) -> tuple[int, int]:
    """Delete the instances of ``batch`` that no runner owns and whose last row is still
    terminal and older than ``updated_before``: ``(instances, rows)`` deleted.

    One transaction: it takes the instances' advisory locks first (a runner holding one
    keeps its instance), then re-reads their last rows in a fresh snapshot and deletes.
    Running it again after an unknown outcome is harmless.
    """
    db = parts.db
    pool = await db.pool()
    names = [s.workflow_name for s in batch]
    ids = [s.instance_id for s in batch]
    keys = [lock_key(db.resolved_table, s.workflow_name, s.instance_id) for s in batch]

    async def delete() -> tuple[int, int]:
        async with pool.acquire() as conn, conn.transaction():
            locked = await conn.fetch(db.queries["lock_instances"], names, ids, keys)
            if not locked:
                return 0, 0
            args = ([r["workflow_name"] for r in locked], [r["instance_id"] for r in locked])
            row = await conn.fetchrow(db.queries["delete_instances"], *args, updated_before)
        assert row is not None
        return int(row["instances"]), int(row["rows"])

    return await db.retry("prune", delete)


async def reset_table(parts: Parts, *, force: bool) -> None:
    """Delete every row of the table; see :meth:`fsmflow.store.Store.reset_db`."""
    db = parts.db
    pool = await db.pool()

    async def reset() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(db.queries["reset_lock_table"])
            if not force:
                await _refuse_if_held(db, conn)
            await conn.execute(db.queries["reset"])

    await db.retry("reset", reset)
    logger.warning("reset table %s in %s: all history deleted", db.qualified_table, db.target)


async def _refuse_if_held(db: Database, conn: Any) -> None:
    """:class:`ResetRefusedError` if a session holds the lock of an instance in the table
    (run inside ``reset_table``'s transaction, under its table lock)."""
    instances = await conn.fetch(db.queries["reset_instances"])
    names = [r["workflow_name"] for r in instances]
    ids = [r["instance_id"] for r in instances]
    keys = [lock_key(db.resolved_table, n, i) for n, i in zip(names, ids, strict=True)]
    held = await conn.fetch(db.queries["held_instances"], names, ids, keys)
    if not held:
        return
    shown = ", ".join(
        f"workflow {r['workflow_name']!r} instance {r['instance_id']!r}" for r in held[:5]
    )
    more = f" and {len(held) - 5} more" if len(held) > 5 else ""
    raise ResetRefusedError(
        f"reset_db refused: {len(held)} instance(s) of table {db.qualified_table!r} in "
        f"{db.target} are held by a runner right now ({shown}{more}); nothing was "
        "deleted. Stop those runners first (SIGTERM stops one at the next step boundary), "
        "or pass force=True / --force to delete anyway (their runners then fail)"
    )
