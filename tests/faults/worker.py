"""The fault-injection worker: K instances of a deterministic linear workflow in one process.

Run as ``python -m tests.faults.worker --ledger PATH --instances i0,i1 ...`` from the
repository root, with the database in the environment (``DB_HOST``, ``DB_PORT`` ...).

Every step execution is written to a *ledger* file outside the database transaction: one
line per event, appended with ``O_APPEND``, flushed and fsync'd before the worker goes on,
so a line survives a SIGKILL that follows it and lines of concurrent processes keep the
order in which they happened. The line format is

    <kind> <pid> <time_ns> <instance> <seq> <state> <extra>

``seq`` is the *state entry*: the seq of the instance's last committed row when the step
started (for a linear workflow, the index of the state). Kinds written here:

- ``start`` / ``end`` — a step execution begins / returns (``end`` also when it raised);
- ``abort`` — an async step execution was cancelled (lost session, shutdown);
- ``rec`` — the runner reported the transition out of ``state`` as committed
  (``transition_recorded``); ``extra`` is the row's seq. This is the acknowledgement;
- ``fault`` — the worker is about to SIGKILL itself at a named point (``extra``);
- ``done`` — ``run_workflow`` returned the completed instance.

The tests add ``exit`` (a worker process ended; ``pid`` is the worker's) and ``inject``
(a fault caused from outside: a terminated backend, a server restart, a signal).

Steps are deterministic (a hash chain over the states visited), so the final context of
every instance is known without running anything: :func:`oracle_context`.

Named fault points, one per instance at most (``--faults '{"i0": ["in_step", "s01"]}'``),
each fired at most once over all restarts (a ``fault`` line already in the ledger for the
instance disarms it):

- ``before_step`` — at ``step_started``: the step has not run yet;
- ``in_step`` — inside the step, half-way through its sleep (after its ``start`` line);
- ``after_step`` — at ``step_finished``: the step returned, nothing is written yet;
- ``after_commit`` — at ``transition_recorded``: the row is committed and the runner has
  returned from the append, but the application has not acknowledged it (no ``rec``).

Killing a process *while its INSERT is in flight* cannot be done from inside (the append
is one autocommit statement); the tests do it from outside by making the INSERT wait on a
row lock (see ``tests/faults/support.py``, :class:`Blocker`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from fsmflow import (
    DBConfig,
    InstanceLockedError,
    PersistentWorkflowStateMachine,
    RunnerEvent,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowInterruptedError,
    run_program,
)

WORKFLOW = "faults"
logger = logging.getLogger("tests.faults.worker")
POINTS = ("before_step", "in_step", "after_step", "after_commit")


def state_names(count: int) -> list[str]:
    """``s00, s01, ...``: the states of the linear workflow."""
    return [f"s{i:02d}" for i in range(count)]


def definition(states: Sequence[str], after_sleep: float = 0.0) -> WorkflowDefinition:
    """``states[0] -> states[1] -> ...``; the last state completes the instance.

    ``after_sleep`` adds an async ``after`` callback that sleeps on every transition (the
    runner is then between two steps, holding no step, for that long)."""
    after = _sleeper(after_sleep) if after_sleep > 0 else None
    transitions = [
        Transition(trigger=f"{a}_done", source=a, dest=b, after=after) for a, b in pairwise(states)
    ]
    return WorkflowDefinition(name=WORKFLOW, steps=list(states), transitions=transitions)


def _sleeper(seconds: float) -> Callable[[WorkflowContext], Any]:
    async def after(ctx: WorkflowContext) -> None:
        await asyncio.sleep(seconds)

    return after


def initial_context(instance: str) -> dict[str, Any]:
    """What every instance starts with."""
    return {"instance": instance, "acc": "", "visited": []}


def advance(data: dict[str, Any], state: str) -> dict[str, Any]:
    """The deterministic work of ``state``'s step: extend the hash chain."""
    digest = hashlib.sha256(f"{data['acc']}|{data['instance']}|{state}".encode()).hexdigest()
    return {**data, "acc": digest[:16], "visited": [*data["visited"], state]}


def oracle_context(instance: str, states: Sequence[str]) -> dict[str, Any]:
    """The final context of a crash-free run: every step applied once, in order."""
    data = initial_context(instance)
    for state in states:
        data = advance(data, state)
    return data


def step_seconds(seed: int, instance: str, state: str, low: float, high: float) -> float:
    """How long ``state``'s step of ``instance`` sleeps: the same in every process."""
    return random.Random(f"{seed}:{instance}:{state}").uniform(low, high)


