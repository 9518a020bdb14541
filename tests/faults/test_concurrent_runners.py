"""Several runner processes on the same instances: one owner at a time, nothing run twice.

Executions are compared through the shared ledger: lines of all processes are appended to
one file (``O_APPEND``, fsync'd), so their order in the file is the order in which the
steps started and ended, whatever the processes' clocks say.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from .support import SAFETY_TIMEOUT, Event, Scenario, instance_ids

STATES = 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("runners", "lock"),
    [(2, "try"), (4, "try"), (4, "wait")],
    ids=["2-runners-refused-then-retry", "4-runners-refused-then-retry", "4-runners-waiting"],
)
async def test_runners_started_at_once_on_the_same_instances(
    scenario: Scenario, runners: int, lock: str
) -> None:
    """``try``: a runner refused with InstanceLockedError comes back to the instance later;
    ``wait``: it waits for the lock. Either way each state's step runs once overall."""
    instances = instance_ids("c", 50)
    workers = []
    for _ in range(runners):
        order = list(instances)
        scenario.rng.shuffle(order)  # each runner walks the instances in its own order
        workers.append(
            scenario.spawn(
                order,
                stdin=True,
                states=STATES,
                sleep="0.02:0.1",
                concurrency=10,
                lock=lock,
                barrier=True,
            )
        )
    for worker in workers:
        assert await worker.wait_ready(), worker.stderr_tail()
    for worker in workers:  # started together: every runner is past its start-up now
        worker.go()
    codes = [await scenario.reap(worker) for worker in workers]

    exact = {(i, seq): 1 for i in instances for seq in range(STATES)}
    report = scenario.analyze(instances, STATES, exact)
    executed = Counter(e.pid for e in scenario.events() if e.kind == "start")
    summaries = [w.summary() or {} for w in workers]
    refused = [s.get("refused") for s in summaries]
    print(
        f"[{runners} runners, lock={lock}] steps executed per runner "
        f"{[executed[w.pid] for w in workers]}, InstanceLockedError refusals {refused}; "
        f"{report.figures()}"
    )
    assert codes == [0] * runners, [w.stderr_tail() for w in workers]
    assert not report.problems(), f"{report.problems()}\n{report.figures()}"
    # Every runner saw every instance through to its end (run by it or by another).
    assert [s.get("completed") for s in summaries] == [len(instances)] * runners


@pytest.mark.timeout(300)
async def test_runner_whose_lock_was_lost_between_steps_does_not_run_the_next_one(
    scenario: Scenario,
) -> None:
    """A's session dies while A is between two steps (in a transition's ``after``
    callback, no step running); B, waiting for the lock, takes the instance and runs the
    next step. A must not run that step too: it holds no lock any more. (It may stop with
    OwnershipLostError, or find the step done; it must never execute it alongside B.)"""
    options: dict[str, Any] = {
        "states": 2,
        "sleep": "0.1:0.1",
        "sleep_overrides": {"s01": 4.0},
        "after_sleep": 2.0,
        "lock": "wait",
        "sync": "none",
    }
    a = scenario.spawn(["x"], **options)
    await _until(scenario, lambda e: e.kind == "rec" and e.instance == "x" and e.seq == 0)
    b = scenario.spawn(["x"], **options)  # its runner polls for the lock A holds
    assert await b.wait_ready(), b.stderr_tail()
    [lock] = scenario.admin.fsm_locks()
    with scenario.fault("owner", str(lock["pid"])):
        assert scenario.admin.terminate(lock["pid"])  # A is in the `after` callback now
    code_a, code_b = await scenario.reap(a), await scenario.reap(b)

    report = scenario.analyze(["x"], 2, exact={("x", 0): 1, ("x", 1): 1})
    starts = [(e.pid == a.pid and "A") or "B" for e in scenario.events() if e.kind == "start"]
    print(f"[lock lost between steps] A exit {code_a}, B exit {code_b}, step starts by "
          f"{starts}; {report.figures()}")  # fmt: skip
    assert code_b == 0, b.stderr_tail()
    assert not report.problems(), f"{report.problems()}\n{report.figures()}\nA: {a.stderr_tail(6)}"
    if code_a != 0:
        failed = (a.summary() or {}).get("failed", {})
        assert any(
            "OwnershipLostError" in v or "ConcurrentTransitionError" in v for v in failed.values()
        ), a.stderr_tail()


async def _until(scenario: Scenario, condition: Callable[[Event], bool]) -> None:
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while not any(condition(e) for e in scenario.events()):
        assert time.monotonic() < deadline, "the ledger never showed the awaited event"
        await asyncio.sleep(0.02)
