"""Typed state across program versions, with real processes killed for real.

``tests/faults/typed_upgrade_program.py`` runs instances of a typed workflow at state
version 1, 2 or 3 (a field renamed, then two reshaped). Instances are held mid-run (inside
a step, or between two steps) and the process is SIGKILLed; a program of a later version
then resumes them. From the database and the ledger:

- the rows written before the kill keep state_version 1 and are unchanged byte for byte
  (history is never rewritten); the rows written after hold the new version and its shape;
- each instance ends exactly as a crash-free run of the later version from the same seed
  (so each upgrade ran on the state the last row stored, once, in order);
- the upgrades ran once per resume (and once per fork), never in any other process;
- a fork onto the version-3 definition starts from the upgraded state, the source is only
  read; a program older than an instance's last row refuses it (exit 1,
  StateVersionError) and writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.conftest import ROOT

from .support import SAFETY_TIMEOUT, Admin, Event, Scenario, read_ledger
from .typed_upgrade_program import MODELS, STATES, UPGRADES, WORKFLOW, seed

Row = dict[str, Any]


class Program:
    """One run of ``tests/faults/typed_upgrade_program.py`` in a child process."""

    def __init__(self, scenario: Scenario, version: int, instances: Sequence[str],
                 **options: Any) -> None:  # fmt: skip
        run = len(list(scenario.workdir.glob("run-*.err")))
        self.err_path = scenario.workdir / f"run-{run}.err"
        args = ["--version", str(version), "--ledger", str(scenario.ledger_path),
                "--gates", str(scenario.workdir), "--instances", ",".join(instances)]  # fmt: skip
        if "hold" in options:
            args += ["--hold", json.dumps(options["hold"])]
        if "fork" in options:
            args += ["--fork", options["fork"]]
        with open(scenario.workdir / f"run-{run}.out", "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.typed_upgrade_program", *args],
                cwd=ROOT, env=scenario.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.ledger_path = scenario.ledger_path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def stderr(self) -> str:
        """What it logged."""
        return self.err_path.read_text()

    def events(self, kind: str) -> list[Event]:
        """Its ledger lines of ``kind``."""
        return [e for e in read_ledger(self.ledger_path) if e.kind == kind and e.pid == self.pid]

    async def until(self, kind: str, instances: Sequence[str]) -> None:
        """Wait until it wrote a ``kind`` line for each of ``instances`` (while it runs)."""
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while not set(instances) <= {e.instance for e in self.events(kind)}:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.stderr}"
            assert time.monotonic() < deadline, f"no {kind} of {instances}: {self.stderr}"
            await asyncio.sleep(0.02)

    async def kill(self) -> None:
        """SIGKILL it, for real, and reap it."""
        os.kill(self.pid, signal.SIGKILL)
        assert await self.wait() == -signal.SIGKILL

    async def wait(self) -> int:
        """Its exit code (negative: the signal that ended it)."""
        return await asyncio.to_thread(self.proc.wait, SAFETY_TIMEOUT)


@pytest.fixture
def programs(scenario: Scenario) -> Iterator[list[Program]]:
    """The programs a test started; any still running at its end (a failure) is killed."""
    started: list[Program] = []
    yield started
    for program in started:
        if program.proc.poll() is None:
            program.proc.kill()
            program.proc.wait()


def histories(admin: Admin, instances: Sequence[str]) -> dict[str, list[Row]]:
    """Each instance's rows in seq order, with ``text``: the whole row as PostgreSQL
    prints it (every column, the context's exact stored text)."""
    rows = admin.sql(
        "SELECT t.instance_id, t.seq, t.status, t.dest_state, t.state_version, "
        "t.forked_from_instance, t.forked_from_seq, t.context::text AS context, "
        "t::text AS text FROM fsmflow_transitions t "
        "WHERE t.workflow_name = %s AND t.instance_id = ANY(%s) ORDER BY t.instance_id, t.seq",
        (WORKFLOW, list(instances)),
    )
    found: dict[str, list[Row]] = {i: [] for i in instances}
    for row in rows:
        found[row["instance_id"]].append({**row, "context": json.loads(row["context"])})
    return found


def upgraded(data: dict[str, Any], stored: int, version: int) -> dict[str, Any]:
    """``data`` of version ``stored`` brought to ``version`` by the program's upgrades."""
    for n in range(stored, version):
        data = UPGRADES[n](data)
    return MODELS[version].model_validate(data).model_dump(mode="json")


def assert_shape(rows: Sequence[Row], version: int) -> None:
    """Every row is at ``version`` and its context is that version's model, exactly."""
    for row in rows:
        assert row["state_version"] == version, row["text"]
        model = MODELS[version].model_validate(row["context"])
        assert model.model_dump(mode="json") == row["context"], row["text"]


def assert_as_crash_free(rows: Sequence[Row], reference: Sequence[Row], since: int) -> None:
    """From seq ``since`` on, ``rows`` hold what the crash-free ``reference`` run stored."""
    assert [r["seq"] for r in rows] == [r["seq"] for r in reference]
    assert [r["status"] for r in rows] == ["running"] * len(STATES) + ["completed"]
    for row, ref in zip(rows[since:], reference[since:], strict=True):
        assert row["context"] == ref["context"], f"seq {row['seq']}: {row['text']}"


def upgrade_counts(program: Program) -> Counter[tuple[str, int]]:
    """How often ``upgrades[n]`` ran in ``program``, by (instance, n)."""
    return Counter((e.instance, e.seq) for e in program.events("upgrade"))


# Where each instance is when version 1 is killed: inside a step, or between two steps.
HOLDS = {
    "u-000": ["in", "intake"],
    "u-001": ["before", "enrich"],
    "u-002": ["in", "enrich"],
    "u-003": ["before", "review"],
    "u-004": ["in", "close"],
}
ROWS_AT_KILL = {"u-000": 1, "u-001": 2, "u-002": 2, "u-003": 3, "u-004": 4}


@pytest.mark.timeout(300)
async def test_instances_killed_mid_run_under_version_1_resume_under_version_3(
    scenario: Scenario, programs: list[Program]
) -> None:
    instances = list(HOLDS)
    first = Program(scenario, 1, instances, hold=HOLDS)
    programs.append(first)
    await first.until("held", instances)
    await first.kill()
    before = histories(scenario.admin, instances)
    assert {i: len(rows) for i, rows in before.items()} == ROWS_AT_KILL
    for instance, (where, state) in HOLDS.items():
        ran = [e.state for e in first.events("start") if e.instance == instance]
        assert ran[-1] == (state if where == "in" else STATES[STATES.index(state) - 1])
    for rows in before.values():
        assert_shape(rows, 1)
        assert rows[0]["context"] == seed(rows[0]["context"]["key"], 1).model_dump(mode="json")

    refs = [i.replace("u-", "ref-") for i in instances]
    reference = Program(scenario, 3, refs)
    resumed = Program(scenario, 3, instances)
    programs.extend([reference, resumed])
    assert await reference.wait() == 0, reference.stderr
    assert await resumed.wait() == 0, resumed.stderr

    after = histories(scenario.admin, instances)
    crash_free = histories(scenario.admin, refs)
    for instance, ref in zip(instances, refs, strict=True):
        kept = before[instance]
        rows = after[instance]
        assert [r["text"] for r in rows[: len(kept)]] == [r["text"] for r in kept]  # byte for byte
        assert_shape(rows[len(kept) :], 3)
        assert_shape(crash_free[ref], 3)
        assert_as_crash_free(rows, crash_free[ref], since=len(kept))
        # The resumed program started with the state the kill interrupted (or was about to run).
        starts = [e for e in resumed.events("start") if e.instance == instance]
        assert starts[0].state == HOLDS[instance][1] and starts[0].seq == len(kept) - 1
    assert upgrade_counts(resumed) == {(i, n): 1 for i in instances for n in (1, 2)}
    assert not first.events("upgrade") and not reference.events("upgrade")
    print(f"[typed upgrade 1 -> 3] {len(instances)} instances killed mid-run, resumed: "
          f"{sum(upgrade_counts(resumed).values())} upgrade calls")  # fmt: skip


@pytest.mark.timeout(300)
async def test_killed_under_version_1_resumed_under_version_2_and_again_under_3(
    scenario: Scenario, programs: list[Program]
) -> None:
    """u-000: version 1, killed, finished by version 2 (one upgrade). u-001: version 1,
    killed, version 2, killed again, finished by version 3 (upgrades[2] only)."""
    first = Program(scenario, 1, ["u-000", "u-001"],
                    hold={"u-000": ["before", "enrich"], "u-001": ["in", "enrich"]})  # fmt: skip
    programs.append(first)
    await first.until("held", ["u-000", "u-001"])
    await first.kill()
    at_v1 = histories(scenario.admin, ["u-000", "u-001"])
    assert [len(at_v1["u-000"]), len(at_v1["u-001"])] == [2, 2]

    second = Program(scenario, 2, ["u-000", "u-001"], hold={"u-001": ["in", "close"]})
    programs.append(second)
    await second.until("done", ["u-000"])
    await second.until("held", ["u-001"])
    await second.kill()
    at_v2 = histories(scenario.admin, ["u-001"])["u-001"]
    assert [r["text"] for r in at_v2[:2]] == [r["text"] for r in at_v1["u-001"]]
    assert len(at_v2) == 4  # seq 2 and 3 (enrich, review done) written under version 2
    assert_shape(at_v2[2:], 2)
    assert upgrade_counts(second) == {("u-000", 1): 1, ("u-001", 1): 1}

    third = Program(scenario, 3, ["u-001"])
    references = [Program(scenario, 2, ["ref-000"]), Program(scenario, 3, ["ref-001"])]
    programs.extend([third, *references])
    for program in (third, *references):
        assert await program.wait() == 0, program.stderr
    assert upgrade_counts(third) == {("u-001", 2): 1}

    final = histories(scenario.admin, ["u-000", "u-001", "ref-000", "ref-001"])
    assert [r["text"] for r in final["u-000"][:2]] == [r["text"] for r in at_v1["u-000"]]
    assert_shape(final["u-000"][2:], 2)
    assert_as_crash_free(final["u-000"], final["ref-000"], since=2)
    assert [r["text"] for r in final["u-001"][:4]] == [r["text"] for r in at_v2]
    assert [r["state_version"] for r in final["u-001"]] == [1, 1, 2, 2, 3]
    assert_shape(final["u-001"][4:], 3)
    assert_as_crash_free(final["u-001"], final["ref-001"], since=4)


@pytest.mark.timeout(300)
async def test_a_fork_of_a_version_1_instance_onto_version_3(
    scenario: Scenario, programs: list[Program]
) -> None:
    first = Program(scenario, 1, ["u-000"], hold={"u-000": ["in", "review"]})
    programs.append(first)
    await first.until("held", ["u-000"])
    await first.kill()
    source = histories(scenario.admin, ["u-000"])["u-000"]
    assert len(source) == 3  # seed, intake, enrich; killed inside review

    forking = Program(scenario, 3, ["f-000", "ref-000"], fork="u-000=f-000")
    programs.append(forking)
    assert await forking.wait() == 0, forking.stderr

    found = histories(scenario.admin, ["u-000", "f-000", "ref-000"])
    assert [r["text"] for r in found["u-000"]] == [r["text"] for r in source]  # only read
    fork, reference = found["f-000"], found["ref-000"]
    start = fork[0]
    assert (start["state_version"], start["dest_state"]) == (3, "review")
    assert (start["forked_from_instance"], start["forked_from_seq"]) == ("u-000", 2)
    assert start["context"] == upgraded(source[2]["context"], 1, 3)
    assert start["context"] == reference[2]["context"]  # what version 3 had after enrich
    assert_shape(fork, 3)
    assert [r["status"] for r in fork] == ["running", "running", "completed"]
    assert fork[-1]["context"] == reference[-1]["context"]
    # upgrades ran once, for the fork; resuming the fork's version-3 row needs none.
    assert upgrade_counts(forking) == {("f-000", 1): 1, ("f-000", 2): 1}
    assert [e.state for e in forking.events("start") if e.instance == "f-000"] == STATES[2:]


@pytest.mark.timeout(300)
async def test_an_older_program_refuses_an_instance_stored_at_version_3(
    scenario: Scenario, programs: list[Program]
) -> None:
    newer = Program(scenario, 3, ["u-000"], hold={"u-000": ["in", "enrich"]})
    programs.append(newer)
    await newer.until("held", ["u-000"])
    await newer.kill()
    stored = histories(scenario.admin, ["u-000"])["u-000"]
    assert [r["state_version"] for r in stored] == [3, 3]

    for version in (1, 2):
        older = Program(scenario, version, ["u-000"])
        programs.append(older)
        assert await older.wait() == 1, older.stderr
        assert "StateVersionError" in older.stderr, older.stderr
        assert f"state_version 3, the code's is {version}" in older.stderr
        assert "Traceback" not in older.stderr, older.stderr
        assert not older.events("start")
        now = histories(scenario.admin, ["u-000"])["u-000"]
        assert [r["text"] for r in now] == [r["text"] for r in stored]  # nothing written

    again = Program(scenario, 3, ["u-000"])  # the refusals left it resumable
    programs.append(again)
    assert await again.wait() == 0, again.stderr
    assert histories(scenario.admin, ["u-000"])["u-000"][-1]["status"] == "completed"
