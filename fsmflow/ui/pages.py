"""The dashboard's pages (all GET, all reads): instances, one instance, a row's context,
workers.

Each handler reads through the store's own calls (``list_instances``, ``history``,
``instance_events``, ``record_at``, ``list_workers``) or its dashboard reads
(``store.browsing``), and renders a template. Context values appear only in the
per-row context fragment, which the instance page fetches when a person asks for it.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from fsmflow.errors import InstanceNotFoundError, PermissionDeniedError, SchemaMissingError
from fsmflow.model.records import STATUSES, InstanceSummary, WorkerInfo, WorkflowState
from fsmflow.ui import diagram, views
from fsmflow.ui.rendering import dashboard, instance_path, page_url, render

PENDING_SHOWN: Final = 100  # pending events the instance page lists, oldest first


# -- instances -----------------------------------------------------------------------------


async def instances_page(request: Request) -> Response:
    """``GET /``: the instances, newest first (an id search: by workflow and id), with
    counts by status, filters and the next page's link."""
    filters = views.parse_filters(request.query_params)
    context = await _listing(request, filters)
    names = await dashboard(request).store.browsing.workflow_names()
    if filters.workflow is not None and filters.workflow not in names:
        names.append(filters.workflow)
    return render(request, "instances.html", {**context, "names": names, "statuses": STATUSES})


async def instances_fragment(request: Request) -> Response:
    """``GET /fragments/instances``: the counts, the table and the pager of ``GET /``
    with the same query, for the live refresh."""
    filters = views.parse_filters(request.query_params)
    return render(request, "_listing.html", await _listing(request, filters))


async def _listing(request: Request, filters: views.Filters) -> dict[str, Any]:
    board = dashboard(request)
    store, limit = board.store, filters.limit
    found: list[InstanceSummary]
    if filters.q:
        statuses = None if filters.status is None else [filters.status]
        after = views.search_after(filters.after)
        found = await store.browsing.search(
            filters.q, workflow=filters.workflow, statuses=statuses, limit=limit + 1, after=after
        )
    else:
        summary = views.cursor_summary(filters.after)
        found = await store.list_instances(
            filters.workflow, status=filters.status, limit=limit + 1, after=summary
        )
    shown = found[:limit]
    next_url = None
    if len(found) > limit:
        cursor = views.encode_cursor(shown[-1], search=bool(filters.q))
        next_url = page_url("/", filters.query(after=cursor))
    counts = await store.browsing.status_counts(filters.workflow, board.options.count_cap)
    same_page = filters.query(after=request.query_params.get("after"))
    return {
        "filters": filters,
        "instances": shown,
        "next_url": next_url,
        "first_url": page_url("/", filters.query()) if filters.after else None,
        "counts": counts,
        "statuses": STATUSES,
        "refresh_url": page_url("/fragments/instances", same_page),
        "refresh_ms": int(board.options.refresh_seconds * 1000),
    }


# -- one instance --------------------------------------------------------------------------


async def instance_route(request: Request) -> Response:
    """``GET /instances/{workflow}/{id}`` and ``.../context/{seq}``."""
    parts = instance_path(request)
    if len(parts) == 2:
        return await instance_page(request, parts[0], parts[1])
    if len(parts) == 4 and parts[2] == "context" and parts[3].isdigit():
        return await context_fragment(request, parts[0], parts[1], int(parts[3]))
    raise HTTPException(404, "no such page: an instance is at /instances/WORKFLOW/INSTANCE")


async def instance_page(request: Request, workflow: str, instance_id: str) -> Response:
    """One instance: the timeline, the wait and pending events, the state diagram."""
    store = dashboard(request).store
    records = await store.history(workflow, instance_id)
    if not records:
        raise InstanceNotFoundError(
            workflow, instance_id, "no such instance; the instances page lists them"
        )
    last, first = records[-1], records[0]
    current = WorkflowState.from_record(last).current_state
    pending = []
    if not last.terminal:
        pending = await store.instance_events(
            workflow, instance_id, pending_only=True, limit=PENDING_SHOWN + 1
        )
    context = {
        "workflow": workflow,
        "instance_id": instance_id,
        "last": last,
        "first": first,
        "current": current,
        "rows": views.timeline(records),
        "wait": views.wait_of(records),
        "pending": pending[:PENDING_SHOWN],
        "more_pending": len(pending) > PENDING_SHOWN,
        "diagram": diagram.build(first.definition, records, current),
        "worker": None if last.terminal else await _worker(request, workflow, instance_id),
        "events": views.declared_events(first.definition),
        "states": _states(first.definition),
    }
    return render(request, "instance.html", context)


def _states(summary: dict[str, Any] | None) -> list[str]:
    states = (summary or {}).get("states")
    return [s for s in states if isinstance(s, str)] if isinstance(states, list) else []


async def _worker(request: Request, workflow: str, instance_id: str) -> WorkerInfo | None:
    """The live worker running the instance, if any (None too when the fleet's tables
    are missing or the role may not read them: a deployment without workers)."""
    try:
        found = await dashboard(request).store.instance_workers([(workflow, instance_id)])
    except (PermissionDeniedError, SchemaMissingError):
        return None
    return found.get((workflow, instance_id))


async def context_fragment(request: Request, workflow: str, instance_id: str, seq: int) -> Response:
    """One row's context (and its error message, which may quote it): asked for by a
    click on the row's button, never part of a page by itself."""
    record = await dashboard(request).store.record_at(workflow, instance_id, seq)
    if record is None:
        raise InstanceNotFoundError(workflow, instance_id, f"has no row at seq {seq}")
    error = record.error or {}
    context = {
        "seq": seq,
        "context_json": json.dumps(record.context, ensure_ascii=False, indent=2),
        "message": error.get("message"),
        "frames": _frames(error.get("traceback")),
    }
    return render(request, "_context.html", context)


def _frames(stored: Any) -> list[str]:
    if not isinstance(stored, list):
        return []
    return [
        f"{f.get('file', '?')}:{f.get('line', '?')} in {f.get('function', '?')}"
        for f in stored
        if isinstance(f, dict)
    ]


# -- workers -------------------------------------------------------------------------------


async def workers_page(request: Request) -> Response:
    """``GET /workers``: the fleet's live workers, or why there are none to show."""
    problem = None
    workers: list[WorkerInfo] = []
    try:
        workers = await dashboard(request).store.list_workers()
    except SchemaMissingError:
        problem = "The worker fleet's tables do not exist here: run `fsmflow migrate`."
    except PermissionDeniedError as exc:
        problem = str(exc)
    return render(request, "workers.html", {"workers": workers, "problem": problem})