class Ledger:
    """Append-only, fsync'd event lines shared by every process of one scenario."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def write(
        self,
        kind: str,
        instance: str = "-",
        seq: int | str = "-",
        state: str = "-",
        extra: str = "-",
        *,
        pid: int | None = None,
    ) -> None:
        """Append one line and make it durable before returning."""
        fields = (kind, pid or os.getpid(), time.time_ns(), instance, seq, state, extra or "-")
        line = " ".join(str(f) for f in fields) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def fired_faults(self) -> set[str]:
        """Instances whose fault already fired (in an earlier process)."""
        if not os.path.exists(self.path):
            return set()
        with open(self.path) as lines:
            return {p[3] for p in (ln.split() for ln in lines) if p and p[0] == "fault"}


@dataclass
class Options:
    """What one worker process does (from the command line)."""

    ledger: Ledger
    instances: list[str]
    states: list[str]
    sleep: tuple[float, float]
    sleep_overrides: dict[str, float]
    seed: int
    sync: str
    concurrency: int
    lock: str
    lock_timeout: float
    faults: dict[str, tuple[str, str]]
    after_sleep: float
    barrier: bool
    report_locks: bool


@dataclass
class Outcome:
    """What happened to the instances of this process."""

    completed: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    refused: int = 0
    errors: list[BaseException] = field(default_factory=list)


class Workload:
    """Steps, listener and fault points of one worker process."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.ledger = options.ledger
        fired = options.ledger.fired_faults()
        self.faults = {i: f for i, f in options.faults.items() if i not in fired}
        self.index = {state: i for i, state in enumerate(options.states)}
        self.definition = definition(options.states, options.after_sleep)

    def steps(self) -> dict[str, Any]:
        """One step per state: odd states sync (in a thread), even states async, by default."""
        mode = self.options.sync
        return {
            state: self._sync_step(state)
            if mode == "all" or (mode == "odd" and i % 2 == 1)
            else self._async_step(state)
            for i, state in enumerate(self.options.states)
        }

    def _duration(self, instance: str, state: str) -> float:
        if state in self.options.sleep_overrides:
            return self.options.sleep_overrides[state]
        low, high = self.options.sleep
        return step_seconds(self.options.seed, instance, state, low, high)

    def _async_step(self, state: str) -> Callable[[WorkflowContext], Any]:
        seq = self.index[state]

        async def execute(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
            instance = ctx.data["instance"]
            half = self._duration(instance, state) / 2
            self.ledger.write("start", instance, seq, state)
            try:
                await asyncio.sleep(half)
                self._maybe_fault("in_step", instance, seq, state)
                await asyncio.sleep(half)
                data = advance(ctx.data, state)
            except asyncio.CancelledError:
                self.ledger.write("abort", instance, seq, state)
                raise
            self.ledger.write("end", instance, seq, state)
            return WorkflowContext(data=data), None

        execute.__name__ = f"step_{state}"
        return execute

    def _sync_step(self, state: str) -> Callable[[WorkflowContext], Any]:
        seq = self.index[state]

        def execute(ctx: WorkflowContext) -> tuple[WorkflowContext, None]:
            instance = ctx.data["instance"]
            half = self._duration(instance, state) / 2
            self.ledger.write("start", instance, seq, state)
            try:
                time.sleep(half)
                self._maybe_fault("in_step", instance, seq, state)
                time.sleep(half)
                data = advance(ctx.data, state)
            finally:
                # A sync step cannot be cancelled: it always runs to its end.
                self.ledger.write("end", instance, seq, state)
            return WorkflowContext(data=data), None

        execute.__name__ = f"step_{state}"
        return execute

    def listener(self, event: RunnerEvent) -> None:
        """Fault points at the runner's events; ``rec`` lines for acknowledged rows."""
        if event.point == "step_started":
            self._maybe_fault("before_step", event.instance_id, event.seq, event.state)
        elif event.point == "step_finished":
            self._maybe_fault("after_step", event.instance_id, event.seq, event.state)
        elif event.point == "transition_recorded":
            entry = event.seq - 1
            self._maybe_fault("after_commit", event.instance_id, entry, event.state)
            self.ledger.write("rec", event.instance_id, entry, event.state, str(event.seq))

    def _maybe_fault(self, point: str, instance: str, seq: int, state: str) -> None:
        if self.faults.get(instance) == (point, state):
            self.ledger.write("fault", instance, seq, state, point)
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached: SIGKILL is not deliverable late


async def run_instance(
    config: DBConfig,
    workload: Workload,
    instance: str,
    gate: asyncio.Semaphore,
    outcome: Outcome,
) -> None:
    """Run one instance to its end; with ``--lock try`` retry it while another owns it."""
    options = workload.options
    rng = random.Random(f"{options.seed}:{os.getpid()}:{instance}")
    while True:
        runner = PersistentWorkflowStateMachine(
            config,
            workload.definition,
            steps=workload.steps(),
            instance_id=instance,
            wait=options.lock == "wait",
            lock_timeout=options.lock_timeout,
            listeners=[workload.listener],
        )
        async with gate:
            try:
                state = await runner.run_workflow(context=initial_context(instance))
            except InstanceLockedError:
                if options.lock == "wait":
                    raise
                outcome.refused += 1
                state = None
        if state is not None:
            workload.ledger.write("done", instance, state.seq, state.current_state)
            outcome.completed.append(instance)
            return
        await asyncio.sleep(rng.uniform(0.02, 0.1))


async def held_locks(config: DBConfig) -> int:
    """fsmflow advisory locks granted in this database (any session), once the releases in
    flight had their round trip: a run gives its lock back just after it returns. Polls up
    to 10 s while locks remain, so a lock that is never given back still counts."""
    conn = await config.store.connect()
    try:
        for _ in range(1000):
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE d.datname = current_database() AND l.locktype = 'advisory' "
                "AND l.objsubid = 1 AND l.granted",
            )
            if not count:
                break
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return int(count)


