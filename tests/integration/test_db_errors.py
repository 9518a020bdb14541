"""Database faults and bad database settings (issue 3 item 2; bad-input rows 21-26).

Each case goes through the public entry point (a runner's ``run_workflow``), expects the named
fsmflow error, and scans every log record (root and ``fsmflow`` at DEBUG) and the exception's
whole chain for the password that was configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from fsmflow import (
    ConfigError,
    DatabaseAuthError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    DBConfig,
    FsmflowError,
    PermissionDeniedError,
    SchemaMismatchError,
    SchemaMissingError,
    StoreError,
)
from fsmflow.sql import schema_ddl
from fsmflow.store import dberrors
from tests.conftest import run_python

from .reliability_support import (
    Harness,
    Tracker,
    finish,
    linear_definition,
    running,
    secret_leaks,
)

WORKFLOW = "db_errors_flow"
DEFINITION = linear_definition(WORKFLOW, ("fetch", "report"))
SECRET = "Fsmflow-Pw-7Qx9-zebra"  # configured password: must never be shown
RIGHT_SECRET = "Fsmflow-Right-4Kw2-okapi"  # the role's real password (wrong-password case)


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="fsmflow")
    return caplog


async def run_expecting(h: Harness, config: DBConfig, error: type[FsmflowError]) -> FsmflowError:
    """Run a small workflow with ``config``; it must fail with ``error`` and run no step."""
    tracker = Tracker()
    runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="e1")
    with pytest.raises(error) as raised:
        await runner.run_workflow()
    assert tracker.runs == {}
    return raised.value


def retries_logged(logs: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logs.records if "retrying" in r.getMessage()]


def assert_no_secret(logs: pytest.LogCaptureFixture, *things: object) -> None:
    assert secret_leaks([SECRET, RIGHT_SECRET, quote(SECRET)], logs.records, *things) == []


# -- 22: wrong password ------------------------------------------------------------------


@pytest.mark.parametrize("given_as", ["DB_PASSWORD", "DSN"])
async def test_wrong_password_is_an_auth_error_not_retried(
    h: Harness, logs: pytest.LogCaptureFixture, given_as: str
) -> None:
    if h.pgdata is None:
        pytest.skip("needs the embedded server: pg_hba.conf is edited to require passwords")
    role = h.create_role("pw", password=RIGHT_SECRET)
    h.sql(f"GRANT SELECT, INSERT ON fsmflow_transitions, fsmflow_transitions_events TO {role}")
    h.require_password(role)
    # Control: with the right password the same role connects, so auth really is checked.
    async with h.config(user=role, password=RIGHT_SECRET).store as store:
        assert await store.latest_unfinished(WORKFLOW) is None

    if given_as == "DSN":
        url = h.dsn(f"{role}:{quote(SECRET)}")
        config = h.track(DBConfig(_env_file=None, url=url, retry_budget=5))  # type: ignore[call-arg]
    else:
        config = h.config(user=role, password=SECRET)
    error = await run_expecting(h, config, DatabaseAuthError)

    assert "DB_PASSWORD" in str(error)
    assert retries_logged(logs) == []
    assert_no_secret(logs, error, config, config.store)


# -- 21: unreachable ---------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unused_socket_port(socket_dir: str) -> int:
    port = 5999
    while (Path(socket_dir) / f".s.PGSQL.{port}").exists():
        port += 1
    return port


@pytest.mark.parametrize("where", ["unix socket, no server", "tcp, refused", "dns failure"])
async def test_unreachable_database_gives_unavailable_naming_host_and_port(
    h: Harness, logs: pytest.LogCaptureFixture, where: str
) -> None:
    if where.startswith("unix"):
        host, port = str(h.info.host), unused_socket_port(str(h.info.host))
    elif where.startswith("tcp"):
        host, port = "127.0.0.1", free_tcp_port()
    else:
        host, port = "fsmflow-no-such-host.invalid", 5432
    config = h.config(host=host, port=port, password=SECRET, retry_budget=0.5, connect_timeout=2.0)
    error = await run_expecting(h, config, DatabaseUnavailableError)

    assert f"{host}:{port}" in str(error)
    assert isinstance(error, DatabaseUnavailableError) and error.target.startswith(f"{host}:{port}")
    assert retries_logged(logs) != []  # bounded retry, then the error
    assert_no_secret(logs, error, config, config.store)


# -- 23: wrong database ------------------------------------------------------------------


async def test_wrong_database_name(h: Harness, logs: pytest.LogCaptureFixture) -> None:
    config = h.config(database="fsmflow_no_such_database", password=SECRET)
    error = await run_expecting(h, config, DatabaseNotFoundError)

    assert "fsmflow_no_such_database" in str(error) and "DB_NAME" in str(error)
    assert retries_logged(logs) == []
    assert_no_secret(logs, error, config, config.store)


# -- 24: missing table -------------------------------------------------------------------


async def test_missing_table_says_run_init_db(h: Harness, logs: pytest.LogCaptureFixture) -> None:
    config = h.config(table="no_such_history", password=SECRET)
    error = await run_expecting(h, config, SchemaMissingError)

    assert "no_such_history" in str(error) and "fsmflow init-db" in str(error)
    assert h.sql("SELECT to_regclass('no_such_history')") == [(None,)]  # nothing created
    assert_no_secret(logs, error, config, config.store)


# -- 26: wrong columns / schema version --------------------------------------------------

MISMATCHED_TABLES = {
    "wrong columns": (
        "CREATE TABLE legacy_history (workflow_name text, instance_id text, seq int, "
        "state text, context jsonb, PRIMARY KEY (workflow_name, instance_id, seq))",
        ["'attempt_id'", "'fingerprint'", "'status'"],
    ),
    "older schema version": (
        schema_ddl(None, "legacy_history")
        + "\nCOMMENT ON TABLE legacy_history IS 'fsmflow schema_version=0';",
        ["schema_version=0", "missing columns []"],
    ),
    "no version comment": (
        schema_ddl(None, "legacy_history") + "\nCOMMENT ON TABLE legacy_history IS NULL;",
        ["comment None"],
    ),
}


@pytest.mark.parametrize("shape", list(MISMATCHED_TABLES))
async def test_table_of_another_shape_or_version_is_refused(
    h: Harness, logs: pytest.LogCaptureFixture, shape: str
) -> None:
    ddl, mentioned = MISMATCHED_TABLES[shape]
    h.sql(ddl)
    h.sql(
        "INSERT INTO legacy_history (workflow_name, instance_id, seq, context) "
        "VALUES ('db_errors_flow', 'e1', 0, '{}')"
    )
    config = h.config(table="legacy_history", password=SECRET)
    error = await run_expecting(h, config, SchemaMismatchError)

    assert "legacy_history" in str(error) and "FSMFLOW_TABLE" in str(error)
    for text in mentioned:
        assert text in str(error)
    assert h.count("legacy_history") == 1  # nothing written
    assert_no_secret(logs, error, config, config.store)


# -- 25: missing privileges --------------------------------------------------------------

GRANTS = {
    "no grant at all": (None, []),
    "SELECT only": (None, ["GRANT SELECT ON {table} TO {role}"]),
    "INSERT only": (None, ["GRANT INSERT ON {table} TO {role}"]),
    "no USAGE on the schema": (
        "app",
        ["GRANT SELECT, INSERT ON {table} TO {role}"],
    ),
}


@pytest.mark.parametrize("grants", list(GRANTS))
async def test_missing_privileges_list_the_grants_needed(
    h: Harness, logs: pytest.LogCaptureFixture, grants: str
) -> None:
    schema, statements = GRANTS[grants]
    table = "fsmflow_transitions"
    if schema is not None:
        table = f"{schema}.fsmflow_history"
        h.sql(f"CREATE SCHEMA {schema}")
        await h.config(table=table).init_db()
    role = h.create_role("noperm")
    for statement in statements:
        h.sql(statement.format(table=table, role=role))
    config = h.config(user=role, password=SECRET, table=table)
    error = await run_expecting(h, config, PermissionDeniedError)

    schema_name = schema or "public"
    assert f"GRANT USAGE ON SCHEMA {schema_name} TO <role>" in str(error)
    assert f"GRANT SELECT, INSERT ON {table}, {table}_events TO <role>" in str(error)
    assert retries_logged(logs) == []
    assert h.count(table) == 0
    assert_no_secret(logs, error, config, config.store)


async def test_privilege_revoked_while_running_stops_without_writing(
    h: Harness, logs: pytest.LogCaptureFixture
) -> None:
    role = h.create_role("revoked")
    h.sql(f"GRANT SELECT, INSERT ON fsmflow_transitions, fsmflow_transitions_events TO {role}")
    tracker = Tracker()
    release = tracker.hold_first("fetch")
    config = h.config(user=role, password=SECRET)
    runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id="e2")

    async with running(runner.run_workflow()) as task:
        await tracker.started("fetch")
        h.sql(f"REVOKE INSERT ON fsmflow_transitions FROM {role}")
        release.set()
        with pytest.raises(PermissionDeniedError) as raised:
            await finish(task)

    assert [r["seq"] for r in h.rows(WORKFLOW, "e2")] == [0]
    assert await h.locks_left() == []
    assert_no_secret(logs, raised.value, config)


# -- TLS settings pass through -----------------------------------------------------------


def point_env_at(monkeypatch: pytest.MonkeyPatch, h: Harness, **extra: str) -> None:
    for key, value in {
        "DB_HOST": str(h.info.host),
        "DB_PORT": str(h.info.port),
        "DB_USER": str(h.info.user),
        "DB_NAME": h.dbname,
        "DB_PASSWORD": SECRET,
        "FSMFLOW_DB_RETRY_SECONDS": "0.5",
        **extra,
    }.items():
        monkeypatch.setenv(key, value)


async def test_sslmode_verify_full_is_passed_to_the_driver_and_never_downgraded(
    h: Harness, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    point_env_at(h=h, monkeypatch=monkeypatch, DB_SSLMODE="verify-full")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    config = h.track(DBConfig(_env_file=None))  # type: ignore[call-arg]
    assert config.connect_kwargs()["ssl"] == "verify-full"

    # No root certificate: the driver must refuse rather than fall back to plaintext.
    error = await run_expecting(h, config, StoreError)

    assert "ClientConfigurationError" in str(error) or "certificate" in str(error)
    assert h.count() == 0
    assert_no_secret(logs, error, config, config.store)


async def test_tls_configuration_error_is_reported_as_such_without_retrying(
    h: Harness, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    point_env_at(h=h, monkeypatch=monkeypatch, DB_SSLMODE="verify-full")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    config = h.track(DBConfig(_env_file=None))  # type: ignore[call-arg]
    error = await run_expecting(h, config, StoreError)

    assert not isinstance(error, DatabaseUnavailableError)
    assert "certificate" in str(error)
    assert retries_logged(logs) == []


async def test_sslmode_disable_and_prefer_connect_over_the_socket(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    for mode in ("disable", "prefer"):
        point_env_at(h=h, monkeypatch=monkeypatch, DB_SSLMODE=mode)
        config = h.track(DBConfig(_env_file=None))  # type: ignore[call-arg]
        tracker = Tracker()
        runner = h.runner(config, DEFINITION, tracker.steps(DEFINITION), instance_id=mode)
        assert (await runner.run_workflow()).completed


# -- errors no reconnect cures: reported at once, saying what to change ------------------


async def test_statement_timeout_is_reported_at_once_naming_the_timeouts(
    h: Harness, logs: pytest.LogCaptureFixture
) -> None:
    locker = h.connect_as(str(h.info.user))
    locker.autocommit = False
    locker.execute("LOCK TABLE fsmflow_transitions IN ACCESS EXCLUSIVE MODE")  # held open
    url = h.dsn(str(h.info.user), "&statement_timeout=300")  # a session setting
    config = h.track(DBConfig(_env_file=None, url=url, retry_budget=30))  # type: ignore[call-arg]
    try:
        error = await run_expecting(h, config, StoreError)
    finally:
        locker.rollback()

    assert not isinstance(error, DatabaseUnavailableError)
    assert "cancelled" in str(error) and "statement_timeout" in str(error)
    assert "FSMFLOW_COMMAND_TIMEOUT" in str(error)
    assert retries_logged(logs) == []


async def cancelled_by_the_server(h: Harness, terminate: bool) -> BaseException:
    """What a real query raises when an administrator cancels it (or kills its session)."""
    conn = await asyncpg.connect(host=h.info.host, port=h.info.port, user=h.info.user,
                                 database=h.dbname)  # fmt: skip
    marker = f"SELECT pg_sleep(30) -- {'terminate' if terminate else 'cancel'}"
    query = asyncio.ensure_future(conn.execute(marker))
    function = "pg_terminate_backend" if terminate else "pg_cancel_backend"
    try:
        for _ in range(400):  # until the query shows up in pg_stat_activity
            if h.sql(f"SELECT {function}(pid) FROM pg_stat_activity WHERE query = %s", (marker,)):
                break
            await asyncio.sleep(0.05)
        with pytest.raises(Exception) as raised:
            await asyncio.wait_for(query, 20)
        return raised.value
    finally:
        await conn.close(timeout=5)


async def test_pg_cancel_backend_is_a_cancelled_query_not_a_lost_session(h: Harness) -> None:
    exc = await cancelled_by_the_server(h, terminate=False)
    assert getattr(exc, "sqlstate", None) == "57014"
    assert dberrors.is_query_cancelled(exc) and not dberrors.is_retriable(exc)
    error = dberrors.translate(exc, target="t:1/db", table="fsm", schema=None, secrets=[])
    assert type(error) is StoreError and "pg_cancel_backend" in str(error)

    lost = await cancelled_by_the_server(h, terminate=True)  # the session is gone: retry
    assert not dberrors.is_query_cancelled(lost) and dberrors.is_retriable(lost)


@pytest.mark.parametrize("sslmode", ["verify-ca", "require"])
async def test_missing_sslrootcert_file_is_reported_at_once(
    h: Harness, logs: pytest.LogCaptureFixture, tmp_path: Path, sslmode: str
) -> None:
    missing = tmp_path / "no-such-root.crt"
    url = h.dsn(f"{h.info.user}:{quote(SECRET)}", f"&sslmode={sslmode}&sslrootcert={missing}")
    config = h.track(DBConfig(_env_file=None, url=url, retry_budget=30))  # type: ignore[call-arg]
    error = await run_expecting(h, config, StoreError)

    assert not isinstance(error, DatabaseUnavailableError)
    assert "sslrootcert" in str(error) and "DB_SSLMODE" in str(error)
    assert retries_logged(logs) == []
    assert_no_secret(logs, error, config, config.store)


@contextlib.asynccontextmanager
async def tcp_relay_to(socket_dir: str, port: int) -> AsyncIterator[int]:
    """A TCP port whose connections are relayed byte for byte to the server's unix socket
    (the embedded server listens on no TCP port and has no TLS)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def test_sslmode_require_against_a_server_without_tls_is_reported_at_once(
    h: Harness, logs: pytest.LogCaptureFixture
) -> None:
    if h.pgdata is None:
        pytest.skip("needs the embedded server, which has no TLS")
    async with tcp_relay_to(str(h.info.host), int(h.info.port)) as port:
        # Control: through the same relay, a mode that may fall back to plaintext works.
        prefer = h.config(host="127.0.0.1", port=port, sslmode="prefer")
        assert (
            await h.runner(prefer, DEFINITION, Tracker().steps(DEFINITION)).run_workflow()
        ).completed
        config = h.config(host="127.0.0.1", port=port, sslmode="require", password=SECRET,
                          retry_budget=30)  # fmt: skip
        error = await run_expecting(h, config, StoreError)

    assert not isinstance(error, DatabaseUnavailableError)
    assert "DB_SSLMODE" in str(error) and "TLS" in str(error)
    assert retries_logged(logs) == []
    assert_no_secret(logs, error, config, config.store)


