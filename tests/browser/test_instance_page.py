"""One instance's page in a real browser: the SVG diagram with the current state marked
and each transition's count, the timeline row by row against the stored history, the
context only after a click, a failed row's error, a waiting instance's wait, a hostile
event payload shown as text."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import (
    ROOT,
    Dashboard,
    Database,
    console_errors,
    instance_path,
    screenshot,
    start_ui,
    wait_for,
)
from tests.browser.support import by_css, history, hostile_ran, one
from tests.browser.workflows import (
    HOSTILE_ID,
    HOSTILE_PAYLOAD,
    HOSTILE_WORKFLOW,
    REVIEW_DEFINITION,
    SECRET,
    SHOP_DEFINITION,
    populate_now,
)

README_IMAGE = ROOT / "docs" / "images" / "ui-instance.png"
UPDATE_IMAGE_VARIABLE = "FSMFLOW_UPDATE_README_IMAGE"


@pytest.fixture(scope="module")
def ui(browser_db: Database, ui_logs: Path) -> Iterator[Dashboard]:
    """A read-only dashboard on the data set."""
    populate_now(browser_db.config())
    with start_ui(browser_db, ui_logs) as dashboard:
        yield dashboard


def open_instance(page: Any, ui: Dashboard, workflow: str, instance_id: str) -> None:
    """Load an instance's page and wait for its timeline."""
    page.get(ui.url(instance_path(workflow, instance_id)))
    wait_for(page, lambda d: by_css(d, "#timeline li.row"), f"the timeline of {instance_id}")


def states_of(definition: Any) -> set[str]:
    """Every state of a definition (steps and transition ends)."""
    names = set(definition.steps)
    for transition in definition.transitions:
        names.update({transition.source, transition.dest})
    return names


@pytest.mark.parametrize(
    ("instance_id", "current"),
    [
        ("order-1001", "ship"),
        ("order-1002", "reject"),
        ("order-1003", "pack"),
        ("order-1004", "ship"),
    ],
)
def test_the_diagram_is_an_svg_with_the_current_state_marked(
    page: Any, ui: Dashboard, instance_id: str, current: str
) -> None:
    open_instance(page, ui, "shop_orders", instance_id)
    diagram = one(page, "svg#diagram")
    assert page.execute_script("return arguments[0] instanceof SVGSVGElement", diagram)
    assert diagram.size["width"] > 0 and diagram.size["height"] > 0, "the diagram is drawn"
    drawn = {g.get_attribute("data-state") for g in by_css(diagram, "g.state")}
    assert drawn == states_of(SHOP_DEFINITION)
    marked = [g.get_attribute("data-state") for g in by_css(diagram, "g.state.current")]
    assert marked == [current]


def test_each_edge_shows_how_often_it_was_traversed(page: Any, ui: Dashboard) -> None:
    open_instance(page, ui, "shop_orders", "order-1001")
    edges = {
        (g.get_attribute("data-source"), g.get_attribute("data-dest")): g
        for g in by_css(page, "svg#diagram g.edge")
        if g.get_attribute("data-dest")  # not the edges into the completion pseudo-state
    }
    declared = {(t.source, t.dest) for t in SHOP_DEFINITION.transitions}
    assert set(edges) == declared
    taken = {("receive", "validate"), ("validate", "pack"), ("pack", "ship")}
    for key, group in edges.items():
        count = "1" if key in taken else "0"
        assert group.get_attribute("data-count") == count, key
        assert count in group.text, f"the count is written on the edge {key}"
    (completion,) = by_css(page, 'svg#diagram g.edge.end-edge[data-source="ship"]')
    assert completion.get_attribute("data-count") == "1", "the instance completed in ship"
    assert "traversed" in str(completion.get_attribute("class"))


@pytest.mark.parametrize(
    ("workflow", "instance_id"),
    [("shop_orders", "order-1001"), ("shop_orders", "order-1003"), ("doc_review", "doc-2")],
)
def test_the_timeline_matches_the_stored_history(
    page: Any, ui: Dashboard, browser_db: Database, workflow: str, instance_id: str
) -> None:
    stored = history(browser_db, workflow, instance_id)
    open_instance(page, ui, workflow, instance_id)
    rows = by_css(page, "#timeline li.row")
    assert [r.get_attribute("data-seq") for r in rows] == [str(s.seq) for s in stored]
    assert [r.get_attribute("data-status") for r in rows] == [s.status for s in stored]
    for row, record in zip(rows, stored, strict=True):
        for shown in (record.trigger, record.source_state, record.dest_state):
            if shown:
                assert shown in row.text, f"seq {record.seq}: {shown!r} in {row.text!r}"