async def main(options: Options) -> None:
    """Run every instance; raise the first failure (exit 1) or interruption (exit 75)."""
    config = DBConfig()
    workload = Workload(options)
    outcome = Outcome()
    summary: dict[str, Any] = {}
    try:
        await config.store.open()
        print("ready", flush=True)
        if options.barrier:
            await asyncio.to_thread(sys.stdin.readline)
        gate = asyncio.Semaphore(options.concurrency)
        results = await asyncio.gather(
            *(run_instance(config, workload, i, gate, outcome) for i in options.instances),
            return_exceptions=True,
        )
        for instance, result in zip(options.instances, results, strict=True):
            if isinstance(result, WorkflowInterruptedError):
                outcome.interrupted.append(instance)
                outcome.errors.append(result)
            elif isinstance(result, BaseException):
                outcome.failed[instance] = f"{type(result).__name__}: {result}"
                logger.error("instance %s failed", instance, exc_info=result)
                outcome.errors.insert(0, result)
        if options.report_locks:
            summary["locks_at_end"] = await held_locks(config)
    finally:
        await config.close()
    summary.update(
        completed=len(outcome.completed),
        interrupted=len(outcome.interrupted),
        failed=outcome.failed,
        refused=outcome.refused,
    )
    print("summary " + json.dumps(summary), flush=True)
    if outcome.errors:
        raise outcome.errors[0]


def parse(argv: Sequence[str]) -> Options:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--instances", required=True, help="comma-separated instance ids")
    parser.add_argument("--states", type=int, default=4)
    parser.add_argument("--sleep", default="0.01:0.05", help="MIN:MAX seconds per step")
    parser.add_argument("--sleep-overrides", default="{}", help='{"s01": 4.0}')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sync", choices=("odd", "all", "none"), default="odd")
    parser.add_argument("--concurrency", type=int, default=0, help="0: all at once")
    parser.add_argument("--lock", choices=("wait", "try"), default="wait")
    parser.add_argument("--lock-timeout", type=float, default=60.0)
    parser.add_argument("--faults", default="{}", help='{"i0": ["in_step", "s01"]}')
    parser.add_argument("--after-sleep", type=float, default=0.0)
    parser.add_argument("--barrier", action="store_true", help="start on a line on stdin")
    parser.add_argument("--report-locks", action="store_true")
    args = parser.parse_args(argv)
    instances = [i for i in args.instances.split(",") if i]
    low, high = (float(x) for x in args.sleep.split(":"))
    faults = {i: (p, s) for i, (p, s) in json.loads(args.faults).items()}
    for point, _ in faults.values():
        if point not in POINTS:
            parser.error(f"unknown fault point {point!r}; one of {', '.join(POINTS)}")
    return Options(
        ledger=Ledger(args.ledger),
        instances=instances,
        states=state_names(args.states),
        sleep=(low, high),
        sleep_overrides={k: float(v) for k, v in json.loads(args.sleep_overrides).items()},
        seed=args.seed,
        sync=args.sync,
        concurrency=args.concurrency or len(instances),
        lock=args.lock,
        lock_timeout=args.lock_timeout,
        faults=faults,
        after_sleep=args.after_sleep,
        barrier=args.barrier,
        report_locks=args.report_locks,
    )


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("fsmflow.ownership").setLevel(logging.INFO)
    sys.exit(run_program(main(parse(sys.argv[1:]))))