async def test_invalid_dsn_error_gets_no_tls_hint() -> None:
    with pytest.raises(asyncpg.ClientConfigurationError) as raised:
        await asyncpg.connect(dsn="postgres//oops")  # what the driver says (no network)
    error = dberrors.translate(raised.value, target="t", table="fsm", schema=None, secrets=[])
    assert "DB_URL" in str(error)
    assert "TLS" not in str(error) and "DB_SSLMODE" not in str(error)


# -- secrets in reprs --------------------------------------------------------------------


async def test_password_never_in_repr_or_str_of_settings_and_store(h: Harness) -> None:
    password = SECRET + "@/#?:"  # characters that need percent-encoding in a DSN
    user = h.create_role("repr", password=password)
    h.sql(f"GRANT SELECT, INSERT ON fsmflow_transitions, fsmflow_transitions_events TO {user}")
    configs = [
        h.config(user=user, password=password),
        h.track(
            DBConfig(_env_file=None, url=h.dsn(f"{user}:{quote(password, safe='')}"))  # type: ignore[call-arg]
        ),
    ]
    for config in configs:
        before = [config, config.store, config.model_dump(), config.model_dump_json()]
        assert secret_leaks([SECRET], [], *before) == []
        async with config.store as store:
            assert await store.latest_unfinished(WORKFLOW) is None  # the secret works
            owner = await store.acquire(WORKFLOW, "r1")
            after = [config, store, owner, owner.lane, f"{config}", store.target]
            assert secret_leaks([SECRET], [], *after) == []
            await owner.release()


