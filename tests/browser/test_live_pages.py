"""Pages that change while they are open: the instances list picks up a new instance
without a reload; the workers page lists a real ``fsmflow worker`` process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import (
    ROOT,
    START_TIMEOUT,
    Dashboard,
    Database,
    screenshot,
    start_ui,
    wait_for,
)
from tests.browser.support import by_css, instance_rows, with_store
from tests.browser.workflows import INSTANCES, SHOP, Planned, create, populate_now

NOT_RELOADED = "window.__fsmflowNotReloaded"


@pytest.fixture(scope="module")
def ui(browser_db: Database, ui_logs: Path) -> Iterator[Dashboard]:
    """A read-only dashboard on two instances of the data set."""
    populate_now(browser_db.config(), INSTANCES[:2])
    with start_ui(browser_db, ui_logs) as dashboard:
        yield dashboard


def test_the_list_picks_up_a_new_instance_without_a_reload(
    page: Any, ui: Dashboard, browser_db: Database
) -> None:
    page.get(ui.url("/"))
    wait_for(page, lambda d: len(instance_rows(d)) == 2, "the two instances")
    page.execute_script(f"{NOT_RELOADED} = true")
    new = Planned(SHOP, "order-live", "completed", {"items": ["kite"]})

    async def start() -> None:
        config = browser_db.config()
        try:
            await create(config, new)
        finally:
            await config.close()

    asyncio.run(start())
    wait_for(
        page,
        lambda d: ("shop_orders", "order-live", "completed") in instance_rows(d),
        "the new instance to appear by live refresh",
    )
    assert page.execute_script(f"return {NOT_RELOADED} === true"), "the page was not reloaded"
    assert len(instance_rows(page)) == 3


@pytest.fixture
def worker(browser_db: Database, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``fsmflow worker tests.browser.workflows:SHOP`` as a real process; stopped with
    SIGTERM, which must end it with exit code 0."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fsmflow", "worker", "tests.browser.workflows:SHOP",
             "--concurrency", "3"],
            cwd=ROOT, env=browser_db.env(), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=START_TIMEOUT)
        assert code == 0, log.read_text()


def test_the_workers_page_lists_a_live_worker(
    page: Any, ui: Dashboard, browser_db: Database, worker: subprocess.Popen[bytes]
) -> None:
    def registered(_: Any) -> bool:
        assert worker.poll() is None, "the worker process exited"
        return bool(with_store(browser_db, lambda store: store.fleet.list_workers()))

    wait_for(page, registered, "the worker's row in the database")
    page.get(ui.url("/workers"))
    table = wait_for(page, lambda d: by_css(d, "#workers"), "the workers table")[0]
    assert str(worker.pid) in table.text, table.text
    assert "shop_orders" in table.text
    screenshot(page, "workers")
