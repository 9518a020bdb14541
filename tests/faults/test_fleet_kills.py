"""The worker fleet under SIGKILL and SIGTERM: three real worker processes on one queue.

Workers are ``tests/faults/fleet_program.py`` processes (a :class:`fsmflow.Worker` each);
the test submits the instances, then kills and restarts workers like a supervisor would.
What every step did is read from the shared, fsync'd ledger (``start``/``end`` lines
around each execution, ``rec`` once its row is committed, ``exit`` when a process ended),
what was stored from the history table, and both are checked by
:func:`tests.faults.support.analyze` (contiguous histories, final contexts equal to a
crash-free run's, no two executions of one state entry overlapping, reruns only for
entries in flight when their process died) plus :func:`rerun_problems` (each rerun is
the rerun of an execution whose process was killed before its row was acknowledged).

The helpers here (:class:`Fleet`) are shared with ``test_fleet_waits.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from statistics import median
from typing import Any

import pytest

from fsmflow import DBConfig, WorkflowDefinition

from . import support
from .fleet_program import FleetConfig, linear_definition
from .support import SAFETY_TIMEOUT, Event, Scenario, instance_ids
from .worker import initial_context, state_names

DEFAULT_SEED = 1212  # the kills' schedule; FSMFLOW_FAULT_SEED replays another
KEY = tuple[str, int]

# -- the fleet's processes (shared with test_fleet_waits.py) -------------------------------


class FleetProcess(support.Worker):
    """One ``python -m tests.faults.fleet_program ...`` process; output goes to files."""

    MODULE = "tests.faults.fleet_program"

    def stderr_text(self) -> str:
        """Everything it logged."""
        return self.err_path.read_text()


class Fleet:
    """The worker and program processes of one scenario, on its ledger and database."""

    def __init__(self, scenario: Scenario, config: FleetConfig, **env: str) -> None:
        self.scenario = scenario
        self.gate = scenario.workdir / "gate"
        self.config = replace(config, ledger=str(scenario.ledger_path), gate=str(self.gate))
        self.definition = linear_definition(config.states)
        self.states = state_names(config.states)
        # Small pools: three workers and the server share two cores.
        self.env = {**scenario.env, "FSMFLOW_POOL_SIZE": "4", **self.config.env(), **env}

    def _spawn(self, args: list[str], env: dict[str, str], stdin: bool) -> FleetProcess:
        name = f"p{len(self.scenario.workers)}"
        process = FleetProcess(args, {**self.env, **env}, self.scenario.workdir, name, stdin)
        self.scenario.workers.append(process)  # killed at the end if a test fails
        return process

    def worker(self, concurrency: int = 4, *, barrier: bool = False, **env: str) -> FleetProcess:
        """Start a worker process."""
        args = ["worker", "--concurrency", str(concurrency)] + ["--barrier"] * barrier
        return self._spawn(args, env, barrier)

    def program(self, instance: str, *, barrier: bool = False, **env: str) -> FleetProcess:
        """Start a plain program on ``instance``."""
        return self._spawn(["program", instance] + ["--barrier"] * barrier, env, barrier)

    async def submit(
        self,
        db: DBConfig,
        instances: Sequence[str],
        definition: WorkflowDefinition | None = None,
    ) -> None:
        """Submit each instance to the fleet (with the linear workflow's start context)."""
        for instance in instances:
            context = initial_context(instance)
            await db.store.submit(definition or self.definition, context, instance_id=instance)

    async def workers_at_once(self, count: int, concurrency: int = 4) -> list[FleetProcess]:
        """Start ``count`` workers and let them begin together (each is connected first),
        so that no worker has run out of work before the last one starts."""
        workers = [self.worker(concurrency, barrier=True) for _ in range(count)]
        for process in workers:
            assert await process.wait_ready(), process.stderr_tail()
        for process in workers:
            process.go()
        return workers

    def open_gate(self) -> None:
        """Let every gated step go on."""
        self.gate.touch()

    def completed(self, instances: Sequence[str], workflow: str = "faults") -> set[str]:
        """The instances whose last row says completed."""
        rows = self.scenario.admin.sql(
            "SELECT instance_id FROM fsmflow_transitions WHERE workflow_name = %s "
            "AND instance_id = ANY(%s) AND status = 'completed'",
            (workflow, list(instances)),
        )
        return {row["instance_id"] for row in rows}

    async def wait_completed(
        self, instances: Sequence[str], limit: float = SAFETY_TIMEOUT, workflow: str = "faults"
    ) -> None:
        """Wait until every instance completed (an AssertionError after ``limit`` s)."""
        deadline = time.monotonic() + limit
        while len(left := set(instances) - self.completed(instances, workflow)) > 0:
            assert time.monotonic() < deadline, (
                f"{len(left)} instance(s) unfinished after {limit:.0f} s: {sorted(left)[:10]}\n"
                + self.tails()
            )
            await asyncio.sleep(0.05)

    def registered(self, process: FleetProcess) -> bool:
        """True once the worker is on the workers table (its signal handling is set)."""
        rows = self.scenario.admin.sql(
            "SELECT 1 FROM fsmflow_transitions_workers WHERE pid = %s", (process.pid,)
        )
        return bool(rows)

    async def wait_registered(self, process: FleetProcess) -> None:
        """Wait until the worker registered itself."""
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while not self.registered(process):
            assert process.alive, f"{process.name} exited: {process.stderr_tail()}"
            assert time.monotonic() < deadline, f"{process.name} never registered"
            await asyncio.sleep(0.02)

    async def stop(self, process: FleetProcess) -> int:
        """SIGTERM a worker (once it registered) and reap it: its exit code."""
        await self.wait_registered(process)
        self.scenario.inject("sigterm", str(process.pid))
        process.signal(signal.SIGTERM)
        return await self.scenario.reap(process)

    def queue(self) -> list[dict[str, Any]]:
        """The queue's rows (``ready_at`` as text: it may be 'infinity'; ``later``: not
        ready yet by the server's clock)."""
        return self.scenario.admin.sql(
            "SELECT workflow_name, instance_id, claimed_by, ready_at::text AS ready_at, "
            "ready_at > now() AS later "
            "FROM fsmflow_transitions_queue ORDER BY 1, 2"
        )

    def tails(self) -> str:
        """The end of every process's stderr (for assertion messages)."""
        return "\n".join(f"--- {p.name}\n{p.stderr_tail(8)}" for p in self.scenario.workers)


def unacknowledged(events: Sequence[Event], pid: int) -> set[KEY]:
    """State entries ``pid`` started whose row nobody acknowledged (so far)."""
    started = {e.key for e in events if e.kind == "start" and e.pid == pid}
    return started - {e.key for e in events if e.kind == "rec"}


def executions(events: Sequence[Event]) -> dict[KEY, list[Event]]:
    """The ``start`` lines of each state entry, in ledger order."""
    found: defaultdict[KEY, list[Event]] = defaultdict(list)
    for event in events:
        if event.kind == "start":
            found[event.key].append(event)
    return dict(found)


def rerun_problems(
    events: Sequence[Event], states: Sequence[str]
) -> tuple[list[str], Counter[str]]:
    """Problems with the ledger beyond :func:`support.analyze`'s, and the executions cut
    off by their process's end, by cause.

    Every ``start`` names the state the entry's seq stands for (``step_info().seq`` is the
    state's index in the linear workflow); every entry got a ``rec`` unless the process of
    its last execution was SIGKILLed (between the commit and the listener); and each execution
    of an entry but its last was cut off: its process ended (``exit``) before anyone
    acknowledged the entry, either inside the step (no ``end``) or after it, before its row
    was committed.
    """
    position = {e: n for n, e in enumerate(events)}
    exits = {e.pid: e for e in events if e.kind == "exit"}
    recs = {e.key: e for e in reversed(events) if e.kind == "rec"}
    ended = {(e.pid, e.key): e.kind for e in events if e.kind in ("end", "abort")}
    phases = {"end": "after the step", "abort": "cancelled in the step"}
    problems: list[str] = []
    causes: Counter[str] = Counter()
    for key, runs in sorted(executions(events).items()):
        for run in runs:
            if run.seq != states.index(run.state):
                problems.append(f"{key}: step {run.state} started at seq {run.seq}")
        if key not in recs:  # its row is stored (analyze checks): committed, then killed?
            last_exit = exits.get(runs[-1].pid)
            if last_exit is None or last_exit.extra != f"rc={-signal.SIGKILL}":
                problems.append(f"{key}: never acknowledged, yet its process was not killed")
            causes["rc=-9 after the commit (no rerun)"] += 1
        for run in runs[:-1]:
            end = exits.get(run.pid)
            rec = recs.get(key)
            if end is None or position[end] < position[run]:
                problems.append(f"{key}: ran again although pid {run.pid} did not die in it")
            elif rec is not None and position[rec] < position[end]:
                problems.append(f"{key}: ran again although acknowledged before pid {run.pid} died")
            else:
                phase = phases.get(ended.get((run.pid, key), ""), "inside the step")
                causes[f"{end.extra} {phase}"] += 1
    return problems, causes


def seeded(scenario: Scenario) -> int:
    """A fixed seed for this test's random choices unless ``FSMFLOW_FAULT_SEED`` is set."""
    seed = int(os.environ.get("FSMFLOW_FAULT_SEED") or DEFAULT_SEED)
    scenario.seed = seed
    scenario.rng.seed(seed)
    print(f"[{scenario.name}] this test uses the fixed seed {seed} (FSMFLOW_FAULT_SEED: another)")
    return seed


def assert_clean(
    scenario: Scenario,
    fleet: Fleet,
    instances: Sequence[str],
    exact: dict[KEY, int] | None = None,
) -> str:
    """Every invariant over the ledger and the histories (``exact``: pinned execution
    counts of some entries); the figures line."""
    report = scenario.analyze(instances, len(fleet.states), exact)
    problems, causes = rerun_problems(scenario.events(), fleet.states)
    figures = f"{report.figures()}; executions cut off, by cause {dict(causes)}"
    assert not report.problems() and not problems, f"{report.problems()} {problems}\n{figures}"
    return figures


# -- random SIGKILLs under a supervisor ---------------------------------------------------

KILLS = 12
KILL_STATES = 6


@pytest.mark.timeout(300)
async def test_random_sigkills_of_three_workers_on_200_instances(
    scenario: Scenario, db_config: DBConfig
) -> None:
    """Kill k lands once about k/(KILLS+2) of the state entries are acknowledged (give or
    take a random third of that), on a random worker that has a step in flight; the
    supervisor starts a new worker at once. Pacing by progress, not by the clock, keeps
    every kill on running work however fast or slow the machine is."""
    seed = seeded(scenario)
    fleet = Fleet(
        scenario,
        FleetConfig(states=KILL_STATES, sleep=(0.03, 0.1), seed=seed),
        FSMFLOW_WORKER_SWEEP_SECONDS="1",
    )
    instances = instance_ids("k", 200)
    await fleet.submit(db_config, instances)
    entries = len(instances) * KILL_STATES
    step = entries / (KILLS + 2)  # the last kill at ~7/8 of the way: work left to hit
    thresholds = [(k + scenario.rng.uniform(-0.3, 0.3)) * step for k in range(1, KILLS + 1)]
    started = time.monotonic()
    workers = await fleet.workers_at_once(3, concurrency=6)
    kills, hits = 0, 0
    deadline = started + 2 * SAFETY_TIMEOUT
    while len(fleet.completed(instances)) < len(instances):
        assert time.monotonic() < deadline, f"unfinished after {kills} kills\n{fleet.tails()}"
        events = scenario.events()
        busy = [n for n, w in enumerate(workers) if unacknowledged(events, w.pid)]
        acknowledged = len({e.key for e in events if e.kind == "rec"})
        if kills < KILLS and acknowledged >= thresholds[kills] and busy:
            slot = scenario.rng.choice(busy)
            assert await scenario.kill(workers[slot]) == -signal.SIGKILL
            kills += 1
            hits += bool(unacknowledged(scenario.events(), workers[slot].pid))
            workers[slot] = fleet.worker(concurrency=6)  # the supervisor restarts it
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    codes = [await fleet.stop(w) for w in workers]

    figures = assert_clean(scenario, fleet, instances)
    print(
        f"[fleet SIGKILL] {kills} kills ({hits} with a state entry in flight) of 3 workers "
        f"on {len(instances)} instances x {KILL_STATES} states, all complete in "
        f"{elapsed:.1f} s; {figures}"
    )
    assert codes == [0, 0, 0], fleet.tails()
    assert kills == KILLS, f"all instances completed after only {kills} kills: {figures}"
    assert hits > 0, "no kill landed while a step was in flight"


# -- SIGTERM under load -------------------------------------------------------------------

# A sweep far longer than any wait below: whatever the survivors take over after SIGTERM,
# they take because the stopping worker gave it back and woke them, not because a sweep ran.
NO_SWEEP = {"FSMFLOW_WORKER_SWEEP_SECONDS": "60", "FSMFLOW_WORKER_STALE_SECONDS": "300"}
PROMPTLY = 30.0  # half the sweep: a bound on a hang, not a measurement


@pytest.mark.timeout(300)
async def test_sigterm_of_one_loaded_worker_exits_0_and_the_others_take_its_instances(
    scenario: Scenario, db_config: DBConfig
) -> None:
    """The victim is the worker running step s01 of ``held``, which waits at the gate
    until the victim has seen the signal: that step then finishes within the grace and is
    recorded, and ``held`` (like any other instance the victim was in the middle of) is
    given back unfinished, for the others to run its next steps."""
    seed = seeded(scenario)
    config = FleetConfig(
        states=4, sleep=(0.02, 0.06), seed=seed, gated=frozenset({("held", "s01")})
    )
    fleet = Fleet(scenario, config, **NO_SWEEP)
    instances = ["held", *instance_ids("t", 90)]
    await fleet.submit(db_config, instances)
    workers = await fleet.workers_at_once(3)
    held = ("held", 1)
    first = await _until(lambda: executions(scenario.events()).get(held), "held's s01")
    victim = next(w for w in workers if w.pid == first[0].pid)

    def loaded() -> bool:  # meanwhile its other slots keep working
        events = scenario.events()
        return sum(1 for e in events if e.kind == "rec" and e.pid == victim.pid) >= 10

    await _until(loaded, "the victim under load")
    scenario.inject("sigterm", str(victim.pid))
    victim.signal(signal.SIGTERM)
    await _until(lambda: "no new claims" in victim.stderr_text(), "the victim stops claiming")
    fleet.open_gate()
    code = await scenario.reap(victim)
    await fleet.wait_completed(instances, limit=PROMPTLY)
    codes = [await fleet.stop(w) for w in workers if w is not victim]

    exact = {(i, seq): 1 for i in instances for seq in range(4)}  # nothing ran twice
    figures = assert_clean(scenario, fleet, instances, exact=exact)
    events = scenario.events()
    runs = executions(events)
    begun = {e.instance for e in events if e.kind == "start" and e.pid == victim.pid}
    given_back = {i for i in begun if runs[(i, 3)][0].pid != victim.pid}  # its last step
    print(
        f"[fleet SIGTERM] victim exit {code}, summary {victim.summary()}; "
        f"{len(given_back)} instance(s) it had begun were finished by the others; {figures}"
    )
    assert code == 0, victim.stderr_tail()
    assert runs[held][0].pid == victim.pid and runs[("held", 2)][0].pid != victim.pid
    assert "held" in given_back and (victim.summary() or {}).get("released", 0) >= 1
    assert codes == [0, 0], fleet.tails()


@pytest.mark.timeout(300)
async def test_sigterm_with_a_step_longer_than_the_grace_exits_75_and_it_runs_elsewhere(
    scenario: Scenario, db_config: DBConfig
) -> None:
    seed = seeded(scenario)
    config = FleetConfig(
        states=4, sleep=(0.02, 0.06), seed=seed, gated=frozenset({("slow", "s02")})
    )
    fleet = Fleet(scenario, config, FSMFLOW_SHUTDOWN_GRACE_SECONDS="0.5", **NO_SWEEP)
    instances = ["slow", *instance_ids("t", 30)]
    await fleet.submit(db_config, instances)
    workers = await fleet.workers_at_once(3)
    slow = ("slow", 2)
    first = await _until(lambda: executions(scenario.events()).get(slow), "slow's s02")
    victim = next(w for w in workers if w.pid == first[0].pid)
    code = await fleet.stop(victim)  # its step s02 of "slow" waits for the gate: cancelled
    fleet.open_gate()
    await fleet.wait_completed(instances, limit=PROMPTLY)
    codes = [await fleet.stop(w) for w in workers if w is not victim]

    events = scenario.events()
    runs = executions(events)[slow]
    figures = assert_clean(scenario, fleet, instances, exact={slow: 2, ("slow", 3): 1})
    print(f"[fleet SIGTERM past the grace] victim exit {code}, summary {victim.summary()}; "
          f"{figures}")  # fmt: skip
    assert code == 75, victim.stderr_tail()
    assert (victim.summary() or {}).get("steps_cancelled", 0) >= 1
    assert any(e.kind == "abort" and e.key == slow and e.pid == victim.pid for e in events)
    assert runs[1].pid != victim.pid and runs[1].pid in {w.pid for w in workers}
    assert codes == [0, 0], fleet.tails()


# -- takeover after SIGKILL ---------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_a_sigkilled_workers_instances_complete_in_the_others_after_the_sweep(
    scenario: Scenario, db_config: DBConfig
) -> None:
    seed = seeded(scenario)
    config = FleetConfig(states=4, sleep=(0.02, 0.05), seed=seed, gated=frozenset({("*", "s02")}))
    fleet = Fleet(scenario, config, FSMFLOW_WORKER_SWEEP_SECONDS="1")
    instances = instance_ids("h", 6)
    await fleet.submit(db_config, instances)
    workers = await fleet.workers_at_once(3)

    def inside_s02() -> Counter[int]:
        return Counter(runs[0].pid for (_, seq), runs in executions(scenario.events()).items()
                       if seq == 2)  # fmt: skip

    await _until(lambda: sum(inside_s02().values()) == len(instances), "all inside s02")
    victim_pid = inside_s02().most_common(1)[0][0]
    victim = next(w for w in workers if w.pid == victim_pid)
    assert await scenario.kill(victim) == -signal.SIGKILL
    killed_at = scenario.events()[-1]
    fleet.open_gate()
    await fleet.wait_completed(instances)
    codes = [await fleet.stop(w) for w in workers if w is not victim]

    events = scenario.events()
    runs = executions(events)
    theirs = {i for (i, seq), r in runs.items() if seq == 2 and r[0].pid == victim_pid}
    exact = {(i, seq): 1 for i in instances for seq in range(4)}
    exact.update({(i, 2): 2 for i in theirs})  # killed inside s02: it ran again, once
    figures = assert_clean(scenario, fleet, instances, exact=exact)
    takeovers = [(runs[(i, 2)][1].time_ns - killed_at.time_ns) / 1e9 for i in theirs]
    print(f"[fleet takeover] {len(theirs)} instance(s) of the killed worker taken over in "
          f"p50 {median(takeovers):.2f} s, max {max(takeovers):.2f} s; {figures}")  # fmt: skip
    for instance in theirs:
        assert runs[(instance, 2)][1].pid != victim_pid
        assert runs[(instance, 3)][0].pid != victim_pid
    assert codes == [0, 0], fleet.tails()


async def _until(condition: Any, what: str) -> Any:
    """Poll ``condition()`` until it returns something true; that value."""
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while not (value := condition()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)
    return value
