"""The dashboard's actions: ``POST /instances/{workflow}/{id}/retry|cancel|event|fork``.

Only with ``--allow-actions`` (else 404, and no form is shown). Each POST must carry the
page's CSRF token (matching its cookie, from no other site) and ``FSMFLOW_UI_TOKEN``
(compared in constant time; refused while the setting is unset), then calls the same
store method as the CLI command of that name, with the same checks and errors. The
result is a redirect to the instance's page with a one-line message in ``#flash``; an
error is the error page. Payloads and overrides are never logged or shown back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fsmflow.errors import ConfigError
from fsmflow.model.definition import event_name_problems
from fsmflow.model.names import check_identifier
from fsmflow.store import Store
from fsmflow.ui.rendering import dashboard, error_page, instance_path, instance_url
from fsmflow.ui.security import CSRF_COOKIE, FLASH_COOKIE, foreign_origin, same_value, token_matches
from fsmflow.ui.views import BadRequest

logger = logging.getLogger("fsmflow.ui")

Done = tuple[str, str]  # the page to go to, the message to show there
Action = Callable[[Store, str, str, FormData], Awaitable[Done]]
MAX_FORM_BYTES: Final = 1_048_576  # a bigger payload belongs to `fsmflow send-event @FILE`


async def action_route(request: Request) -> Response:
    """Check the action's switches, CSRF and token, then run it."""
    board = dashboard(request)
    parts = instance_path(request)
    if not board.options.allow_actions or len(parts) != 3 or parts[2] not in ACTIONS:
        raise HTTPException(404, "no such page (actions need `fsmflow ui --allow-actions`)")
    workflow, instance_id, name = parts
    refused = await _refusal(request)
    if refused is not None:
        return refused
    form = await request.form(max_fields=20, max_files=0, max_part_size=MAX_FORM_BYTES)
    if not same_value(_field(form, "csrf"), request.cookies.get(CSRF_COOKIE)):
        return _refuse(request, "The form's CSRF token does not match this browser's.",
                       "Reload the instance's page and submit the form from there.")  # fmt: skip
    if not token_matches(_field(form, "token"), board.options.token):
        logger.warning("action %s on workflow %r instance %r refused: wrong token",
                       name, workflow, instance_id)  # fmt: skip
        return _refuse(request, "The token is wrong.",
                       "Enter the FSMFLOW_UI_TOKEN `fsmflow ui` was started with.")  # fmt: skip
    page, message = await ACTIONS[name](board.store, workflow, instance_id, form)
    logger.info("action %s on workflow %r instance %r done", name, workflow, instance_id)
    response = RedirectResponse(page, status_code=303)
    response.set_cookie(FLASH_COOKIE, quote(message), max_age=60, httponly=True, samesite="strict")
    return response


async def _refusal(request: Request) -> Response | None:
    """The refusal that needs no form: no token configured, or another site's POST."""
    if dashboard(request).options.token is None:
        return _refuse(request, "Actions are refused: FSMFLOW_UI_TOKEN is not set.",
                       "Set FSMFLOW_UI_TOKEN for `fsmflow ui` and restart it.")  # fmt: skip
    if foreign_origin(request.headers.get("origin"), request.headers.get("host")):
        return _refuse(request, "This request came from another site.",
                       "Submit the form from the dashboard's own page.")  # fmt: skip
    return None


def _refuse(request: Request, message: str, hint: str) -> Response:
    return error_page(request, 403, "Action refused", message, hint)


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _text(form: FormData, name: str) -> str | None:
    """A form field, stripped; None when empty."""
    value = (_field(form, name) or "").strip()
    return value or None


def _identifier(form: FormData, name: str, what: str) -> str | None:
    value = _text(form, name)
    try:
        return None if value is None else check_identifier(value, what)
    except ConfigError as exc:
        raise BadRequest(str(exc)) from None


def _json(form: FormData, name: str, what: str) -> Any:
    """A JSON form field (empty: None); :class:`BadRequest` naming where it breaks."""
    text = _text(form, name)
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc} (JSON has no NaN or Infinity)") from None
    except RecursionError:
        raise BadRequest(f"{what} is not valid JSON: nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(name)


# -- the actions: the CLI's store calls --------------------------------------------------


async def retry(store: Store, workflow: str, instance_id: str, form: FormData) -> Done:
    """``fsmflow retry``."""
    record = await store.retry_instance(workflow, instance_id)
    return instance_url(workflow, instance_id), (
        f"Marked for retry (seq {record.seq}): its next run runs the step of state "
        f"{record.dest_state!r} again."
    )


async def cancel(store: Store, workflow: str, instance_id: str, form: FormData) -> Done:
    """``fsmflow cancel``."""
    record = await store.cancel_instance(workflow, instance_id, reason=_text(form, "reason"))
    return instance_url(workflow, instance_id), f"Cancelled at seq {record.seq}."


async def send_event(store: Store, workflow: str, instance_id: str, form: FormData) -> Done:
    """``fsmflow send-event``."""
    event = _text(form, "event") or ""
    for problem in event_name_problems(event):
        raise BadRequest(f"event name: {problem}")
    payload = _json(form, "data", "the payload")
    key = _identifier(form, "key", "the idempotency key")
    sent = await store.send_event(workflow, instance_id, event, payload, key=key)
    if sent.duplicate:
        text = f"Already sent with key {key!r} (event id {sent.event.event_id}): nothing stored."
    else:
        text = f"Sent event {event!r} (id {sent.event.event_id})."
    return instance_url(workflow, instance_id), text


async def fork(store: Store, workflow: str, instance_id: str, form: FormData) -> Done:
    """``fsmflow fork`` (without ``--definition``: the dashboard runs no user code)."""
    seq_text = _text(form, "seq")
    if seq_text is not None and not seq_text.isdigit():
        raise BadRequest(f"seq must be a whole number, not {seq_text!r}")
    overrides = _json(form, "overrides", "the overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise BadRequest('the overrides must be a JSON object, e.g. {"ticket": 7}')
    record = await store.fork_instance(
        workflow,
        instance_id,
        seq=None if seq_text is None else int(seq_text),
        new_instance_id=_identifier(form, "new_id", "the new instance id"),
        overrides=overrides,
        state=_text(form, "state"),
    )
    return instance_url(workflow, record.instance_id), (
        f"Forked from instance {instance_id!r} at seq {record.forked_from_seq}: its first "
        f"run by this id starts with the step of state {record.dest_state!r}."
    )


ACTIONS: Final[dict[str, Action]] = {
    "retry": retry,
    "cancel": cancel,
    "event": send_event,
    "fork": fork,
}
