"""What every page of the dashboard shares: its options, the templates, rendering, URLs
and the error page.

Templates are jinja2 with autoescape on for every template, so every value a page shows
is escaped. Errors become a page (``#error``) that names what was wrong and what to do,
with the status that fits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urlencode

import jinja2
from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from fsmflow import __version__
from fsmflow.errors import (
    ConfigError,
    ContextError,
    DatabaseUnavailableError,
    InstanceExistsError,
    InstanceLockedError,
    InstanceNotFoundError,
    InstanceStateError,
    UnknownEventError,
)
from fsmflow.store import Store
from fsmflow.ui import views
from fsmflow.ui.security import CSRF_COOKIE, FLASH_COOKIE, new_csrf

logger = logging.getLogger("fsmflow.ui")

TEMPLATES: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("fsmflow.ui", "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class UIOptions:
    """How the dashboard behaves: ``allow_actions`` shows the action forms and accepts
    their POSTs (each still needs ``token``); ``refresh_seconds``: the live refresh of the
    instances page; ``count_cap``: how many of the newest instances the counts look at."""

    allow_actions: bool = False
    token: SecretStr | None = None
    refresh_seconds: float = 5.0
    count_cap: int = 10_000


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the handlers share, kept on ``app.state.dashboard``."""

    store: Store
    options: UIOptions


def dashboard(request: Request) -> Dashboard:
    """The request's :class:`Dashboard`."""
    found: Dashboard = request.app.state.dashboard
    return found


def instance_url(workflow: str, instance_id: str, *rest: str) -> str:
    """The path of an instance's page (or of ``rest`` under it), every part quoted."""
    parts = ["instances", workflow, instance_id, *rest]
    return "/" + "/".join(quote(p, safe="") for p in parts)


def page_url(path: str, query: dict[str, str]) -> str:
    """``path`` with ``query`` (empty values dropped)."""
    return path + ("?" + urlencode(query) if query else "")


TEMPLATES.globals.update(instance_url=instance_url, page_url=page_url, version=__version__)
TEMPLATES.filters.update(timestamp=views.timestamp)


def render(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    """A page from ``template``, with the CSRF token (new cookie if none) and any flash
    message the previous action left (then cleared)."""
    board = dashboard(request)
    csrf = request.cookies.get(CSRF_COOKIE) or new_csrf()
    flash_cookie = request.cookies.get(FLASH_COOKIE)
    flash = None if flash_cookie is None else unquote(flash_cookie)
    values = {
        "csrf": csrf,
        "flash": flash,
        "actions": board.options.allow_actions,
        "table": board.store.qualified_table,
        "target": board.store.target,
        **context,
    }
    response = HTMLResponse(TEMPLATES.get_template(template).render(values), status_code=status)
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
    if flash_cookie is not None:
        response.delete_cookie(FLASH_COOKIE, httponly=True, samesite="strict")
    return response


def error_page(request: Request, status: int, title: str, message: str, hint: str = "") -> Response:
    """The error page: ``#error`` names what was wrong (``title``, ``message``) and what to do."""
    text = dashboard(request).store.scrub(message)
    context = {"status": status, "title": title, "message": text, "hint": hint}
    return render(request, "error.html", context, status=status)


_STATUS: Final = (
    (InstanceNotFoundError, 404),
    (InstanceLockedError, 409),
    (InstanceStateError, 409),
    (InstanceExistsError, 409),
    (UnknownEventError, 409),
    (ContextError, 400),
    (ConfigError, 400),
    (DatabaseUnavailableError, 503),
)


async def fsmflow_error(request: Request, exc: Exception) -> Response:
    """An fsmflow error raised by a page or an action, as the error page."""
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    level = logging.ERROR if status >= 500 else logging.INFO
    logger.log(level, "%s %s: %s", request.method, request.url.path, type(exc).__name__)
    return error_page(request, status, type(exc).__name__, str(exc))


async def bad_request(request: Request, exc: Exception) -> Response:
    """A query parameter or form field the dashboard cannot use."""
    return error_page(request, 400, "Bad request", str(exc), "Correct it and try again.")


async def http_error(request: Request, exc: Exception) -> Response:
    """404 and the like, as the error page."""
    assert isinstance(exc, HTTPException)
    return error_page(
        request, exc.status_code, "Not found" if exc.status_code == 404 else "Refused", exc.detail
    )


def instance_path(request: Request) -> list[str]:
    """The parts of the path after ``/instances/``, each unquoted on its own, so that a
    workflow name or id holding ``/`` (sent as ``%2F``) stays one part."""
    raw = request.scope.get("raw_path") or request.url.path.encode("utf-8")
    path = raw.decode("ascii", "replace").split("?", 1)[0]
    parts = path.split("/")[2:]  # "", "instances", ...
    try:
        return [unquote(p, errors="strict") for p in parts]
    except UnicodeDecodeError:
        raise HTTPException(404, "this address is not valid UTF-8 once decoded") from None
