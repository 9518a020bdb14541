""":class:`Worker`: one process of the fleet, running the submitted instances nobody runs.

Coordinated only by PostgreSQL: the worker claims ready instances from the queue (oldest
first, ``FOR UPDATE SKIP LOCKED``), runs each with a runner (whose advisory lock stays the
fence), and is woken by notifications (a submission, an event, a claim given back) and by
its sweep, which also heartbeats and takes over the claims of dead workers. See the
README's "Scaling out".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from typing import Final

from fsmflow.engine.claims import ClaimRun, WorkerReport
from fsmflow.engine.shutdown import Shutdown, for_running_loop
from fsmflow.engine.workflow import Workflow
from fsmflow.errors import ConfigError
from fsmflow.settings import DBConfig
from fsmflow.store.facade import Store
from fsmflow.store.fleet import Claim, Identity, Key, WorkerSession

logger = logging.getLogger("fsmflow.worker")

DEFAULT_CONCURRENCY: Final = 10


class Worker:
    """Runs the instances of ``workflows`` submitted to the fleet, ``concurrency`` at a time.

    ``await worker.run()`` works until SIGTERM/SIGINT (or :meth:`stop`): on the first, it
    stops claiming, lets running steps finish within ``FSMFLOW_SHUTDOWN_GRACE_SECONDS``,
    records them, gives every claim back (the other workers take them at once) and returns
    a :class:`~fsmflow.engine.claims.WorkerReport` (``exit_code`` 0, or 75 if a step had to
    be cancelled); a second signal cancels the running steps at once. With
    ``handle_signals=False`` signals are left alone: call :meth:`stop`.
    """

    def __init__(
        self,
        db: DBConfig | Store,
        workflows: Sequence[Workflow],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        handle_signals: bool = True,
        allow_definition_change: bool = False,
    ) -> None:
        self.store = db if isinstance(db, Store) else db.store
        self.workflows = _check_workflows(workflows)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be a whole number >= 1, not {concurrency!r}")
        config = self.store.config
        if config.worker_stale <= 2 * config.worker_sweep:
            raise ConfigError(
                f"FSMFLOW_WORKER_STALE_SECONDS ({config.worker_stale:g}) must be more than "
                f"twice FSMFLOW_WORKER_SWEEP_SECONDS ({config.worker_sweep:g}): a live worker "
                "heartbeats once per sweep and would be taken for dead"
            )
        self.concurrency = concurrency
        self.handle_signals = handle_signals
        self.allow_definition_change = allow_definition_change
        self.worker_id = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.report = WorkerReport()
        self._runs: dict[Key, tuple[ClaimRun, asyncio.Task[None]]] = {}
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._shutdown: Shutdown | None = None
        self._grace_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        names = list(self.workflows)
        return (
            f"Worker({self.host}:{self.pid}, id={self.worker_id[:8]!r}, workflows={names!r}, "
            f"running={len(self._runs)}/{self.concurrency})"
        )

    @property
    def running(self) -> list[Key]:
        """The instances this worker runs now."""
        return list(self._runs)

    # -- stopping ----------------------------------------------------------------------

    def interrupt(self, reason: str) -> None:
        """Called by the loop's signal handling: ``"stop"`` stops claiming (the runners get
        their own ``"stop"``), ``"shutdown"`` is the end of the grace period."""
        if reason == "stop" and not self._stopping:
            self._stopping = True
            logger.info("worker %s stopping: no new claims", self.worker_id[:8])
        if self._wake is not None:
            self._wake.set()

    def stop(self) -> None:
        """Stop like on a first SIGTERM; a second call cancels running steps at once."""
        if self._shutdown is not None:
            self._shutdown.request(signal.SIGTERM)
            return
        if self._stopping:  # second call: what a second signal does
            self._cancel_steps()
            return
        self.interrupt("stop")
        for run, _ in self._runs.values():
            run.runner.interrupt("stop")
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self.store.config.shutdown_grace, self._cancel_steps)

    def _cancel_steps(self) -> None:
        for run, _ in self._runs.values():
            run.runner.interrupt("shutdown")

    # -- running -----------------------------------------------------------------------

    async def run(self) -> WorkerReport:
        """Claim and run instances until stopped; see the class docstring."""
        store, names = self.store, list(self.workflows)
        await store.open()
        await store.fleet.check_privileges()
        identity = Identity(self.worker_id, self.host, self.pid, tuple(names), self.concurrency)
        session = store.fleet.session(identity, lambda: list(self._runs))
        self._wake = asyncio.Event()
        if self.handle_signals:
            self._shutdown = for_running_loop(store.config.shutdown_grace)
            self._shutdown.register(self)
        try:
            await session.open()
            logger.info(
                "worker %s started on %s pid %d: workflows %s, concurrency %d",
                self.worker_id[:8], self.host, self.pid, names, self.concurrency,
            )  # fmt: skip
            subscription = await store.subscribe_workflows(names)
            sweeper = asyncio.get_running_loop().create_task(self._sweep(session))
            try:
                await self._claim_loop(session, subscription.woken)
            finally:
                sweeper.cancel()
                subscription.close()
                await self._drain()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
        finally:
            await self._leave(session)
        return self.report

    async def _claim_loop(self, session: WorkerSession, woken: asyncio.Event) -> None:
        wake = self._wake
        assert wake is not None
        while not self._stopping:
            free = self.concurrency - len(self._runs)
            timeout = self.store.config.worker_sweep
            if free > 0:
                claims = await session.claim(free)
                for claim in claims:
                    self._start(claim, session)
                if len(claims) == free:
                    continue  # there may be more: claim again once a slot frees
                soonest = await session.next_ready()
                if soonest is not None:
                    timeout = min(timeout, max(soonest, 0.0) + 0.01)
            waits = [asyncio.ensure_future(e.wait()) for e in (wake, woken)]
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            wake.clear()
            woken.clear()

    def _start(self, claim: Claim, session: WorkerSession) -> None:
        run = ClaimRun(
            claim,
            self.workflows[claim.workflow_name],
            self.store,
            session,
            self.report,
            handle_signals=self.handle_signals,
            allow_definition_change=self.allow_definition_change,
        )
        task = asyncio.get_running_loop().create_task(run.run(), name=repr(run))
        self._runs[claim.key] = (run, task)
        task.add_done_callback(functools.partial(self._done, claim.key))

    def _done(self, key: Key, task: asyncio.Task[None]) -> None:
        self._runs.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker: settling %r failed: %r", key, task.exception())
        if self._wake is not None:
            self._wake.set()

    async def _sweep(self, session: WorkerSession) -> None:
        """Heartbeat, take over the claims of dead workers; once per sweep interval."""
        while True:
            await asyncio.sleep(self.store.config.worker_sweep)
            try:
                await session.heartbeat(
                    len(self._runs), self.report.finished, stopping=self._stopping
                )
                dead, released = await session.reap()
            except Exception as exc:  # the claim loop meets the same failure and stops
                logger.warning("worker sweep failed: %s", exc)
                continue
            if dead or released:
                logger.warning(
                    "worker %s: worker(s) %s gone; %d claim(s) given back for takeover",
                    self.worker_id[:8], ", ".join(dead) or "-", released,
                )  # fmt: skip
                if self._wake is not None:
                    self._wake.set()

    async def _drain(self) -> None:
        """Stop every run (a failure, or the stop already asked them) and wait for them."""
        if self._runs and not self._stopping:  # leaving on an error: stop the runners too
            self._stopping = True
            for run, _ in list(self._runs.values()):
                run.runner.interrupt("stop")
        tasks = [task for _, task in self._runs.values()]
        if tasks:
            logger.info("worker %s: waiting for %d instance(s)", self.worker_id[:8], len(tasks))
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _leave(self, session: WorkerSession) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        if self._shutdown is not None:
            self._shutdown.unregister(self)
            self._shutdown = None
        if not session.registrations:
            return  # never registered: nothing to give back
        try:
            given_back = await session.close()
            await self.store.fleet.notify(given_back)
        except Exception as exc:  # the others' sweep takes the claims over instead
            logger.warning("worker %s could not give its claims back: %s", self.worker_id[:8], exc)
            return
        logger.info(
            "worker %s stopped: %d completed, %d failed, %d suspended, %d given back",
            self.worker_id[:8], self.report.completed, self.report.failed,
            self.report.suspended, self.report.released,
        )  # fmt: skip


def _check_workflows(workflows: Sequence[Workflow]) -> dict[str, Workflow]:
    if isinstance(workflows, Workflow):
        workflows = [workflows]
    found: dict[str, Workflow] = {}
    for workflow in workflows:
        if not isinstance(workflow, Workflow):
            raise ConfigError(
                f"a worker runs fsmflow.Workflow objects (definition + steps), not "
                f"{type(workflow).__name__}: wrap it as fsmflow.Workflow(definition, steps)"
            )
        if workflow.name in found:
            raise ConfigError(f"workflow {workflow.name!r} is given twice")
        found[workflow.name] = workflow
    if not found:
        raise ConfigError("a worker needs at least one workflow")
    return found
