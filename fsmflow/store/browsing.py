"""The dashboard's reads (``fsmflow ui``): workflow names, counts by status, id search.

Named queries of ``sql/ui.sql`` on the store's gateway, each index-backed and bounded
(keyset pagination, never OFFSET). Everything else the dashboard shows comes from the
store's own calls (``list_instances``, ``history``, ``instance_events``, ``list_workers``).
Only reads: nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from fsmflow.model.definition import check_identifier
from fsmflow.model.records import InstanceSummary, to_summary
from fsmflow.store.database import Database

MAX_NAMES: Final = 1000  # workflow names the filter offers


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """Instances by status among the newest ``looked_at`` (at most the cap asked for):
    ``capped`` when there may be older instances the counts leave out."""

    counts: dict[str, int] = field(default_factory=dict)
    looked_at: int = 0
    capped: bool = False


class Browsing:
    """The dashboard's read queries on one table's gateway."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def workflow_names(self, limit: int = MAX_NAMES) -> list[str]:
        """The workflow names of the table, in order, at most ``limit``."""
        rows = await self._db.fetch("ui_workflow_names", limit)
        return [row["name"] for row in rows]

    async def status_counts(self, workflow: str | None, cap: int) -> StatusCounts:
        """How many of the newest ``cap`` instances (of ``workflow``, else of all) have
        each status; the cost is bounded by ``cap``, not by the table's size."""
        if workflow is not None:
            check_identifier(workflow, "workflow name")
        rows = await self._db.fetch("ui_status_counts", workflow, cap)
        counts = {row["status"]: int(row["instances"]) for row in rows}
        total = sum(counts.values())
        return StatusCounts(counts=counts, looked_at=total, capped=total >= cap)

    async def search(
        self,
        prefix: str,
        *,
        workflow: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 50,
        after: tuple[str, str] | None = None,
    ) -> list[InstanceSummary]:
        """Instances whose id starts with ``prefix``, by workflow then id, at most
        ``limit``; paginate with ``after=(workflow_name, instance_id)`` of the last one."""
        if workflow is not None:
            check_identifier(workflow, "workflow name")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        chosen = None if statuses is None else list(statuses)
        after_workflow, after_id = after if after is not None else (None, None)
        rows = await self._db.fetch(
            "ui_search", workflow, prefix, chosen, limit, after_workflow, after_id
        )
        return [to_summary(row) for row in rows]
