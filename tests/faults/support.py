"""Plumbing of the fault-injection tests: worker processes, the ledger and its invariants,
superuser SQL that survives server restarts, and held row locks. (The proxy that loses
replies lives in ``proxy.py``; stopping the server in ``test_server_restart.py``.)

Nothing here fakes anything: workers are real processes (``tests/faults/worker.py``), the
database is the session's real server, and faults are real signals, terminated backends,
dropped bytes and server restarts.

The invariants checked after every scenario (:func:`analyze`):

1. every instance's history is seq 0..n with no gap or duplicate, in the declared order,
   ``completed`` at the end (lost / duplicated rows);
2. its final context equals the oracle (:func:`tests.faults.worker.oracle_context`);
3. the step of each state entry ran at most ``1 + faults while it was in flight`` times,
   where a fault is a process ending after it started the entry and before it
   acknowledged it, or a lost owner session / server restart whose window (from just
   before the fault until shortly after it is over) overlaps the entry's execution
   (pooled sessions hold no lock: losing one is not such a fault);
4. every transition a worker acknowledged (``rec`` line) is stored;
5. no two executions of one state entry overlap (by ledger order: a ``start`` while
   another execution of that entry has neither ended nor lost its process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.rows

from tests.conftest import ROOT, TEST_URL_ENV
from tests.polling import once_released

from .worker import WORKFLOW, Ledger, oracle_context, state_names

ADMIN_APPLICATION_NAME = "fsmflow-faults-admin"
OWNER_APPLICATION_NAME = "fsmflow-owner"
SAFETY_TIMEOUT = 120.0  # only ever bounds a hang; no test asserts how long anything took


def seed_for(name: str) -> int:
    """The scenario's random seed: ``FSMFLOW_FAULT_SEED`` if set, else a fresh one (printed,
    so a failure can be replayed with the same choices)."""
    env = os.environ.get("FSMFLOW_FAULT_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1 << 31)
    print(f"\n[{name}] seed {seed} (replay: FSMFLOW_FAULT_SEED={seed})")
    return seed


def external_server() -> bool:
    """True when the tests run against FSMFLOW_TEST_DATABASE_URL, not the embedded server."""
    return bool(os.environ.get(TEST_URL_ENV))


# -- the ledger --------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One ledger line (see ``tests/faults/worker.py``)."""

    kind: str
    pid: int
    time_ns: int
    instance: str
    seq: int
    state: str
    extra: str

    @property
    def key(self) -> tuple[str, int]:
        """The state entry: (instance, seq)."""
        return (self.instance, self.seq)


