"""The dashboard's actions in a real browser: with ``--allow-actions`` and the token
(``FSMFLOW_UI_TOKEN``) retry, cancel, send an event and fork do what the CLI does; a
wrong or missing token is refused with nothing written; without ``--allow-actions`` the
forms are absent and the routes refuse a POST."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from fsmflow.model.records import CANCEL_TRIGGER, RETRY_TRIGGER
from tests.browser.conftest import Dashboard, Database, instance_path, start_ui, wait_for
from tests.browser.support import by_css, fill, history, hostile_ran, one, post, with_store
from tests.browser.workflows import HOSTILE_PAYLOAD, INSTANCES, populate_now

TOKEN: Final = "ui-token-for-the-browser-tests-5b1e"
ACTIONS: Final = ("retry", "cancel", "event", "fork")


@pytest.fixture(scope="module")
def data(browser_db: Database) -> Database:
    """The data set, once for the module's two dashboards."""
    populate_now(browser_db.config())
    return browser_db


@pytest.fixture(scope="module")
def ui(data: Database, ui_logs: Path) -> Iterator[Dashboard]:
    """A dashboard with actions allowed behind :data:`TOKEN`."""
    with start_ui(data, ui_logs, "--allow-actions", FSMFLOW_UI_TOKEN=TOKEN) as dashboard:
        yield dashboard


@pytest.fixture(scope="module")
def read_only(data: Database, ui_logs: Path) -> Iterator[Dashboard]:
    """A dashboard without ``--allow-actions``, on the same database (and token set)."""
    with start_ui(data, ui_logs, FSMFLOW_UI_TOKEN=TOKEN) as dashboard:
        yield dashboard


def open_instance(page: Any, ui: Dashboard, workflow: str, instance_id: str) -> None:
    """Load an instance's page and wait for its timeline."""
    page.get(ui.url(instance_path(workflow, instance_id)))
    wait_for(page, lambda d: by_css(d, "#timeline li.row"), f"the timeline of {instance_id}")


def act(page: Any, action: str, token: str | None, **fields: str) -> str:
    """Fill the ``action`` form (the token and ``fields``), submit it and return the text
    of the answer: ``#flash`` on success, ``#error`` on a refusal."""
    form = one(page, f"form#{action}-form")
    if token is not None:
        one(form, "[name=token]").send_keys(token)
    for name, value in fields.items():
        fill(form, name, value)
    form.submit()
    answer = wait_for(page, lambda d: by_css(d, "#flash, #error"), f"the answer to {action}")
    return str(answer[0].get_attribute("id")) + ": " + str(answer[0].text)


def test_retry_with_the_token_appends_the_retry_row(
    page: Any, ui: Dashboard, data: Database
) -> None:
    before = history(data, "shop_orders", "order-1003")
    open_instance(page, ui, "shop_orders", "order-1003")
    answer = act(page, "retry", TOKEN)
    assert answer.startswith("flash: "), answer
    after = history(data, "shop_orders", "order-1003")
    assert len(after) == len(before) + 1
    assert (after[-1].trigger, after[-1].status) == (RETRY_TRIGGER, "running")
    open_instance(page, ui, "shop_orders", "order-1003")
    assert by_css(page, "#timeline li.row")[-1].get_attribute("data-status") == "running"


@pytest.mark.parametrize("token", ["not-the-token", ""], ids=["wrong", "empty"])
def test_a_wrong_or_missing_token_is_refused_with_nothing_written(
    page: Any, ui: Dashboard, data: Database, token: str
) -> None:
    before = history(data, "shop_orders", "order-1004")
    open_instance(page, ui, "shop_orders", "order-1004")
    answer = act(page, "cancel", token)
    assert answer.startswith("error: ") and "token" in answer.lower(), answer
    assert history(data, "shop_orders", "order-1004") == before
    assert TOKEN not in page.page_source


def test_cancel_with_the_token_cancels(page: Any, ui: Dashboard, data: Database) -> None:
    open_instance(page, ui, "shop_orders", "order-1004")
    answer = act(page, "cancel", TOKEN)
    assert answer.startswith("flash: "), answer
    last = history(data, "shop_orders", "order-1004")[-1]
    assert (last.trigger, last.status) == (CANCEL_TRIGGER, "cancelled")


def test_an_event_with_the_token_is_stored_and_its_payload_stays_text(
    page: Any, ui: Dashboard, data: Database
) -> None:
    payload = {"ok": False, "by": "the browser", "note": HOSTILE_PAYLOAD}
    open_instance(page, ui, "doc_review", "doc-1")
    answer = act(page, "event", TOKEN, event="approval", data=json.dumps(payload))
    assert answer.startswith("flash: "), answer
    assert hostile_ran(page) is None
    sent = with_store(data, lambda store: store.instance_events("doc_review", "doc-1"))
    assert [(e.event, e.payload) for e in sent] == [("approval", payload)]


def test_fork_with_the_token_starts_a_new_instance(
    page: Any, ui: Dashboard, data: Database
) -> None:
    open_instance(page, ui, "shop_orders", "order-1001")
    # From seq 3 (before ship ran): the last row completed the instance, nothing to fork.
    answer = act(page, "fork", TOKEN, seq="3", new_id="order-1001-again")
    assert answer.startswith("flash: "), answer
    forked = history(data, "shop_orders", "order-1001-again")
    assert [(r.seq, r.forked_from_instance, r.forked_from_seq) for r in forked] == [
        (0, "order-1001", 3)
    ]
    assert one(page, "#instance-id").text == "order-1001-again", "the new instance's page"


def test_the_action_token_never_reaches_a_page_or_the_log(page: Any, ui: Dashboard) -> None:
    open_instance(page, ui, "shop_orders", "order-1002")
    assert TOKEN not in page.page_source
    assert TOKEN not in ui.log_text()


def test_without_allow_actions_there_are_no_forms(page: Any, read_only: Dashboard) -> None:
    for planned in INSTANCES[:5]:
        open_instance(page, read_only, planned.workflow.name, planned.instance_id)
        for action in ACTIONS:
            assert by_css(page, f"form#{action}-form, form[method=post]") == [], (planned, action)


@pytest.mark.parametrize("action", ACTIONS)
def test_without_allow_actions_a_post_is_refused(
    read_only: Dashboard, data: Database, action: str
) -> None:
    before = history(data, "shop_orders", "order-1002")
    url = read_only.url(instance_path("shop_orders", "order-1002") + f"/{action}")
    assert post(url, {"token": TOKEN, "csrf": "x", "event": "approval"}) == 404
    assert history(data, "shop_orders", "order-1002") == before


def test_a_post_without_the_pages_csrf_token_is_refused(ui: Dashboard, data: Database) -> None:
    before = history(data, "doc_review", "doc-3")
    url = ui.url(instance_path("doc_review", "doc-3") + "/cancel")
    assert post(url, {"token": TOKEN, "csrf": "forged"}) == 403
    assert history(data, "doc_review", "doc-3") == before
