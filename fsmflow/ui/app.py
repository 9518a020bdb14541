"""The dashboard's Starlette application: :func:`create_app`.

The app gets a :class:`~fsmflow.store.Store` (it opens and closes nothing of it: its
caller, ``fsmflow ui``, owns it) and :class:`UIOptions`. Pages are in
:mod:`fsmflow.ui.pages`, actions in :mod:`fsmflow.ui.actions`, the assets (``static/``)
and templates ship in the wheel.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fsmflow.errors import FsmflowError
from fsmflow.store import Store
from fsmflow.ui import actions, pages, views
from fsmflow.ui.rendering import Dashboard, UIOptions, bad_request, fsmflow_error, http_error
from fsmflow.ui.security import SecurityHeaders

__all__ = ["UIOptions", "create_app"]


def create_app(store: Store, options: UIOptions | None = None) -> Starlette:
    """The dashboard as an ASGI app on ``store`` (read-only unless ``options`` allow
    actions). Serve it with any ASGI server; ``fsmflow ui`` uses uvicorn."""
    routes = [
        Route("/", pages.instances_page),
        Route("/fragments/instances", pages.instances_fragment),
        Route("/workers", pages.workers_page),
        Route("/instances/{rest:path}", pages.instance_route, methods=["GET"]),
        Route("/instances/{rest:path}", actions.action_route, methods=["POST"]),
        Mount("/static", app=StaticFiles(packages=[("fsmflow.ui", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            FsmflowError: fsmflow_error,
            views.BadRequest: bad_request,
            HTTPException: http_error,
        },
    )
    app.state.dashboard = Dashboard(store, options or UIOptions())
    return app