def read_ledger(path: Path) -> list[Event]:
    """Every line of the ledger, in the order they were appended."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        kind, pid, t, instance, seq, state, extra = line.split(" ")
        events.append(
            Event(kind, int(pid), int(t), instance, -1 if seq == "-" else int(seq), state, extra)
        )
    return events


# -- superuser SQL -----------------------------------------------------------------------


class Admin:
    """Superuser SQL on the test's database, reconnecting after a server restart."""

    def __init__(self, info: Any, excluded_pids: Sequence[int] = ()) -> None:
        self.info = info
        self.excluded = list(excluded_pids)
        self._conn: psycopg.Connection[Any] | None = None

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new superuser connection to the test database (caller closes it)."""
        params: dict[str, Any] = {
            "host": self.info.host,
            "port": self.info.port,
            "user": self.info.user,
            "password": self.info.password or None,
            "dbname": self.info.dbname,
            "application_name": ADMIN_APPLICATION_NAME,
            "autocommit": True,
        }
        params.update(kwargs)
        return psycopg.connect(**params)

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run ``query``; rows as dicts. Reconnects once if the connection died."""
        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self.connect()
                with self._conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
                    cur.execute(query, params or None)  # type: ignore[arg-type]
                    return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection (a new one is opened on the next query)."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def histories(self, instances: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The stored rows of each instance, in seq order."""
        rows = self.sql(
            "SELECT instance_id, seq, source_state, dest_state, status, context "
            "FROM fsmflow_transitions WHERE workflow_name = %s AND instance_id = ANY(%s) "
            "ORDER BY instance_id, seq",
            (WORKFLOW, list(instances)),
        )
        found: dict[str, list[dict[str, Any]]] = {i: [] for i in instances}
        for row in rows:
            found[row["instance_id"]].append(row)
        return found

    def worker_backends(self) -> list[dict[str, Any]]:
        """Sessions of this database opened by workers (not by the tests)."""
        return self.sql(
            "SELECT pid, application_name, state, wait_event_type FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() AND application_name <> %s AND NOT pid = ANY(%s)",
            (ADMIN_APPLICATION_NAME, self.excluded),
        )

    def fsm_locks(self) -> list[dict[str, Any]]:
        """Granted fsmflow advisory locks in this database: (pid, key)."""
        return self.sql(
            "SELECT l.pid, ((l.classid::bigint << 32) | l.objid::bigint) AS objid "
            "FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE d.datname = current_database() AND l.locktype = 'advisory' "
            "AND l.objsubid = 1 AND l.granted",
        )

    async def locks_left(self) -> list[dict[str, Any]]:
        """fsm_locks() once this process's releases in flight had their round trip."""
        return await once_released(self.fsm_locks)

    def terminate(self, pid: int) -> bool:
        """pg_terminate_backend, waiting (up to 10 s) for the backend to be gone."""
        rows = self.sql("SELECT pg_terminate_backend(%s, 10000) AS gone", (pid,))
        return bool(rows and rows[0]["gone"])

    async def wait_no_worker_backends(self) -> list[dict[str, Any]]:
        """Wait until workers' sessions are gone (a closed socket ends its backend a moment
        later); returns those still there after the safety bound."""
        deadline = time.monotonic() + 10
        while True:
            left = self.worker_backends()
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.05)


class Blocker:
    """Makes one append of a worker wait *after its row is inserted, before it commits*.

    The test inserts the same ``(workflow, instance, seq)`` row in an open transaction. The
    worker's conditional INSERT does not see that uncommitted row, so it inserts its own
    heap tuple and then waits on the primary-key check for the test's transaction: the
    statement is in flight, its row written, its commit pending. The test then kills the
    worker or the session, and ends its own transaction by ROLLBACK (never COMMIT), so
    the worker's row commits (if its backend still lives) or is rolled back.
    """

    def __init__(self, admin: Admin, instance: str, seq: int) -> None:
        self.instance = instance
        self.seq = seq
        self.conn = admin.connect(autocommit=False)
        self.pid = self.conn.info.backend_pid
        self.conn.execute(
            "INSERT INTO fsmflow_transitions (workflow_name, instance_id, seq, context) "
            "VALUES (%s, %s, %s, '{}')",
            (WORKFLOW, instance, seq),
        )
        self.released = False

    def blocked(self, admin: Admin) -> int | None:
        """The backend whose INSERT waits on this row, if one does now."""
        rows = admin.sql(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (self.pid,),
        )
        return int(rows[0]["pid"]) if rows else None

    def release(self) -> None:
        """ROLLBACK: the waiting INSERT goes on (and commits) if its backend still runs."""
        if not self.released:
            self.released = True
            self.conn.rollback()
            self.conn.close()


# -- worker processes --------------------------------------------------------------------


