"""Settings: where the database is and how fsmflow uses it.

The only module that reads the environment. :class:`DBConfig` reads variables from the
process environment and from ``.env`` files (the home directory's, then the current
directory's, which wins); the environment wins over both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from pydantic import (
    AliasChoices,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from fsmflow.dsn import SSL_MODES, check_dsn, dsn_secrets, redact_url
from fsmflow.errors import ConfigError
from fsmflow.model.context import DEFAULT_MAX_CONTEXT_BYTES
from fsmflow.sql import parse_table_name as parse_table_name  # re-exported: older imports
from fsmflow.store import Store
from fsmflow.store.dberrors import scrub

DEFAULT_TABLE: Final = "fsmflow_transitions"


def setting_names(field: str) -> str:
    """The environment variables behind settings field ``field``: ``DB_URL/DATABASE_URL``."""
    info = DBConfig.model_fields.get(field)
    alias = None if info is None else info.validation_alias
    if not isinstance(alias, AliasChoices):
        return field
    names = [c for c in alias.choices if isinstance(c, str) and c.isupper()]
    return "/".join(names) or field


def describe_invalid_settings(exc: ValidationError) -> str:
    """Which variables are invalid and what each accepts, never the value given."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{setting_names(field)}: {message}")
    return "invalid setting " + "; ".join(problems)


