"""Plumbing of the ownership fault tests: runners of many instances in this process, steps
that count their executions per instance, and superuser views of locks and sessions.

Real server, real runners (:class:`fsmflow.PersistentWorkflowStateMachine`), real faults
(cancelled queries, a full lock table, a SIGSTOPped backend); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any

import psycopg

from fsmflow import (
    DBConfig,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
)
from tests.polling import once_released

OWNER_APPLICATION_NAME = "fsmflow-owner"
ADMIN_APPLICATION_NAME = "fsmflow-ownership-admin"
SAFETY_TIMEOUT = 90.0  # only ever bounds a hang; no test asserts how long anything took
# pg_locks splits a one-bigint advisory lock key into two unsigned oids.
PG_LOCK_KEY = "((l.classid::bigint << 32) | l.objid::bigint)"


def linear(name: str, states: Sequence[str]) -> WorkflowDefinition:
    """``states[0] -> states[1] -> ...``; the last state completes the instance."""
    transitions = [Transition(trigger=f"{a}_done", source=a, dest=b) for a, b in pairwise(states)]
    return WorkflowDefinition(name=name, steps=list(states), transitions=transitions)


class Steps:
    """Async steps that count executions per ``(instance, state)`` and can wait on a gate."""

    def __init__(self, states: Sequence[str]) -> None:
        self.states = list(states)
        self.runs: Counter[tuple[str, str]] = Counter()
        self.gates: dict[str, asyncio.Event] = {}  # state -> its steps wait for this
        self.started = asyncio.Event()
        self.sleep = 0.0

    def gate(self, state: str) -> asyncio.Event:
        """Every execution of ``state`` waits until the returned event is set."""
        self.gates[state] = asyncio.Event()
        return self.gates[state]

    def for_instance(self, instance: str) -> dict[str, Any]:
        """The steps of one instance's runner."""
        return {state: self._step(instance, state) for state in self.states}

    def _step(self, instance: str, state: str) -> Any:
        async def execute(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
            self.runs[(instance, state)] += 1
            self.started.set()
            gate = self.gates.get(state)
            if gate is not None:
                await gate.wait()
            if self.sleep:
                await asyncio.sleep(self.sleep)
            ctx.data.setdefault("visited", []).append(state)
            return ctx, None

        return execute

    def count(self, state: str) -> int:
        """Executions of ``state`` over all instances."""
        return sum(n for (_, s), n in self.runs.items() if s == state)


def runner(
    config: DBConfig, definition: WorkflowDefinition, steps: Steps, instance: str, **kwargs: Any
) -> PersistentWorkflowStateMachine:
    """A runner of ``instance`` that leaves this process's signal handlers alone."""
    return PersistentWorkflowStateMachine(
        config,
        definition,
        steps=steps.for_instance(instance),
        instance_id=instance,
        handle_signals=False,
        **kwargs,
    )


class Admin:
    """Superuser SQL (autocommit) on one database."""

    def __init__(self, host: str, port: int, user: str, dbname: str) -> None:
        self.params: dict[str, Any] = {
            "host": host,
            "port": port,
            "user": user,
            "dbname": dbname,
            "application_name": ADMIN_APPLICATION_NAME,
        }
        self.conn = self.connect()

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """Another superuser connection (caller closes it)."""
        return psycopg.connect(**self.params, autocommit=autocommit)

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``query``; rows if any."""
        with self.conn.cursor() as cur:
            cur.execute(query, params or None)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def fsm_locks(self, exclude_pid: int | None = None) -> list[tuple[int, int]]:
        """(pid, key) of granted one-bigint advisory locks in this database."""
        rows = self.sql(
            f"SELECT l.pid, {PG_LOCK_KEY} FROM pg_locks l "
            "JOIN pg_database d ON d.oid = l.database AND d.datname = current_database() "
            "WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted "
            "AND l.pid IS DISTINCT FROM %s",
            (exclude_pid,),
        )
        return sorted((int(pid), int(key)) for pid, key in rows)

    async def locks_left(self) -> list[tuple[int, int]]:
        """fsm_locks() once this process's releases in flight had their round trip."""
        return await once_released(self.fsm_locks)

    def owner_pids(self) -> list[int]:
        """Backends of this database that fsmflow opened as owner connections."""
        rows = self.sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s ORDER BY pid",
            (OWNER_APPLICATION_NAME,),
        )
        return [int(pid) for (pid,) in rows]

    def blocked_by(self, pid: int) -> int | None:
        """The backend waiting on a lock that ``pid`` holds, if one does now."""
        rows = self.sql(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
        )
        return int(rows[0][0]) if rows else None

    def history(self, workflow: str, instance: str) -> list[tuple[int, str]]:
        """(seq, status) of an instance's rows, in seq order."""
        rows = self.sql(
            "SELECT seq, status FROM fsmflow_transitions WHERE workflow_name = %s "
            "AND instance_id = %s ORDER BY seq",
            (workflow, instance),
        )
        return [(int(seq), str(status)) for seq, status in rows]

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            self.conn.close()


@contextlib.contextmanager
def row_lock(admin: Admin, workflow: str, instance: str, seq: int) -> Iterator[int]:
    """Hold an uncommitted row at ``(workflow, instance, seq)``: an append of that seq waits
    on it (primary-key check) until the block ends by ROLLBACK. Yields the holder's pid."""
    conn = admin.connect(autocommit=False)
    try:
        conn.execute(
            "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, context) "
            "VALUES (%s, %s, %s, '{}')",
            (workflow, instance, seq),
        )
        yield int(conn.info.backend_pid)
    finally:
        conn.rollback()
        conn.close()


async def wait_until(predicate: Any, what: str, limit: float = SAFETY_TIMEOUT) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded by ``limit``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
