"""The dashboard's pages over HTTP (a real ``fsmflow ui`` and the real database): the
list, its filters, id search, keyset pages, counts, the live fragment, one instance's
timeline, wait, pending events and diagram, the per-row context, workers, and escaping
of hostile names, ids, payloads and error messages."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any

from markupsafe import escape

from fsmflow import DBConfig

from .test_ui_server import (
    HOSTILE_ID,
    HOSTILE_TEXT,
    HOSTILE_WORKFLOW,
    SECRET,
    Dashboard,
    dashboard,
    page,
    run,
    serve,
    shown,
)

__all__ = ["dashboard", "shown"]  # fixtures used here


class Elements(HTMLParser):
    """Every start tag with its attributes, in order (a tiny DOM for assertions)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def having(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        """The attributes of each ``tag`` whose attributes include ``attrs`` (``class_``:
        one of its classes)."""
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        found = []
        for name, have in self.tags:
            if name != tag:
                continue
            classes = have.get("class", "").split()
            if all((v in classes) if k == "class" else have.get(k) == v for k, v in wanted.items()):
                found.append(have)
        return found


def instance_rows(text: str) -> list[dict[str, str]]:
    return Elements(text).having("tr", class_="instance")


def test_the_list_shows_every_instance_with_counts(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        text = client.get("/").text
    rows = instance_rows(text)
    assert {(r["data-workflow"], r["data-instance"], r["data-status"]) for r in rows} == {
        ("review", "done-1", "completed"),
        ("review", "fail-1", "failed"),
        ("review", "wait-1", "waiting"),
        (HOSTILE_WORKFLOW, HOSTILE_ID, "completed"),
    }
    counts = {
        a["data-status-count"]: a["data-count"] for a in Elements(text).having("a", class_="count")
    }
    assert counts == {"running": "0", "waiting": "1", "completed": "2", "failed": "1",
                      "cancelled": "0"}  # fmt: skip
    for form_field in ('<form id="filters"', 'select name="workflow"', 'select name="status"',
                       'name="q"', 'id="live"'):  # fmt: skip
        assert form_field in text
    assert SECRET not in text


def test_filters_by_workflow_status_and_id(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        by_status = instance_rows(client.get("/", params={"status": "failed"}).text)
        by_workflow = instance_rows(client.get("/", params={"workflow": "review"}).text)
        by_prefix = instance_rows(client.get("/", params={"q": "wai"}).text)
        by_exact = instance_rows(client.get("/", params={"q": HOSTILE_ID}).text)
        none = client.get("/", params={"q": "wait-1", "status": "failed"}).text
        bad = client.get("/", params={"status": "bogus"})
    assert [r["data-instance"] for r in by_status] == ["fail-1"]
    assert {r["data-instance"] for r in by_workflow} == {"done-1", "fail-1", "wait-1"}
    assert [r["data-instance"] for r in by_prefix] == ["wait-1"]
    assert [r["data-workflow"] for r in by_exact] == [HOSTILE_WORKFLOW]
    assert instance_rows(none) == [] and "match these filters" in none
    assert bad.status_code == 400 and 'id="error"' in bad.text
    assert "use one of running, waiting, completed, failed, cancelled" in bad.text


async def test_keyset_pages_neither_skip_nor_repeat(
    db_config: DBConfig, db_env: dict[str, str]
) -> None:
    for n in range(7):
        assert await run(db_config, f"page-{n}") == "waiting"
    with serve(db_env) as running, running.client() as client:
        seen: list[str] = []
        for params in ({"limit": "3"}, {"limit": "3", "q": "page-"}):
            url: str | None = "/?" + "&".join(f"{k}={v}" for k, v in params.items())
            pages = 0
            while url is not None:
                text = client.get(html.unescape(url)).text
                seen += [r["data-instance"] for r in instance_rows(text)]
                found = re.search(r'id="next-page" href="([^"]+)"', text)
                url = None if found is None else found.group(1)
                pages += 1
                assert "OFFSET" not in text
            assert pages == 3
            assert sorted(seen) == sorted(f"page-{n}" for n in range(7)), seen
            seen.clear()
        bad = client.get("/", params={"after": "not-a-cursor"})
    assert bad.status_code == 400 and "start from page 1" in bad.text


async def test_the_fragment_refreshes_what_changed(shown: DBConfig, db_env: dict[str, str]) -> None:
    with serve(db_env) as running, running.client() as client:
        before = client.get("/fragments/instances", params={"status": "waiting"}).text
        assert await run(shown, "wait-2") == "waiting"
        after = client.get("/fragments/instances", params={"status": "waiting"}).text
        home = client.get("/", params={"status": "waiting"}).text
    assert [r["data-instance"] for r in instance_rows(before)] == ["wait-1"]
    assert {r["data-instance"] for r in instance_rows(after)} == {"wait-1", "wait-2"}
    for part in ('id="counts"', 'id="instances"', 'id="pager"'):
        assert part in after
    assert "<html" not in after
    assert 'data-refresh-url="/fragments/instances?status=waiting"' in home


def test_the_instance_page_shows_the_timeline_and_the_diagram(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        text = client.get(page("review", "done-1")).text
    dom = Elements(text)
    rows = dom.having("li", class_="row")
    assert [(r["data-seq"], r["data-status"]) for r in rows] == [
        ("0", "running"), ("1", "waiting"), ("2", "running"), ("3", "completed"),
    ]  # fmt: skip
    assert len(dom.having("button", class_="show-context")) == 4
    assert " ms</span>" in text  # the steps' durations
    assert dom.having("svg", id="diagram")
    states = {g["data-state"]: g["class"] for g in dom.having("g", class_="state")}
    assert set(states) == {"draft", "review", "publish"}
    assert "current" in states["publish"] and "current" not in states["draft"]
    edges = {(g["data-source"], g["data-dest"], g["data-trigger"]): g["data-count"]
             for g in dom.having("g", class_="edge")}  # fmt: skip
    assert edges == {
        ("draft", "review", "drafted"): "1",
        ("review", "publish", "approved"): "1",
        ("review", "draft", "expired"): "0",
        ("publish", "", "published"): "1",
    }
    assert SECRET not in text
    assert "Retry" not in text and "<form" not in text.replace('<form id="filters"', "")


def test_a_failed_row_shows_its_error_type_not_its_message(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        text = client.get(page("review", "fail-1")).text
        context = client.get(page("review", "fail-1", "context", "3"))
    assert 'data-status="failed"' in text
    error = re.search(r'<div class="row-error">(.*?)</div>', text, re.S)
    assert error is not None and "RuntimeError" in error.group(1)
    assert "boom" not in text and SECRET not in text
    assert context.status_code == 200
    assert SECRET in context.text and "boom" in context.text
    assert HOSTILE_TEXT not in context.text and str(escape(HOSTILE_TEXT)) in context.text
    assert context.headers["cache-control"] == "no-store"


def test_a_waiting_instance_shows_its_wait_and_pending_events(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        text = client.get(page("review", "wait-1")).text
    dom = Elements(text)
    assert dom.having("section", id="waiting")
    assert [li["data-event"] for li in dom.having("li", class_="awaited-event")] == ["approval"]
    assert "Next deadline:" in text and 'id="deadline"' in text
    assert [tr["data-event"] for tr in dom.having("tr", class_="pending-event")] == ["approval"]
    assert "alert" not in text  # the pending payload is not shown
    assert (
        "current"
        in {g["data-state"]: g["class"] for g in dom.having("g", class_="state")}["review"]
    )


def test_hostile_names_render_as_text(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        home = client.get("/").text
        one = client.get(page(HOSTILE_WORKFLOW, HOSTILE_ID))
        context = client.get(page(HOSTILE_WORKFLOW, HOSTILE_ID, "context", "0")).text
    assert one.status_code == 200
    for text in (home, one.text, context):
        assert "<script>alert" not in text
        assert text.count("</svg>") <= 1
    assert str(escape(HOSTILE_ID)) in one.text and str(escape(HOSTILE_WORKFLOW)) in one.text
    rows = instance_rows(home)
    assert HOSTILE_ID in {r["data-instance"] for r in rows}  # attributes round-trip exactly
    links = Elements(home).having("a", class_="instance-link")
    assert page(HOSTILE_WORKFLOW, HOSTILE_ID) in {a["href"] for a in links}
    (state,) = Elements(one.text).having("g", class_="state")
    assert state["data-state"] == "only"


def test_unknown_pages_and_instances_are_error_pages(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        missing = client.get(page("review", "nope"))
        no_row = client.get(page("review", "done-1", "context", "99"))
        nowhere = client.get(page("review", "done-1", "elsewhere"))
    for response in (missing, no_row, nowhere):
        assert response.status_code == 404 and 'id="error"' in response.text
    assert "no such instance" in missing.text and "InstanceNotFoundError" in missing.text


def test_workers_page_lists_the_fleet(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        text = client.get("/workers").text
    assert '<table id="workers">' in text and "No live workers." in text


def runtime_role(postgresql: Any, name: str) -> None:
    """A login role with what a runtime role has: SELECT and INSERT on the history and
    events tables, nothing on the fleet's."""
    with postgresql.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN")
        cur.execute(
            f"GRANT SELECT, INSERT ON fsmflow_transitions, fsmflow_transitions_events TO {name}"
        )
    postgresql.commit()


def test_every_page_works_for_the_runtime_role(
    shown: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    runtime_role(postgresql, "ui_runtime")
    with serve({**db_env, "DB_USER": "ui_runtime"}) as running, running.client() as client:
        for url in ("/", "/?q=wait", "/?status=failed", page("review", "wait-1"),
                    page("review", "fail-1", "context", "3")):  # fmt: skip
            response = client.get(url)
            assert response.status_code == 200, (url, response.text)
        workers = client.get("/workers").text
    assert 'id="no-fleet"' in workers and "GRANT SELECT" in workers