async def test_password_in_dsn_query_parameter_is_never_shown(
    h: Harness, logs: pytest.LogCaptureFixture
) -> None:
    config = h.track(
        DBConfig(_env_file=None, url=h.dsn(str(h.info.user), f"&password={SECRET}"))  # type: ignore[call-arg]
    )
    async with config.store as store:  # the DSN works
        assert await store.latest_unfinished(WORKFLOW) is None
    broken = h.track(
        DBConfig(  # type: ignore[call-arg]
            _env_file=None,
            url=h.dsn(str(h.info.user), f"&password={SECRET}").replace(
                f"/{h.dbname}?", "/fsmflow_no_such_database?"
            ),
        )
    )
    error = await run_expecting(h, broken, DatabaseNotFoundError)
    assert_no_secret(logs, error, config, config.store, broken)


@pytest.mark.parametrize("separator", ["/", "#", "?"])
def test_password_in_malformed_dsn_is_refused_without_showing_it(
    logs: pytest.LogCaptureFixture, separator: str
) -> None:
    url = f"postgresql://app:pre{separator}{SECRET}@localhost:5432/fsmflow"
    with pytest.raises(ConfigError) as refused:
        DBConfig(_env_file=None, url=url)  # type: ignore[call-arg]
    assert "DB_URL" in str(refused.value) and "percent-encode" in str(refused.value)
    assert_no_secret(logs, refused.value)


