"""A typed workflow whose state changed shape twice, run at one of its three versions.

``python -m tests.faults.typed_upgrade_program --version N --ledger PATH --gates DIR
--instances u-000,u-001 [--hold JSON] [--fork SRC=NEW]`` from the repository root, with the
database in the environment. Every instance runs ``intake -> enrich -> review -> close``
(the last completes it) under the definition of version ``N``:

- version 1 stores ``OrderV1``: ``name``, ``notes`` as one comma-separated string,
  ``amount_cents``;
- version 2 renamed ``name`` to ``subject`` (``upgrades[1]``);
- version 3 made ``notes`` a list and ``amount_cents`` an ``amount`` object with a currency
  (``upgrades[2]``).

The steps do the same work at every version (a hash chain over the states, a note and an
amount per state), so an instance that ran some states under version 1 and the rest under
version 3 ends exactly as one run under version 3 from the start, if and only if the
upgrades ran once each, in order, on the state the last row stored. An instance's seed
depends only on its *key*, the part of its id after the first ``-`` (``u-003`` and
``ref-003`` start alike).

``--hold '{"u-000": ["in", "enrich"], "u-001": ["before", "review"]}'`` stops an instance
for good: ``in`` inside that state's step (after its ``start`` line), ``before`` between
steps (in the ``after`` callback of the transition into that state: the previous row is
committed, the step has not started). The hold lasts until the gate file ``DIR/<instance>.
<state>`` exists; the tests never create it but SIGKILL the process. ``--fork SRC=NEW``
first forks instance ``SRC`` (its last row) onto this version's definition as ``NEW``.

Ledger lines (the format of ``tests/faults/worker.py``): ``start`` (a step began; ``extra``
is ``v<version>``), ``held`` (an instance reached its hold; ``extra`` ``in``/``before``),
``upgrade`` (``upgrades[n]`` ran for that instance; ``seq`` is ``n``), ``done``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fsmflow import (
    DBConfig,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    run_program,
    step_info,
)

from .worker import Ledger

WORKFLOW = "typed_upgrade"
STATES = ["intake", "enrich", "review", "close"]
SYNC_STATES = frozenset({"enrich", "close"})  # run on a thread; the others are async
POLL = 0.02  # how often a hold looks for its gate file


class OrderV1(BaseModel):
    """Version 1 of the state."""

    key: str
    name: str
    notes: str = ""  # comma-separated
    acc: str = ""
    amount_cents: int


class OrderV2(BaseModel):
    """Version 2: ``name`` is now ``subject``."""

    key: str
    subject: str
    notes: str = ""
    acc: str = ""
    amount_cents: int


class Money(BaseModel):
    """An amount of version 3."""

    cents: int
    currency: str


class OrderV3(BaseModel):
    """Version 3: ``notes`` is a list, ``amount_cents`` an ``amount`` with its currency."""

    key: str
    subject: str
    notes: list[str] = []
    acc: str = ""
    amount: Money


MODELS: dict[int, type[BaseModel]] = {1: OrderV1, 2: OrderV2, 3: OrderV3}


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Stored JSON of version 1 -> 2: rename ``name`` to ``subject``."""
    upgraded = dict(data)
    upgraded["subject"] = upgraded.pop("name")
    return upgraded


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Stored JSON of version 2 -> 3: ``notes`` split, ``amount_cents`` an object."""
    upgraded = {k: v for k, v in data.items() if k not in ("notes", "amount_cents")}
    upgraded["notes"] = [n for n in data["notes"].split(",") if n]
    upgraded["amount"] = {"cents": data["amount_cents"], "currency": "EUR"}
    return upgraded


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: v1_to_v2, 2: v2_to_v3}


def seed(key: str, version: int) -> BaseModel:
    """The first state of the instance with ``key``, as the model of ``version``."""
    name, cents = f"order {key}", 1000 + 7 * sum(map(ord, key))
    if version == 1:
        return OrderV1(key=key, name=name, amount_cents=cents)
    if version == 2:
        return OrderV2(key=key, subject=name, amount_cents=cents)
    return OrderV3(key=key, subject=name, amount=Money(cents=cents, currency="EUR"))


@dataclass(frozen=True)
class View:
    """What every version's state holds, whatever its shape: the steps work on this."""

    subject: str
    notes: list[str]
    acc: str
    cents: int


def read(state: BaseModel) -> View:
    """The view of a state of any version."""
    if isinstance(state, OrderV3):
        return View(state.subject, list(state.notes), state.acc, state.amount.cents)
    assert isinstance(state, OrderV1 | OrderV2)
    subject = state.name if isinstance(state, OrderV1) else state.subject
    return View(subject, [n for n in state.notes.split(",") if n], state.acc, state.amount_cents)


def write(state: BaseModel, view: View) -> BaseModel:
    """``state`` (of any version) holding ``view``."""
    if isinstance(state, OrderV3):
        amount = Money(cents=view.cents, currency=state.amount.currency)
        return state.model_copy(update={"notes": view.notes, "acc": view.acc, "amount": amount})
    update = {"notes": ",".join(view.notes), "acc": view.acc, "amount_cents": view.cents}
    return state.model_copy(update=update)


def work(view: View, state: str) -> View:
    """The deterministic work of ``state``'s step."""
    digest = hashlib.sha256(f"{view.acc}|{view.subject}|{state}|{view.cents}".encode())
    cents = view.cents + 100 * (STATES.index(state) + 1)
    return View(view.subject, [*view.notes, state], digest.hexdigest()[:16], cents)


