"""What starting an instance costs beyond its transitions: round trips and commits.

One sequential accounting pass on a fresh store (issue 13: "instance start: commits per
instance beyond its transitions = 0; round trips at start <= 1"):

* **round trips at start**: the statements the client sent from the ``run_workflow()``
  call until the runner's ``step_started`` listener call for the first step, counted on
  the client when each is sent (:class:`~fsmflow.bench.counting.StatementLog`); also how
  many of them were still unanswered then (sent, not waited for). The first instance is
  left out (it opens the store and its connections); between instances the bench waits
  until the connections are quiet, so a release sent after ``run_workflow`` returned is
  not taken for the next instance's start.
* **commits beyond the transitions**: the WAL flushes client sessions waited for over
  the pass (every instance, the first too), per instance, minus its transitions (one
  per step). A start whose seq-0 row shares the first transition's flush, or is
  committed without waiting for one, costs 0. The hand-rolled loop, run the same way,
  is the calibration: it records exactly one commit per transition.
"""

from __future__ import annotations

import statistics
import uuid
from collections import Counter
from typing import Any, Final

import asyncpg

from fsmflow.bench.accounting import history
from fsmflow.bench.counting import Monitor, Rows, StatementLog, accounting_pass, counting_config
from fsmflow.bench.handrolled import HANDROLLED_WORKFLOW, HandRolled, handrolled_insert
from fsmflow.bench.measure import linear_definition, run_fsmflow, trivial_steps
from fsmflow.engine.runner import RunnerEvent
from fsmflow.settings import DBConfig

START_INSTANCES: Final = 20  # measured instances (plus one that opens the store)


class _StartWindow:
    """Cuts the statement log at each instance's first ``step_started``."""

    def __init__(self, log: StatementLog) -> None:
        self.log = log
        self.mark: int | None = None  # log.sent when run_workflow was called
        self.labels_at_mark: Counter[str] = Counter()
        self.sent: list[int] = []
        self.unanswered: list[int] = []
        self.labels: Counter[str] = Counter()

    def begin(self) -> None:
        """``run_workflow`` is about to be called."""
        self.mark = self.log.sent
        self.labels_at_mark = Counter(self.log.counts)

    def listen(self, event: RunnerEvent) -> None:
        """Runner listener: the first ``step_started`` closes the window."""
        if event.point != "step_started" or self.mark is None:
            return
        self.sent.append(self.log.sent - self.mark)
        self.unanswered.append(self.log.in_flight)
        self.labels.update(self.log.counts - self.labels_at_mark)
        self.mark = None


async def start_check(
    monitor: Monitor, config: DBConfig, kwargs: dict[str, Any], *, steps: int, instances: int
) -> dict[str, Any]:
    """Round trips and commits at instance start, fsmflow and (commits) hand-rolled."""
    count = max(1, min(instances, START_INSTANCES))
    log = StatementLog()
    counted = counting_config(config, log)
    definition = linear_definition("bench_start", steps)
    window = _StartWindow(log)
    prefix = uuid.uuid4().hex

    async def work() -> None:
        try:
            for i in range(count + 1):
                await log.quiet()
                if i > 0:  # the first opens the store and its connections
                    window.begin()
                await run_fsmflow(
                    counted,
                    definition,
                    trivial_steps(definition),
                    instances=1,
                    concurrency=1,
                    context={"n": i},
                    prefix=f"{prefix}-{i}",
                    listeners=[window.listen],
                )
            await log.quiet()
        finally:
            await counted.close()

    fsmflow = await accounting_pass(
        monitor, log, work, Rows(history(config), definition.name, prefix)
    )
    hand = await _handrolled_flushes(monitor, config, kwargs, steps=steps, instances=count + 1)
    return {
        "instances": count,
        "steps": steps,
        "round_trips_median": statistics.median(window.sent),
        "round_trips_max": max(window.sent),
        "round_trips": window.sent,
        "unanswered_at_first_step_median": statistics.median(window.unanswered),
        "breakdown": {
            label: round(n / count, 3) for label, n in window.labels.most_common() if n > 0
        },
        "flush_source": monitor.flush_source,
        "flush_note": monitor.flush_note,
        "fsmflow_flushes_per_instance": _per_instance(fsmflow.wal_flushes, count + 1),
        "fsmflow_commits_beyond_transitions": _beyond(fsmflow.wal_flushes, count + 1, steps),
        "handrolled_flushes_per_instance": _per_instance(hand, count + 1),
        "handrolled_commits_beyond_transitions": _beyond(hand, count + 1, steps),
    }


async def _handrolled_flushes(
    monitor: Monitor, config: DBConfig, kwargs: dict[str, Any], *, steps: int, instances: int
) -> int | None:
    """The hand-rolled loop's WAL flushes for ``instances`` sequential instances."""
    log = StatementLog(count=False)
    hand = HandRolled(handrolled_insert(config), steps)
    prefix = uuid.uuid4().hex

    async def work() -> None:
        conn = await asyncpg.connect(**kwargs, connection_class=log.connection_class())
        try:
            await hand.run(
                conn.execute,
                instances=instances,
                concurrency=1,
                context={},
                prefix=uuid.uuid4().hex,
            )
        finally:
            await conn.close()

    where = Rows(history(config), HANDROLLED_WORKFLOW, prefix)
    return (await accounting_pass(monitor, log, work, where)).wal_flushes


def _per_instance(flushes: int | None, instances: int) -> float | None:
    return None if flushes is None else flushes / instances


def _beyond(flushes: int | None, instances: int, steps: int) -> float | None:
    return None if flushes is None else flushes / instances - steps