def test_a_failed_row_shows_its_error(page: Any, ui: Dashboard) -> None:
    open_instance(page, ui, "shop_orders", "order-1003")
    failed = one(page, '#timeline li.row[data-status="failed"]')
    assert "RuntimeError" in one(failed, ".row-error").text
    assert "box too small" not in page.page_source, "the message comes with the context only"
    one(failed, "button.show-context").click()
    message = wait_for(page, lambda d: by_css(d, "#timeline pre.error-message"), "the message")
    assert "box too small for a fragile order" in message[0].text


def test_the_context_appears_only_after_clicking_its_row(page: Any, ui: Dashboard) -> None:
    open_instance(page, ui, "shop_orders", "order-1001")
    assert SECRET not in page.page_source, "no context value is sent before it is asked for"
    one(page, 'button.show-context[data-seq="0"]').click()
    wait_for(page, lambda d: SECRET in d.find_element("id", "timeline").text, "the seq-0 context")
    assert SECRET not in ui.log_text(), "the dashboard never logs a context value"


def test_a_hostile_event_payload_renders_as_text(
    page: Any, ui: Dashboard, browser_db: Database
) -> None:
    stored = history(browser_db, "doc_review", "doc-2")[-1]
    assert stored.context["approval"]["note"] == HOSTILE_PAYLOAD
    open_instance(page, ui, "doc_review", "doc-2")
    one(page, f'button.show-context[data-seq="{stored.seq}"]').click()
    shown = wait_for(page, lambda d: by_css(d, f'div.context[data-seq="{stored.seq}"] pre'),
                     "the delivered payload")  # fmt: skip
    assert json.loads(shown[0].text) == stored.context, "the context, character for character"
    assert hostile_ran(page) is None, "the payload's script did not run"
    assert by_css(page, "#timeline script, #timeline b") == [], "no markup got through"


def test_a_waiting_instance_shows_its_event_and_deadline(
    page: Any, ui: Dashboard, browser_db: Database
) -> None:
    open_instance(page, ui, "doc_review", "doc-1")
    waiting = one(page, "#waiting").text
    awaited = by_css(page, "#waiting li.awaited-event")
    assert [e.get_attribute("data-event") for e in awaited] == ["approval"], waiting
    stored = history(browser_db, "doc_review", "doc-1")[-1]
    assert stored.wake_at is not None
    deadline = one(page, "#waiting #deadline").text
    assert stored.wake_at.strftime("%Y-%m-%d %H:%M") in deadline, deadline
    marked = [g.get_attribute("data-state") for g in by_css(page, "svg#diagram g.state.current")]
    assert marked == ["review"]
    assert states_of(REVIEW_DEFINITION) == {
        g.get_attribute("data-state") for g in by_css(page, "svg#diagram g.state")
    }


def test_a_pending_event_is_listed_without_its_payload(page: Any, ui: Dashboard) -> None:
    open_instance(page, ui, "doc_review", "doc-3")
    pending = by_css(page, "#pending-events tr.pending-event")
    assert [row.get_attribute("data-event") for row in pending] == ["approval"]
    assert "ben" not in page.page_source, "a pending event's payload is a value: not shown"
    open_instance(page, ui, "doc_review", "doc-1")
    assert by_css(page, "#pending-events tr.pending-event") == []


@pytest.mark.parametrize(
    ("workflow", "instance_id"),
    [("shop_orders", "order-1003"), ("doc_review", "doc-3"), (HOSTILE_WORKFLOW, HOSTILE_ID)],
)
def test_the_page_and_its_context_log_no_console_error(
    page: Any, ui: Dashboard, workflow: str, instance_id: str
) -> None:
    """No script error, no refused inline script or style (the CSP), no failed load."""
    console_errors(page)
    open_instance(page, ui, workflow, instance_id)
    for button in by_css(page, "button.show-context"):
        button.click()
        seq = button.get_attribute("data-seq")
        wait_for(page, lambda d, s=seq: by_css(d, f'div.context[data-seq="{s}"]'), f"seq {seq}")
    assert console_errors(page) == []


def test_screenshot_of_an_instance_page(page: Any, ui: Dashboard) -> None:
    # A completed instance: a failed row would show the step's source location, a path of
    # the machine that ran the tests.
    open_instance(page, ui, "shop_orders", "order-1001")
    path = screenshot(page, "instance")
    if os.environ.get(UPDATE_IMAGE_VARIABLE) == "1":
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_IMAGE)
