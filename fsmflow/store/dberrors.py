"""Driver errors: which ones a reconnect may cure, and which fsmflow error each one means.

Part of the store layer (it knows asyncpg). The store and its ownership lanes call
:func:`translate` at their one boundary with the driver, so callers only ever see
:class:`~fsmflow.errors.FsmflowError`. Messages name the target as ``host:port/db`` and
never a password: texts that quote the driver are scrubbed of every configured secret.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Final

import asyncpg

from fsmflow import sql
from fsmflow.errors import (
    DatabaseAuthError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    FsmflowError,
    PermissionDeniedError,
    SchemaMissingError,
    StoreError,
)

_RETRIABLE_SQLSTATE_CLASSES = ("08", "53", "57")
_QUERY_CANCELED: Final = "57014"
_CONFIGURATION_ERRORS = (asyncpg.ClientConfigurationError, ssl.SSLCertVerificationError)
_TLS_WORDS: Final = ("ssl", "tls", "certificate")


def is_query_cancelled(exc: BaseException) -> bool:
    """True for SQLSTATE 57014: the server cancelled one statement (``statement_timeout``,
    ``pg_cancel_backend``). The session is intact, so this is not a lost connection."""
    return getattr(exc, "sqlstate", None) == _QUERY_CANCELED


def is_tls_refused(exc: BaseException) -> bool:
    """True when the server answered the TLS request with "no TLS here" while the
    configured ``sslmode`` (``require`` or stricter) does not allow plaintext."""
    return isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc)


def is_tls_file_error(exc: BaseException) -> bool:
    """True for an OS or TLS error raised while asyncpg read its connection arguments
    (``sslrootcert``, ``sslcert``, ``sslkey`` files and ``sslpassword``), before any
    network I/O. A missing socket file raises the same FileNotFoundError later, when
    connecting: that one a server start cures, so it is told apart by where it was raised."""
    if not isinstance(exc, OSError):  # ssl.SSLError is an OSError too
        return False
    frame = exc.__traceback__
    while frame is not None:
        code = frame.tb_frame.f_code
        if code.co_name == "_parse_connect_dsn_and_args" and "asyncpg" in code.co_filename:
            return True
        frame = frame.tb_next
    return False


def is_retriable(exc: BaseException) -> bool:
    """True for errors that a reconnect may cure (lost connection, server restarting...)."""
    if isinstance(exc, _CONFIGURATION_ERRORS) or is_tls_refused(exc) or is_tls_file_error(exc):
        return False  # bad TLS/DSN settings: no reconnect cures them
    if is_query_cancelled(exc):
        return False  # one statement was cancelled; retrying it would time out again
    if isinstance(exc, (asyncpg.InterfaceError, ConnectionError, TimeoutError, OSError)):
        return not isinstance(exc, asyncpg.InterfaceWarning)
    if isinstance(exc, asyncpg.InternalClientError):
        # Seen when the server terminates an idle session (pg_terminate_backend, fast
        # shutdown): the connection is broken before is_closed() says so. Reconnecting
        # cures it; an append's outcome is then settled by reading the row back.
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_RETRIABLE_SQLSTATE_CLASSES)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def grants_message(table: str, schema: str | None, target: str) -> str:
    """What the database role lacks on ``table`` at ``target``, and the GRANTs that fix it."""
    schema = schema or "public"
    prefix, _, name = table.rpartition(".")
    events = f"{prefix}." * bool(prefix) + sql.events_table(name)
    return (
        f"the database role lacks privileges on {table!r} in {target}; "
        f"needed at run time: GRANT USAGE ON SCHEMA {schema} TO <role>; "
        f"GRANT SELECT, INSERT ON {table}, {events} TO <role>; "
        "init-db and reset-db also need CREATE on the schema / ownership of the table"
    )


def translate(
    exc: BaseException, *, target: str, table: str, schema: str | None, secrets: Iterable[str]
) -> FsmflowError:
    """Map a driver or OS error to the fsmflow error that says what to do.

    ``target`` (safe to show) and ``table`` (schema-qualified as configured) are named in
    the messages; ``secrets`` are scrubbed from any text quoted from the driver.
    """
    if isinstance(exc, FsmflowError):
        return exc
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return DatabaseAuthError(
            f"authentication to {target} failed for the configured user; check "
            "DB_USER/DB_PASSWORD (or the DSN in DB_URL)"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseNotFoundError(
            f"database at {target} does not exist; create it or fix DB_NAME/DB_URL"
        )
    if isinstance(exc, asyncpg.UndefinedTableError):
        return SchemaMissingError(
            f"table {table!r} does not exist in {target}; run `fsmflow init-db`"
        )
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return PermissionDeniedError(grants_message(table, schema, target))
    if is_query_cancelled(exc):
        return StoreError(
            f"a statement on {target} was cancelled by the server (statement_timeout or "
            "pg_cancel_backend); if it timed out, raise the role's statement_timeout (ALTER "
            "ROLE ... SET statement_timeout) and FSMFLOW_COMMAND_TIMEOUT (seconds per "
            "statement), or find what blocks it (locks); if an administrator cancelled it, "
            "run again"
        )
    configuration = _configuration_error(exc, target)
    if configuration is not None:
        return StoreError(scrub(configuration, secrets))
    if is_retriable(exc):
        return DatabaseUnavailableError(target, type(exc).__name__)
    return StoreError(scrub(f"database error on {target}: {type(exc).__name__}: {exc}", secrets))


def _configuration_error(exc: BaseException, target: str) -> str | None:
    """The message for a connection setting no reconnect cures, or None."""
    if is_tls_refused(exc):
        return (
            f"cannot connect to {target}: the server does not support TLS but DB_SSLMODE "
            "(or sslmode in DB_URL) requires it; enable ssl on the server, or use "
            "DB_SSLMODE=prefer or disable only on a trusted network"
        )
    if is_tls_file_error(exc):
        reason = getattr(exc, "strerror", None) or exc
        return (
            f"cannot connect to {target}: a TLS file could not be read ({type(exc).__name__}: "
            f"{reason}); check the sslrootcert (and sslcert, sslkey, sslpassword) parameters "
            "in DB_URL or PGSSLROOTCERT, and DB_SSLMODE"
        )
    if not isinstance(exc, _CONFIGURATION_ERRORS):
        return None
    text = f"cannot connect to {target}: {type(exc).__name__}: {exc}; check "
    if isinstance(exc, ssl.SSLError) or any(w in str(exc).lower() for w in _TLS_WORDS):
        return text + "DB_SSLMODE and the TLS files (sslrootcert, ~/.postgresql/root.crt)"
    return text + "DB_URL (or DB_HOST/DB_PORT/DB_NAME/DB_USER)"
