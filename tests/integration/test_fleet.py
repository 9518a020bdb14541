"""The worker fleet in one process: submit, claim, run, wait and wake, give back (real server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fsmflow import (
    DBConfig,
    InstanceExistsError,
    InstanceLockedError,
    Transition,
    Worker,
    WorkerInfo,
    Workflow,
    WorkflowContext,
    WorkflowDefinition,
)
from fsmflow.errors import ConfigError, DefinitionError
from fsmflow.model.records import SUBMIT_TRIGGER

DEFINITION = WorkflowDefinition(
    name="fleet_pipeline",
    steps=["fetch", "parse", "store"],
    transitions=[
        Transition("fetched", "fetch", "parse"),
        Transition("parsed", "parse", "store"),
        Transition("stored", "store", None),
    ],
)

WAITING = WorkflowDefinition(
    name="fleet_approval",
    steps=["ask", "decide", "done"],
    transitions=[
        Transition("asked", "ask", "decide"),
        Transition("approved", "decide", "done", event="approval"),
        Transition("expired", "decide", "done", timeout=3600),
        Transition("finished", "done", None),
    ],
)


def counting_steps(calls: list[tuple[str, str]], gate: asyncio.Event | None = None) -> Any:
    def make(name: str, trigger: str) -> Any:
        async def step(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
            if gate is not None:
                await gate.wait()
            calls.append((name, str(ctx.data.get("n"))))
            ctx.data.setdefault("trail", []).append(name)
            return ctx, trigger

        return step

    return {
        "fetch": make("fetch", "fetched"),
        "parse": make("parse", "parsed"),
        "store": make("store", "stored"),
    }


def approval_steps(calls: list[str]) -> Any:
    async def ask(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        calls.append("ask")
        return ctx, "asked"

    async def done(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        calls.append("done")
        return ctx, "finished"

    return {"ask": ask, "done": done}


async def run_until(worker: Worker, condition: Any) -> Any:
    """Run ``worker`` until ``condition()`` (async) is true, then stop it; its report."""
    task = asyncio.create_task(worker.run())
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not await condition():
            assert not task.done(), task.result()
            assert asyncio.get_running_loop().time() < deadline, "condition never became true"
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
    return await asyncio.wait_for(task, 30)


async def statuses(db: DBConfig, workflow: str, ids: list[str]) -> list[str]:
    found = []
    for instance_id in ids:
        last = await db.store.last_record(workflow, instance_id)
        found.append(last.status if last is not None else "missing")
    return found


async def test_submit_writes_seq_0_and_queues_it(db_config: DBConfig) -> None:
    calls: list[tuple[str, str]] = []
    workflow = Workflow(DEFINITION, counting_steps(calls))
    instance_id = await db_config.store.submit(workflow, {"n": 1}, instance_id="doc-1")
    assert instance_id == "doc-1"
    first = await db_config.store.record_at("fleet_pipeline", "doc-1", 0)
    assert first is not None and first.trigger == SUBMIT_TRIGGER
    assert first.dest_state == "fetch" and first.context == {"n": 1}
    assert calls == []  # submitting runs nothing
    generated = await db_config.store.submit(DEFINITION)  # a definition does too; a new id
    assert len(generated) == 32 and generated != instance_id


async def test_submit_refuses_an_existing_id_and_writes_nothing(db_config: DBConfig) -> None:
    workflow = Workflow(DEFINITION, counting_steps([]))
    await db_config.store.submit(workflow, {"n": 1}, instance_id="doc-1")
    with pytest.raises(InstanceExistsError, match="doc-1"):
        await db_config.store.submit(workflow, {"n": 2}, instance_id="doc-1")
    history = await db_config.store.history("fleet_pipeline", "doc-1")
    assert [r.context for r in history] == [{"n": 1}]


async def test_submit_refuses_what_is_not_a_workflow(db_config: DBConfig) -> None:
    with pytest.raises(TypeError, match="Workflow or a WorkflowDefinition"):
        await db_config.store.submit("fleet_pipeline")


def test_workflow_checks_its_steps() -> None:
    with pytest.raises(DefinitionError, match="parse"):
        Workflow(DEFINITION, {"fetch": lambda ctx: (ctx, "fetched")})
    workflow = Workflow(DEFINITION, counting_steps([]))
    assert workflow.name == "fleet_pipeline" and "fetch" in repr(workflow)


def test_worker_refuses_bad_arguments(db_config: DBConfig) -> None:
    workflow = Workflow(DEFINITION, counting_steps([]))
    with pytest.raises(ConfigError, match="concurrency"):
        Worker(db_config, [workflow], concurrency=0)
    with pytest.raises(ConfigError, match="given twice"):
        Worker(db_config, [workflow, workflow])
    with pytest.raises(ConfigError, match=r"fsmflow\.Workflow"):
        Worker(db_config, [DEFINITION])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="at least one"):
        Worker(db_config, [])


async def test_a_worker_runs_every_submitted_instance_once(db_config: DBConfig) -> None:
    calls: list[tuple[str, str]] = []
    workflow = Workflow(DEFINITION, counting_steps(calls))
    ids = [await db_config.store.submit(workflow, {"n": n}) for n in range(12)]
    worker = Worker(db_config, [workflow], concurrency=4, handle_signals=False)

    async def all_done() -> bool:
        return await statuses(db_config, "fleet_pipeline", ids) == ["completed"] * 12

    report = await run_until(worker, all_done)
    assert report.completed == 12 and report.exit_code == 0
    assert sorted(calls) == sorted(
        (s, str(n)) for n in range(12) for s in ("fetch", "parse", "store")
    )
    rows = await queue_rows(db_config)
    assert rows == []  # ended instances leave the queue
    assert await db_config.store.list_workers() == []  # a stopped worker leaves the list


async def queue_rows(db: DBConfig) -> list[Any]:
    conn = await db.store.connect()
    try:
        return list(await conn.fetch("SELECT * FROM fsmflow_transitions_queue ORDER BY 1, 2"))
    finally:
        await conn.close()


async def test_a_plain_program_is_refused_an_instance_a_worker_runs(db_config: DBConfig) -> None:
    gate = asyncio.Event()
    calls: list[tuple[str, str]] = []
    workflow = Workflow(DEFINITION, counting_steps(calls, gate))
    await db_config.store.submit(workflow, {"n": 1}, instance_id="doc-1")
    worker = Worker(db_config, [workflow], concurrency=2, handle_signals=False)
    task = asyncio.create_task(worker.run())
    for _ in range(400):
        if worker.running:
            break
        await asyncio.sleep(0.05)
    assert worker.running == [("fleet_pipeline", "doc-1")]
    listed = await db_config.store.list_workers()
    assert [w.worker_id for w in listed] == [worker.worker_id]
    assert isinstance(listed[0], WorkerInfo) and listed[0].pid == worker.pid
    who = await db_config.store.instance_workers([("fleet_pipeline", "doc-1")])
    assert who[("fleet_pipeline", "doc-1")].worker_id == worker.worker_id
    program = workflow.runner(db_config, instance_id="doc-1", handle_signals=False)
    with pytest.raises(InstanceLockedError):
        await program.run_workflow()
    gate.set()
    for _ in range(400):
        if await statuses(db_config, "fleet_pipeline", ["doc-1"]) == ["completed"]:
            break
        await asyncio.sleep(0.05)
    worker.stop()
    report = await asyncio.wait_for(task, 30)
    assert report.completed == 1 and len(calls) == 3


async def test_a_worker_leaves_an_instance_a_program_holds(db_config: DBConfig) -> None:
    calls: list[tuple[str, str]] = []
    workflow = Workflow(DEFINITION, counting_steps(calls))
    await db_config.store.submit(workflow, {"n": 1}, instance_id="doc-1")
    held = await db_config.store.acquire("fleet_pipeline", "doc-1")  # a program's runner
    try:
        worker = Worker(db_config, [workflow], handle_signals=False)
        task = asyncio.create_task(worker.run())
        for _ in range(200):
            if worker.report.released:
                break
            await asyncio.sleep(0.05)
        assert worker.report.released >= 1 and calls == []
        worker.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await held.release()
    [row] = await queue_rows(db_config)
    assert row["claimed_by"] is None  # given back, with a back-off, for a later try


async def test_a_waiting_instance_is_suspended_and_woken_by_its_event(db_config: DBConfig) -> None:
    calls: list[str] = []
    workflow = Workflow(WAITING, approval_steps(calls))
    await db_config.store.submit(workflow, instance_id="req-1")
    worker = Worker(db_config, [workflow], handle_signals=False)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(400):
            # the count is taken inside the run; the run leaves `running` in its task's
            # done callback, one loop turn later: wait for both
            if worker.report.suspended and not worker.running:
                break
            await asyncio.sleep(0.05)
        assert worker.report.suspended == 1 and worker.running == []
        [row] = await queue_rows(db_config)
        assert row["claimed_by"] is None and row["ready_at"].year < 9999  # its deadline
        await db_config.store.send_event("fleet_approval", "req-1", "approval", {"ok": True})
        for _ in range(400):
            if await statuses(db_config, "fleet_approval", ["req-1"]) == ["completed"]:
                break
            await asyncio.sleep(0.05)
        assert calls == ["ask", "done"]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    assert await queue_rows(db_config) == []


async def test_an_event_sent_while_the_worker_runs_the_step_is_not_lost(
    db_config: DBConfig,
) -> None:
    gate = asyncio.Event()
    calls: list[str] = []

    async def ask(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        await gate.wait()
        calls.append("ask")
        return ctx, "asked"

    steps = approval_steps(calls)
    steps["ask"] = ask
    workflow = Workflow(WAITING, steps)
    await db_config.store.submit(workflow, instance_id="req-1")
    worker = Worker(db_config, [workflow], handle_signals=False)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(400):
            if worker.running:
                break
            await asyncio.sleep(0.05)
        await db_config.store.send_event("fleet_approval", "req-1", "approval", {"ok": True})
        gate.set()
        for _ in range(400):
            if await statuses(db_config, "fleet_approval", ["req-1"]) == ["completed"]:
                break
            await asyncio.sleep(0.05)
        assert calls == ["ask", "done"]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def test_a_retried_failed_instance_goes_back_to_the_workers(db_config: DBConfig) -> None:
    attempts: list[int] = []

    async def flaky(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("upstream down")
        return ctx, "fetched"

    calls: list[tuple[str, str]] = []
    steps = counting_steps(calls)
    steps["fetch"] = flaky
    workflow = Workflow(DEFINITION, steps)
    await db_config.store.submit(workflow, {"n": 1}, instance_id="doc-1")
    worker = Worker(db_config, [workflow], handle_signals=False)

    async def failed() -> bool:
        return await statuses(db_config, "fleet_pipeline", ["doc-1"]) == ["failed"]

    report = await run_until(worker, failed)
    assert report.failed == 1 and await queue_rows(db_config) == []
    await db_config.store.retry_instance("fleet_pipeline", "doc-1")
    assert len(await queue_rows(db_config)) == 1

    async def completed() -> bool:
        return await statuses(db_config, "fleet_pipeline", ["doc-1"]) == ["completed"]

    report = await run_until(Worker(db_config, [workflow], handle_signals=False), completed)
    assert report.completed == 1 and len(attempts) == 2


async def test_a_cancelled_waiting_instance_leaves_the_queue(db_config: DBConfig) -> None:
    workflow = Workflow(WAITING, approval_steps([]))
    await db_config.store.submit(workflow, instance_id="req-1")
    worker = Worker(db_config, [workflow], handle_signals=False)

    async def suspended() -> bool:
        return worker.report.suspended == 1

    await run_until(worker, suspended)
    await db_config.store.cancel_instance("fleet_approval", "req-1")
    assert await queue_rows(db_config) == []
