"""PostgreSQL DSNs (``DB_URL``/``DATABASE_URL``): shape checks, secrets, redaction.

Part of the settings layer. The DSN is split by plain text, not by a URL parser, so that a
password holding an unencoded delimiter is still found, redacted and refused rather than
misplaced into the host or the query. No message here ever quotes the DSN.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote, unquote_plus

from fsmflow.errors import ConfigError

SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SCHEMES: Final = ("postgresql", "postgres")
# libpq parameters whose value is a secret (the OAuth one since PostgreSQL 18).
SECRET_PARAMETERS: Final = frozenset({"password", "sslpassword", "oauth_client_secret"})
_WHERE: Final = "DB_URL/DATABASE_URL"
_PORT: Final = re.compile(r"[0-9]{1,5}")


def _split(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, rest)``; the userinfo ends at the last ``@``."""
    scheme, sep, remainder = url.partition("://")
    if not sep:
        return None
    userinfo, at, rest = remainder.rpartition("@")
    return (scheme, userinfo, rest) if at else (scheme, "", remainder)


def _parameter_name(raw: str) -> str:
    """A query parameter's name as asyncpg sees it (``parse_qs`` decodes ``%xx`` and ``+``)."""
    return unquote_plus(raw).strip().lower()


def _query_items(rest: str) -> list[str]:
    """The ``&``-separated items after the first ``?`` (a ``#`` stays in its item, so a
    secret holding one is redacted whole)."""
    _, question, query = rest.partition("?")
    return query.split("&") if question and query else []


def _is_secret(item: str) -> bool:
    name, equals, _ = item.partition("=")
    return bool(equals) and _parameter_name(name) in SECRET_PARAMETERS


def dsn_secrets(url: str) -> list[str]:
    """The secret parts of a DSN: the userinfo password and every secret-bearing query
    parameter (see :data:`SECRET_PARAMETERS`), each as written and as decoded."""
    parts = _split(url)
    if parts is None:
        return []
    raw = [item.partition("=")[2] for item in _query_items(parts[2]) if _is_secret(item)]
    found = [form for value in raw for form in (value, unquote(value), unquote_plus(value))]
    if ":" in parts[1]:
        password = parts[1].split(":", 1)[1]
        found += [password, unquote(password)]
    return [s for s in found if s]


def redact_url(url: str) -> str:
    """``postgresql://u:secret@h/db?sslpassword=x`` -> ``postgresql://u:***@h/db?sslpassword=***``."""
    parts = _split(url)
    if parts is None:
        return "<DSN without scheme, not shown>"
    scheme, userinfo, rest = parts
    user, colon, _ = userinfo.partition(":")
    shown_user = f"{user}:***@" if colon else (f"{user}@" if userinfo else "")
    items = _query_items(rest)
    if items:
        shown = [f"{i.partition('=')[0]}=***" if _is_secret(i) else i for i in items]
        rest = rest.partition("?")[0] + "?" + "&".join(shown)
    return f"{scheme}://{shown_user}{rest}"


def check_dsn(url: str) -> None:
    """Refuse a DSN that the driver would misread, with a :class:`ConfigError` naming
    ``DB_URL`` and what to fix: a scheme other than ``postgresql://``/``postgres://``, a
    user or password holding an unencoded ``/ # ? @``, a port outside 1-65535, a query
    item without ``=``, an unknown ``sslmode``."""
    parts = _split(url)
    if parts is None or parts[0] not in SCHEMES:
        raise ConfigError(
            f"{_WHERE} is not a PostgreSQL DSN: it must start with postgresql:// or "
            "postgres:// (e.g. postgresql://user:password@host:5432/dbname)"
        )
    _check_userinfo(parts[1])
    hostspec = re.split(r"[/?]", parts[2], maxsplit=1)[0]
    _check_ports(_hostspec_ports(hostspec), "the host part")
    _check_query(_query_items(parts[2]))


def _check_userinfo(userinfo: str) -> None:
    # A URL parser would cut the password at one of these and take the rest for the host,
    # path or query, so the secret would end up in the driver's error messages.
    bad = [c for c in "/#?@" if c in userinfo]
    if bad:
        raise ConfigError(
            f"{_WHERE}: the user or password contains an unencoded "
            f"{' '.join(repr(c) for c in bad)}; percent-encode it, "
            "e.g. urllib.parse.quote(password, safe='')"
        )


def _hostspec_ports(hostspec: str) -> list[str]:
    """The port of each ``host[:port]`` (``[v6]:port`` too) of a comma-separated list."""
    ports = []
    for host in hostspec.split(","):
        tail = host.rpartition("]")[2] if host.startswith("[") else host
        if ":" in tail:
            ports.append(tail.rpartition(":")[2])
    return ports


def _check_ports(ports: list[str], where: str) -> None:
    for port in ports:
        if port and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
            raise ConfigError(
                f"{_WHERE}: a port in {where} is not a number from 1 to 65535; fix the port "
                "(postgresql://user@host:5432/dbname)"
            )


def _check_query(items: list[str]) -> None:
    for position, item in enumerate(items, start=1):
        name, equals, value = item.partition("=")
        if not equals:
            raise ConfigError(
                f"{_WHERE}: query item {position} after '?' has no '='; write parameters "
                "as name=value separated by '&' (percent-encode '&' and '=' in values)"
            )
        if _parameter_name(name) == "port":
            _check_ports(unquote(value).split(","), "the port= parameter")
        if _parameter_name(name) == "sslmode" and unquote(value) not in SSL_MODES:
            raise ConfigError(
                f"{_WHERE}: the sslmode parameter must be one of {', '.join(SSL_MODES)}"
            )
