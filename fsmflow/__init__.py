"""fsmflow: finite-state-machine workflows whose progress survives crashes in PostgreSQL.

Declare a :class:`WorkflowDefinition`, give each state a step, and run it with
:class:`PersistentWorkflowStateMachine`; every completed transition is appended to one
PostgreSQL table, and a restarted process resumes at the start of the unfinished state.
To run many instances on many machines, bundle definition and steps as a
:class:`Workflow`, ``store.submit()`` instances and run :class:`Worker` processes.
"""

from __future__ import annotations

from fsmflow.engine.claims import WorkerReport
from fsmflow.engine.runner import PersistentWorkflowStateMachine, RunnerEvent
from fsmflow.engine.shutdown import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run_program
from fsmflow.engine.stepinfo import StepInfo, step_info
from fsmflow.engine.worker import Worker
from fsmflow.engine.workflow import Workflow
from fsmflow.errors import (
    ConcurrentTransitionError,
    ConfigError,
    ContextError,
    ContextSerializationError,
    ContextTooLargeError,
    DatabaseAuthError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    DefinitionChangedError,
    DefinitionError,
    EmbeddedServerError,
    FsmflowError,
    HistoryCorruptError,
    HistoryDeletedError,
    InstanceCancelledError,
    InstanceExistsError,
    InstanceFailedError,
    InstanceLockedError,
    InstanceNotFoundError,
    InstanceStateError,
    InvalidIdentifierError,
    InvalidTransitionError,
    LockTableFullError,
    NotInStepError,
    NoTransitionError,
    OwnershipLostError,
    PermissionDeniedError,
    ResetRefusedError,
    SchemaMismatchError,
    SchemaMissingError,
    StateValidationError,
    StateVersionError,
    StepFailedError,
    StoreError,
    TransitionLimitError,
    UnknownEventError,
    UnknownStateError,
    WorkflowError,
    WorkflowInterruptedError,
)
from fsmflow.model.conditions import Condition
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import RetryPolicy, Transition, WorkflowDefinition, WorkflowStep
from fsmflow.model.records import (
    EventRecord,
    HealthReport,
    InstanceSummary,
    PruneResult,
    SentEvent,
    TransitionRecord,
    WorkerInfo,
    WorkflowState,
)
from fsmflow.settings import DBConfig
from fsmflow.store.facade import Store

__version__ = "0.1.0"

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConcurrentTransitionError",
    "Condition",
    "ConfigError",
    "ContextError",
    "ContextSerializationError",
    "ContextTooLargeError",
    "DBConfig",
    "DatabaseAuthError",
    "DatabaseNotFoundError",
    "DatabaseUnavailableError",
    "DefinitionChangedError",
    "DefinitionError",
    "EmbeddedServerError",
    "EventRecord",
    "FsmflowError",
    "HealthReport",
    "HistoryCorruptError",
    "HistoryDeletedError",
    "InstanceCancelledError",
    "InstanceExistsError",
    "InstanceFailedError",
    "InstanceLockedError",
    "InstanceNotFoundError",
    "InstanceStateError",
    "InstanceSummary",
    "InvalidIdentifierError",
    "InvalidTransitionError",
    "LockTableFullError",
    "NoTransitionError",
    "NotInStepError",
    "OwnershipLostError",
    "PermissionDeniedError",
    "PersistentWorkflowStateMachine",
    "PruneResult",
    "ResetRefusedError",
    "RetryPolicy",
    "RunnerEvent",
    "SchemaMismatchError",
    "SchemaMissingError",
    "SentEvent",
    "StateValidationError",
    "StateVersionError",
    "StepFailedError",
    "StepInfo",
    "Store",
    "StoreError",
    "Transition",
    "TransitionLimitError",
    "TransitionRecord",
    "UnknownEventError",
    "UnknownStateError",
    "Worker",
    "WorkerInfo",
    "WorkerReport",
    "Workflow",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowError",
    "WorkflowInterruptedError",
    "WorkflowState",
    "WorkflowStep",
    "__version__",
    "run_program",
    "step_info",
]
