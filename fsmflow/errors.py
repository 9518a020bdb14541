"""fsmflow's exceptions: one root, messages that carry the identifiers involved.

::

    FsmflowError
    ├── DefinitionError              the declared workflow is inconsistent
    ├── ConfigError                  a setting is invalid (names the setting)
    │   └── InvalidIdentifierError   workflow name / instance id / table name unusable
    ├── ContextError
    │   ├── ContextSerializationError  a value JSON/jsonb cannot hold faithfully
    │   ├── ContextTooLargeError       serialized context over the size cap
    │   └── StateValidationError       a typed workflow's state does not fit its state_model
    ├── WorkflowError                about one instance (workflow, instance)
    │   ├── InvalidTransitionError   a step returned a trigger invalid in its state
    │   ├── NoTransitionError        no outgoing transition's conditions hold
    │   ├── UnknownStateError        stored state absent from the definition
    │   ├── DefinitionChangedError   definition differs from the one that started it
    │   ├── HistoryCorruptError      gap or duplicate in stored history
    │   ├── ConcurrentTransitionError  another writer advanced the instance
    │   ├── InstanceLockedError      another runner owns the instance
    │   ├── InstanceNotFoundError    no such instance (fork source, history)
    │   ├── InstanceExistsError      a pinned fork or submit id that already exists
    │   ├── InstanceStateError       wrong status for the operation (cancel, retry, fork)
    │   ├── InstanceFailedError      the instance ended failed earlier
    │   ├── InstanceCancelledError   the instance was cancelled
    │   ├── UnknownEventError        an event the instance's definition waits for nowhere
    │   ├── OwnershipLostError       the runner lost its lock and could not retake it
    │   ├── LockTableFullError       the server's lock table is full (raise a setting)
    │   ├── TransitionLimitError     an instance reached its definition's max_transitions
    │   ├── HistoryDeletedError      the instance's history was deleted under its runner
    │   ├── WorkflowInterruptedError stopped early on SIGTERM/SIGINT; rerun resumes
    │   ├── StateVersionError        a stored state the upgrades cannot bring to state_version
    │   └── StepFailedError          a step raised / timed out after its retries
    ├── StoreError                   the database could not do what was asked
    │   ├── DatabaseUnavailableError unreachable after the retry budget
    │   ├── DatabaseAuthError        authentication failed (never retried)
    │   ├── DatabaseNotFoundError    the configured database does not exist
    │   ├── SchemaMissingError       the table does not exist: run init-db
    │   ├── SchemaMismatchError      table shape / schema version unexpected
    │   ├── ResetRefusedError        reset_db while runners hold instances (use force)
    │   └── PermissionDeniedError    missing grants (lists them)
    ├── EmbeddedServerError          the zero-config local server is unavailable
    └── NotInStepError               step_info() called outside a running step

No message ever contains a password or a context value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class FsmflowError(Exception):
    """Base class of every error fsmflow raises."""


class DefinitionError(FsmflowError):
    """The workflow definition is inconsistent; ``problems`` lists every issue found."""

    def __init__(self, workflow: str, problems: Sequence[str]) -> None:
        self.workflow = workflow
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"workflow {workflow!r} has {len(self.problems)} definition problem(s):\n{lines}"
        )


class ConfigError(FsmflowError):
    """A setting is invalid; the message names the setting and what is accepted."""


class InvalidIdentifierError(ConfigError):
    """A workflow name, instance id or table name cannot be stored faithfully."""


class ContextError(FsmflowError):
    """The workflow context cannot be stored."""


class ContextSerializationError(ContextError):
    """A context value cannot round-trip through JSON/jsonb exactly.

    ``path`` is the key path (``ctx['a'][0]``); the value itself is never shown.
    """

    def __init__(self, path: str, reason: str, *, where: str = "") -> None:
        self.path = path
        self.reason = reason
        suffix = f" ({where})" if where else ""
        super().__init__(
            f"{path}: {reason}{suffix}; contexts must hold only JSON values "
            "(dict with str keys, list, str, int, finite float, bool, None)"
        )


class ContextTooLargeError(ContextError):
    """The serialized context exceeds the configured cap (``FSMFLOW_MAX_CONTEXT_BYTES``)."""

    def __init__(self, size: int, limit: int, *, where: str = "") -> None:
        self.size = size
        self.limit = limit
        suffix = f" ({where})" if where else ""
        super().__init__(
            f"serialized context is {size} bytes, over the limit of {limit} bytes{suffix}; "
            "store large payloads elsewhere and keep a reference in the context, "
            "or raise FSMFLOW_MAX_CONTEXT_BYTES"
        )


class StateValidationError(ContextError):
    """A typed workflow's state does not validate against its ``state_model`` (or a step
    returned something else than the model): ``fields`` are the pydantic field paths at
    fault (``items.0.qty``), with the kind of problem; the values are never shown."""

    def __init__(
        self, workflow: str, instance_id: str | None, where: str, model: str, fields: Sequence[str]
    ) -> None:
        self.workflow = workflow
        self.instance_id = instance_id
        self.where = where
        self.fields = list(fields)
        instance = "" if instance_id is None else f", instance {instance_id!r}"
        super().__init__(
            f"workflow {workflow!r}{instance}: {where} is not a valid {model}: "
            + "; ".join(self.fields)
            + ". Nothing was stored from it: fix the step (or the seed) and retry the instance"
        )


class WorkflowError(FsmflowError):
    """An error about one workflow instance."""

    def __init__(self, workflow: str, instance_id: str, message: str) -> None:
        self.workflow = workflow
        self.instance_id = instance_id
        super().__init__(f"workflow {workflow!r}, instance {instance_id!r}: {message}")


class InvalidTransitionError(WorkflowError):
    """A step returned a trigger that is not valid in its state."""

    def __init__(
        self, workflow: str, instance_id: str, state: str, trigger: str, valid: Iterable[str]
    ) -> None:
        self.state = state
        self.trigger = trigger
        self.valid_triggers = sorted(set(valid))
        shown = ", ".join(repr(t) for t in self.valid_triggers) or "none (final state)"
        super().__init__(
            workflow,
            instance_id,
            f"trigger {trigger!r} is not valid from state {state!r}; valid triggers: {shown}",
        )


class NoTransitionError(WorkflowError):
    """No outgoing transition of a non-final state has all its conditions true."""

    def __init__(self, workflow: str, instance_id: str, state: str, failed: Sequence[str]) -> None:
        self.state = state
        self.failed = list(failed)
        lines = "\n".join(f"  - {f}" for f in self.failed)
        super().__init__(
            workflow,
            instance_id,
            f"no transition out of state {state!r} matched; the instance is recorded as "
            "failed (fix the definition or the step, then `fsmflow retry` it). "
            f"Failed:\n{lines}",
        )


class UnknownStateError(WorkflowError):
    """The stored state is not a state of the current definition."""

    def __init__(self, workflow: str, instance_id: str, seq: int, state: str) -> None:
        self.seq = seq
        self.state = state
        super().__init__(
            workflow,
            instance_id,
            f"stored state {state!r} (seq {seq}) is not in the current definition; "
            "restore the state in the definition, or fork the instance onto a known state "
            "of the current code: `fsmflow fork WORKFLOW ID --state STATE --definition "
            "MODULE:ATTR --allow-definition-change` (fork_instance(..., state=, definition=, "
            "allow_definition_change=True))",
        )


class DefinitionChangedError(WorkflowError):
    """The definition differs from the one the instance was started with."""

    def __init__(self, workflow: str, instance_id: str, changes: Sequence[str]) -> None:
        self.changes = list(changes)
        lines = "\n".join(f"  - {c}" for c in self.changes)
        super().__init__(
            workflow,
            instance_id,
            "the workflow definition changed since this instance started; pass "
            f"allow_definition_change=True to resume anyway. Changes:\n{lines}",
        )


class HistoryCorruptError(WorkflowError):
    """Stored history has a gap or a duplicate."""


class ConcurrentTransitionError(WorkflowError):
    """Another writer appended to this instance first; this runner stopped."""

    def __init__(self, workflow: str, instance_id: str, seq: int) -> None:
        self.seq = seq
        super().__init__(
            workflow,
            instance_id,
            f"another runner already recorded seq {seq}; this runner stopped without "
            "writing. Run each instance from one process at a time",
        )


class InstanceLockedError(WorkflowError):
    """Another runner currently owns this instance."""


class InstanceNotFoundError(WorkflowError):
    """The instance has no stored history."""


class InstanceExistsError(WorkflowError):
    """An instance with this id already exists (a fork or a submit never overwrites history)."""


class InstanceStateError(WorkflowError):
    """The instance is not in a status this operation applies to (e.g. cancelling a
    completed instance, retrying one that did not fail, forking from a completion row)."""


class UnknownEventError(WorkflowError):
    """An event sent to an instance whose stored definition does not wait for it; the
    message lists the events it declares."""


class InstanceFailedError(WorkflowError):
    """The instance ended with a failed step; retry it explicitly."""


class InstanceCancelledError(WorkflowError):
    """The instance was cancelled."""


class OwnershipLostError(WorkflowError):
    """The runner's database session (and so its lock on the instance) was lost and could
    not be taken back: another runner may own the instance now. Nothing was written."""


class LockTableFullError(WorkflowError):
    """The server could not take this instance's advisory lock because its shared lock
    table is full (SQLSTATE 53200); other instances' locks are untouched. Raise
    ``max_locks_per_transaction`` (or run fewer instances per server)."""


class TransitionLimitError(WorkflowError):
    """The instance recorded its definition's ``max_transitions`` transitions (a loop that
    never ends?); it is recorded as failed and can be retried after a fix."""


class HistoryDeletedError(WorkflowError):
    """The instance's stored history disappeared while this runner ran it (``reset_db``
    with ``force``, ``prune`` or a hand-run DELETE); nothing was written."""


class WorkflowInterruptedError(WorkflowError):
    """The runner stopped early on SIGTERM/SIGINT; running the instance again resumes it."""

    def __init__(
        self,
        workflow: str,
        instance_id: str,
        state: str,
        *,
        step_cancelled: bool,
        second_signal: bool = False,
    ) -> None:
        self.state = state
        self.step_cancelled = step_cancelled
        self.second_signal = second_signal
        why = (
            "a second signal arrived"
            if second_signal
            else "it did not finish within the grace period"
        )
        detail = (
            f"the step of state {state!r} was cancelled because {why}; it runs again from "
            "its start on the next run"
            if step_cancelled
            else f"stopped at a step boundary; the next run resumes in state {state!r}"
        )
        super().__init__(workflow, instance_id, f"shutdown requested: {detail}")


class StateVersionError(WorkflowError):
    """An instance's stored state cannot be brought to the definition's ``state_version``:
    it is newer than the code's, an upgrade raised or returned no dict, or its result does
    not validate. Nothing is written; ``stored`` and ``code`` are the two versions."""

    def __init__(
        self, workflow: str, instance_id: str, stored: int, code: int, detail: str
    ) -> None:
        self.stored_version = stored
        self.code_version = code
        super().__init__(
            workflow,
            instance_id,
            f"its stored state has state_version {stored}, the code's is {code}: {detail}; "
            "nothing was written",
        )


class StepFailedError(WorkflowError):
    """A step raised (or timed out) and exhausted its attempts."""

    def __init__(
        self,
        workflow: str,
        instance_id: str,
        state: str,
        attempts: int,
        error: BaseException,
        *,
        redact: bool = False,
        location: str | None = None,
    ) -> None:
        self.state = state
        self.attempts = attempts
        self.error_type = type(error).__name__
        # With FSMFLOW_REDACT_ERRORS the exception's message (which may quote context
        # values) is left out; the type and where it was raised remain.
        shown = self.error_type if redact else f"{self.error_type}: {error}"
        where = f" (raised at {location})" if location else ""
        super().__init__(
            workflow,
            instance_id,
            f"step {state!r} failed after {attempts} attempt(s): {shown}{where}",
        )


class StoreError(FsmflowError):
    """The database could not do what was asked."""


class DatabaseUnavailableError(StoreError):
    """The database stayed unreachable for the whole retry budget."""

    def __init__(self, target: str, detail: str) -> None:
        self.target = target
        super().__init__(
            f"database at {target} is unavailable ({detail}); check that the server runs and "
            "DB_HOST/DB_PORT (or DB_URL) point at it"
        )


class DatabaseAuthError(StoreError):
    """Authentication failed; not retried."""


class DatabaseNotFoundError(StoreError):
    """The configured database does not exist."""


class SchemaMissingError(StoreError):
    """The history table does not exist."""


class SchemaMismatchError(StoreError):
    """The table exists but its columns or schema version are not what fsmflow expects."""


class ResetRefusedError(StoreError):
    """``reset_db`` refused: runners hold instances of the table right now (their number is
    in the message). Stop them first, or pass ``force=True`` / ``--force``."""


class PermissionDeniedError(StoreError):
    """The database role lacks a privilege; the message lists the grants needed."""


class EmbeddedServerError(FsmflowError):
    """The zero-config local PostgreSQL could not be started."""


class NotInStepError(FsmflowError):
    """``fsmflow.step_info()`` was called where no step is running."""

    def __init__(self) -> None:
        super().__init__(
            "fsmflow.step_info() was called outside a step; call it from inside a step "
            "function (async or sync) while the runner runs it, not from a condition, an "
            "`after` callback or the code around run_workflow(); a thread the step starts "
            "itself must run in a copy of its context (asyncio.to_thread does that)"
        )
