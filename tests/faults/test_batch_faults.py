"""Group commit under lost connections: a batch of appends (one statement carrying the
rows of several instances on one owner connection) whose request or reply is lost.

With the reply lost, every row of the batch committed and no instance knows it; with the
request lost, none did. Each instance of the batch must resolve its own row exactly (read
it back by its attempt id, or write it again), with no step run twice and no row written
twice, while the other instances of the batch go on.
"""

from __future__ import annotations

import pytest

from .proxy import FaultProxy, Fired, _cstrings
from .support import Event, Scenario, instance_ids

STATES = 12
INSTANCES = 12  # all on one owner connection, in step: their appends meet in batches


class BatchFaultProxy(FaultProxy):
    """Loses the request or the reply of the planned group commits (the nth statement
    that appends several rows: ``INSERT ... FROM jsonb_array_elements($1)``), counted
    from 0.

    Each fault is recorded in the scenario's ledger as a lost owner session (the proxy
    cuts the connection), so the steps in flight on that connection may run again."""

    def __init__(self, scenario: Scenario, batch_plan: dict[int, str], names: list[str]) -> None:
        super().__init__(str(scenario.info.host), int(scenario.info.port))
        self.scenario = scenario
        self.batch_plan = dict(batch_plan)
        self.batches = 0
        self.members: dict[int, list[str]] = {}  # the instances each faulted batch carried
        self._names = names

    def _target(self, bind: bytes, statements: dict[bytes, str]) -> str | None:
        _, statement = _cstrings(bind[5:], 2)
        if "jsonb_array_elements(" not in statements.get(statement, ""):
            return None
        nth, self.batches = self.batches, self.batches + 1
        mode = self.batch_plan.pop(nth, None)
        if mode is not None:
            self.fired.append(Fired(f"batch-{nth}", nth, mode))
            # The rows are one JSON text: a name matched with its quotes is an element of
            # a row (an attempt id is hex; a quote inside the context text is escaped).
            self.members[nth] = [n for n in self._names if _element(n) in bind]
            self.scenario.open_fault("owner", f"batch-{nth}", settle=1.0)
        return mode


def _element(name: str) -> bytes:
    return f'"{name}"'.encode()


def steps_run_again_after_returning(events: list[Event]) -> list[tuple[str, int]]:
    """State entries whose step started again after it had returned once ("end" in the
    ledger): a step that returned must never run again, whatever happened to its row."""
    returned: set[tuple[str, int]] = set()
    again = []
    for ev in events:
        if ev.kind == "end":
            returned.add(ev.key)
        elif ev.kind == "start" and ev.key in returned:
            again.append(ev.key)
    return again


@pytest.mark.timeout(300)
async def test_a_batch_whose_request_or_reply_is_lost_resolves_every_instance_in_it(
    scenario: Scenario,
) -> None:
    instances = instance_ids("b", INSTANCES)
    # Early batches (the first transitions) and later ones: a reply lost after the commit,
    # a request lost before it, twice each.
    plan = {1: "lose_reply", 2: "lose_request", 4: "lose_reply", 6: "lose_request"}
    proxy = BatchFaultProxy(scenario, plan, instances)
    port = await proxy.start()
    env = {
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(port),
        "DB_SSLMODE": "disable",
        "FSMFLOW_OWNER_CONNECTIONS": "1",
    }
    try:
        worker = scenario.spawn(instances, env=env, states=STATES, sleep="0:0", sync="none")
        code = await scenario.reap(worker)
    finally:
        await proxy.close()

    # The lost session interrupts the steps running on that connection at that moment
    # (instances not in the batch): those may run again. The batch's own instances had
    # returned from their steps: none may run again.
    report = scenario.analyze(instances, STATES)
    sizes = {nth: len(names) for nth, names in proxy.members.items()}
    print(
        f"[batch faults] {proxy.batches} group commits, faulted {sorted(plan)} with "
        f"{sizes} instances each; {report.figures()}"
    )
    assert code == 0, worker.stderr_tail()
    assert not report.problems(), f"{report.problems()}\n{report.figures()}"
    assert steps_run_again_after_returning(scenario.events()) == []
    # Every planned fault hit a real batch of several instances, and a lost reply followed
    # the commit of all its rows.
    assert sorted(f.nth for f in proxy.fired) == sorted(plan)
    assert all(size >= 2 for size in sizes.values()), sizes
    for fired in proxy.fired:
        if fired.mode == "lose_reply":
            assert fired.tag == f"INSERT 0 {sizes[fired.nth]}", (fired, sizes)