def test_password_with_unencoded_at_sign_is_refused_without_showing_it(
    logs: pytest.LogCaptureFixture,
) -> None:
    # asyncpg would split at the first '@' and take the rest of the password for the host.
    with pytest.raises(ConfigError) as refused:
        DBConfig(_env_file=None, url=f"postgresql://app:a@{SECRET}@db.example:5432/x")  # type: ignore[call-arg]
    assert "DB_URL" in str(refused.value) and "percent-encode" in str(refused.value)
    assert_no_secret(logs, refused.value)


@pytest.mark.parametrize("name", ["sslpassword", "pass%77ord"])
async def test_secret_dsn_parameters_never_shown_in_logs_errors_or_check(
    h: Harness, logs: pytest.LogCaptureFixture, name: str
) -> None:
    query = f"&{name}={quote(SECRET)}&application_name=fsmflow_test"
    url = h.dsn(str(h.info.user), query)
    config = h.track(DBConfig(_env_file=None, url=url, table="fresh_history"))  # type: ignore[call-arg]
    await config.init_db()  # logs the target at INFO
    assert any("fresh_history" in r.getMessage() for r in logs.records)
    broken_url = url.replace(f"/{h.dbname}?", "/fsmflow_no_such_database?")
    broken = h.track(DBConfig(_env_file=None, url=broken_url, retry_budget=0.5))  # type: ignore[call-arg]
    error = await run_expecting(h, broken, DatabaseNotFoundError)
    assert_no_secret(logs, error, config, config.store, broken, broken.store)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "FSMFLOW_"))}
    for shown_url in (url, broken_url):
        for args in (["check"], ["check", "--json"]):
            env.update(DB_URL=shown_url, FSMFLOW_TABLE="fresh_history")
            done = run_python(["-m", "fsmflow", *args], env, timeout=60)
            assert SECRET not in done.stdout + done.stderr
            assert quote(SECRET) not in done.stdout + done.stderr
            assert (done.returncode == 0) == (shown_url == url), done.stdout + done.stderr
