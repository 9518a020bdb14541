"""Driver errors: which ones a reconnect may cure, and which fsmflow error each one means.

Part of the store layer (it knows asyncpg). The store and its ownership lanes call
:func:`translate` at their one boundary with the driver, so callers only ever see
:class:`~fsmflow.errors.FsmflowError`. Messages name the target as ``host:port/db`` and
never a password: texts that quote the driver are scrubbed of every configured secret.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

import asyncpg

from .errors import (
    DatabaseAuthError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    FsmflowError,
    PermissionDeniedError,
    SchemaMissingError,
    StoreError,
)

_RETRIABLE_SQLSTATE_CLASSES = ("08", "53", "57")
_CONFIGURATION_ERRORS = (asyncpg.ClientConfigurationError, ssl.SSLCertVerificationError)


def is_retriable(exc: BaseException) -> bool:
    """True for errors that a reconnect may cure (lost connection, server restarting...)."""
    if isinstance(exc, _CONFIGURATION_ERRORS):
        return False  # bad TLS/DSN settings: no reconnect cures them
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
    return (
        f"the database role lacks privileges on {table!r} in {target}; "
        f"needed at run time: GRANT USAGE ON SCHEMA {schema} TO <role>; "
        f"GRANT SELECT, INSERT ON {table} TO <role>; "
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
    if isinstance(exc, _CONFIGURATION_ERRORS):
        return StoreError(
            scrub(
                f"cannot connect to {target}: {type(exc).__name__}: {exc}; check "
                "DB_SSLMODE and the TLS files (sslrootcert, ~/.postgresql/root.crt) or DB_URL",
                secrets,
            )
        )
    if is_retriable(exc):
        return DatabaseUnavailableError(target, type(exc).__name__)
    return StoreError(scrub(f"database error on {target}: {type(exc).__name__}: {exc}", secrets))
