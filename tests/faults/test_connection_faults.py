"""Lost connections: around the COMMIT of one append, and at random while 50 instances run.

An append is one autocommit INSERT. When the connection drops during it, the client
cannot know whether the row committed; fsmflow reads the row back and compares the
attempt id it wrote, and must neither write it twice nor run the step again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from dataclasses import dataclass

import pytest

from .support import OWNER_APPLICATION_NAME, Blocker, Scenario, instance_ids
from .worker import WORKFLOW

# -- around the COMMIT -------------------------------------------------------------------

STATES = 3
# How the connection is lost while row `seq` is being written (seq 0: the instance's
# start, inserted by the open statement that also takes its lock; seq 1..3: appends on
# the owner connection). The step that produced the row has returned in every case:
# nothing may run again.
MODES = {
    # before COMMIT, request lost: the INSERT never reaches the server
    "lose_request": "proxy",
    # before COMMIT, INSERT executed: the row is inserted and waits on a row lock when
    # its session is terminated, so its transaction rolls back
    "insert_rolled_back": "blocker",
    # after COMMIT: the server committed (ReadyForQuery seen) and the reply is lost
    "lose_reply": "proxy",
}


@pytest.mark.timeout(300)
async def test_connection_lost_before_and_after_commit(scenario: Scenario) -> None:
    seqs = range(STATES + 1)
    targets = {f"c-{mode}-{seq}": (mode, seq) for mode in MODES for seq in seqs}
    instances = list(targets)
    info = scenario.info
    proxy = FaultProxy(str(info.host), int(info.port))
    proxy.plan = {(i, seq): mode for i, (mode, seq) in targets.items() if MODES[mode] == "proxy"}
    planned = dict(proxy.plan)
    blockers = [
        Blocker(scenario.admin, i, seq)
        for i, (mode, seq) in targets.items()
        if MODES[mode] == "blocker"
    ]
    port = await proxy.start()
    env = {"DB_HOST": "127.0.0.1", "DB_PORT": str(port), "DB_SSLMODE": "disable"}
    terminated = 0
    try:
        worker = scenario.spawn(instances, env=env, states=STATES, concurrency=1)
        while worker.alive:
            for blocker in blockers:
                if not blocker.released and (backend := blocker.blocked(scenario.admin)):
                    scenario.inject("session", f"{blocker.instance}:{blocker.seq}")
                    assert scenario.admin.terminate(backend)
                    terminated += 1
                    blocker.release()
            await asyncio.sleep(0.02)
        code = await scenario.reap(worker)
    finally:
        for blocker in blockers:
            blocker.release()
        await proxy.close()

    exact = {(i, seq): 1 for i in instances for seq in range(STATES)}
    report = scenario.analyze(instances, STATES, exact)
    fired = Counter(f.mode for f in proxy.fired)
    print(
        f"[connection lost around COMMIT] proxy faults {dict(fired)}, sessions terminated "
        f"with an uncommitted row {terminated}; {report.figures()}"
    )
    assert code == 0, worker.stderr_tail()
    assert not report.problems(), f"{report.problems()}\n{report.figures()}"
    # Every planned fault really happened, and each lost reply followed a commit.
    assert {(f.instance, f.nth): f.mode for f in proxy.fired} == planned
    # seq 0's statement is the open (lock, lookup, insert): a SELECT that reports one row.
    tags = ["SELECT 1"] + ["INSERT 0 1"] * STATES
    assert [
        f.tag for f in sorted(proxy.fired, key=lambda f: f.nth) if f.mode == "lose_reply"
    ] == tags
    assert terminated == len(blockers)


# -- at random while 50 instances run ----------------------------------------------------

TERMINATIONS = [
    pytest.param(50, 12, id="50-instances"),
    pytest.param(50, 40, id="50-instances-long", marks=pytest.mark.stress),
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("count", "states"), TERMINATIONS)
async def test_terminate_random_backends_while_instances_run(
    scenario: Scenario, count: int, states: int
) -> None:
    instances = instance_ids("t", count)
    worker = scenario.spawn(instances, states=states, sleep="0.1:0.4")
    terminated: Counter[str] = Counter()
    spread: list[int] = []
    await worker.wait_ready()
    while worker.alive:
        await asyncio.sleep(scenario.rng.uniform(0.05, 0.3))
        if not spread:
            spread = _locks_per_owner_session(scenario)
        backends = scenario.admin.worker_backends()
        kind = scenario.rng.choice(["owner", "pool"])  # lock sessions are few: even odds
        owner = [b for b in backends if b["application_name"] == OWNER_APPLICATION_NAME]
        pooled = [b for b in backends if b["application_name"] != OWNER_APPLICATION_NAME]
        candidates = (owner if kind == "owner" else pooled) or backends
        if not candidates or not worker.alive:
            continue
        victim = scenario.rng.choice(candidates)
        pid = victim["pid"]
        if victim["application_name"] == OWNER_APPLICATION_NAME:
            # Its lock goes with it: the steps of its instances may run again.
            with scenario.fault("owner", str(pid)):
                scenario.admin.terminate(pid)
            terminated["owner"] += 1
        else:
            # A pooled session holds no lock: losing it must never rerun a step.
            scenario.inject("pool", str(pid))
            scenario.admin.terminate(pid)
            terminated["pool"] += 1
    code = await scenario.reap(worker)

    report = scenario.analyze(instances, states)
    print(
        f"[pg_terminate_backend] terminated owner (lock) sessions {terminated['owner']}, "
        f"pooled sessions {terminated['pool']}; instance locks per owner session at the "
        f"first sample {spread}; {report.figures()}"
    )
    assert code == 0, worker.stderr_tail()
    assert not report.problems(), f"{report.problems()}\n{report.figures()}"
    assert terminated["owner"] > 0 and terminated["pool"] > 0, dict(terminated)


def _locks_per_owner_session(scenario: Scenario) -> list[int]:
    """How many instance locks each owner session holds (FSMFLOW_OWNER_CONNECTIONS lanes)."""
    counts = Counter(lock["pid"] for lock in scenario.admin.fsm_locks())
    return sorted(counts.values(), reverse=True)


# -- a proxy that loses one request or one reply ----------------------------------------


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
