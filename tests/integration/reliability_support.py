"""Helpers for the reliability tests (ownership, database errors, retries, security, drift).

Everything here talks to the real test server: :class:`Harness` owns the settings and roles a
test creates and cleans them up, runs SQL as the superuser, and reads back what the library
stored (history rows, advisory locks, sessions). :class:`Tracker` provides steps that count
their executions and can hold their first execution until the test lets it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg.rows
import psycopg.sql

from fsmflow import (
    DBConfig,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
)
from tests.conftest import config_for
from tests.polling import once_released

OWNER_APPLICATION_NAME = "fsmflow-owner"
SAFETY_TIMEOUT = 60.0  # only ever bounds a hang; no test asserts how long anything took


def linear_definition(name: str, states: Sequence[str], **kwargs: Any) -> WorkflowDefinition:
    """``states[0] -> states[1] -> ...``; the last state completes the instance."""
    transitions = [Transition(trigger=f"{a}_done", source=a, dest=b) for a, b in pairwise(states)]
    return WorkflowDefinition(name=name, steps=list(states), transitions=transitions, **kwargs)


class Tracker:
    """Steps that record each execution in ``runs`` and append their state to
    ``ctx['visited']``; :meth:`hold_first` makes a state's first execution wait."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.entered: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._holds: dict[str, asyncio.Event] = {}

    def hold_first(self, state: str) -> asyncio.Event:
        """The first execution of ``state`` blocks until the returned event is set."""
        event = asyncio.Event()
        self._holds[state] = event
        return event

    async def started(self, state: str) -> None:
        """Wait until ``state``'s step has started at least once."""
        await asyncio.wait_for(self.entered[state].wait(), SAFETY_TIMEOUT)

    def step(self, state: str) -> Any:
        """The async step function of ``state``."""

        async def execute(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
            self.runs[state] += 1
            self.entered[state].set()
            hold = self._holds.get(state)
            if hold is not None and self.runs[state] == 1:
                await hold.wait()
            ctx.data.setdefault("visited", []).append(state)
            return ctx, None

        execute.__name__ = f"step_{state}"
        return execute

    def steps(self, definition: WorkflowDefinition) -> dict[str, Any]:
        """A step for every state of ``definition``."""
        return {state: self.step(state) for state in definition.steps}


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``coro`` as a task; cancel it on the way out if the test left it unfinished."""
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def finish(task: asyncio.Task[Any]) -> Any:
    """The task's result, bounded by the safety timeout."""
    return await asyncio.wait_for(asyncio.shield(task), SAFETY_TIMEOUT)


class Harness:
    """One test's view of the server: settings it closes, roles it drops, superuser SQL."""

    def __init__(self, admin: psycopg.Connection[Any], server: Any) -> None:
        admin.autocommit = True
        self.admin = admin
        self.server = server
        self.info = admin.info
        self._configs: list[DBConfig] = []
        self._roles: list[str] = []
        self._connections: list[psycopg.Connection[Any]] = []
        self._hba_backup: tuple[Path, str] | None = None

    @property
    def dbname(self) -> str:
        """This test's database."""
        return str(self.info.dbname)

    @property
    def pgdata(self) -> Path | None:
        """The embedded server's data directory, or None for an external server."""
        server = getattr(self.server, "server", None)
        return None if server is None else Path(server.pgdata)

    def config(self, **overrides: Any) -> DBConfig:
        """Settings for this test's database (closed at teardown)."""
        config = config_for(self.info, **overrides)
        self._configs.append(config)
        return config

    def track(self, config: DBConfig) -> DBConfig:
        """Close ``config`` at teardown too."""
        self._configs.append(config)
        return config

    def dsn(self, userinfo: str, query: str = "") -> str:
        """A ``postgresql://`` URL for this test's database as ``userinfo``."""
        host = quote(str(self.info.host), safe="")
        return f"postgresql://{userinfo}@/{self.dbname}?host={host}&port={self.info.port}{query}"

    def runner(
        self, config: DBConfig, definition: WorkflowDefinition, steps: Any, **kwargs: Any
    ) -> PersistentWorkflowStateMachine:
        """A runner that leaves the test process's signal handlers alone."""
        kwargs.setdefault("handle_signals", False)
        return PersistentWorkflowStateMachine(config, definition, steps=steps, **kwargs)

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``query`` as the superuser in this test's database; rows if any."""
        with self.admin.cursor() as cur:
            cur.execute(query, params or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def rows(
        self, workflow: str, instance_id: str, table: str = "fsmflow_transitions"
    ) -> list[dict[str, Any]]:
        """The stored history of one instance, in seq order."""
        query = (
            "SELECT seq, trigger, source_state, dest_state, status, context, error, "
            f"fingerprint FROM {table} WHERE workflow_name = %s AND instance_id = %s ORDER BY seq"
        )
        with self.admin.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute(query, (workflow, instance_id))  # type: ignore[arg-type]
            return cur.fetchall()

    def count(self, table: str = "fsmflow_transitions") -> int:
        """How many rows ``table`` holds."""
        return int(self.sql(f"SELECT count(*) FROM {table}")[0][0])

    def fsm_locks(self) -> list[tuple[int, int]]:
        """(pid, key) of every granted fsmflow advisory lock in this database."""
        rows = self.sql(
            f"SELECT l.pid, {PG_LOCK_KEY} FROM pg_locks l "
            "JOIN pg_database d ON d.oid = l.database AND d.datname = current_database() "
            "WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted",
        )
        return sorted((int(pid), int(key)) for pid, key in rows)

    async def locks_left(self) -> list[tuple[int, int]]:
        """fsm_locks() once this process's releases in flight had their round trip."""
        return await once_released(self.fsm_locks)

    def owner_pids(self) -> list[int]:
        """Backends of this database that fsmflow opened as lock/append connections."""
        rows = self.sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s ORDER BY pid",
            (OWNER_APPLICATION_NAME,),
        )
        return [int(pid) for (pid,) in rows]

    def connect_as(self, role: str, password: str | None = None) -> psycopg.Connection[Any]:
        """A psycopg connection to this test's database as ``role`` (closed at teardown)."""
        conn = psycopg.connect(
            host=self.info.host,
            port=self.info.port,
            user=role,
            password=password,
            dbname=self.dbname,
            autocommit=True,
        )
        self._connections.append(conn)
        return conn

    def create_role(self, purpose: str, *, password: str | None = None) -> str:
        """A new LOGIN role (cluster-wide, so uniquely named); dropped at teardown."""
        name = f"fsmtest_{purpose}_{uuid.uuid4().hex[:8]}"
        if password is None:
            self.sql(f"CREATE ROLE {name} LOGIN")
        else:
            statement = psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.Literal(password)
            )
            with self.admin.cursor() as cur:
                cur.execute(statement)
        self._roles.append(name)
        return name

    def require_password(self, role: str) -> None:
        """Make password authentication effective for ``role`` on the embedded server
        (its pg_hba.conf trusts everyone); restored at teardown."""
        assert self.pgdata is not None
        hba = self.pgdata / "pg_hba.conf"
        original = hba.read_text()
        if self._hba_backup is None:
            self._hba_backup = (hba, original)
        hba.write_text(f"local all {role} scram-sha-256\n" + original)
        self.sql("SELECT pg_reload_conf()")

    def install_append_audit(self, table: str = "fsmflow_transitions") -> None:
        """Record, for every row inserted into ``table``, the inserting session: its pid,
        application_name, settings and the fsmflow advisory locks it held at that moment.

        Keepalive settings read as 0 on Unix-socket sessions, so their ``reset_val`` (what
        the client asked for at connect time) is recorded.
        """
        self.sql(
            """
            CREATE TABLE append_audit (
                seq int, pid int, application_name text, keepalives_idle text,
                keepalives_interval text, keepalives_count text, idle_session_timeout text,
                idle_in_transaction_session_timeout text, fsm_locks bigint[]);
            CREATE FUNCTION append_audit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO append_audit SELECT NEW.seq, pg_backend_pid(),
                    current_setting('application_name'),
                    (SELECT reset_val FROM pg_settings WHERE name = 'tcp_keepalives_idle'),
                    (SELECT reset_val FROM pg_settings WHERE name = 'tcp_keepalives_interval'),
                    (SELECT reset_val FROM pg_settings WHERE name = 'tcp_keepalives_count'),
                    current_setting('idle_session_timeout'),
                    current_setting('idle_in_transaction_session_timeout'),
                    ARRAY(SELECT %s FROM pg_locks l WHERE pid = pg_backend_pid()
                          AND locktype = 'advisory' AND objsubid = 1 AND granted);
                RETURN NEW;
            END $$;
            """.replace("%s", PG_LOCK_KEY)
        )
        self.sql(
            f"CREATE TRIGGER append_audit BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION append_audit()"
        )

    def audit(self) -> list[dict[str, Any]]:
        """The rows recorded by :meth:`install_append_audit`, in seq order."""
        with self.admin.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute("SELECT * FROM append_audit ORDER BY seq")
            rows = cur.fetchall()
        for row in rows:
            row["fsm_locks"] = [int(k) for k in row["fsm_locks"]]
        return rows

    async def aclose(self) -> None:
        """Close settings and connections, then drop roles and restore pg_hba.conf."""
        for config in self._configs:
            await config.close()
        for conn in self._connections:
            conn.close()
        if self._hba_backup is not None:
            hba, original = self._hba_backup
            hba.write_text(original)
            self.sql("SELECT pg_reload_conf()")
        for role in self._roles:
            self.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            self.sql(f"DROP OWNED BY {role} CASCADE")
            self.sql(f"DROP ROLE {role}")


