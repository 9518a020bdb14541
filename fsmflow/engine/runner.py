"""The runner: :class:`PersistentWorkflowStateMachine` runs one instance and records it.

Every finished step appends exactly one row, in one statement, before the machine moves;
a restarted process reads the instance's last row and resumes at the start of the state
it names. Persistence happens in this run and only here: the runner is the ``transitions``
model and drives the run; it hands the attempts of a state's step to
:class:`~fsmflow.engine.attempts.Attempts` and every append to
:class:`~fsmflow.engine.recorder.Recorder`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsmflow.engine.attempts import Attempts
from fsmflow.engine.interrupts import Interrupts
from fsmflow.engine.machine import WorkflowMachine
from fsmflow.engine.opening import Opening
from fsmflow.engine.recorder import Instance, Position, Recorder
from fsmflow.engine.resuming import has_ended, state_version
from fsmflow.engine.shutdown import for_running_loop
from fsmflow.engine.steps import (
    StepsArgument,
    check_steps,
    normalize_steps,
    run_after,
)
from fsmflow.engine.turns import Turns
from fsmflow.engine.typed import Seed, TypedState
from fsmflow.engine.waiting import Waiter
from fsmflow.errors import WorkflowError
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import WorkflowDefinition, WorkflowStep, check_identifier
from fsmflow.model.records import Status, TransitionRecord, WorkflowState
from fsmflow.settings import DBConfig
from fsmflow.store.facade import Store
from fsmflow.store.ownership import Ownership

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
Seeder = Callable[[], str]  # the seed's JSON text, asked for when an instance starts


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
        self._position = Position()  # seq, status, stored context: the recorder advances it
        self._steps: dict[str, WorkflowStep] = {}
        self._max_bytes = self.store.config.max_context_bytes
        self._typed = TypedState(workflow_definition, self._max_bytes)
        self._machine = WorkflowMachine.of(workflow_definition)
        self._opening = Opening(self.store, workflow_definition, self._machine.definition_json)
        self._interrupts = Interrupts(self.workflow_name, lambda: self.instance_id)
        self._recorder: Recorder | None = None  # these exist while the lock is held
        self._attempts: Attempts | None = None
        self._turns: Turns | None = None
        self._redact = self.store.config.redact_errors
        self._listeners = tuple(listeners)
        if steps is not None:
            self.steps = steps

    if not TYPE_CHECKING:  # a type checker still flags a misspelt attribute

        def __getattr__(self, name: str) -> Any:
            # Only names not found: the triggers, may_ and is_ methods transitions binds.
            machine = self.__dict__.get("_machine")
            if machine is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            return machine.bind(self, name, running=self._recorder is not None)

    def __repr__(self) -> str:
        return (
            f"PersistentWorkflowStateMachine(workflow={self.workflow_name!r}, "
            f"instance_id={self.instance_id!r}, state={self.state!r}, seq={self.seq})"
        )

    @property
    def seq(self) -> int:
        """The seq of the instance's last stored row (-1 before the run loads it)."""
        return self._position.seq

    @property
    def status(self) -> Status:
        """The instance's status as of its last stored row."""
        return self._position.status

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
        """Where this instance stands now (a waiting one: what for, and until when)."""
        assert self.instance_id is not None
        waiting = self.status == "waiting" and self.state is not None
        return WorkflowState(
            workflow_name=self.workflow_name,
            instance_id=self.instance_id,
            current_state=self.state or "",
            context=self.context,
            completed=self.status == "completed",
            status=self.status,
            seq=self.seq,
            waiting_for=self.definition.awaited_events(self.state or "") if waiting else (),
            wake_at=self._turns.waiter.wake_at if waiting and self._turns is not None else None,
            state=self._typed.model(self.context, self.instance_id),
        )

    # -- running -----------------------------------------------------------------------

    async def run_workflow(self, context: Seed = None, *, suspend: bool = False) -> WorkflowState:
        """Run the instance until it completes; return its final :class:`WorkflowState`.

        ``context`` seeds a new instance; it is ignored (logged at INFO) when an existing
        instance resumes, since that instance's stored context wins. A typed workflow's
        seed may be its state model; a resumed instance is upgraded to its state_version.

        An instance that waits (for an event, a deadline) is waited for here, holding its
        lock but no transaction, woken by the event's notification or at the deadline.
        With ``suspend=True`` the call returns as soon as the instance waits, with
        ``WorkflowState(status="waiting")`` and the lock released; a later run continues.

        A step that raises after its last attempt, returns a context that breaks the
        context rules, or leaves no transition to take records the instance as failed
        (retry it with ``fsmflow retry`` once fixed); so does reaching the definition's
        ``max_transitions``.
        """
        check_steps(self.definition, self._steps)
        initial = self._typed.seed(context)
        interrupts = self._interrupts
        interrupts.task = asyncio.current_task()
        if self.options["handle_signals"]:
            # From the very start: a signal while connecting or waiting for the lock
            # stops the run like any other (exit 75), never the default termination.
            interrupts.shutdown = for_running_loop(self.store.config.shutdown_grace)
            interrupts.shutdown.register(self)
        try:
            with self._opening.trace_run(self._redact, lambda: self.status) as self._trace:
                return await self._run(initial, given_context=context is not None, suspend=suspend)
        finally:
            interrupts.task = None
            if interrupts.shutdown is not None:
                interrupts.shutdown.unregister(self)
                interrupts.shutdown = None

    async def _run(self, initial: Seeder, *, given_context: bool, suspend: bool) -> WorkflowState:
        start_state, guarded = self.definition.initial_state, self._interrupts.guarded
        opening = self._opening
        self.instance_id = await guarded("wait", start_state, opening.choose(self.instance_id))
        opens = opening.open(self.instance_id, initial, given_context, self.options)
        owner, record = await guarded("wait", start_state, opens)
        owner.on_lost, fast_release = self._lost, False
        try:
            if has_ended(record, retry_failed=self.retry_failed):
                return self._finished(record)
            self._restore(record)
            state = await opening.check_resumable(record, allow_change=self.allow_definition_change)
            self._collaborators(owner)
            self._machine.enter(self, state)  # its model only once a bound method is used
            try:
                result = await self._run_loop(suspend)
            finally:
                self._machine.detach(self)
            # A completed run gives its lock back after returning (no round trip here); any
            # other end returns with it free, for another process to act at once (a retry).
            fast_release = result.completed
            return result
        finally:
            self._recorder = self._attempts = self._turns = None
            owner.release_soon() if fast_release else await owner.release()

    def _lost(self) -> None:
        self.interrupt("lost")
        if self._turns is not None:
            self._turns.waiter.wake()

    def _collaborators(self, owner: Ownership) -> None:
        """The recorder and the attempt loop of this run (the lock is held)."""
        assert self.instance_id is not None
        names = (self.workflow_name, self.instance_id, self.definition.fingerprint)
        instance = Instance(*names, self._redact, state_version(self.definition), self._trace)
        recorder = Recorder(
            self.store, self._interrupts, owner, instance, self._position,
            start_again=self._opening.start_again,
        )  # fmt: skip
        self._recorder = recorder
        attempts = Attempts(self._interrupts, recorder, owner, lambda: self.state, instance)
        self._attempts = attempts
        waiter = Waiter(
            self.store,
            self._interrupts,
            recorder,
            self.definition,
            instance,
            is_lost=lambda: owner.is_lost,
            regain=attempts.regain_ownership,
            max_bytes=self._max_bytes,
            stepped=self._steps.keys(),  # a view: a frozenset cost 1.2 KB per instance
        )
        parts = (recorder, attempts, waiter)
        self._turns = Turns(self.definition, self._steps, parts, self._emit, self._max_bytes)

    def _finished(self, record: TransitionRecord) -> WorkflowState:
        self._restore(record)
        self._opening.check_ended(record)
        return self._typed.finished(record, self.context)

    def _restore(self, record: TransitionRecord) -> None:
        self.context = self._typed.restore(self._position, record)  # upgraded, if typed

    async def _run_loop(self, suspend: bool) -> WorkflowState:
        recorder, turns = self._recorder, self._turns
        assert recorder is not None and turns is not None
        while True:
            state = self.state
            assert state is not None
            self._interrupts.check_stop(state)
            await recorder.check_limit(state, self.definition.max_transitions)
            turn = await turns.take(state, waiting=self.status == "waiting", suspend=suspend)
            if turn.context is not None:
                self.context = turn.context
            if turn.kind == "suspended":
                return self.workflow_state  # it waits; the lock is released on return
            if turn.kind != "moved":  # waits (the next turn), or moved by hand already
                if self.status == "completed":
                    return self.workflow_state
                continue
            await run_after(turn.chosen, self.context)
            if turn.chosen is None or turn.chosen.dest is None:
                return self.workflow_state
            self._machine.move(self, turn.chosen.dest)

    def _emit(self, point: str, state: str) -> None:
        if self._listeners:
            assert self.instance_id is not None
            event = RunnerEvent(point, self.workflow_name, self.instance_id, state, self.seq)
            for listener in self._listeners:
                listener(event)

    # -- stopping: signals, lost sessions ------------------------------------------------

    def interrupt(self, reason: str) -> None:
        """Stop what the runner awaits, if ``reason`` may stop it: ``"lost"`` (the lock's
        session died) cancels a running step (and ends a wait's sleep); ``"stop"`` (a first
        SIGTERM/SIGINT) anything but a step or an append, which may finish within the grace
        period; ``"shutdown"`` cancels whatever runs."""
        self._interrupts.interrupt(reason)

    # -- triggers fired by hand --------------------------------------------------------

    @property
    def condition_context(self) -> WorkflowContext:
        """The context conditions of a trigger fired by hand are judged on: the running
        step's context as it is at that moment, else the last recorded one."""
        call = None if self._attempts is None else self._attempts.call
        return call.context if call is not None else self.context

    async def on_manual_transition(self, trigger: str, source: str, dest: str | None) -> None:
        """Record a transition fired through a trigger method before the state changes.

        Fired from inside a step, the row carries the step's context as it is at that
        moment, and the step's own return value no longer chooses a transition.
        """
        turns = self._turns
        if turns is None or self.status != "running":
            assert self.instance_id is not None
            raise WorkflowError(
                self.workflow_name,
                self.instance_id,
                f"trigger {trigger!r} fired while the instance is not running here "
                f"(status {self.status}); fire triggers only while run_workflow() runs, "
                "e.g. from a step — or return the trigger's name from the step",
            )
        by_hand = turns.by_hand(trigger, source, dest, self.condition_context, self._interrupts)
        self.context, chosen = await by_hand
        await run_after(chosen, self.context)

    # -- seed API compatibility --

    async def setup(self) -> None:
        """Connect to the database (the seed API's ``await workflow.setup()``); optional,
        since ``run_workflow()`` connects by itself. :class:`~fsmflow.errors.StoreError`
        if the settings were closed since this runner was built: build it again."""
        await self.store.open(check_schema=False)
