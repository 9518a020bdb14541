"""The dashboard's defences: response headers, the action token and CSRF.

* Every response carries a Content-Security-Policy that allows only the dashboard's own
  script and style files (no inline script, no other origin, no framing), and
  ``X-Frame-Options: DENY``, ``nosniff``, ``Referrer-Policy: same-origin``, ``no-store``.
* An action needs ``FSMFLOW_UI_TOKEN`` in its form, compared in constant time
  (:func:`hmac.compare_digest`): without the setting every action is refused.
* CSRF: a double-submit token. Each page sets a random cookie (``HttpOnly``,
  ``SameSite=Strict``) and puts the same value in its forms; an action whose form value
  does not match its cookie is refused, and so is one whose ``Origin`` is another site.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import SecretStr

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_COOKIE: Final = "fsmflow_csrf"
FLASH_COOKIE: Final = "fsmflow_flash"
POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final = (
    (b"content-security-policy", POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with
    # a same-origin form POST, which the origin check must refuse; other sites still get
    # no Referer.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response; ``no-store`` on every
    page (context values may be on it), the static assets excepted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the response's start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] not in _OURS]
                headers.extend(HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OURS: Final = frozenset(name for name, _ in HEADERS) | {b"cache-control"}


def new_csrf() -> str:
    """A fresh CSRF token (the cookie's and the forms' value)."""
    return secrets.token_urlsafe(32)


def same_value(given: str | None, expected: str | None) -> bool:
    """True if both are set and equal, compared in constant time."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def token_matches(given: str | None, token: SecretStr | None) -> bool:
    """True if ``given`` is the configured action token (never true without one)."""
    return token is not None and same_value(given, token.get_secret_value())


def foreign_origin(origin: str | None, host: str | None) -> bool:
    """True if a request's ``Origin`` header names another site than its ``Host``
    (browsers send it with every POST; no header, as from curl, is not foreign)."""
    if not origin:
        return False
    if origin == "null":
        return True
    return urlsplit(origin).netloc != (host or "")
