"""The dashboard's actions over HTTP against a real ``fsmflow ui --allow-actions``: each
needs FSMFLOW_UI_TOKEN and the page's CSRF token, goes through the CLI's store calls
(and their refusals), and is absent (404) without ``--allow-actions``."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from markupsafe import escape

from fsmflow import DBConfig

from .test_ui_pages import runtime_role
from .test_ui_server import (
    HOSTILE_TEXT,
    SECRET,
    TOKEN,
    Dashboard,
    dashboard,
    page,
    serve,
    shown,
)

__all__ = ["dashboard", "shown"]  # fixtures used here


def csrf_of(client: httpx.Client, url: str) -> str:
    """Load ``url`` (which sets the CSRF cookie) and return its forms' CSRF token."""
    text = client.get(url).text
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found is not None, text
    assert client.cookies.get("fsmflow_csrf") == found.group(1)
    return found.group(1)


def act(
    client: httpx.Client, workflow: str, instance_id: str, action: str, **fields: str
) -> httpx.Response:
    """POST an action with the page's CSRF token and the right token (unless given)."""
    csrf = csrf_of(client, page(workflow, instance_id))
    data = {"csrf": csrf, "token": TOKEN, **fields}
    return client.post(page(workflow, instance_id, action), data=data)


def flash_after(client: httpx.Client, response: httpx.Response) -> str:
    """Follow an action's redirect; the ``#flash`` text of the page it leads to."""
    assert response.status_code == 303, response.text
    text = client.get(response.headers["location"]).text
    found = re.search(r'<div id="flash" role="status">(.*?)</div>', text, re.S)
    assert found is not None, text
    return found.group(1)


def with_actions(env: dict[str, str], token: str | None = TOKEN) -> Any:
    extra = {} if token is None else {"FSMFLOW_UI_TOKEN": token}
    return serve({**env, **extra}, "--allow-actions")


async def test_retry_cancel_event_and_fork_with_the_token(
    shown: DBConfig, db_env: dict[str, str]
) -> None:
    with with_actions(db_env) as running, running.client() as client:
        assert "actions allowed" in client.get("/").text
        retried = flash_after(client, act(client, "review", "fail-1", "retry"))
        payload = json.dumps({"ok": True, "note": HOSTILE_TEXT})
        sent = act(client, "review", "wait-1", "event", event="approval", data=payload)
        sent_flash = flash_after(client, sent)
        cancelled = flash_after(client, act(client, "review", "wait-1", "cancel", reason="no"))
        forked = act(client, "review", "done-1", "fork", seq="1", new_id="fork-1")
        fork_flash = flash_after(client, forked)
        again = client.get(page("review", "wait-1")).text
    assert "Marked for retry (seq 4)" in retried
    assert "Sent event &#39;approval&#39;" in sent_flash
    assert "Cancelled at seq 2." in cancelled
    assert forked.headers["location"] == page("review", "fork-1")
    assert "Forked from instance &#39;done-1&#39; at seq 1" in fork_flash
    assert 'id="flash"' not in again  # shown once
    history = await shown.store.history("review", "fail-1")
    assert [r.status for r in history][-2:] == ["failed", "running"]
    assert (await shown.store.last_record("review", "wait-1")).status == "cancelled"  # type: ignore[union-attr]
    events = await shown.store.instance_events("review", "wait-1")
    assert [e.event for e in events] == ["approval", "approval"]
    assert events[-1].payload["ok"] is True
    fork = await shown.store.record_at("review", "fork-1", 0)
    assert fork is not None and fork.forked_from_instance == "done-1"