class SeedPool:
    """The seed API's ``DBConfig.pool``: the open asyncpg pool, closed as a whole store.

    Every attribute but ``close`` is the asyncpg pool's (``acquire()``, ``fetch()``,
    ``execute()``, ``fetchrow()``, ``fetchval()``, ``get_size()`` ...). ``close()``, and
    leaving ``async with pool``, close the store the pool belongs to, the owner
    connections holding instance locks included, so that nothing is left half-open: the
    settings' ``pool`` is then None and their next use opens a new store. Closing a pool
    whose store is already closed does nothing.
    """

    def __init__(self, config: DBConfig, store: Store, pool: Any) -> None:
        self._config = config
        self._store = store
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        # Called only for names not defined here: the asyncpg pool's public API.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._pool, name)

    def __repr__(self) -> str:
        return f"SeedPool({self._store!r})"

    async def __aenter__(self) -> SeedPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the store this pool belongs to: the pool and the owner connections."""
        await self._config._close_store(self._store)


class DBConfig(BaseSettings):
    """Database settings, read from the environment and ``.env`` files.

    Give either ``DB_URL`` (or ``DATABASE_URL``), or ``DB_HOST``/``DB_PORT``/``DB_NAME``
    (or ``DB_DATABASE``)/``DB_USER``/``DB_PASSWORD``. With neither, fsmflow uses a local
    embedded PostgreSQL when the ``fsmflow[embedded]`` extra is installed.

    Construction validates every value: a bad one raises :class:`~fsmflow.ConfigError`
    naming the variable and what it accepts, never the value (``DB_URL`` is checked for
    shape too, see :func:`fsmflow.dsn.check_dsn`). ``redact_errors``
    (``FSMFLOW_REDACT_ERRORS``) keeps a failed step's message out of history and logs.

    The seed API lives here too: ``await setup()``, ``pool``, ``await init_db()``,
    ``await reset_db()`` and ``await close()`` delegate to :attr:`store`, the object that
    owns the connections. After ``close()`` (or ``await pool.close()``) the settings open a
    new store on their next use; runners built before then hold the closed one.
    """

    model_config = SettingsConfigDict(
        env_file=(str(Path.home() / ".env"), ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DB_URL", "DATABASE_URL", "url")
    )
    host: str | None = Field(default=None, validation_alias=AliasChoices("DB_HOST", "host"))
    port: int = Field(
        default=5432, ge=1, le=65535, validation_alias=AliasChoices("DB_PORT", "port")
    )
    database: str | None = Field(
        default=None, validation_alias=AliasChoices("DB_NAME", "DB_DATABASE", "database")
    )
    user: str | None = Field(default=None, validation_alias=AliasChoices("DB_USER", "user"))
    password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DB_PASSWORD", "password")
    )
    sslmode: str | None = Field(
        default=None, validation_alias=AliasChoices("DB_SSLMODE", "sslmode")
    )
    table: str = Field(
        default=DEFAULT_TABLE, validation_alias=AliasChoices("FSMFLOW_TABLE", "table")
    )
    pool_size: int = Field(
        default=10, ge=1, validation_alias=AliasChoices("FSMFLOW_POOL_SIZE", "pool_size")
    )
    # Few on purpose: the instances pinned to one connection share its commits (group
    # commit), so fewer, fuller batches; 4 had the best concurrent throughput of 1-10 in
    # ``fsmflow bench`` (32 in flight: about 1.4 x the rate of 10).
    owner_connections: int = Field(
        default=4,
        ge=1,
        validation_alias=AliasChoices("FSMFLOW_OWNER_CONNECTIONS", "owner_connections"),
    )
    command_timeout: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("FSMFLOW_COMMAND_TIMEOUT", "command_timeout"),
    )
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        validation_alias=AliasChoices("FSMFLOW_CONNECT_TIMEOUT", "connect_timeout"),
    )
    retry_budget: float = Field(
        default=60.0,
        ge=0,
        validation_alias=AliasChoices("FSMFLOW_DB_RETRY_SECONDS", "retry_budget"),
    )
    max_context_bytes: int = Field(
        default=DEFAULT_MAX_CONTEXT_BYTES,
        ge=1024,
        validation_alias=AliasChoices("FSMFLOW_MAX_CONTEXT_BYTES", "max_context_bytes"),
    )
    shutdown_grace: float = Field(
        default=20.0,
        ge=0,
        validation_alias=AliasChoices("FSMFLOW_SHUTDOWN_GRACE_SECONDS", "shutdown_grace"),
    )
    worker_sweep: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("FSMFLOW_WORKER_SWEEP_SECONDS", "worker_sweep"),
        description=(
            "How often each worker heartbeats, takes over the instances of dead workers and "
            "looks for due deadlines: a SIGKILLed worker's instances run again elsewhere "
            "within about this long."
        ),
    )
    worker_stale: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("FSMFLOW_WORKER_STALE_SECONDS", "worker_stale"),
        description=(
            "A worker whose heartbeat is older than this counts as dead even if its "
            "database session seems alive (a connection pooler may keep it)."
        ),
    )
    strict_durability: bool = Field(
        default=False,
        validation_alias=AliasChoices("FSMFLOW_STRICT_DURABILITY", "strict_durability"),
    )
    redact_errors: bool = Field(
        default=False,
        validation_alias=AliasChoices("FSMFLOW_REDACT_ERRORS", "redact_errors"),
        description=(
            "When true, a failed step's error is stored and logged as its exception type "
            "and location (file, line, function) only, never its message, which may carry "
            "context values."
        ),
    )
    embedded_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("FSMFLOW_EMBEDDED_DIR", "embedded_dir")
    )
    log_level: str = Field(  # read by the fsmflow CLI, which validates the level name
        default="INFO", validation_alias=AliasChoices("FSMFLOW_LOG_LEVEL", "log_level")
    )
    ui_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FSMFLOW_UI_TOKEN", "ui_token"),
        description=(
            "The token `fsmflow ui --allow-actions` asks for with every action (retry, "
            "cancel, send an event, fork); unset, the dashboard refuses every action."
        ),
    )

    _store: Any = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _config_errors(cls, data: Any, handler: ModelWrapValidatorHandler[DBConfig]) -> DBConfig:
        # One error type for every bad setting, so callers (and fsmflow.run_program's
        # exit code 2) need not know pydantic.
        try:
            return handler(data)
        except ValidationError as exc:
            raise ConfigError(describe_invalid_settings(exc)) from None

    @field_validator("sslmode")
    @classmethod
    def _check_sslmode(cls, value: str | None) -> str | None:
        if value is not None and value not in SSL_MODES:
            raise ValueError(f"use one of {', '.join(SSL_MODES)}")
        return value

    def model_post_init(self, __context: Any) -> None:
        parse_table_name(self.table)  # ConfigError, not a pydantic ValidationError
        if self.url is not None:
            check_dsn(self.url.get_secret_value())

    @property
    def configured(self) -> bool:
        """True when a server is configured (``DB_URL``/``DATABASE_URL`` or ``DB_HOST``)."""
        return self.url is not None or self.host is not None

    def display_target(self) -> str:
        """Where the database is, safe to log: ``host:port/db`` or a redacted DSN."""
        if self.url is not None:
            return redact_url(self.url.get_secret_value())
        if self.host is None:
            return "embedded PostgreSQL"
        return f"{self.host}:{self.port}/{self.database or self.user or ''}"

    def secrets(self) -> list[str]:
        """Every secret these settings hold, so error texts can be scrubbed of them."""
        found = [] if self.password is None else [self.password.get_secret_value()]
        if self.ui_token is not None:
            found.append(self.ui_token.get_secret_value())
        if self.url is not None:
            found += dsn_secrets(self.url.get_secret_value())
        # A malformed DSN is split at its delimiters by the parser, whose error may then
        # quote a piece of the password: scrub the pieces too.
        pieces = [p for s in found for p in re.split(r"[/#?@:&=]", s) if len(p) >= 3]
        return sorted({s for s in [*found, *pieces] if s}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` with every secret of these settings replaced by ``***``."""
        return scrub(text, self.secrets())

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect`` (contains the secret: never log it)."""
        kwargs: dict[str, Any] = {
            "timeout": self.connect_timeout,
            "command_timeout": self.command_timeout,
        }
        if self.url is not None:
            kwargs["dsn"] = self.url.get_secret_value()
        for key in ("host", "port", "database", "user"):
            value = getattr(self, key)
            if value is not None and (key != "port" or self.url is None or self.host is not None):
                kwargs[key] = value
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if self.sslmode is not None:
            kwargs["ssl"] = self.sslmode
        return kwargs

    @property
    def store(self) -> Store:
        """The :class:`~fsmflow.store.Store` (connection pool and SQL) for these settings."""
        if self._store is None:
            self._store = Store(self)
        store: Store = self._store
        return store

    async def init_db(self) -> None:
        """Create the history table and indexes if missing (idempotent)."""
        await self.store.init_db()

    async def reset_db(self, *, force: bool = False) -> None:
        """Delete every recorded transition of every workflow. Irreversible; refused with
        :class:`~fsmflow.errors.ResetRefusedError` while runners hold instances, unless
        ``force``."""
        await self.store.reset_db(force=force)

    async def close(self) -> None:
        """Close every connection opened for these settings (the owner connections that
        hold instance locks included); ``pool`` is None afterwards, and the next use
        opens a new store."""
        if self._store is not None:
            await self._close_store(self._store)

    async def _close_store(self, store: Store) -> None:
        # Forget the store first: from here on `pool` is None and a new use reconnects.
        if self._store is store:
            self._store = None
        await store.close()

    # -- seed API compatibility --

    @property
    def pool(self) -> SeedPool | None:
        """The seed API's pool: None until connected (``await setup()``, or any use), then
        a :class:`SeedPool` over the asyncpg pool; None again once closed."""
        store: Store | None = self._store
        if store is None or store.pool is None:
            return None
        return SeedPool(self, store, store.pool)

    async def setup(self) -> None:
        """Connect (the seed API's ``await db_config.setup()``); idempotent. The table is
        checked at its first use, so this may come before ``init_db()``."""
        await self.store.open(check_schema=False)

    def __repr__(self) -> str:
        return f"DBConfig(target={self.display_target()!r}, table={self.table!r})"

    __str__ = __repr__


class KitSettings(BaseSettings):
    """Settings of the test kit's pytest plugin (:mod:`fsmflow.testing.plugin`).

    ``FSMFLOW_TESTING_DATABASE_URL`` (environment or ``.env``): a PostgreSQL DSN whose
    role may create tables; the plugin's fixtures then use that server (each test's tables
    are created and dropped in it) instead of starting a throwaway embedded one. The DSN is
    checked when the fixtures build their settings from it.
    """

    model_config = SettingsConfigDict(
        env_file=(str(Path.home() / ".env"), ".env"), env_file_encoding="utf-8", extra="ignore"
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("FSMFLOW_TESTING_DATABASE_URL", "database_url"),
    )
