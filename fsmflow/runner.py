"""The runner: :class:`PersistentWorkflowStateMachine` runs one instance and records it.

Every finished step appends exactly one row, in one statement, before the machine moves;
a restarted process reads the instance's last row and resumes at the start of the state
it names. Persistence happens here and only here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .choosing import choose_transition, declared_transition
from .context import WorkflowContext, decode_context, encode_context
from .definition import RetryPolicy, Transition, WorkflowDefinition, WorkflowStep, check_identifier
from .errors import (
    ConcurrentTransitionError,
    FsmflowError,
    StepFailedError,
    WorkflowError,
    WorkflowInterruptedError,
)
from .machine import WorkflowMachine
from .ownership import Ownership
from .records import Status, TransitionRecord, WorkflowState
from .resuming import (
    check_ended_well,
    definition_changes,
    has_ended,
    resume_state,
    same_definition,
    started_record,
)
from .settings import DBConfig
from .shutdown import Shutdown, for_running_loop
from .steps import (
    StepCall,
    StepsArgument,
    backoff_delay,
    check_steps,
    normalize_steps,
    run_after,
    should_retry,
    step_outcome,
)
from .store import Store

logger = logging.getLogger("fsmflow")


@dataclass(frozen=True, slots=True)
class RunnerEvent:
    """What a listener is told: ``point`` is ``step_started``, ``step_finished`` (the step
    returned; nothing recorded yet) or ``transition_recorded`` (the row is committed)."""

    point: str
    workflow_name: str
    instance_id: str
    state: str
    seq: int


Listener = Callable[[RunnerEvent], None]


class PersistentWorkflowStateMachine:
    """A workflow instance whose every completed transition is stored in PostgreSQL.

    ``PersistentWorkflowStateMachine(db_config, definition)``, set ``steps`` (or pass
    ``steps=``), then ``await run_workflow()``. With ``instance_id`` the instance is resumed
    if it exists, else created; without, the most recently started unfinished instance of
    this workflow is resumed, else a new one starts.

    What runs again after a crash: only the step of the state the instance was in, from
    its start, with the context the previous step left. Finished steps never run again.

    One runner owns an instance at a time (an advisory lock): another gets
    :class:`~fsmflow.errors.InstanceLockedError`, or waits with ``wait=True`` (up to
    ``lock_timeout`` seconds). On SIGTERM/SIGINT the runner stops at the next step boundary
    (``handle_signals=False`` leaves signals alone). ``listeners`` are called synchronously
    at each :class:`RunnerEvent` (metrics, tracing, fault injection in tests).

    The object is a ``transitions`` model: it has ``state``, one method per trigger and
    ``may_<trigger>()``; triggers fired by hand are recorded like the runner's own.
    """

    state: str | None = None

    def __init__(
        self,
        db_config: DBConfig | Store,
        workflow_definition: WorkflowDefinition,
        *,
        steps: StepsArgument | None = None,
        instance_id: str | None = None,
        allow_definition_change: bool = False,
        retry_failed: bool = False,
        wait: bool = False,
        lock_timeout: float | None = None,
        handle_signals: bool = True,
        listeners: Sequence[Listener] = (),
    ) -> None:
        self.store = db_config if isinstance(db_config, Store) else db_config.store
        self.definition = workflow_definition
        self.workflow_name = workflow_definition.name
        self.instance_id = (
            None if instance_id is None else check_identifier(instance_id, "instance_id")
        )
        self.allow_definition_change = allow_definition_change
        self.retry_failed = retry_failed
        self.options = {
            "wait": wait,
            "lock_timeout": lock_timeout,
            "handle_signals": handle_signals,
        }
        self.context = WorkflowContext()
        self.seq = -1
        self.status: Status = "running"
        self._steps: dict[str, WorkflowStep] = {}
        self._context_json = "{}"
        self._max_bytes = self.store.config.max_context_bytes
        self._machine = WorkflowMachine.of(workflow_definition)
        self._owner: Ownership | None = None
        self._task: asyncio.Task[Any] | None = None
        self._call: StepCall | None = None
        self._interrupt_reason: str | None = None
        self._listeners = tuple(listeners)
        if steps is not None:
            self.steps = steps

    def __repr__(self) -> str:
        return (
            f"PersistentWorkflowStateMachine(workflow={self.workflow_name!r}, "
            f"instance_id={self.instance_id!r}, state={self.state!r}, seq={self.seq})"
        )

    @property
    def steps(self) -> dict[str, WorkflowStep]:
        """The step of each state: a dict name -> WorkflowStep (or a plain function)."""
        return self._steps

    @steps.setter
    def steps(self, steps: StepsArgument) -> None:
        self._steps = normalize_steps(steps)

    @property
    def machine(self) -> Any:
        """The ``transitions`` AsyncMachine shared by every instance of this definition."""
        return self._machine.machine

    @property
    def workflow_state(self) -> WorkflowState:
        """Where this instance stands now."""
        assert self.instance_id is not None
        return WorkflowState(
            workflow_name=self.workflow_name,
            instance_id=self.instance_id,
            current_state=self.state or "",
            context=self.context,
            completed=self.status == "completed",
            status=self.status,
            seq=self.seq,
        )

    # -- running -----------------------------------------------------------------------

    async def run_workflow(
        self, context: WorkflowContext | Mapping[str, Any] | None = None
    ) -> WorkflowState:
        """Run the instance until it completes; return its final :class:`WorkflowState`.

        ``context`` seeds a new instance; it is ignored (logged at INFO) when an existing
        instance resumes, since that instance's stored context wins.
        """
        check_steps(self.definition, self._steps)
        initial = self._initial_json(context)
        await self._choose_instance()
        assert self.instance_id is not None
        self._owner = await self.store.acquire(
            self.workflow_name,
            self.instance_id,
            wait=bool(self.options["wait"]),
            lock_timeout=self.options["lock_timeout"],
        )
        self._owner.on_lost = lambda: self.interrupt("lost")
        try:
            record = await self._load_or_start(initial, given_context=context is not None)
            if has_ended(record, retry_failed=self.retry_failed):
                return self._finished(record)
            self._restore(record)
            return await self._run_attached(await self._check_resumable(record))
        finally:
            owner, self._owner = self._owner, None
            await owner.release()

    async def _run_attached(self, state: str) -> WorkflowState:
        shutdown = None
        if self.options["handle_signals"]:
            shutdown = for_running_loop(self.store.config.shutdown_grace)
            shutdown.register(self)
        self._machine.attach(self, state)
        self._task = asyncio.current_task()
        try:
            return await self._run_loop(shutdown)
        finally:
            self._task = None
            self._machine.detach(self)
            if shutdown is not None:
                shutdown.unregister(self)

    def _initial_json(self, context: WorkflowContext | Mapping[str, Any] | None) -> str:
        data = context.data if isinstance(context, WorkflowContext) else dict(context or {})
        return encode_context(data, max_bytes=self._max_bytes, where="initial context")

    async def _choose_instance(self) -> None:
        if self.instance_id is None:
            self.instance_id = await self.store.latest_unfinished(self.workflow_name)
        if self.instance_id is None:
            self.instance_id = uuid.uuid4().hex

    async def _load_or_start(self, initial_json: str, *, given_context: bool) -> TransitionRecord:
        assert self.instance_id is not None
        last = await self.store.last_record(self.workflow_name, self.instance_id)
        if last is None:
            return await self._start(initial_json)
        if given_context and last.seq > 0:
            # Programs pass their seed context on every start, not knowing whether they
            # resume: that is normal, so INFO, not WARNING.
            logger.info(
                "workflow %r instance %r exists: resuming with its stored context "
                "(the given context seeds new instances only)",
                self.workflow_name,
                self.instance_id,
            )
        return last

    async def _start(self, initial_json: str) -> TransitionRecord:
        state = self.definition.initial_state
        assert self.instance_id is not None
        attempt = uuid.uuid4().hex
        await self.store.start(
            self.workflow_name,
            self.instance_id,
            state,
            initial_json,
            fingerprint=self.definition.fingerprint,
            attempt_id=attempt,
            definition_json=self._machine.definition_json,
        )
        logger.info(
            "workflow %r instance %r started in state %r",
            self.workflow_name,
            self.instance_id,
            state,
        )
        return started_record(self.definition, self.instance_id, initial_json, attempt)

    def _finished(self, record: TransitionRecord) -> WorkflowState:
        self._restore(record)
        check_ended_well(self.workflow_name, record)
        logger.info(
            "workflow %r instance %r already %s",
            self.workflow_name,
            record.instance_id,
            record.status,
        )
        return WorkflowState.from_record(record)

    def _restore(self, record: TransitionRecord) -> None:
        self.seq = record.seq
        self.status = "running" if record.status == "failed" else record.status
        self._context_json = json.dumps(record.context, ensure_ascii=False, separators=(",", ":"))
        self.context = WorkflowContext(data=record.context)

    async def _check_resumable(self, record: TransitionRecord) -> str:
        """The state to resume in; refuses unknown states and (unless allowed) drift."""
        state = resume_state(self.definition, record)
        if not await same_definition(self.definition, record, self.store.record_at):
            await self._check_drift(record)
        if record.seq > 0:
            logger.info(
                "workflow %r instance %r resumed in state %r after seq %d",
                self.workflow_name,
                record.instance_id,
                state,
                record.seq,
            )
        return state

    async def _check_drift(self, record: TransitionRecord) -> None:
        first = record
        if record.seq != 0:
            first = await self.store.record_at(self.workflow_name, record.instance_id, 0) or record
        changes = definition_changes(self.definition, first, allowed=self.allow_definition_change)
        logger.warning(
            "workflow %r instance %r resumes under a changed definition: %s",
            self.workflow_name,
            record.instance_id,
            "; ".join(changes),
        )

    async def _run_loop(self, shutdown: Shutdown | None) -> WorkflowState:
        while True:
            state = self.state
            assert state is not None
            if shutdown is not None and shutdown.requested:
                raise self._interrupted(state, step_cancelled=False)
            self._emit("step_started", state)
            started, seq_before = time.perf_counter(), self.seq
            context, trigger = await self._execute(state)
            duration_ms = (time.perf_counter() - started) * 1000.0
            self._emit("step_finished", state)
            if self.seq != seq_before:  # the step fired a trigger by hand: already recorded
                if self.status == "completed":
                    return self.workflow_state
                continue
            where = f"context returned by step {state!r}"
            encoded = encode_context(context.data, max_bytes=self._max_bytes, where=where)
            assert self.instance_id is not None
            chosen = await choose_transition(
                self.definition, self.instance_id, state, trigger, context
            )
            dest = None if chosen is None else chosen.dest
            await self._record(chosen, state, dest, encoded, duration_ms)
            self._emit("transition_recorded", state)
            self.context = context
            await run_after(chosen, context)
            if dest is None:
                return self.workflow_state
            self._machine.move(self, dest)

    async def _record(
        self,
        chosen: Transition | None,
        source: str,
        dest: str | None,
        encoded: str,
        duration_ms: float,
    ) -> None:
        status: Status = "running" if dest is not None else "completed"
        trigger = None if chosen is None else chosen.trigger
        seq = await self._append(
            source, dest, encoded, status, trigger=trigger, duration_ms=duration_ms
        )
        # Context values are never logged: only the size of what was stored. Per
        # transition at DEBUG (an INFO line costs ~13 us per transition once a handler
        # formats it); INFO marks start, resume, completion and failure.
        logger.debug(
            "workflow %r instance %r seq %d: %s -> %s (step %.1f ms, context %d bytes)",
            self.workflow_name,
            self.instance_id,
            seq,
            source,
            dest or "(end)",
            duration_ms,
            len(encoded),
        )
        if dest is None:
            logger.info(
                "workflow %r instance %r completed at seq %d in state %r",
                self.workflow_name,
                self.instance_id,
                seq,
                source,
            )

    async def _append(
        self,
        source: str,
        dest: str | None,
        encoded: str,
        status: Status,
        *,
        trigger: str | None = None,
        duration_ms: float | None = None,
        error_json: str | None = None,
    ) -> int:
        """Append the instance's next row on the owning session, then advance to it."""
        assert self.instance_id is not None
        seq = self.seq + 1
        await self.store.append(
            self.workflow_name,
            self.instance_id,
            seq,
            trigger=trigger,
            source=source,
            dest=dest,
            context_json=encoded,
            status=status,
            fingerprint=self.definition.fingerprint,
            attempt_id=uuid.uuid4().hex,
            duration_ms=duration_ms,
            error_json=error_json,
            owner=self._owner,
        )
        self.seq, self.status, self._context_json = seq, status, encoded
        return seq

    def _emit(self, point: str, state: str) -> None:
        if self._listeners:
            assert self.instance_id is not None
            event = RunnerEvent(point, self.workflow_name, self.instance_id, state, self.seq)
            for listener in self._listeners:
                listener(event)

    # -- one step ----------------------------------------------------------------------

    def interrupt(self, reason: str) -> None:
        """Cancel the running step (``reason``: ``"shutdown"`` or ``"lost"``), if any."""
        if self._call is not None and self._task is not None and self._interrupt_reason is None:
            self._interrupt_reason = reason
            self._task.cancel(f"fsmflow: {reason}")

    async def _execute(self, state: str) -> tuple[WorkflowContext, str | None]:
        step = self._steps[state]
        policy = step.retry or self.definition.default_retry
        attempt = 1
        while True:
            # The session may have died while no step ran (backoff, an `after` callback):
            # never start a step without the lock, or it could overlap another runner's.
            if self._owner is not None and self._owner.is_lost:
                await self._regain_ownership()
            # Each attempt gets a fresh copy of the stored context: exactly what a
            # resumed process would see, whatever an earlier attempt mutated.
            call = StepCall(step.execute, WorkflowContext(data=decode_context(self._context_json)))
            self._call = call
            try:
                result = await call.run(policy.timeout)
            except asyncio.CancelledError:
                self._call = None  # no further interrupt may cancel the recovery below
                reason = self._take_interrupt()
                if reason is None:
                    raise
                await self._after_interrupt(reason, state, call)
                continue
            except FsmflowError:
                raise
            except Exception as exc:
                if attempt >= policy.max_attempts or not should_retry(exc, policy):
                    await self._fail(state, attempt, exc)
                # A timed-out sync step's thread cannot be stopped: the next attempt
                # waits for it, so two executions of one step never overlap.
                await call.wait_abandoned()
                await self._backoff(state, attempt, policy, exc)
                attempt += 1
                continue
            finally:
                self._call = None
            assert self.instance_id is not None
            return step_outcome(result, self.workflow_name, self.instance_id, state)

    def _take_interrupt(self) -> str | None:
        reason, self._interrupt_reason = self._interrupt_reason, None
        if reason is not None and self._task is not None:
            self._task.uncancel()
        return reason

    async def _after_interrupt(self, reason: str, state: str, call: StepCall) -> None:
        if reason == "shutdown":
            raise self._interrupted(state, step_cancelled=True)
        # Ownership was lost mid-step: never let two executions overlap, retake the
        # lock, and make sure nobody advanced the instance meanwhile; then run it again.
        await call.wait_abandoned()
        await self._regain_ownership()
        logger.warning(
            "workflow %r instance %r: step %r interrupted by a lost session; running it again",
            self.workflow_name,
            self.instance_id,
            state,
        )

    async def _regain_ownership(self) -> None:
        """Retake a lost lock; :class:`ConcurrentTransitionError` if another runner moved
        the instance on meanwhile (:class:`OwnershipLostError` if it still holds it)."""
        assert self._owner is not None and self.instance_id is not None
        await self._owner.reacquire()
        last = await self.store.last_record(self.workflow_name, self.instance_id)
        if last is None or last.seq != self.seq:
            raise ConcurrentTransitionError(self.workflow_name, self.instance_id, self.seq + 1)

    def _interrupted(self, state: str, *, step_cancelled: bool) -> WorkflowInterruptedError:
        assert self.instance_id is not None
        return WorkflowInterruptedError(
            self.workflow_name, self.instance_id, state, step_cancelled=step_cancelled
        )

    async def _backoff(self, state: str, attempt: int, policy: RetryPolicy, exc: Exception) -> None:
        delay = backoff_delay(policy, attempt)
        logger.warning(
            "workflow %r instance %r step %r attempt %d/%d failed (%s); retrying in %.2fs",
            self.workflow_name,
            self.instance_id,
            state,
            attempt,
            policy.max_attempts,
            type(exc).__name__,
            delay,
        )
        await asyncio.sleep(delay)

    async def _fail(self, state: str, attempts: int, exc: BaseException) -> NoReturn:
        assert self.instance_id is not None
        error = {"type": type(exc).__name__, "message": str(exc)[:2000], "attempts": attempts}
        await self._append(state, state, self._context_json, "failed", error_json=json.dumps(error))
        logger.error(
            "workflow %r instance %r step %r failed after %d attempt(s): %s",
            self.workflow_name,
            self.instance_id,
            state,
            attempts,
            type(exc).__name__,
        )
        raise StepFailedError(self.workflow_name, self.instance_id, state, attempts, exc) from exc

    # -- triggers fired by hand --------------------------------------------------------

    async def on_manual_transition(self, trigger: str, source: str, dest: str | None) -> None:
        """Record a transition fired through a trigger method before the state changes.

        Fired from inside a step, the row carries the step's context as it is at that
        moment, and the step's own return value no longer chooses a transition.
        """
        if self._owner is None or self.status != "running":
            assert self.instance_id is not None
            raise WorkflowError(
                self.workflow_name,
                self.instance_id,
                f"trigger {trigger!r} fired while the instance is not running here "
                f"(status {self.status}); fire triggers only while run_workflow() runs, "
                "e.g. from a step — or return the trigger's name from the step",
            )
        context = self._call.context if self._call is not None else self.context
        encoded = encode_context(context.data, max_bytes=self._max_bytes, where="manual trigger")
        chosen = declared_transition(self.definition, source, trigger, dest)
        await self._record(chosen, source, dest, encoded, 0.0)
        self.context = WorkflowContext(data=decode_context(encoded))
        await run_after(chosen, self.context)
