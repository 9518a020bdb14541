"""Settings: table-name validation (ConfigError), where values come from, and no password in
any repr. No database: nothing here connects.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from fsmflow import (
    ConfigError,
    DBConfig,
    PersistentWorkflowStateMachine,
    Store,
    Transition,
    WorkflowDefinition,
)
from fsmflow.settings import parse_table_name

SECRET = "Pw-Settings-9zQ-quokka"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DB_*/FSMFLOW_* variable of the surrounding environment leaks into a test."""
    for key in list(os.environ):
        if key.startswith(("DB_", "FSMFLOW_", "DATABASE_URL")):
            monkeypatch.delenv(key)


def settings(**values: Any) -> DBConfig:
    return DBConfig(_env_file=None, **values)  # type: ignore[call-arg]


BAD_TABLES: list[str] = [
    "fsm; DROP TABLE x",
    "My-Table",
    "MyTable",
    "",
    "x" * 64,
    "a" * 100,
    "1table",
    "table name",
    'fsm"quoted',
    "fsm'quoted",
    "tàble",
    "fsm\x00",
    "fsmflow_transitions\n",
    "\nfsmflow_transitions",
    "fsm--comment",
    "fsm/*x*/",
    ".fsm",
    "fsm.",
    "a.b.c",
    "Public.fsm",
    "my-schema.fsm",
    "x" * 64 + ".fsm",
    "schema;drop.fsm",
    "s\n.fsm",
]
GOOD_TABLES: list[tuple[str, tuple[str | None, str]]] = [
    ("fsmflow_transitions", (None, "fsmflow_transitions")),
    ("_private", (None, "_private")),
    ("t1", (None, "t1")),
    ("x" * 63, (None, "x" * 63)),
    ("workflows.history", ("workflows", "history")),
    ("s" * 63 + "." + "t" * 63, ("s" * 63, "t" * 63)),
]