# pg_locks splits a one-bigint advisory lock key into two unsigned oids.
PG_LOCK_KEY = "((l.classid::bigint << 32) | l.objid::bigint)"


def assert_gap_free(rows: Sequence[dict[str, Any]]) -> None:
    """seq runs 0..n with no gap or duplicate."""
    assert [r["seq"] for r in rows] == list(range(len(rows)))


def _exception_texts(exc: BaseException) -> Iterable[str]:
    seen: set[int] = set()
    current: BaseException | None = exc
    yield "".join(traceback.format_exception(exc))
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield repr(vars(current))
        yield repr(current.args)
        # Also the suppressed context (``raise ... from None``): error trackers report it.
        current = current.__cause__ or current.__context__


def _record_texts(record: logging.LogRecord) -> Iterable[str]:
    yield str(record.msg)
    yield record.getMessage()
    yield repr(record.args)
    yield record.exc_text or ""
    yield record.stack_info or ""
    if record.exc_info and record.exc_info[1] is not None:
        yield from _exception_texts(record.exc_info[1])


def secret_leaks(
    secrets: Sequence[str], records: Iterable[logging.LogRecord], *things: object
) -> list[str]:
    """Where any of ``secrets`` shows up: in a log record (message, arguments, traceback) or
    in the str/repr of ``things`` (exceptions are searched along their whole chain)."""
    found: list[str] = []
    for record in records:
        for text in _record_texts(record):
            found += [f"log {record.name}: {text[:300]}" for s in secrets if s in text]
    for thing in things:
        texts = (
            list(_exception_texts(thing))
            if isinstance(thing, BaseException)
            else [str(thing), repr(thing)]
        )
        for text in texts:
            found += [f"{type(thing).__name__}: {text[:300]}" for s in secrets if s in text]
    return found