class Worker:
    """One ``tests/faults/worker.py`` process (``MODULE``; a subclass names another
    program); output goes to files (never a full pipe)."""

    MODULE = "tests.faults.worker"

    def __init__(
        self, args: Sequence[str], env: dict[str, str], workdir: Path, name: str, stdin: bool
    ) -> None:
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.MODULE, *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                text=True,
            )
        self.reaped = False

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stdout(self) -> str:
        """What it printed."""
        return self.out_path.read_text()

    def stderr_tail(self, lines: int = 15) -> str:
        """The end of its stderr (for assertion messages)."""
        return "\n".join(self.err_path.read_text().splitlines()[-lines:])

    def summary(self) -> dict[str, Any] | None:
        """The JSON summary it printed when it ended normally."""
        for line in self.stdout().splitlines():
            if line.startswith("summary "):
                result: dict[str, Any] = json.loads(line.removeprefix("summary "))
                return result
        return None

    async def wait_ready(self) -> bool:
        """Wait until it connected ("ready"); False if it exited first."""
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while time.monotonic() < deadline:
            if "ready" in self.stdout().split():
                return True
            if not self.alive:
                return False
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.name} never became ready: {self.stderr_tail()}")

    def go(self) -> None:
        """Release a worker started with ``--barrier``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the process still runs."""
        if self.alive:
            self.proc.send_signal(sig)

    async def wait(self, limit: float = SAFETY_TIMEOUT) -> int:
        """Its exit code (negative: the signal that ended it), waiting up to ``limit`` s."""
        deadline = time.monotonic() + limit
        while self.alive:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not end: {self.stderr_tail()}")
            await asyncio.sleep(0.02)
        return int(self.proc.returncode)


