"""``run_workflow`` cancelled at random points (as ``asyncio.wait_for`` does) never leaks
an advisory lock or a registry entry, and every instance resumes and completes afterwards.

Real runners, a real server; the lock table is read from ``pg_locks`` after every
cancellation. The seed is printed so a failure can be replayed (``FSMFLOW_FAULT_SEED``).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from fsmflow import WorkflowState
from tests.conftest import config_for

from .ownership_support import SAFETY_TIMEOUT, Admin, Steps, linear, runner

WORKFLOW = "cancelled"
STATES = ("s0", "s1", "s2", "s3")
DEFINITION = linear(WORKFLOW, STATES)
CANCELLATIONS = 250  # runs cut short by wait_for, at random points
MAX_RUNS = 3000  # only bounds the loop


async def test_wait_for_cancellations_leak_no_lock(postgresql: Any) -> None:
    env = os.environ.get("FSMFLOW_FAULT_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1 << 31)
    print(f"\n[cancellations] seed {seed} (replay: FSMFLOW_FAULT_SEED={seed})")
    rng = random.Random(seed)
    info = postgresql.info
    admin = Admin(info.host, info.port, info.user, info.dbname)
    config = config_for(info, owner_connections=2)
    steps = Steps(STATES)
    steps.sleep = 0.002
    leaks: list[str] = []
    instances = ["c0"]
    timeouts = runs = 0
    try:
        while timeouts < CANCELLATIONS and runs < MAX_RUNS:
            n, runs = runs, runs + 1
            if rng.random() < 0.3:  # new instances keep unfinished ones around
                instances.append(f"c{len(instances)}")
            instance = rng.choice(instances)
            run = runner(config, DEFINITION, steps, instance).run_workflow()
            try:
                await asyncio.wait_for(run, rng.uniform(0.0, 0.02))
            except TimeoutError:
                timeouts += 1
            if config.store.owned_here(WORKFLOW, instance):
                leaks.append(f"#{n} {instance}: still in the registry")
            held = await admin.locks_left()  # a run gives its lock back just after it ends
            if held:
                leaks.append(f"#{n} {instance}: locks {held} held after the run ended")
                # Ends the leak so later cancellations are judged on their own.
                admin.sql(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE pid = ANY(%s)",
                    ([pid for pid, _ in held],),
                )
        finals = await asyncio.wait_for(
            asyncio.gather(
                *(runner(config, DEFINITION, steps, i).run_workflow() for i in instances),
                return_exceptions=True,
            ),
            SAFETY_TIMEOUT,
        )
    finally:
        await config.close()

    print(f"[cancellations] {timeouts} of {runs} runs cancelled by wait_for")
    assert timeouts >= CANCELLATIONS, "few runs were cancelled: nothing was tested"
    assert leaks == []
    assert all(isinstance(f, WorkflowState) and f.completed for f in finals), finals
    for instance in instances:
        rows = admin.history(WORKFLOW, instance)
        assert [seq for seq, _ in rows] == list(range(len(STATES) + 1)), (instance, rows)
        assert rows[-1][1] == "completed"
    assert await admin.locks_left() == []
    admin.close()
