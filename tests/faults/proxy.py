"""A PostgreSQL wire-protocol proxy for the fault tests: it loses the request or the reply
of chosen statements, then cuts the connection (what a network fault around a COMMIT does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from dataclasses import dataclass

from .worker import WORKFLOW

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


@dataclass
class Fired:
    """A fault the proxy injected: which insert of which instance, and what it saw."""

    instance: str
    nth: int
    mode: str
    tag: str = ""


class FaultProxy:
    """A PostgreSQL wire-protocol proxy (TCP in front of the real server) that loses the
    request or the reply of chosen INSERTs, then cuts the connection:

    - ``lose_request``: the INSERT's Bind never reaches the server (nothing is written);
      the client sees its connection drop with the statement's outcome unknown;
    - ``lose_reply``: the INSERT runs and its transaction commits (the server's
      ReadyForQuery, sent after the commit, is seen by the proxy), but the client never
      gets the reply: "write succeeded, reply lost".

    Targets are ``(instance, nth)``: the nth (0-based) statement that inserts (an INSERT,
    or a WITH query holding one: the open statement) whose parameters include the
    workflow name and the instance id — for one instance, insert 0 is its start (seq 0,
    in its open statement) and insert k its append of seq k, as long as nothing was
    retried before.
    Needs ``DB_SSLMODE=disable`` (it reads the plain protocol).
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.plan: dict[tuple[str, int], str] = {}
        self.fired: list[Fired] = []
        self.inserts: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on 127.0.0.1; returns the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.upstream
        if host.startswith("/"):
            return await asyncio.open_unix_connection(os.path.join(host, f".s.PGSQL.{port}"))
        return await asyncio.open_connection(host, port)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            ureader, uwriter = await self._open_upstream()
        except OSError:
            cwriter.transport.abort()
            self._tasks.discard(task)
            return
        link = _Link(cwriter, uwriter)
        pumps = [
            asyncio.ensure_future(self._client_to_server(creader, link)),
            asyncio.ensure_future(self._server_to_client(ureader, link)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            link.cut()
            self._tasks.discard(task)

    async def _client_to_server(self, reader: asyncio.StreamReader, link: _Link) -> None:
        buf = b""
        startup = True
        statements: dict[bytes, str] = {}
        while data := await reader.read(65536):
            buf += data
            out = bytearray()
            while True:
                if startup:
                    if len(buf) < 4 or len(buf) < (n := int.from_bytes(buf[:4], "big")):
                        break
                    message, buf = buf[:n], buf[n:]
                    code = int.from_bytes(message[4:8], "big")
                    startup = code in (_SSL_REQUEST, _GSSENC_REQUEST)
                    out += message
                    continue
                if len(buf) < 5 or len(buf) < 1 + (n := int.from_bytes(buf[1:5], "big")):
                    break
                message, buf = buf[: 1 + n], buf[1 + n :]
                if message[:1] == b"P":
                    name, query = _cstrings(message[5:], 2)
                    statements[name] = query.decode(errors="replace")
                elif message[:1] == b"B":
                    mode = self._target(message, statements)
                    if mode == "lose_request":
                        link.uwriter.write(bytes(out))
                        return  # the Bind and what follows never reach the server
                    if mode == "lose_reply":
                        link.swallowing = self.fired[-1]
                out += message
            if out:
                link.uwriter.write(bytes(out))
                await link.uwriter.drain()

    def _target(self, bind: bytes, statements: dict[bytes, str]) -> str | None:
        portal, statement = _cstrings(bind[5:], 2)
        query = statements.get(statement, "")
        if _verb(query) not in ("INSERT", "WITH") or "INSERT INTO" not in query:
            return None
        params = _bind_params(bind[5 + len(portal) + len(statement) + 2 :])
        if WORKFLOW.encode() not in params:
            return None
        for instance in {i for i, _ in self.plan} | set(self.inserts):
            if instance.encode() in params:
                nth = self.inserts[instance]
                self.inserts[instance] += 1
                mode = self.plan.pop((instance, nth), None)
                if mode is not None:
                    self.fired.append(Fired(instance, nth, mode))
                return mode
        return None

    async def _server_to_client(self, reader: asyncio.StreamReader, link: _Link) -> None:
        buf = b""
        while data := await reader.read(65536):
            if link.swallowing is None:
                link.cwriter.write(data)
                await link.cwriter.drain()
                continue
            # Everything after the target Bind answers it: keep it from the client, note
            # the command tag, and cut the connection once ReadyForQuery says it committed.
            buf += data
            while len(buf) >= 5 and len(buf) >= 1 + (n := int.from_bytes(buf[1:5], "big")):
                message, buf = buf[: 1 + n], buf[1 + n :]
                if message[:1] == b"C":
                    link.swallowing.tag = message[5:].rstrip(b"\0").decode()
                elif message[:1] == b"E":
                    link.swallowing.tag = "error"
                elif message[:1] == b"Z":
                    return


@dataclass
class _Link:
    cwriter: asyncio.StreamWriter
    uwriter: asyncio.StreamWriter
    swallowing: Fired | None = None

    def cut(self) -> None:
        for writer in (self.cwriter, self.uwriter):
            writer.transport.abort()


def _verb(query: str) -> str:
    """The first SQL keyword of ``query`` (leading ``--`` comment lines skipped)."""
    code = [ln for ln in query.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
    return code[0].split()[0].upper() if code else ""


def _cstrings(data: bytes, count: int) -> list[bytes]:
    found = []
    for _ in range(count):
        end = data.index(b"\0")
        found.append(data[:end])
        data = data[end + 1 :]
    return found


def _bind_params(data: bytes) -> list[bytes]:
    nformats = int.from_bytes(data[:2], "big")
    data = data[2 + 2 * nformats :]
    nparams = int.from_bytes(data[:2], "big")
    data = data[2:]
    params = []
    for _ in range(nparams):
        length = int.from_bytes(data[:4], "big", signed=True)
        data = data[4:]
        if length < 0:
            params.append(b"")
            continue
        params.append(data[:length])
        data = data[length:]
    return params