async def opened(gate: Path) -> None:
    """Return once the gate file exists (polled: another process would create it)."""
    while True:
        if await asyncio.to_thread(gate.exists):
            return
        await asyncio.sleep(POLL)


@dataclass(frozen=True)
class Program:
    """What one run of the program does (from the command line)."""

    version: int
    ledger: Ledger
    gates: Path
    holds: dict[str, tuple[str, str]]

    def definition(self, instance: str) -> WorkflowDefinition:
        """The workflow at this version, its holds and logged upgrades for ``instance``
        (the ``after`` callbacks and upgrades are no part of the fingerprint)."""
        transitions = [
            Transition(trigger=f"{a}_done", source=a, dest=b, after=self._after(instance, b))
            for a, b in pairwise(STATES)
        ]
        transitions.append(Transition(trigger="closed", source=STATES[-1], dest=None))
        upgrades = {n: self._upgrade(instance, n) for n in range(1, self.version)}
        return WorkflowDefinition(
            name=WORKFLOW, steps=list(STATES), transitions=transitions,
            state_model=MODELS[self.version], state_version=self.version, upgrades=upgrades,
        )  # fmt: skip

    def steps(self) -> dict[str, Callable[[Any], Any]]:
        """One step per state: sync (on a thread) or async, the same work at every version."""
        return {s: self._sync(s) if s in SYNC_STATES else self._async(s) for s in STATES}

    def _upgrade(self, instance: str, n: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def upgrade(data: dict[str, Any]) -> dict[str, Any]:
            self.ledger.write("upgrade", instance, n, "-", f"v{n}->v{n + 1}")
            return UPGRADES[n](data)

        return upgrade

    def _after(self, instance: str, state: str) -> Callable[[WorkflowContext], Any]:
        async def after(ctx: WorkflowContext) -> None:
            if self.holds.get(instance) == ("before", state):
                self.ledger.write("held", instance, "-", state, "before")
                await opened(self._gate(instance, state))

        return after

    def _gate(self, instance: str, state: str) -> Path:
        return self.gates / f"{instance}.{state}"

    def _started(self, state: str) -> str | None:
        """Write the ``start`` line; the instance if it must hold in this step."""
        info = step_info()
        self.ledger.write("start", info.instance_id, info.seq, state, f"v{self.version}")
        if self.holds.get(info.instance_id) != ("in", state):
            return None
        self.ledger.write("held", info.instance_id, info.seq, state, "in")
        return info.instance_id

    def _async(self, state: str) -> Callable[[BaseModel], Any]:
        async def execute(model: BaseModel) -> tuple[BaseModel, str | None]:
            held = self._started(state)
            if held is not None:
                await opened(self._gate(held, state))
            return write(model, work(read(model), state)), None

        execute.__name__ = f"step_{state}"
        return execute

    def _sync(self, state: str) -> Callable[[BaseModel], Any]:
        def execute(model: BaseModel) -> tuple[BaseModel, str | None]:
            held = self._started(state)
            while held is not None and not self._gate(held, state).exists():
                time.sleep(POLL)
            return write(model, work(read(model), state)), None

        execute.__name__ = f"step_{state}"
        return execute


async def run_instance(config: DBConfig, program: Program, instance: str) -> None:
    """Run (start or resume) one instance to its end."""
    runner = PersistentWorkflowStateMachine(
        config, program.definition(instance), steps=program.steps(), instance_id=instance
    )
    key = instance.split("-", 1)[1]
    state = await runner.run_workflow(context=seed(key, program.version))
    program.ledger.write("done", instance, state.seq, "-", f"v{program.version}")


async def main(program: Program, instances: Sequence[str], fork: tuple[str, str] | None) -> None:
    """Fork if asked, then run every instance; raise the first failure (exit 1)."""
    config = DBConfig()
    try:
        await config.store.open()
        if fork is not None:
            source, new = fork
            await config.store.fork_instance(
                WORKFLOW, source, new_instance_id=new, definition=program.definition(new)
            )
        print("ready", flush=True)
        results = await asyncio.gather(
            *(run_instance(config, program, i) for i in instances), return_exceptions=True
        )
    finally:
        await config.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]


def parse(argv: Sequence[str]) -> tuple[Program, list[str], tuple[str, str] | None]:
    """The program, the instances and the fork (``SRC=NEW``) from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, choices=sorted(MODELS), required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--gates", required=True, help="the directory of the gate files")
    parser.add_argument("--instances", required=True, help="comma-separated instance ids")
    parser.add_argument("--hold", default="{}", help='{"u-000": ["in", "enrich"]}')
    parser.add_argument("--fork", default=None, help="SRC=NEW")
    args = parser.parse_args(argv)
    holds = {i: (where, state) for i, (where, state) in json.loads(args.hold).items()}
    for where, state in holds.values():
        if where not in ("in", "before") or state not in STATES:
            parser.error(f"bad hold {[where, state]}: ['in'|'before', one of {STATES}]")
    fork = None
    if args.fork is not None:
        source, _, new = args.fork.partition("=")
        fork = (source, new)
    program = Program(args.version, Ledger(args.ledger), Path(args.gates), holds)
    return program, [i for i in args.instances.split(",") if i], fork


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    sys.exit(run_program(main(*parse(sys.argv[1:]))))
