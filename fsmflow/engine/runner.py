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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

from fsmflow.engine.choosing import choose_transition, declared_transition
from fsmflow.engine.failures import error_json, location, traceback_text
from fsmflow.engine.machine import WorkflowMachine
from fsmflow.engine.resuming import (
    check_ended_well,
    definition_changes,
    has_ended,
    resume_state,
    same_definition,
    started_record,
)
from fsmflow.engine.shutdown import Shutdown, for_running_loop
from fsmflow.engine.steps import (
    StepCall,
    StepsArgument,
    backoff_delay,
    check_steps,
    normalize_steps,
    run_after,
    should_retry,
    step_outcome,
)
from fsmflow.errors import (
    ConcurrentTransitionError,
    HistoryDeletedError,
    OwnershipLostError,
    StepFailedError,
    StoreError,
    TransitionLimitError,
    WorkflowError,
    WorkflowInterruptedError,
)
from fsmflow.model.context import WorkflowContext, decode_context, encode_context, seed_json
from fsmflow.model.definition import (
    RetryPolicy,
    Transition,
    WorkflowDefinition,
    WorkflowStep,
    check_identifier,
)
from fsmflow.model.records import Status, TransitionRecord, WorkflowState
from fsmflow.settings import DBConfig
from fsmflow.store.facade import Store
from fsmflow.store.ownership import Ownership

