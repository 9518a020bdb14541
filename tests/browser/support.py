"""What the browser tests read from the pages (by the DOM ids of the UI contract) and
from the database (through the store, to compare with what a page shows)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fsmflow import DBConfig, TransitionRecord
from fsmflow.store.facade import Store
from tests.browser.conftest import Database, wait_for

T = TypeVar("T")
Row = tuple[str, str, str]  # workflow, instance id, status


def post(url: str, fields: dict[str, str]) -> int:
    """POST ``fields`` as a form to ``url`` outside the browser; the status code."""
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()  # an error response holds its socket until closed
        return int(error.code)


def by_css(driver: Any, selector: str) -> list[Any]:
    """Every element matching ``selector``."""
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def one(driver: Any, selector: str) -> Any:
    """The one element matching ``selector`` (fails if there are none or several)."""
    found = by_css(driver, selector)
    assert len(found) == 1, f"{len(found)} elements match {selector!r} on {driver.current_url}"
    return found[0]


def fill(form: Any, name: str, value: str) -> None:
    """Set the field ``name`` of ``form``: a select by value, anything else by typing."""
    from selenium.webdriver.support.ui import Select

    field = one(form, f"[name={name}]")
    if field.tag_name == "select":
        Select(field).select_by_value(value)
    else:
        field.clear()
        field.send_keys(value)


def instance_rows(driver: Any) -> set[Row]:
    """The rows of ``#instances``: (workflow, instance, status) from their data attributes."""
    return {
        (row.get_attribute("data-workflow"), row.get_attribute("data-instance"),
         row.get_attribute("data-status"))
        for row in by_css(driver, "#instances tr.instance")
    }  # fmt: skip


def wait_for_rows(driver: Any, expected: set[Row], what: str) -> None:
    """Wait until ``#instances`` lists exactly ``expected``."""
    wait_for(driver, lambda d: instance_rows(d) == expected, f"{what}: rows {sorted(expected)}")


def hostile_ran(driver: Any) -> Any:
    """What a hostile value's script set in the page (None: nothing ran)."""
    return driver.execute_script("return window.__fsmflowPwned === undefined ? null : "
                                 "String(window.__fsmflowPwned)")  # fmt: skip


def with_store(db: Database, use: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``use(store)`` on ``db`` from synchronous test code."""

    async def run() -> T:
        config: DBConfig = db.config()
        try:
            return await use(config.store)
        finally:
            await config.close()

    return asyncio.run(run())


def history(db: Database, workflow: str, instance_id: str) -> list[TransitionRecord]:
    """Every stored row of an instance, in seq order."""
    return with_store(db, lambda store: store.history(workflow, instance_id))
