"""``fsmflow ui`` as a real process: a uvicorn server on a free port over the test's
database, read with httpx. This module holds the fixtures the other dashboard tests
import (the server, the instances it shows), and tests the command itself: its first
line, exit codes, warnings, the missing extra, the security headers, the wheel's assets.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from fsmflow import (
    DBConfig,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
)
from fsmflow.errors import StepFailedError
from tests.conftest import ROOT

SAFETY_TIMEOUT = 60.0  # only bounds a hang; nothing here asserts how long anything took
TOKEN = "ui-t0ken-for-tests"
SECRET = "ctx-s3cr3t-value"
HOSTILE_WORKFLOW = "<script>alert('w')</script>\"&amp;"
HOSTILE_ID = "</svg><script>alert(1)</script>\"'/x"
HOSTILE_TEXT = "</svg><script>alert('p')</script>"

REVIEW = WorkflowDefinition(
    name="review",
    steps=["draft", "review", "publish"],
    transitions=[
        Transition("drafted", "draft", "review"),
        Transition("approved", "review", "publish", event="approval"),
        Transition("expired", "review", "draft", timeout=3600.0),
        Transition("published", "publish", None),
    ],
)


def hostile_definition() -> WorkflowDefinition:
    """A one-state workflow whose name is markup."""
    return WorkflowDefinition(
        name=HOSTILE_WORKFLOW, steps=["only"], transitions=[Transition("finish", "only", None)]
    )


def _returns(trigger: str | None) -> Any:
    async def step(ctx: WorkflowContext) -> tuple[WorkflowContext, str | None]:
        ctx.data.setdefault("trail", []).append(trigger)
        return ctx, trigger

    return step


async def _explodes(ctx: WorkflowContext) -> WorkflowContext:
    raise RuntimeError(f"boom {SECRET} {HOSTILE_TEXT}")


async def run(
    config: DBConfig,
    instance_id: str,
    *,
    fail_in: str | None = None,
    definition: WorkflowDefinition = REVIEW,
    context: dict[str, Any] | None = None,
) -> str:
    """Run an instance until it waits, fails or ends; its status."""
    known = {"draft": _returns("drafted"), "publish": _returns("published"), "only": _returns(None)}
    steps = {name: step for name, step in known.items() if name in definition.steps}
    if fail_in is not None:
        steps[fail_in] = _explodes
    runner = PersistentWorkflowStateMachine(
        config, definition, steps=steps, instance_id=instance_id, handle_signals=False
    )
    try:
        state = await runner.run_workflow(context=context or {"secret": SECRET}, suspend=True)
    except StepFailedError:
        return "failed"
    return state.status


@dataclass
class Dashboard:
    """A running ``fsmflow ui``: its address and process."""

    url: str
    process: subprocess.Popen[str]

    def client(self) -> httpx.Client:
        """An httpx client on the dashboard (no redirects followed)."""
        return httpx.Client(base_url=self.url, timeout=SAFETY_TIMEOUT)


def page(workflow: str, instance_id: str, *rest: str) -> str:
    """An instance's path, every part quoted (as the dashboard's own links are)."""
    return "/" + "/".join(quote(p, safe="") for p in ("instances", workflow, instance_id, *rest))


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        line = process.stdout.readline() if ready else ""
        if line:
            return line
        if ready or process.poll() is not None:  # end of output: it exited
            break
    process.kill()
    raise AssertionError(f"fsmflow ui printed no address: {process.communicate()}")


@contextlib.contextmanager
def serve(env: dict[str, str], *args: str) -> Iterator[Dashboard]:
    """Start ``fsmflow ui --port 0 args...``; stop it with SIGTERM (it must exit 0)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fsmflow", "ui", "--port", "0", *args],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = _first_line(process)
        assert line.startswith("fsmflow ui: serving http://127.0.0.1:"), line
        yield Dashboard(line.split()[3].rstrip("/"), process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=SAFETY_TIMEOUT)
        process.stderr_text = err  # type: ignore[attr-defined]
    assert process.returncode == 0, err
    assert SECRET not in out + err and TOKEN not in out + err


@pytest.fixture
async def shown(db_config: DBConfig) -> DBConfig:
    """done-1 completed, fail-1 failed in publish, wait-1 waiting in review (a pending
    event sent before it), and a completed instance of the hostile workflow."""
    assert await run(db_config, "done-1") == "waiting"
    await db_config.store.send_event("review", "done-1", "approval", {"ok": True})
    assert await run(db_config, "done-1") == "completed"
    assert await run(db_config, "fail-1") == "waiting"
    await db_config.store.send_event("review", "fail-1", "approval", {"ok": True})
    assert await run(db_config, "fail-1", fail_in="publish") == "failed"
    assert await run(db_config, "wait-1") == "waiting"
    await db_config.store.send_event("review", "wait-1", "approval", {"p": HOSTILE_TEXT})
    assert await run(db_config, HOSTILE_ID, definition=hostile_definition()) == "completed"
    return db_config


@pytest.fixture
async def dashboard(shown: DBConfig, db_env: dict[str, str]) -> AsyncIterator[Dashboard]:
    """A read-only dashboard over :func:`shown`."""
    with serve(db_env) as running:
        yield running


# -- the command -------------------------------------------------------------------------


def test_serves_read_only_on_localhost_with_the_security_headers(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        response = client.get("/")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert "server" not in response.headers
    assert "read-only" in response.text and "<script>" not in response.text.replace(
        '<script src="/static/ui.js" defer></script>', ""
    )


def test_static_assets_are_served_and_no_page_inlines_script(dashboard: Dashboard) -> None:
    with dashboard.client() as client:
        js = client.get("/static/ui.js")
        css = client.get("/static/ui.css")
        home = client.get("/").text
    assert js.status_code == 200 and "liveRefresh" in js.text
    assert css.status_code == 200 and "svg#diagram" in css.text
    assert " style=" not in home and " onclick=" not in home


def test_sigint_stops_it_with_exit_0(shown: DBConfig, db_env: dict[str, str]) -> None:
    with serve(db_env) as running:
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(timeout=SAFETY_TIMEOUT) == 0


def test_help_names_the_options_and_the_token(db_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fsmflow", "ui", "--help"], cwd=ROOT, env=db_env,
        capture_output=True, text=True, timeout=SAFETY_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    for text in ("--host", "--port", "--allow-actions", "FSMFLOW_UI_TOKEN", "fsmflow[ui]"):
        assert text in result.stdout


def test_a_port_in_use_is_a_usage_error(dashboard: Dashboard, db_env: dict[str, str]) -> None:
    port = dashboard.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "fsmflow", "ui", "--port", port], cwd=ROOT, env=db_env,
        capture_output=True, text=True, timeout=SAFETY_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_public_address_without_a_token_is_warned_about(
    shown: DBConfig, db_env: dict[str, str]
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fsmflow", "ui", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT, env=db_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert _first_line(process).startswith("fsmflow ui: serving http://0.0.0.0:")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=SAFETY_TIMEOUT)
    assert process.returncode == 0
    assert "not only on this machine, and FSMFLOW_UI_TOKEN is not set" in err


def test_without_the_extra_it_says_what_to_install(db_env: dict[str, str], tmp_path: Any) -> None:
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    env = {**db_env, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "fsmflow", "ui", "--port", "0"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=SAFETY_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "pip install 'fsmflow[ui]'" in result.stderr
    assert "Traceback" not in result.stderr