async def test_a_wrong_or_missing_token_is_refused_and_changes_nothing(
    shown: DBConfig, db_env: dict[str, str]
) -> None:
    before = await shown.store.history("review", "fail-1")
    with with_actions(db_env) as running, running.client() as client:
        csrf = csrf_of(client, page("review", "fail-1"))
        wrong = client.post(page("review", "fail-1", "retry"), data={"csrf": csrf, "token": "x"})
        empty = client.post(page("review", "fail-1", "retry"), data={"csrf": csrf})
        no_csrf = client.post(page("review", "fail-1", "retry"), data={"token": TOKEN})
        bad_csrf = client.post(
            page("review", "fail-1", "retry"), data={"csrf": "forged", "token": TOKEN}
        )
        foreign = client.post(
            page("review", "fail-1", "retry"),
            data={"csrf": csrf, "token": TOKEN},
            headers={"origin": "http://evil.example"},
        )
    for response in (wrong, empty, no_csrf, bad_csrf, foreign):
        assert response.status_code == 403 and 'id="error"' in response.text
    assert "The token is wrong." in wrong.text and "The token is wrong." in empty.text
    assert "CSRF" in no_csrf.text and "CSRF" in bad_csrf.text
    assert "another site" in foreign.text
    assert TOKEN not in wrong.text + empty.text
    assert await shown.store.history("review", "fail-1") == before
    assert TOKEN not in running.process.stderr_text  # type: ignore[attr-defined]


async def test_without_a_configured_token_every_action_is_refused(
    shown: DBConfig, db_env: dict[str, str]
) -> None:
    with with_actions(db_env, token=None) as running, running.client() as client:
        response = act(client, "review", "fail-1", "retry")
    assert response.status_code == 403
    assert "FSMFLOW_UI_TOKEN is not set" in response.text
    assert (await shown.store.last_record("review", "fail-1")).status == "failed"  # type: ignore[union-attr]
    assert "every action is refused until it is set" in running.process.stderr_text  # type: ignore[attr-defined]


def test_read_only_has_no_forms_and_no_action_routes(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        text = client.get(page("review", "fail-1")).text
        response = client.post(page("review", "fail-1", "retry"), data={"token": TOKEN})
    assert 'id="retry-form"' not in text and 'name="token"' not in text
    assert response.status_code == 404 and "--allow-actions" in response.text


async def test_refusals_are_the_cli_errors_on_an_error_page(
    shown: DBConfig, db_env: dict[str, str]
) -> None:
    with with_actions(db_env) as running, running.client() as client:
        not_failed = act(client, "review", "done-1", "retry")
        ended = act(client, "review", "done-1", "event", event="approval", data="{}")
        bad_json = act(client, "review", "wait-1", "event", event="approval", data="{nope")
        nan = act(client, "review", "wait-1", "event", event="approval", data="NaN")
        unknown = act(client, "review", "wait-1", "event", event="nudge", data="")
        exists = act(client, "review", "done-1", "fork", seq="1", new_id="fail-1")
        bad_state = act(client, "review", "done-1", "fork", state="nowhere")
        bad_seq = act(client, "review", "done-1", "fork", seq="-1")
    assert not_failed.status_code == 409 and "InstanceStateError" in not_failed.text
    assert "nothing to retry" in not_failed.text
    assert ended.status_code == 409 and "already completed" in ended.text
    assert bad_json.status_code == 400 and "the payload is not valid JSON" in bad_json.text
    assert nan.status_code == 400 and "NaN" in nan.text
    assert unknown.status_code == 409 and "UnknownEventError" in unknown.text
    assert exists.status_code == 409 and "InstanceExistsError" in exists.text
    assert bad_state.status_code == 409 and "is not a state of the definition" in bad_state.text
    assert bad_seq.status_code == 400 and "whole number" in bad_seq.text
    for response in (not_failed, ended, bad_json, unknown, exists, bad_state):
        assert 'id="error"' in response.text and SECRET not in response.text
    assert str(escape(HOSTILE_TEXT)) not in bad_json.text  # the payload is not echoed


async def test_the_runtime_role_can_do_every_action(
    shown: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    runtime_role(postgresql, "ui_actor")
    env = {**db_env, "DB_USER": "ui_actor"}
    with with_actions(env) as running, running.client() as client:
        for workflow, instance_id, action, fields in (
            ("review", "fail-1", "retry", {}),
            ("review", "wait-1", "event", {"event": "approval", "data": "{}"}),
            ("review", "wait-1", "cancel", {}),
            ("review", "done-1", "fork", {"seq": "1", "new_id": "fork-2"}),
        ):
            response = act(client, workflow, instance_id, action, **fields)
            assert response.status_code == 303, (action, response.text)
