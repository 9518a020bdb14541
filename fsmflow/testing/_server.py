"""The test kit's PostgreSQL: a throwaway server for a session, a fresh table for a test.

The server is the embedded one fsmflow starts when nothing is configured, but in a temporary
data directory of its own (never the user's ``~/.local/share/fsmflow/pgdata``), stopped and
deleted at the end; or, with ``FSMFLOW_TESTING_DATABASE_URL``, the user's own server, left
as it was found apart from the tables the tests create and drop.

These helpers are synchronous: they are called by pytest fixtures, outside any event loop,
and run their few coroutines in a loop of their own. The :class:`DBConfig` a test receives
has never been opened, so an async test opens it on its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import SecretStr

from fsmflow import sql
from fsmflow.errors import ConfigError
from fsmflow.settings import DBConfig, KitSettings, setting_names
from fsmflow.store.embedded import data_dir_of, embedded_connect_kwargs, stop_server

__all__ = ["PostgresServer", "environment_of", "fresh_table", "start_server"]

TABLE_PREFIX: Final = "fsmflow_test_"
T = TypeVar("T")


@dataclass(frozen=True)
class PostgresServer:
    """Where the session's PostgreSQL is: ``settings`` are :class:`DBConfig` keyword
    arguments (no table); ``embedded_dir`` is the throwaway data directory (None: the
    user's own server from ``FSMFLOW_TESTING_DATABASE_URL``)."""

    settings: Mapping[str, Any] = field(repr=False)
    target: str
    embedded_dir: Path | None = None

    def config(self, **overrides: Any) -> DBConfig:
        """Settings for this server, ignoring every ``.env`` file and ``DB_*`` variable
        (a test must not reach the database a developer's ``.env`` names)."""
        values = {**self.settings, **overrides}
        return DBConfig(_env_file=None, **values)

    def stop(self) -> None:
        """Stop the throwaway server and delete its data (nothing for the user's own)."""
        if self.embedded_dir is None:
            return
        stop_server(self.embedded_dir / "pgdata")
        shutil.rmtree(self.embedded_dir, ignore_errors=True)


def start_server(settings: KitSettings | None = None) -> PostgresServer:
    """The user's server if ``FSMFLOW_TESTING_DATABASE_URL`` is set, else a new embedded
    one in a temporary directory (:class:`~fsmflow.EmbeddedServerError` without the
    ``fsmflow[embedded]`` extra)."""
    settings = settings if settings is not None else KitSettings()
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        try:
            config = DBConfig(_env_file=None, url=SecretStr(url))
        except ConfigError as exc:
            raise ConfigError(f"FSMFLOW_TESTING_DATABASE_URL (read as DB_URL): {exc}") from None
        return PostgresServer({"url": url}, config.display_target())
    base = Path(tempfile.mkdtemp(prefix="fsmflow-testing-")).resolve()
    try:
        probe = DBConfig(_env_file=None, embedded_dir=base / "pgdata")
        kwargs = embedded_connect_kwargs(probe)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    found = {key: kwargs[key] for key in ("host", "port", "user", "database")}
    return PostgresServer(found, f"embedded PostgreSQL in {data_dir_of(probe)}", base)


@contextlib.contextmanager
def fresh_table(server: PostgresServer, **settings: Any) -> Iterator[DBConfig]:
    """Settings bound to a new, empty table (``init_db`` has run) on ``server``; the table
    and its events table are dropped afterwards, whatever the test did."""
    table = TABLE_PREFIX + secrets.token_hex(6)
    _run(_create(server.config(table=table, **settings)))
    config = server.config(table=table, **settings)
    try:
        yield config
    finally:
        _run(_drop(server.config(table=table, **settings)))


async def _create(config: DBConfig) -> None:
    try:
        await config.init_db()
    finally:
        await config.close()


async def _drop(config: DBConfig) -> None:
    """Drop a test's throwaway tables: the history and its events table (the kit's own
    DDL, never a Store method: the store deletes history only by reset_db and prune)."""
    store = config.store
    ddl = sql.drop_scratch_ddl(store.schema, store.table)
    try:
        conn = await store.connect()
        try:
            await conn.execute(ddl)
        finally:
            await conn.close()
    finally:
        await config.close()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    # A loop of its own: fixtures run outside the test's loop (if it has one).
    return asyncio.run(coroutine)


def environment_of(config: DBConfig) -> dict[str, str]:
    """The environment variables that give a child process exactly these settings
    (``DB_URL``, ``DB_HOST`` ..., ``FSMFLOW_TABLE`` ...: each set field under its first
    variable name). Holds the password: pass it to a child, never log it."""
    env: dict[str, str] = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[setting_names(name).split("/")[0]] = str(value)
    return env
