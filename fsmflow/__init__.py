"""fsmflow: finite-state-machine workflows whose progress survives crashes in PostgreSQL.

Declare a :class:`WorkflowDefinition`, give each state a step, and run it with
:class:`PersistentWorkflowStateMachine`; every completed transition is appended to one
PostgreSQL table, and a restarted process resumes at the start of the unfinished state.
"""

from __future__ import annotations

from .conditions import Condition
from .context import WorkflowContext
from .definition import RetryPolicy, Transition, WorkflowDefinition, WorkflowStep
from .errors import (
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
    InstanceCancelledError,
    InstanceFailedError,
    InstanceLockedError,
    InstanceNotFoundError,
    InvalidIdentifierError,
    InvalidTransitionError,
    NoTransitionError,
    PermissionDeniedError,
    SchemaMismatchError,
    SchemaMissingError,
    StepFailedError,
    StoreError,
    UnknownStateError,
    WorkflowError,
)
from .records import InstanceSummary, TransitionRecord, WorkflowState
from .runner import PersistentWorkflowStateMachine
from .settings import DBConfig
from .store import Store

__version__ = "0.1.0"

__all__ = [
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
    "FsmflowError",
    "HistoryCorruptError",
    "InstanceCancelledError",
    "InstanceFailedError",
    "InstanceLockedError",
    "InstanceNotFoundError",
    "InstanceSummary",
    "InvalidIdentifierError",
    "InvalidTransitionError",
    "NoTransitionError",
    "PermissionDeniedError",
    "PersistentWorkflowStateMachine",
    "RetryPolicy",
    "SchemaMismatchError",
    "SchemaMissingError",
    "StepFailedError",
    "Store",
    "StoreError",
    "Transition",
    "TransitionRecord",
    "UnknownStateError",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowError",
    "WorkflowState",
    "WorkflowStep",
    "__version__",
]