@pytest.mark.parametrize("table", BAD_TABLES, ids=repr)
def test_bad_table_names_are_a_config_error(table: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(table=table)
    assert type(raised.value) is ConfigError  # not wrapped in pydantic's ValidationError
    assert "FSMFLOW_TABLE" in str(raised.value)
    with pytest.raises(ConfigError):
        parse_table_name(table)


@pytest.mark.parametrize("table", BAD_TABLES[:6], ids=repr)
def test_bad_table_name_from_the_environment(monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    monkeypatch.setenv("FSMFLOW_TABLE", table)
    with pytest.raises(ConfigError, match="FSMFLOW_TABLE"):
        settings()


@pytest.mark.parametrize(("table", "parts"), GOOD_TABLES, ids=[t for t, _ in GOOD_TABLES])
def test_good_table_names(table: str, parts: tuple[str | None, str]) -> None:
    assert parse_table_name(table) == parts
    store = settings(table=table).store
    assert (store.schema, store.table) == parts


# -- where settings come from --------------------------------------------------------------


def test_defaults() -> None:
    config = settings()
    assert config.table == "fsmflow_transitions"
    assert (config.port, config.pool_size, config.owner_connections) == (5432, 10, 4)
    assert config.max_context_bytes == 16 * 1024 * 1024
    assert config.strict_durability is False
    assert not config.configured
    assert config.display_target() == "embedded PostgreSQL"


@pytest.mark.parametrize("variable", ["DB_URL", "DATABASE_URL"])
def test_url_variables(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, f"postgresql://app:{SECRET}@db.example:6543/orders")
    config = settings()
    assert config.configured
    assert config.connect_kwargs()["dsn"].endswith("@db.example:6543/orders")
    assert config.display_target() == "postgresql://app:***@db.example:6543/orders"


@pytest.mark.parametrize("variable", ["DB_NAME", "DB_DATABASE"])
def test_split_variables(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    for key, value in {
        "DB_HOST": "db.example",
        "DB_PORT": "6543",
        variable: "orders",
        "DB_USER": "app",
        "DB_PASSWORD": SECRET,
        "DB_SSLMODE": "verify-full",
        "FSMFLOW_TABLE": "wf.history",
        "FSMFLOW_MAX_CONTEXT_BYTES": "4096",
    }.items():
        monkeypatch.setenv(key, value)
    config = settings()
    kwargs = config.connect_kwargs()
    assert {k: kwargs[k] for k in ("host", "port", "database", "user", "password", "ssl")} == {
        "host": "db.example",
        "port": 6543,
        "database": "orders",
        "user": "app",
        "password": SECRET,
        "ssl": "verify-full",
    }
    assert (config.table, config.max_context_bytes) == ("wf.history", 4096)
    assert config.display_target() == "db.example:6543/orders"


def test_dotenv_is_read_unrelated_keys_ignored_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "DB_HOST=from-dotenv\nDB_PORT=7000\nFSMFLOW_TABLE=from_dotenv\n"
        "OPENAI_API_KEY=unrelated\nSOME_OTHER_APP_SETTING=1\n"
    )
    config = DBConfig(_env_file=env_file)  # type: ignore[call-arg]
    assert (config.host, config.port, config.table) == ("from-dotenv", 7000, "from_dotenv")
    monkeypatch.setenv("DB_PORT", "7001")
    config = DBConfig(_env_file=env_file)  # type: ignore[call-arg]
    assert (config.host, config.port) == ("from-dotenv", 7001)


def test_bad_table_in_dotenv_is_a_config_error(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FSMFLOW_TABLE=fsm; DROP TABLE x\n")
    with pytest.raises(ConfigError):
        DBConfig(_env_file=env_file)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DB_PORT", "0"),
        ("DB_PORT", "70000"),
        ("DB_SSLMODE", "sometimes"),
        ("FSMFLOW_POOL_SIZE", "0"),
        ("FSMFLOW_MAX_CONTEXT_BYTES", "10"),
        ("FSMFLOW_COMMAND_TIMEOUT", "0"),
    ],
)
def test_out_of_range_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises((ConfigError, pydantic.ValidationError)):
        settings()


# -- no password in any repr ---------------------------------------------------------------


@pytest.fixture
async def configs() -> AsyncIterator[list[DBConfig]]:
    made = [
        settings(url=f"postgresql://app:{SECRET}@db.example:5432/orders"),
        settings(url=f"postgresql://app:{SECRET}@db.example/orders?sslmode=require"),
        settings(host="db.example", user="app", password=SECRET, database="orders"),
        settings(host="/var/run/postgresql", password=SECRET),
    ]
    yield made
    for config in made:
        await config.close()


def test_no_password_in_reprs(configs: list[DBConfig]) -> None:
    definition = WorkflowDefinition(
        name="flow", steps=["a", "b"], transitions=[Transition(trigger="go", source="a", dest="b")]
    )
    for config in configs:
        store = config.store
        runner = PersistentWorkflowStateMachine(
            config, definition, instance_id="i1", handle_signals=False
        )
        also_store = PersistentWorkflowStateMachine(store, definition, handle_signals=False)
        shown = [config, store, runner, also_store, config.display_target(), store.target]
        for thing in shown:
            for text in (repr(thing), str(thing), f"{thing!r}"):
                assert SECRET not in text, text
        assert isinstance(store, Store)
        assert SECRET not in str(config.model_dump())
        assert SECRET not in config.model_dump_json()


# -- bad settings are a ConfigError naming the variable, never the value ---------------------


@pytest.mark.parametrize(
    ("key", "value", "named", "accepted"),
    [
        ("FSMFLOW_POOL_SIZE", "0", "FSMFLOW_POOL_SIZE", "greater than or equal to 1"),
        ("DB_PORT", "abc", "DB_PORT", "integer"),
        ("DB_PORT", "70000", "DB_PORT", "less than or equal to 65535"),
        ("DB_SSLMODE", "bogus", "DB_SSLMODE", "verify-full"),
        ("FSMFLOW_STRICT_DURABILITY", "maybe", "FSMFLOW_STRICT_DURABILITY", "boolean"),
        ("FSMFLOW_REDACT_ERRORS", "maybe", "FSMFLOW_REDACT_ERRORS", "boolean"),
    ],
)
def test_invalid_setting_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, named: str, accepted: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as raised:
        settings()
    assert type(raised.value) is ConfigError  # not pydantic's ValidationError
    assert named in str(raised.value) and accepted in str(raised.value)
    assert value not in str(raised.value).replace(named, "")


def test_invalid_password_type_never_shows_a_value() -> None:
    with pytest.raises(ConfigError) as raised:
        settings(password=12345678, url=["postgresql://u:Pw-in-a-list@h/db"])
    assert "DB_PASSWORD" in str(raised.value) and "DB_URL" in str(raised.value)
    assert "12345678" not in str(raised.value) and "Pw-in-a-list" not in str(raised.value)


# -- DSN secrets: every secret-bearing parameter, decoded names too -------------------------

SECRET_PARAMETERS = [
    "password",
    "sslpassword",
    "pass%77ord",
    "%73slpassword",
    "SSLPASSWORD",
    "oauth_client_secret",
]


@pytest.mark.parametrize("name", SECRET_PARAMETERS)
def test_secret_dsn_parameters_are_redacted(name: str) -> None:
    encoded = "Pw%2DQuery%2D7"  # asyncpg decodes it to Pw-Query-7
    url = f"postgresql://app@db.example:5432/x?sslmode=require&{name}={SECRET}{encoded}&a=1"
    config = settings(url=url)
    shown = [repr(config), str(config), config.display_target(), str(config.store)]
    for text in shown:
        assert SECRET not in text and "Pw-Query-7" not in text, text
    assert f"{name}=***&a=1" in config.display_target()
    assert "sslmode=require" in config.display_target()
    assert f"{SECRET}{encoded}" in config.secrets()
    assert f"{SECRET}Pw-Query-7" in config.secrets()
    assert SECRET not in config.scrub(f"error near {SECRET}Pw-Query-7")


def test_dsn_parameter_that_only_looks_like_a_secret_is_kept() -> None:
    url = "postgresql://app@db.example/x?application_name=password&passwordless=1"
    assert settings(url=url).display_target() == url


# -- DSN shape: refused up front, never quoted ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgres//oops", "postgresql://"),
        ("mysql://u@h/db", "postgresql://"),
        (f"postgresql://u:{SECRET}@h:99999/db", "port"),
        (f"postgresql://u:{SECRET}@h:0/db", "port"),
        (f"postgresql://u:{SECRET}@h:54x2/db", "port"),
        (f"postgresql://u:{SECRET}@h1:5432,h2:123456/db", "port"),
        (f"postgresql://u:{SECRET}@/db?host=/tmp&port=99999", "port"),
        (f"postgresql://u:{SECRET}@h/db?sslmode", "="),
        (f"postgresql://u:{SECRET}@h/db?sslmode=require&&a=b", "="),
        (f"postgresql://u:{SECRET}@h/db?sslmode=sometimes", "sslmode"),
    ],
)
def test_malformed_dsn_is_a_config_error_naming_db_url(url: str, said: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(url=url)
    assert "DB_URL" in str(raised.value) and said in str(raised.value)
    assert SECRET not in str(raised.value) and url not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h:5432/db",
        "postgres://u@h1:5432,h2:5433/db",
        "postgresql://u@[::1]:65535/db",
        "postgresql:///db?host=/var/run/postgresql&port=5433",
        "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
    ],
)
def test_well_formed_dsns_are_accepted(url: str) -> None:
    assert settings(url=url).connect_kwargs()["dsn"] == url


def test_unencoded_at_sign_in_password_is_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        settings(url=f"postgresql://app:a@{SECRET}@db.example:5432/x")
    assert "DB_URL" in str(raised.value) and "percent-encode" in str(raised.value)
    assert "'@'" in str(raised.value) and SECRET not in str(raised.value)


# -- FSMFLOW_REDACT_ERRORS ------------------------------------------------------------------


def test_redact_errors_defaults_to_false_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings().redact_errors is False
    monkeypatch.setenv("FSMFLOW_REDACT_ERRORS", "true")
    assert settings().redact_errors is True
    assert settings(redact_errors=False).redact_errors is False
