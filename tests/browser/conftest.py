"""The dashboard in a real headless Chromium, driven by selenium, against a real
``fsmflow ui`` process on a real PostgreSQL.

- ``browser`` (session): one headless Chromium for the whole run: Debian's ``chromium``
  and its ``chromedriver`` (``apt-get install chromium chromium-driver``), given to
  selenium by path so it never downloads a driver. ``FSMFLOW_CHROMIUM`` and
  ``FSMFLOW_CHROMEDRIVER`` point elsewhere. A missing browser, driver or selenium FAILS
  every browser test, naming what to install; outside CI (no ``CI`` variable),
  ``FSMFLOW_BROWSER_MISSING=skip`` turns that into a skip with the same message.
- ``browser_db`` (module): a database of the module's own, cloned from the schema
  template; each module fills it once and starts its dashboards on it.
- :func:`start_ui`: ``python -m fsmflow ui --port 0`` as a subprocess on that database,
  returned once it answers at the address it printed; stopped with SIGTERM (exit 0).
- :func:`screenshot`: the whole page as ``build/screenshots/<name>.png``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from fsmflow import DBConfig
from tests.conftest import ROOT, config_for

CHROMIUM: Final = os.environ.get("FSMFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER: Final = os.environ.get("FSMFLOW_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT: Final = (
    "the browser tests need Debian's Chromium and its driver: "
    "`apt-get install chromium chromium-driver` (or set FSMFLOW_CHROMIUM and "
    "FSMFLOW_CHROMEDRIVER to a Chromium and the chromedriver of the same version), and "
    "selenium (`pip install -e '.[test]'`)"
)
SKIP_VARIABLE: Final = "FSMFLOW_BROWSER_MISSING"
SCREENSHOTS: Final = ROOT / "build" / "screenshots"
WINDOW: Final = (1280, 900)
MAX_SCREENSHOT_HEIGHT: Final = 2400
SERVING: Final = "fsmflow ui: serving "
START_TIMEOUT: Final = 60.0  # bounds a hang only: the server usually answers within 2 s
WAIT_TIMEOUT: Final = 30.0  # the same for everything a test waits to see in the page


def browser_missing(what: str) -> None:
    """Fail (in CI always) or skip (when asked to, outside CI) for a missing browser."""
    message = f"{what}; {INSTALL_HINT}"
    if os.environ.get(SKIP_VARIABLE) == "skip" and not os.environ.get("CI"):
        pytest.skip(f"{message} ({SKIP_VARIABLE}=skip)")
    pytest.fail(message, pytrace=False)


def _check_installed() -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser_missing("selenium is not installed")
    for path, name in ((CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            browser_missing(f"{name} not found at {path}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (a ``selenium`` ``WebDriver``)."""
    _check_installed()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    # The console (CSP violations, script errors, failed loads) for console_errors().
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The session's browser, with a clean slate: no cookies, the default window size."""
    browser.delete_all_cookies()
    browser.set_window_size(*WINDOW)
    yield browser


def console_errors(driver: Any) -> list[str]:
    """The browser console's errors since the last call (and clears them)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver: Any, name: str) -> Path:
    """Save the whole page (up to a bounded height) as ``build/screenshots/<name>.png``.

    Through the DevTools protocol, which captures beyond the viewport: a headless window
    cannot grow past its screen, so resizing it would cut a long page off."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {
        "x": 0,
        "y": 0,
        "width": WINDOW[0],
        "height": min(max(float(size["height"]), WINDOW[1]), MAX_SCREENSHOT_HEIGHT),
        "scale": 1,
    }
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


# -- the database ------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """A test database's connection facts (the shape of a psycopg ``conn.info``)."""

    host: str
    port: int
    user: str
    password: str | None
    dbname: str

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a child process on this database (as ``db_env``)."""
        keep = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DB_", "DATABASE_URL", "FSMFLOW_"))
        }
        keep.update(
            DB_HOST=self.host,
            DB_PORT=str(self.port),
            DB_USER=self.user,
            DB_NAME=self.dbname,
            PYTHONUNBUFFERED="1",
        )
        if self.password:
            keep["DB_PASSWORD"] = self.password
        keep.update(extra)
        return keep

    def config(self) -> DBConfig:
        """Settings for this database (close them after use)."""
        return config_for(self)


@pytest.fixture(scope="module")
def browser_db(request: pytest.FixtureRequest, fsmflow_template: Any) -> Iterator[Database]:
    """A database of this module's own, with the schema, dropped after the module."""
    name = "fsmflow_browser_" + request.module.__name__.rsplit(".", 1)[-1]
    janitor = DatabaseJanitor(
        user=fsmflow_template.user,
        host=fsmflow_template.host,
        port=fsmflow_template.port,
        password=fsmflow_template.password,
        dbname=name,
        template_dbname=fsmflow_template.template_dbname,
    )
    janitor.drop()  # a database left by an interrupted run
    with janitor:
        yield Database(
            host=str(fsmflow_template.host),
            port=int(fsmflow_template.port),
            user=str(fsmflow_template.user),
            password=fsmflow_template.password or None,
            dbname=name,
        )


