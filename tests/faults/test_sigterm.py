"""SIGTERM during a step: the process stops cleanly (exit 75), releases its locks, leaves no
session behind, and the next start resumes and completes every instance.

Within the grace period the running steps finish and are recorded, so nothing runs again;
once it expires (or on a second signal) the steps are cancelled and run again on resume.
Both async steps (cancelled on the loop) and sync steps (a thread that cannot be stopped,
abandoned at exit) are covered.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from .support import SAFETY_TIMEOUT, Scenario, instance_ids

STATES = 3
# variant: (grace seconds, step seconds, signals sent, executions of the interrupted step)
VARIANTS = {
    "step-finishes-within-grace": (20.0, 1.5, 1, 1),
    "grace-expires": (0.5, 3.0, 1, 2),
    "second-signal": (20.0, 3.0, 2, 2),
}
UNCLEAN = (
    "Traceback",
    "Exception ignored",
    "Exception in thread",
    "Task was destroyed",
    "never awaited",
    "Unclosed",
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sync", ["none", "all"], ids=["async-steps", "sync-steps"])
@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_sigterm_during_a_step(scenario: Scenario, variant: str, sync: str) -> None:
    grace, step, signals, expected = VARIANTS[variant]
    instances = instance_ids("g", 6)
    options: dict[str, Any] = {"states": STATES, "sleep": "0.05:0.05", "sync": sync}
    env = {"FSMFLOW_SHUTDOWN_GRACE_SECONDS": str(grace)}
    long_first = {"s00": step}  # the step the signal lands in
    worker = scenario.spawn(
        instances, env=env, report_locks=True, sleep_overrides=long_first, **options
    )
    await _until_all_started(scenario, instances)  # every instance is inside step s00
    for n in range(signals):
        if n:
            await asyncio.sleep(0.3)
        scenario.inject("sigterm", str(n))
        worker.signal(signal.SIGTERM)
    code = await scenario.reap(worker)

    # Clean exit: the documented code, no traceback or leaked resources, locks given back
    # before the connections closed, and no session left on the server.
    stderr = worker.err_path.read_text()
    summary = worker.summary() or {}
    left = await scenario.admin.wait_no_worker_backends()
    events = scenario.events()
    signalled = next(n for n, e in enumerate(events) if e.kind == "inject")
    late = [e for e in events[signalled:] if e.kind == "start" and e.pid == worker.pid]
    recorded = {e.instance for e in events if e.kind == "rec" and e.pid == worker.pid}
    print(f"[SIGTERM {variant}, {sync=}] exit {code}, summary {summary}, sessions left "
          f"{len(left)}, steps recorded before exit {len(recorded)}")  # fmt: skip
    assert code == 75, stderr[-2000:]
    assert not [m for m in UNCLEAN if m in stderr], stderr[-3000:]
    assert summary.get("interrupted") == len(instances), summary
    assert summary.get("locks_at_end") == 0, summary
    assert left == [] and await scenario.admin.locks_left() == []
    assert late == [], f"steps started after SIGTERM: {late}"
    assert recorded == (set(instances) if expected == 1 else set()), recorded

    resumed = scenario.spawn(instances, **options)
    assert await scenario.reap(resumed) == 0, resumed.stderr_tail()
    exact = {(i, seq): 1 for i in instances for seq in range(STATES)}
    exact.update({(i, 0): expected for i in instances})
    report = scenario.analyze(instances, STATES, exact)
    print(f"[SIGTERM {variant}, {sync=}] after resume: {report.figures()}")
    assert not report.problems(), f"{report.problems()}\n{report.figures()}"


async def _until_all_started(scenario: Scenario, instances: list[str]) -> None:
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while {e.instance for e in scenario.events() if e.kind == "start"} != set(instances):
        assert time.monotonic() < deadline, "the instances never started"
        await asyncio.sleep(0.02)
