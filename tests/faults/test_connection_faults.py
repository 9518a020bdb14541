"""Lost connections: around the COMMIT of one append, and at random while 50 instances run.

An append is one autocommit INSERT. When the connection drops during it, the client
cannot know whether the row committed; fsmflow reads the row back and compares the
attempt id it wrote, and must neither write it twice nor run the step again.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from .proxy import FaultProxy
from .support import OWNER_APPLICATION_NAME, Blocker, Scenario, instance_ids

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