class Scenario:
    """One test's workers, ledger, admin connection and seed; kills leftovers at the end."""

    def __init__(self, name: str, postgresql: Any, db_env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.info = postgresql.info
        self.admin = Admin(self.info, excluded_pids=[postgresql.info.backend_pid])
        self.env = {**db_env, "FSMFLOW_DB_RETRY_SECONDS": "60"}
        self.workdir = workdir
        self.ledger_path = workdir / "ledger"
        self.ledger = Ledger(self.ledger_path)
        self.seed = seed_for(name)
        self.rng = random.Random(self.seed)
        self.workers: list[Worker] = []
        self._open_faults: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def spawn(
        self,
        instances: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        **options: Any,
    ) -> Worker:
        """Start a worker on ``instances``; ``options`` become ``--option value`` flags."""
        args = ["--ledger", str(self.ledger_path), "--instances", ",".join(instances)]
        args += ["--seed", str(self.seed)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is not False and value is not None:
                args += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
        worker = Worker(
            args, {**self.env, **(env or {})}, self.workdir, f"w{len(self.workers)}", stdin
        )
        self.workers.append(worker)
        return worker

    async def reap(self, worker: Worker, limit: float = SAFETY_TIMEOUT) -> int:
        """Wait for ``worker`` to end and write its ``exit`` line (once)."""
        code = await worker.wait(limit)
        if not worker.reaped:
            worker.reaped = True
            self.ledger.write("exit", extra=f"rc={code}", pid=worker.pid)
        return code

    async def kill(self, worker: Worker) -> int:
        """SIGKILL ``worker`` and reap it."""
        worker.signal(signal.SIGKILL)
        return await self.reap(worker)

    def inject(self, what: str, detail: str = "-") -> None:
        """Record an outside fault at this instant (``pool`` termination, ``sigterm``...)."""
        self.ledger.write("inject", state=what, extra=detail)

    @contextlib.contextmanager
    def fault(self, what: str, detail: str, settle: float = 0.5) -> Iterator[None]:
        """Record an outside fault that takes time (``owner`` session terminated,
        ``restart``): a window from before it starts until ``settle`` seconds after it
        ended, so that a step started while the worker had not yet noticed the loss
        counts as in flight."""
        self.inject(what, f"begin:{detail}")
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(settle, self._end_fault, what, detail)
            self._open_faults[(what, detail)] = handle

    def open_fault(self, what: str, detail: str, settle: float = 0.5) -> None:
        """Record an outside fault that begins now and ends ``settle`` seconds later (one
        that another coroutine injects, e.g. a proxy cutting a connection)."""
        self.inject(what, f"begin:{detail}")
        handle = asyncio.get_running_loop().call_later(settle, self._end_fault, what, detail)
        self._open_faults[(what, detail)] = handle

    def _end_fault(self, what: str, detail: str) -> None:
        self._open_faults.pop((what, detail), None)
        self.inject(what, f"end:{detail}")

    def close_fault_windows(self) -> None:
        """End every fault window now (the workers have exited)."""
        for (what, detail), handle in list(self._open_faults.items()):
            handle.cancel()
            self._end_fault(what, detail)

    def events(self) -> list[Event]:
        """The ledger so far."""
        return read_ledger(self.ledger_path)

    def analyze(
        self,
        instances: Sequence[str],
        states: int,
        exact: dict[tuple[str, int], int] | None = None,
    ) -> Report:
        """Check the invariants over the ledger and the stored histories."""
        self.close_fault_windows()
        names = state_names(states)
        return analyze(self.events(), self.admin.histories(instances), names, exact or {})

    def close(self) -> None:
        """Kill workers still running (a failed test) and close connections."""
        for handle in self._open_faults.values():
            handle.cancel()
        for worker in self.workers:
            if worker.alive:
                worker.proc.kill()
                worker.proc.wait()
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
        self.admin.close()


def instance_ids(prefix: str, count: int) -> list[str]:
    """``prefix00, prefix01, ...``."""
    return [f"{prefix}{i:03d}" for i in range(count)]


# -- invariants --------------------------------------------------------------------------


@dataclass
class Report:
    """Figures and violations of one scenario (see the module docstring)."""

    instances: int = 0
    completed: int = 0
    kills: int = 0
    exits: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    entries: int = 0
    executions: int = 0
    faults_in_flight: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    misordered: list[str] = field(default_factory=list)
    wrong_context: list[str] = field(default_factory=list)
    over_budget: list[str] = field(default_factory=list)
    unacknowledged: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    not_exact: list[str] = field(default_factory=list)
    executions_by_entry: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def reruns(self) -> int:
        """Step executions beyond one per state entry."""
        return self.executions - self.entries

    def problems(self) -> list[str]:
        """Every violated invariant (empty: all hold)."""
        found: list[str] = []
        for label in (
            "lost",
            "duplicated",
            "incomplete",
            "misordered",
            "wrong_context",
            "over_budget",
            "unacknowledged",
            "overlaps",
            "not_exact",
        ):
            items: list[str] = getattr(self, label)
            if items:
                found.append(f"{label} ({len(items)}): " + "; ".join(items[:10]))
        if self.completed != self.instances:
            found.append(f"completed {self.completed} of {self.instances} instances")
        return found

    def figures(self) -> str:
        """One line of figures for the log and assertion messages."""
        return (
            f"instances {self.completed}/{self.instances} completed, "
            f"kills survived {self.kills}, process exits {dict(self.exits)}, "
            f"injected {dict(self.injected)}, step executions {self.executions} for "
            f"{self.entries} state entries (reruns {self.reruns}, faults while in flight "
            f"{self.faults_in_flight}), overlaps {len(self.overlaps)}, "
            f"histories with lost rows {len(self.lost)}, with duplicated rows "
            f"{len(self.duplicated)}, acknowledged-but-missing rows "
            f"{len(self.unacknowledged)}, wrong final contexts {len(self.wrong_context)}, "
            f"unfinished instances {len(self.incomplete)}"
        )


def analyze(
    events: Sequence[Event],
    histories: dict[str, list[dict[str, Any]]],
    states: Sequence[str],
    exact: dict[tuple[str, int], int],
) -> Report:
    """Check every invariant; ``exact`` pins the execution count of some entries."""
    report = Report(instances=len(histories), entries=len(histories) * len(states))
    _check_histories(report, histories, states)
    starts: Counter[tuple[str, int]] = Counter()
    faults: Counter[tuple[str, int]] = Counter()
    in_flight: set[tuple[str, int]] = set()  # started, not yet acknowledged
    started_by: defaultdict[int, set[tuple[str, int]]] = defaultdict(set)
    running: defaultdict[tuple[str, int], Counter[int]] = defaultdict(Counter)
    windows: dict[str, set[tuple[str, int]]] = {}  # open fault windows: entries exposed
    for ev in events:
        if ev.kind == "start":
            if sum(running[ev.key].values()) > 0:
                others = sorted(p for p, n in running[ev.key].items() if n > 0)
                report.overlaps.append(
                    f"{ev.instance} seq {ev.seq} ({ev.state}): pid {ev.pid} started while "
                    f"pid(s) {others} still ran it"
                )
            running[ev.key][ev.pid] += 1
            starts[ev.key] += 1
            in_flight.add(ev.key)
            for exposed in windows.values():
                exposed.add(ev.key)
            started_by[ev.pid].add(ev.key)
        elif ev.kind in ("end", "abort"):
            if running[ev.key][ev.pid] > 0:
                running[ev.key][ev.pid] -= 1
        elif ev.kind == "rec":
            in_flight.discard(ev.key)
            for keys in started_by.values():
                keys.discard(ev.key)
            _check_acknowledged(report, ev, histories)
        elif ev.kind == "exit":
            report.exits[ev.extra] += 1
            report.kills += ev.extra == f"rc={-signal.SIGKILL}"
            for key in started_by.pop(ev.pid, set()):
                faults[key] += 1
            for counter in running.values():
                counter.pop(ev.pid, None)
        elif ev.kind == "inject":
            _count_injected(report, ev, in_flight, windows, faults)
    report.executions = sum(starts.values())
    report.executions_by_entry = dict(starts)
    report.faults_in_flight = sum(faults.values())
    for key, count in sorted(starts.items()):
        if count > 1 + faults[key]:
            report.over_budget.append(
                f"{key[0]} seq {key[1]}: {count} executions, {faults[key]} fault(s) in flight"
            )
    for key, expected in sorted(exact.items()):
        if starts[key] != expected:
            report.not_exact.append(
                f"{key[0]} seq {key[1]}: {starts[key]} executions, expected {expected}"
            )
    return report


# Outside faults that can make a step run again: the owner session (and its lock) lost.
SESSION_FAULTS = ("owner", "restart")


def _count_injected(
    report: Report,
    ev: Event,
    in_flight: set[tuple[str, int]],
    windows: dict[str, set[tuple[str, int]]],
    faults: Counter[tuple[str, int]],
) -> None:
    phase, _, detail = ev.extra.partition(":")
    if phase == "end":
        for key in windows.pop(f"{ev.state}:{detail}", set()):
            faults[key] += 1
        return
    report.injected[ev.state] += 1
    if ev.state not in SESSION_FAULTS:
        return
    if phase == "begin":  # exposed: in flight now, or started before the window ends
        windows[f"{ev.state}:{detail}"] = set(in_flight)
    else:
        for key in in_flight:
            faults[key] += 1


def _check_histories(
    report: Report, histories: dict[str, list[dict[str, Any]]], states: Sequence[str]
) -> None:
    for instance, rows in sorted(histories.items()):
        seqs = [r["seq"] for r in rows]
        if len(seqs) != len(set(seqs)):
            dupes = sorted(s for s, n in Counter(seqs).items() if n > 1)
            report.duplicated.append(f"{instance}: seq {dupes}")
        expected = list(range(len(states) + 1))
        if seqs != expected:
            gaps = sorted(set(range(max(seqs, default=-1) + 1)) - set(seqs))
            if gaps:  # a row missing below the last one: history lost
                report.lost.append(f"{instance}: seqs {seqs}, missing {gaps}")
            else:  # the instance stopped early (its worker failed)
                report.incomplete.append(f"{instance}: last seq {max(seqs, default=None)}")
            continue
        order = [rows[0]["dest_state"]] + [r["source_state"] for r in rows[1:]]
        statuses = [r["status"] for r in rows]
        if order != [states[0], *states] or statuses != ["running"] * len(states) + ["completed"]:
            report.misordered.append(f"{instance}: states {order}, statuses {statuses}")
            continue
        report.completed += 1
        final = rows[-1]["context"]
        if final != oracle_context(instance, states):
            report.wrong_context.append(f"{instance}: {json.dumps(final)[:200]}")


def _check_acknowledged(
    report: Report, ev: Event, histories: dict[str, list[dict[str, Any]]]
) -> None:
    rows = {r["seq"]: r for r in histories.get(ev.instance, [])}
    row = rows.get(int(ev.extra))
    if row is None or row["source_state"] != ev.state:
        report.unacknowledged.append(f"{ev.instance} seq {ev.extra} from {ev.state}")
