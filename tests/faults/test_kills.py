"""SIGKILL: at random instants under a supervisor, and at each named point of each state.

A killed process leaves no chance to clean up: its sessions end when the kernel closes
its sockets, which frees its advisory locks; the next process must resume every instance
at the start of its last unfinished state, rerunning only the steps that were in flight.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from .support import SAFETY_TIMEOUT, Blocker, Event, Scenario, Worker, analyze, instance_ids
from .worker import oracle_context, state_names

# -- random instants ---------------------------------------------------------------------

# 20 instances whose steps sleep 50-250 ms; a worker is killed at a uniformly random
# instant 0-0.5 s after it connected. The workflow is long enough (states) that the
# instances are still running when the last kill lands, so every kill hits live work.
RANDOM = [
    pytest.param(50, 20, 100, id="50-kills"),
    pytest.param(200, 20, 400, id="200-kills", marks=pytest.mark.stress),
]


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("kills", "count", "states"), RANDOM)
async def test_random_sigkills_under_a_supervisor(
    scenario: Scenario, kills: int, count: int, states: int
) -> None:
    instances = instance_ids("r", count)
    options: dict[str, Any] = {"states": states, "sleep": "0.05:0.25", "lock": "wait"}
    killed_while_running = 0
    done_early = False
    deadline = time.monotonic() + 20 * 60
    while killed_while_running < kills and time.monotonic() < deadline:
        worker = scenario.spawn(instances, **options)
        await worker.wait_ready()
        await asyncio.sleep(scenario.rng.uniform(0, 0.5))
        if not worker.alive:  # every instance finished before this kill
            done_early = True
            assert await scenario.reap(worker) == 0, worker.stderr_tail()
            break
        finished = {e.instance for e in scenario.events() if e.kind == "done"}
        assert await scenario.kill(worker) == -9
        killed_while_running += len(finished) < count
    # The supervisor's last start: no kill, the worker must finish every instance.
    final = scenario.spawn(instances, **options)
    code = await scenario.reap(final, limit=SAFETY_TIMEOUT * 5)

    report = scenario.analyze(instances, states)
    events = scenario.events()
    last_kill = max(n for n, e in enumerate(events) if e.kind == "exit" and e.extra == "rc=-9")
    acknowledged = len({e.key for e in events[:last_kill] if e.kind == "rec"})
    print(
        f"[random SIGKILL] kills landing on running work {killed_while_running}; "
        f"{acknowledged} of {report.entries} state entries acknowledged at the last kill; "
        f"{report.figures()}"
    )
    assert code == 0, final.stderr_tail()
    assert not report.problems(), f"{report.problems()}\n{report.figures()}"
    assert killed_while_running == kills and not done_early, (
        f"only {killed_while_running} of {kills} kills hit running work: {report.figures()}"
    )


# -- named points ------------------------------------------------------------------------

STATES = 3
# Executions of the faulted state's step, counting the killed one; every other state's
# step runs exactly once.
POINTS = {
    # killed at step_started, before the step body ran: nothing to rerun
    "before_step": 1,
    # killed half-way through the step: it runs again from its start
    "in_step": 2,
    # killed after the step returned, before its row was sent: it runs again
    "after_step": 2,
    # killed while its INSERT waited (row inserted, not committed), and the session was
    # terminated before the INSERT could go on: the row rolled back, the step runs again
    "insert_rolled_back": 2,
    # killed while its INSERT waited (row inserted, not committed); the orphaned session
    # then finished the INSERT and committed it: the process died before learning it did,
    # yet the step does not run again (the stored row says the state is finished)
    "insert_committed": 1,
    # killed after the row was committed and the runner returned, before the
    # application acknowledged it: nothing runs again
    "after_commit": 1,
}
INSERT_POINTS = ("insert_rolled_back", "insert_committed")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", list(POINTS))
async def test_sigkill_at_a_named_point_in_each_state(scenario: Scenario, point: str) -> None:
    names = state_names(STATES)
    targets = {f"k-{point}-{state}": index for index, state in enumerate(names)}
    instances = list(targets)
    options: dict[str, Any] = {"states": STATES, "sleep": "0.05:0.05", "concurrency": 1}
    blockers: dict[str, Blocker] = {}
    if point in INSERT_POINTS:
        if point == "insert_committed":
            _require_no_disconnect_checks(scenario)
        # The append of seq index+1 (the row that finishes state `index`) will wait.
        blockers = {i: Blocker(scenario.admin, i, index + 1) for i, index in targets.items()}
    else:
        options["faults"] = {i: [point, names[index]] for i, index in targets.items()}

    try:
        starts = await _supervise(scenario, instances, options, blockers, point)
    finally:
        for blocker in blockers.values():
            blocker.release()

    exact = {(i, seq): 1 for i in instances for seq in range(STATES)}
    exact.update({(i, index): POINTS[point] for i, index in targets.items()})
    report = scenario.analyze(instances, STATES, exact)
    print(f"[SIGKILL at {point}] worker starts {starts}; {report.figures()}")
    assert not report.problems(), f"{report.problems()}\n{report.figures()}"
    assert report.kills == STATES, report.figures()


async def _supervise(
    scenario: Scenario,
    instances: list[str],
    options: dict[str, Any],
    blockers: dict[str, Blocker],
    point: str,
) -> int:
    """Restart the worker after each death until it finishes; kill it when its INSERT
    waits on a blocker. Returns how many workers were started."""
    for starts in range(1, 2 * len(instances) + 3):
        worker = scenario.spawn(instances, **options)
        while worker.alive:
            for blocker in blockers.values():
                if not blocker.released and (backend := blocker.blocked(scenario.admin)):
                    await _kill_during_insert(scenario, worker, blocker, backend, point)
            await asyncio.sleep(0.02)
        code = await scenario.reap(worker)
        if code == 0:
            return starts
        assert code == -9, f"worker failed ({code}): {worker.stderr_tail()}"
    raise AssertionError(f"the worker never finished: {worker.stderr_tail()}")


async def _kill_during_insert(
    scenario: Scenario, worker: Worker, blocker: Blocker, backend: int, point: str
) -> None:
    assert await scenario.kill(worker) == -9
    if point == "insert_rolled_back":
        assert scenario.admin.terminate(backend)
    blocker.release()
    # Let the orphaned session finish (commit or not) before the next worker starts: its
    # lock would fence the next worker anyway, this only makes the outcome certain.
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while scenario.admin.sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)):
        assert time.monotonic() < deadline, "the orphaned session never ended"
        await asyncio.sleep(0.02)
    landed = scenario.admin.sql(
        "SELECT 1 FROM fsmflow_transitions WHERE instance_id = %s AND seq = %s",
        (blocker.instance, blocker.seq),
    )
    assert bool(landed) == (point == "insert_committed"), (
        f"{point}: row {blocker.instance} seq {blocker.seq} landed={bool(landed)}"
    )


def _require_no_disconnect_checks(scenario: Scenario) -> None:
    setting = scenario.admin.sql("SHOW client_connection_check_interval")[0]
    if setting["client_connection_check_interval"] not in ("0", "0ms"):
        pytest.skip(
            "client_connection_check_interval is set on this server: a session whose "
            "client died aborts its waiting INSERT instead of committing it"
        )


# -- the checks themselves ---------------------------------------------------------------


def test_the_invariant_checks_catch_each_violation() -> None:
    """The analysis is not vacuous: each kind of violation, planted in a made-up ledger and
    history, is reported (no database, no process)."""
    states = state_names(2)

    def line(kind: str, pid: int, instance: str, seq: int, extra: str = "-") -> Event:
        return Event(kind, pid, 0, instance, seq, states[seq] if seq >= 0 else "-", extra)

    def history(instance: str, seqs: list[int], context: Any = None) -> list[dict[str, Any]]:
        final = oracle_context(instance, states) if context is None else context
        rows = [{"seq": 0, "source_state": None, "dest_state": "s00", "status": "running"}]
        rows += [
            {"seq": k, "source_state": states[k - 1], "dest_state": None, "status": "running"}
            for k in range(1, 3)
        ]
        rows[-1]["status"] = "completed"
        found = [r for r in rows if r["seq"] in seqs]
        for row in found:
            row["context"] = final
        return found

    clean = [
        line("start", 1, "ok", 0),
        line("end", 1, "ok", 0),
        line("rec", 1, "ok", 0, "1"),
        line("start", 1, "ok", 1),
        line("exit", 1, "ok", -1, "rc=-9"),  # killed in flight: one rerun allowed
        line("start", 2, "ok", 1),
        line("end", 2, "ok", 1),
        line("rec", 2, "ok", 1, "2"),
    ]
    assert not analyze(clean, {"ok": history("ok", [0, 1, 2])}, states, {}).problems()

    planted = [
        line("start", 1, "overlap", 0),
        line("start", 2, "overlap", 0),  # while pid 1 still runs it
        line("start", 3, "rerun", 0),
        line("end", 3, "rerun", 0),
        line("start", 3, "rerun", 0),  # again, without any fault
        line("rec", 3, "gap", 0, "1"),  # acknowledged, then missing from the history
    ]
    histories = {
        "overlap": history("overlap", [0, 1, 2]),
        "rerun": history("rerun", [0, 1, 2]),
        "gap": history("gap", [0, 2]),
        "context": history("context", [0, 1, 2], context={"acc": "wrong"}),
    }
    report = analyze(planted, histories, states, {("rerun", 0): 1})
    # The overlapping entry also ran twice with no fault: over budget like the rerun.
    assert [len(x) for x in (report.overlaps, report.over_budget, report.not_exact)] == [1, 2, 1]
    assert [len(x) for x in (report.lost, report.unacknowledged, report.wrong_context)] == [1, 1, 1]
