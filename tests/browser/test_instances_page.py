"""The instances page (``GET /``) in a real browser: the list shows what the data set
created, the filter form and the id search narrow it, counts by status, hostile names
stay text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import (
    Dashboard,
    Database,
    console_errors,
    screenshot,
    start_ui,
    wait_for,
)
from tests.browser.support import Row, by_css, fill, hostile_ran, instance_rows, one, wait_for_rows
from tests.browser.workflows import HOSTILE_ID, HOSTILE_WORKFLOW, INSTANCES, populate_now

STATUS_OF = {"delivered": "completed"}  # an outcome of the data set -> the status it ends in
EVERY_ROW: set[Row] = {
    (p.workflow.name, p.instance_id, STATUS_OF.get(p.outcome, p.outcome)) for p in INSTANCES
}


def rows_where(workflow: str | None = None, status: str | None = None) -> set[Row]:
    """The data set's rows of one workflow and/or status."""
    return {
        row
        for row in EVERY_ROW
        if (workflow is None or row[0] == workflow) and (status is None or row[2] == status)
    }


@pytest.fixture(scope="module")
def ui(browser_db: Database, ui_logs: Path) -> Iterator[Dashboard]:
    """A read-only dashboard on the data set."""
    populate_now(browser_db.config())
    with start_ui(browser_db, ui_logs) as dashboard:
        yield dashboard


def filter_by(page: Any, **fields: str) -> None:
    """Fill ``form#filters`` and submit it."""
    form = one(page, "form#filters")
    for name, value in fields.items():
        fill(form, name, value)
    form.submit()


def test_the_list_shows_every_instance_the_data_set_created(page: Any, ui: Dashboard) -> None:
    page.get(ui.url("/"))
    wait_for_rows(page, EVERY_ROW, "the instances page")
    links = by_css(page, "#instances tr.instance a.instance-link")
    assert len(links) == len(EVERY_ROW), "each row links to its instance page"
    screenshot(page, "instances")


def test_the_counts_by_status_match_the_data_set(page: Any, ui: Dashboard) -> None:
    page.get(ui.url("/"))
    expected = Counter(status for _, _, status in EVERY_ROW)
    for status, count in expected.items():
        shown = one(page, f'#counts [data-status-count="{status}"]')
        assert shown.get_attribute("data-count") == str(count), status
        assert str(count) in shown.text, f"{status}: {shown.text!r}"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"workflow": "shop_orders"}, rows_where(workflow="shop_orders")),
        ({"status": "waiting"}, rows_where(status="waiting")),
        (
            {"workflow": "shop_orders", "status": "failed"},
            {("shop_orders", "order-1003", "failed")},
        ),
        ({"workflow": "doc_review", "status": "completed"}, {("doc_review", "doc-2", "completed")}),
    ],
    ids=["workflow", "status", "workflow-and-status", "another-workflow-and-status"],
)
def test_the_filter_form_narrows_the_list(
    page: Any, ui: Dashboard, fields: dict[str, str], expected: set[Row]
) -> None:
    page.get(ui.url("/"))
    filter_by(page, **fields)
    wait_for_rows(page, expected, f"the list filtered by {fields}")
    for name, value in fields.items():
        assert f"{name}={value}" in page.current_url, "the filter is in the URL (bookmarkable)"


@pytest.mark.parametrize(
    ("prefix", "ids"),
    [
        ("order-100", {"order-1001", "order-1002", "order-1003", "order-1004"}),
        ("doc-", {"doc-1", "doc-2", "doc-3"}),
        ("order-1003", {"order-1003"}),
        ("no-such-", set()),
    ],
)
def test_the_id_search_finds_instances_by_prefix(
    page: Any, ui: Dashboard, prefix: str, ids: set[str]
) -> None:
    page.get(ui.url("/"))
    filter_by(page, q=prefix)
    expected = {row for row in EVERY_ROW if row[1] in ids}
    wait_for_rows(page, expected, f"the search for {prefix!r}")


def test_a_hostile_workflow_name_and_instance_id_render_as_text(page: Any, ui: Dashboard) -> None:
    page.get(ui.url("/"))
    assert hostile_ran(page) is None
    (row,) = [r for r in by_css(page, "#instances tr.instance") if r.text and HOSTILE_ID in r.text]
    assert HOSTILE_WORKFLOW in row.text, "the name is shown as the characters it has"
    assert row.get_attribute("data-workflow") == HOSTILE_WORKFLOW
    assert row.get_attribute("data-instance") == HOSTILE_ID
    assert by_css(page, "#instances script, #instances img") == [], "no markup got through"
    one(row, "a.instance-link").click()
    wait_for(page, lambda d: by_css(d, "#timeline li.row"), "the hostile instance's page")
    assert hostile_ran(page) is None
    assert one(page, "#instance-id").text == HOSTILE_ID, "the id, character for character"
    assert one(page, "#summary").get_attribute("data-status") == "completed"
    assert by_css(page, "#timeline script, #timeline img") == []


def test_the_workflow_filter_offers_every_workflow(page: Any, ui: Dashboard) -> None:
    page.get(ui.url("/"))
    values = {o.get_attribute("value") for o in by_css(page, "select[name=workflow] option")}
    assert {"shop_orders", "doc_review", HOSTILE_WORKFLOW} <= values
    assert hostile_ran(page) is None


def test_keyset_pages_cover_the_list_once(page: Any, ui: Dashboard) -> None:
    page.get(ui.url("/", limit="3"))
    seen: list[Row] = []
    for _ in range(len(EVERY_ROW)):  # bounded: at most one page per instance
        rows = instance_rows(page)
        assert 0 < len(rows) <= 3, rows
        seen.extend(rows)
        following = by_css(page, "a#next-page")
        if not following:
            break
        following[0].click()
        wait_for(page, lambda d, before=rows: instance_rows(d) != before, "the next page")
    assert sorted(seen) == sorted(EVERY_ROW), "every instance once, none twice"


def test_the_list_and_its_live_refresh_log_no_console_error(page: Any, ui: Dashboard) -> None:
    console_errors(page)
    page.get(ui.url("/"))
    wait_for(page, lambda d: int(one(d, "#live").get_attribute("data-refreshes") or 0) >= 1,
             "one live refresh")  # fmt: skip
    page.get(ui.url("/workers"))
    assert console_errors(page) == []