# -- the dashboard process --------------------------------------------------------------


@dataclass
class Dashboard:
    """A running ``fsmflow ui``: its base URL, process and output files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    base_url: str = ""

    def url(self, path: str = "/", **query: str) -> str:
        """An absolute URL of the dashboard; ``query`` is encoded."""
        tail = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self.base_url}{path}{tail}"

    def log_text(self) -> str:
        """Everything the process wrote so far (stdout, then stderr: its log)."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")


def instance_path(workflow: str, instance_id: str) -> str:
    """The instance page's path, each segment percent-encoded (``/`` included)."""
    return "/instances/{}/{}".format(
        urllib.parse.quote(workflow, safe=""), urllib.parse.quote(instance_id, safe="")
    )


def _served_url(dashboard: Dashboard) -> str | None:
    """The address on the first stdout line (``fsmflow ui: serving http://H:P/ (...)``)."""
    lines = dashboard.stdout.read_text(errors="replace").splitlines()
    if not lines or not lines[0].startswith(SERVING):
        return None
    return lines[0].split()[3].rstrip("/")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status) < 500
    except urllib.error.HTTPError as error:
        error.close()  # an error response holds its socket until closed
        return error.code < 500
    except OSError:
        return False


def _wait_until_serving(dashboard: Dashboard) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    # Polling for observable facts (the address printed, then the port answers): no race.
    while not (dashboard.base_url and _answers(dashboard.url("/"))):
        if dashboard.process.poll() is not None:
            raise AssertionError(
                f"fsmflow ui exited with {dashboard.process.returncode} before answering:\n"
                + dashboard.log_text()
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"fsmflow ui did not answer within {START_TIMEOUT:g} s:\n"
                                 + dashboard.log_text())  # fmt: skip
        dashboard.base_url = dashboard.base_url or (_served_url(dashboard) or "")
        time.sleep(0.1)


def _stop(dashboard: Dashboard) -> None:
    """SIGTERM, which must end the server with exit code 0."""
    if dashboard.process.poll() is None:
        dashboard.process.send_signal(signal.SIGTERM)
        try:
            dashboard.process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            dashboard.process.kill()
            dashboard.process.wait(timeout=START_TIMEOUT)
            raise AssertionError("fsmflow ui ignored SIGTERM:\n" + dashboard.log_text()) from None
    assert dashboard.process.returncode == 0, dashboard.log_text()


@contextlib.contextmanager
def start_ui(db: Database, log_dir: Path, *args: str, **env: str) -> Iterator[Dashboard]:
    """``fsmflow ui --port 0 args...`` on ``db`` (extra environment ``env``), as a real
    subprocess of the CLI; yields once it answers at the address it printed, then stops
    it with SIGTERM (exit code 0 required)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"fsmflow-ui-{len(list(log_dir.glob('*.out'))) + 1}"
    stdout, stderr = log_dir / f"{name}.out", log_dir / f"{name}.err"
    command = [sys.executable, "-m", "fsmflow", "ui", "--host", "127.0.0.1", "--port", "0"]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [*command, *args], cwd=ROOT, env=db.env(**env), stdin=subprocess.DEVNULL,
            stdout=out, stderr=err,
        )  # fmt: skip
    dashboard = Dashboard(process, stdout, stderr)
    try:
        _wait_until_serving(dashboard)
        yield dashboard
    finally:
        _stop(dashboard)


@pytest.fixture(scope="module")
def ui_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this module's dashboards write their logs."""
    return tmp_path_factory.mktemp("ui-logs")


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Wait (bounded) until ``condition(driver)`` is truthy; fail naming ``what``."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    # An element read while the page is replaced (a navigation, a live refresh) is stale:
    # that is "not yet", not a failure.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    waiting = WebDriverWait(driver, WAIT_TIMEOUT, poll_frequency=0.1, ignored_exceptions=ignored)
    try:
        return waiting.until(condition)
    except TimeoutException:
        raise AssertionError(
            f"waited {WAIT_TIMEOUT:g} s for {what}; page {driver.current_url}:\n"
            + driver.page_source[:4000]
        ) from None
