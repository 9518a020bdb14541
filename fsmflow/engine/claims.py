"""Running one claimed instance in a worker, and what the worker does with the claim after.

A claim ends in one of four ways: the instance ended (it leaves the queue), it waits (the
claim is given back, ready at its deadline or on an event), it was stopped by a shutdown
(given back as it is: another worker takes it at once), or it could not run here (given
back with a back-off that grows with each failure in a row: another runner holds it, the
database failed, the definition changed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from fsmflow.engine.runner import PersistentWorkflowStateMachine, RunnerEvent
from fsmflow.engine.shutdown import EXIT_INTERRUPTED, EXIT_OK
from fsmflow.engine.workflow import Workflow
from fsmflow.errors import (
    FsmflowError,
    InstanceCancelledError,
    InstanceFailedError,
    InstanceLockedError,
    WorkflowInterruptedError,
)
from fsmflow.store.facade import Store
from fsmflow.store.fleet import Claim, WorkerSession

logger = logging.getLogger("fsmflow.worker")

MAX_BACKOFF_SECONDS: Final = 300.0


@dataclass(slots=True)
class WorkerReport:
    """What one :meth:`~fsmflow.Worker.run` did, counted per claim."""

    completed: int = 0
    failed: int = 0  # instances that ended failed or cancelled here
    suspended: int = 0  # claims given back because the instance waits
    released: int = 0  # claims given back unfinished (shutdown, held elsewhere, errors)
    steps_cancelled: int = 0  # steps cancelled by the end of the grace period
    skipped: int = 0  # claims of instances that had ended already (a program ran them)

    @property
    def finished(self) -> int:
        """Instances that ended in this worker."""
        return self.completed + self.failed

    @property
    def exit_code(self) -> int:
        """``0``, or ``75`` (:data:`~fsmflow.EXIT_INTERRUPTED`) if a step was cancelled."""
        return EXIT_INTERRUPTED if self.steps_cancelled else EXIT_OK


def backoff(failures: int, sweep: float) -> float:
    """Seconds before a claim that failed ``failures`` times in a row is tried again."""
    return float(min(sweep * 2 ** max(failures - 1, 0), MAX_BACKOFF_SECONDS))


class ClaimRun:
    """One claim, run by a runner of ``workflow`` on ``store``."""

    def __init__(
        self,
        claim: Claim,
        workflow: Workflow,
        store: Store,
        session: WorkerSession,
        report: WorkerReport,
        *,
        handle_signals: bool,
        allow_definition_change: bool,
    ) -> None:
        self.claim = claim
        self.session = session
        self.report = report
        self.recorded = 0  # rows this run appended: none means it ended before the claim
        self.runner: PersistentWorkflowStateMachine = workflow.runner(
            store,
            instance_id=claim.instance_id,
            handle_signals=handle_signals,
            allow_definition_change=allow_definition_change,
            listeners=[self._count],
        )

    def _count(self, event: RunnerEvent) -> None:
        if event.point == "transition_recorded":
            self.recorded += 1

    def __repr__(self) -> str:
        return f"ClaimRun({self.claim.workflow_name!r}, {self.claim.instance_id!r})"

    async def run(self) -> None:
        """Run the instance until it ends, waits or is stopped; settle the claim."""
        claim, runner = self.claim, self.runner
        try:
            state = await runner.run_workflow(suspend=True)
        except WorkflowInterruptedError as exc:
            self.report.steps_cancelled += int(exc.step_cancelled)
            await self._release(0.0, failed=False, why="stopped by the shutdown")
        except InstanceLockedError:  # a program runs it: try less and less often
            failures = self.claim.failures + 1
            await self._release(self._delay(failures), failed=True, why="another runner holds it")
        except (InstanceFailedError, InstanceCancelledError):
            await self._ended(failed=True, ran=False)  # it had ended before this claim
        except Exception as exc:
            await self._after_error(exc)
        else:
            if state.status == "waiting":
                await self.session.suspend(claim, state.wake_at)
                self.report.suspended += 1
                logger.debug("%s waits: claim given back", self)
            else:  # nothing recorded here: it had completed before this claim
                await self._ended(failed=state.status != "completed", ran=self.recorded > 0)

    async def _after_error(self, exc: Exception) -> None:
        if self.runner.status in ("failed", "cancelled"):
            await self._ended(failed=True, ran=True)  # recorded: StepFailedError and the like
            return
        failures = self.claim.failures + 1
        what = type(exc).__name__
        if isinstance(exc, FsmflowError):  # their messages carry no context values
            what = f"{what}: {exc}"
        logger.error(
            "workflow %r instance %r could not run in this worker (%s); tried again in "
            "%.0f s (%d failure(s) in a row)",
            self.claim.workflow_name,
            self.claim.instance_id,
            what,
            self._delay(failures),
            failures,
            exc_info=not isinstance(exc, FsmflowError),
        )
        await self._release(self._delay(failures), failed=True, why="an error")

    def _delay(self, failures: int) -> float:
        return backoff(failures, self.session.db.config.worker_sweep)

    async def _release(self, delay: float, *, failed: bool, why: str) -> None:
        await self.session.release(self.claim.key, delay=delay, failed=failed)
        self.report.released += 1
        logger.info(
            "workflow %r instance %r: claim given back (%s)",
            self.claim.workflow_name,
            self.claim.instance_id,
            why,
        )

    async def _ended(self, *, failed: bool, ran: bool) -> None:
        await self.session.finish(self.claim.key)
        if not ran:
            self.report.skipped += 1
        elif failed:
            self.report.failed += 1
        else:
            self.report.completed += 1