logger = logging.getLogger("fsmflow")
T = TypeVar("T")


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
        self._shutdown: Shutdown | None = None
        self._phase: str | None = None  # what the run awaits: step, append, wait, or None
        self._interrupt_reason: str | None = None
        self._resumed = False  # the instance existed before this run
        self._redact = self.store.config.redact_errors
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

        A step that raises after its last attempt, returns a context that breaks the
        context rules, or leaves no transition to take records the instance as failed
        (retry it with ``fsmflow retry`` once fixed); so does reaching the definition's
        ``max_transitions``.
        """
        check_steps(self.definition, self._steps)
        initial = seed_json(context, max_bytes=self._max_bytes)
        self._task = asyncio.current_task()
        if self.options["handle_signals"]:
            # From the very start: a signal while connecting or waiting for the lock
            # stops the run like any other (exit 75), never the default termination.
            self._shutdown = for_running_loop(self.store.config.shutdown_grace)
            self._shutdown.register(self)
        try:
            return await self._run(initial, given_context=context is not None)
        finally:
            self._task = None
            if self._shutdown is not None:
                self._shutdown.unregister(self)
                self._shutdown = None

    async def _run(self, initial: str, *, given_context: bool) -> WorkflowState:
        start_state = self.definition.initial_state
        await self._guarded("wait", start_state, self._choose_instance())
        assert self.instance_id is not None
        acquiring = self.store.acquire(
            self.workflow_name,
            self.instance_id,
            wait=bool(self.options["wait"]),
            lock_timeout=self.options["lock_timeout"],
        )
        self._owner = await self._guarded("wait", start_state, acquiring)
        self._owner.on_lost = lambda: self.interrupt("lost")
        try:
            loading = self._load_or_start(initial, given_context=given_context)
            record = await self._guarded("wait", start_state, loading)
            if has_ended(record, retry_failed=self.retry_failed):
                return self._finished(record)
            self._restore(record)
            state = await self._check_resumable(record)
            self._machine.attach(self, state)
            try:
                return await self._run_loop()
            finally:
                self._machine.detach(self)
        finally:
            owner, self._owner = self._owner, None
            await owner.release()

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
        self._resumed = True
        if given_context:
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
        if self._resumed:
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

    async def _run_loop(self) -> WorkflowState:
        while True:
            state = self.state
            assert state is not None and self.instance_id is not None
            self._check_stop(state)
            await self._check_limit(state)
            self._emit("step_started", state)
            started, seq_before = time.perf_counter(), self.seq
            result = await self._execute(state)
            duration_ms = (time.perf_counter() - started) * 1000.0
            self._emit("step_finished", state)
            if self.seq != seq_before:  # the step fired a trigger by hand: already recorded
                if self.status == "completed":
                    return self.workflow_state
                continue
            try:
                context, trigger = step_outcome(result, self.workflow_name, self.instance_id, state)
                where = f"context returned by step {state!r}"
                encoded = encode_context(context.data, max_bytes=self._max_bytes, where=where)
                chosen = await choose_transition(
                    self.definition, self.instance_id, state, trigger, context
                )
            except Exception as exc:
                # A bug in the step or the definition: running the step again would repeat
                # it (an LLM call each time), so the instance fails here, visibly.
                await self._record_failure(state, 1, exc)
                raise
            dest = None if chosen is None else chosen.dest
            await self._record(chosen, state, dest, encoded, duration_ms)
            self._emit("transition_recorded", state)
            self.context = context
            await run_after(chosen, context)
            if dest is None:
                return self.workflow_state
            self._machine.move(self, dest)

    async def _check_limit(self, state: str) -> None:
        limit = self.definition.max_transitions
        if self.seq < limit:
            return
        assert self.instance_id is not None
        exc = TransitionLimitError(
            self.workflow_name,
            self.instance_id,
            f"reached max_transitions={limit} (seq {self.seq}) before the step of state "
            f"{state!r}: a loop that never ends? The instance is recorded as failed; raise "
            "the definition's max_transitions, or fix the loop, then `fsmflow retry` it",
        )
        await self._record_failure(state, 0, exc)
        raise exc

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
        appending = self.store.append(
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
        try:
            await self._guarded("append", source, appending)
        except ConcurrentTransitionError:
            await self._check_not_deleted(seq)
            raise
        self.seq, self.status, self._context_json = seq, status, encoded
        return seq

    async def _check_not_deleted(self, seq: int) -> None:
        """After a refused append: :class:`HistoryDeletedError` if the history is gone
        (``reset_db`` with force, ``prune`` or a DELETE), rather than blaming a runner."""
        assert self.instance_id is not None
        last = await self.store.last_record(self.workflow_name, self.instance_id)
        if last is None or last.seq < seq - 1:
            found = "no rows" if last is None else f"rows up to seq {last.seq}"
            raise HistoryDeletedError(
                self.workflow_name,
                self.instance_id,
                f"its stored history was deleted while this runner ran it (expected seq "
                f"{seq - 1}, found {found}); nothing was written. Start the instance again "
                "if that was not intended",
            )

    def _emit(self, point: str, state: str) -> None:
        if self._listeners:
            assert self.instance_id is not None
            event = RunnerEvent(point, self.workflow_name, self.instance_id, state, self.seq)
            for listener in self._listeners:
                listener(event)

    # -- stopping: signals, lost sessions ------------------------------------------------

    def interrupt(self, reason: str) -> None:
        """Stop what the runner awaits, if ``reason`` may stop it.

        ``"lost"`` (the session holding the lock died) cancels a running step only;
        ``"stop"`` (a first SIGTERM/SIGINT) cancels anything but a step or an append, which
        may finish within the grace period; ``"shutdown"`` cancels whatever runs.
        """
        phase = self._phase
        if self._task is None or phase is None or self._interrupt_reason is not None:
            return
        if reason not in _CANCELLED_BY[phase]:
            return
        self._interrupt_reason = reason
        self._task.cancel(f"fsmflow: {reason}")

    async def _guarded(self, phase: str, state: str, work: Awaitable[T]) -> T:
        """Await ``work`` in ``phase`` (``"wait"`` or ``"append"``): an interrupt that
        may stop this phase raises :class:`WorkflowInterruptedError`."""
        self._phase = phase
        try:
            return await work
        except asyncio.CancelledError:
            if self._take_interrupt() is None:
                raise
            raise self._interrupted(state, step_cancelled=False) from None
        finally:
            self._phase = None

    def _take_interrupt(self) -> str | None:
        reason, self._interrupt_reason = self._interrupt_reason, None
        if reason is not None and self._task is not None:
            self._task.uncancel()
        return reason

    def _check_stop(self, state: str) -> None:
        if self._shutdown is not None and self._shutdown.requested:
            raise self._interrupted(state, step_cancelled=False)

    def _interrupted(self, state: str, *, step_cancelled: bool) -> WorkflowInterruptedError:
        second = self._shutdown is not None and self._shutdown.second_signal
        return WorkflowInterruptedError(
            self.workflow_name,
            self.instance_id or "(not chosen yet)",
            state,
            step_cancelled=step_cancelled,
            second_signal=second,
        )

    # -- one step ----------------------------------------------------------------------

    async def _execute(self, state: str) -> Any:
        """Attempt ``state``'s step until it returns (its raw result) or fails for good."""
        step = self._steps[state]
        policy = step.retry or self.definition.default_retry
        attempt = 1
        while True:
            self._check_stop(state)  # e.g. a signal that came during recovery
            # The session may have died while no step ran (backoff, an `after` callback):
            # never start a step without the lock, or it could overlap another runner's.
            if self._owner is not None and self._owner.is_lost:
                await self._guarded("wait", state, self._regain_ownership())
            # Each attempt gets a fresh copy of the stored context: exactly what a
            # resumed process would see, whatever an earlier attempt mutated.
            call = StepCall(step.execute, WorkflowContext(data=decode_context(self._context_json)))
            seq_before = self.seq
            outcome = await self._attempt(call, policy, state)
            if outcome is _LOST:
                await self._guarded("wait", state, self._after_lost(state, call))
                continue
            if not isinstance(outcome, _Failed):
                return outcome
            exc = outcome.error
            if self.seq != seq_before:
                # A trigger fired by hand was recorded before the step raised: the
                # instance has moved on, and its committed step must not run again.
                assert self.state is not None
                await self._fail(self.state, attempt, exc, raised_in=state)
            if attempt >= policy.max_attempts or not should_retry(exc, policy):
                await self._fail(state, attempt, exc)
            # Outside the except block that caught the failure: a cancellation during
            # the pause must reach the handlers above, not escape from a handler.
            await self._guarded("wait", state, self._pause(call, state, attempt, policy, exc))
            attempt += 1

    async def _attempt(self, call: StepCall, policy: RetryPolicy, state: str) -> Any:
        """One attempt: the step's result, a :class:`_Failed`, or ``_LOST``."""
        self._call, self._phase = call, "step"
        try:
            return await call.run(policy.timeout, name=state)
        except asyncio.CancelledError:
            reason = self._take_interrupt()
            if reason is None:
                raise
            if reason == "lost":
                return _LOST
            raise self._interrupted(state, step_cancelled=True) from None
        except _CONTROL_ERRORS:
            raise
        except Exception as exc:
            return _Failed(exc)
        finally:
            self._call, self._phase = None, None

    async def _after_lost(self, state: str, call: StepCall) -> None:
        # Ownership was lost mid-step: never let two executions overlap in this process,
        # retake the lock, and make sure nobody advanced the instance meanwhile; then run
        # the step again.
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
        if last is None or last.seq < self.seq:
            await self._check_not_deleted(self.seq + 1)
        if last is None or last.seq != self.seq:
            raise ConcurrentTransitionError(self.workflow_name, self.instance_id, self.seq + 1)

    async def _pause(
        self, call: StepCall, state: str, attempt: int, policy: RetryPolicy, exc: Exception
    ) -> None:
        """Between attempts: wait for a timed-out sync step's thread (it cannot be
        stopped, and two executions of one step never overlap), then back off."""
        await call.wait_abandoned()
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
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "attempt %d failed:\n%s", attempt, traceback_text(exc, redact=self._redact)
            )
        await asyncio.sleep(delay)

    async def _fail(
        self, state: str, attempts: int, exc: Exception, *, raised_in: str | None = None
    ) -> NoReturn:
        await self._record_failure(state, attempts, exc, raised_in=raised_in)
        assert self.instance_id is not None
        raise StepFailedError(
            self.workflow_name,
            self.instance_id,
            raised_in or state,
            attempts,
            exc,
            redact=self._redact,
            location=location(exc),
        ) from exc

    async def _record_failure(
        self, state: str, attempts: int, exc: Exception, *, raised_in: str | None = None
    ) -> None:
        """Append the terminal failed row (in ``state``, with the last stored context) and
        log the failure with its traceback, once, at ERROR."""
        error = error_json(exc, attempts, redact=self._redact, raised_in=raised_in)
        await self._append(state, state, self._context_json, "failed", error_json=error)
        logger.error(
            "workflow %r instance %r step %r failed after %d attempt(s) and is recorded as "
            "failed at seq %d: %s\n%s",
            self.workflow_name,
            self.instance_id,
            raised_in or state,
            attempts,
            self.seq,
            type(exc).__name__,
            traceback_text(exc, redact=self._redact),
        )

    # -- triggers fired by hand --------------------------------------------------------

    @property
    def condition_context(self) -> WorkflowContext:
        """The context conditions of a trigger fired by hand are judged on: the running
        step's context as it is at that moment, else the last recorded one."""
        return self._call.context if self._call is not None else self.context

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
        context = self.condition_context
        encoded = encode_context(context.data, max_bytes=self._max_bytes, where="manual trigger")
        chosen = declared_transition(self.definition, source, trigger, dest)
        phase = self._phase
        try:
            await self._record(chosen, source, dest, encoded, 0.0)
        finally:
            self._phase = phase  # the append ran inside the step's attempt
        self.context = WorkflowContext(data=decode_context(encoded))
        await run_after(chosen, self.context)

    # -- seed API compatibility --

    async def setup(self) -> None:
        """Connect to the database (the seed API's ``await workflow.setup()``); optional,
        since ``run_workflow()`` connects by itself. :class:`~fsmflow.errors.StoreError`
        if the settings were closed since this runner was built: build it again."""
        await self.store.open(check_schema=False)


# What each interrupt reason may cancel, by what the runner is awaiting.
_CANCELLED_BY: Final[dict[str, frozenset[str]]] = {
    "step": frozenset({"lost", "shutdown"}),
    "append": frozenset({"shutdown"}),
    "wait": frozenset({"stop", "shutdown"}),
}
# Raised inside a step by fsmflow's own machinery (a trigger fired by hand records a row):
# they are about the runner, not the step, and end the run instead of failing the step.
_CONTROL_ERRORS: Final = (
    WorkflowInterruptedError,
    ConcurrentTransitionError,
    OwnershipLostError,
    HistoryDeletedError,
    TransitionLimitError,
    StoreError,
)


@dataclass(frozen=True, slots=True)
class _Failed:
    """An attempt that raised ``error``."""

    error: Exception


_LOST: Final = object()  # an attempt interrupted by a lost session
