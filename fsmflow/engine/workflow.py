""":class:`Workflow`: a definition and its steps as one importable object.

What a worker process is given (``fsmflow worker myapp.tickets:WORKFLOW``) and what a
submitter names; a plain program may use it too (:meth:`Workflow.runner`), and the seed
API (``PersistentWorkflowStateMachine(db, definition)`` plus ``steps``) keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fsmflow.engine.runner import PersistentWorkflowStateMachine
from fsmflow.engine.steps import StepsArgument, check_steps, normalize_steps
from fsmflow.model.definition import WorkflowDefinition, WorkflowStep

if TYPE_CHECKING:
    from fsmflow.settings import DBConfig
    from fsmflow.store.facade import Store


class Workflow:
    """A :class:`WorkflowDefinition` with the step of each of its states.

    ``Workflow(definition, steps)`` checks at once that every state that needs a step has
    one (:class:`~fsmflow.errors.DefinitionError` naming the states otherwise), so a
    worker refuses a broken workflow before it claims anything.
    """

    def __init__(self, definition: WorkflowDefinition, steps: StepsArgument) -> None:
        if not isinstance(definition, WorkflowDefinition):
            raise TypeError(
                f"Workflow(definition, steps): definition must be a WorkflowDefinition, "
                f"not {type(definition).__name__}"
            )
        self.definition = definition
        self.steps: dict[str, WorkflowStep] = normalize_steps(steps)
        check_steps(definition, self.steps)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={sorted(self.steps)!r})"

    @property
    def name(self) -> str:
        """The workflow's name (its definition's)."""
        return self.definition.name

    def runner(self, db: DBConfig | Store, **options: Any) -> PersistentWorkflowStateMachine:
        """A :class:`~fsmflow.PersistentWorkflowStateMachine` of this workflow on ``db``;
        ``options`` are the runner's keyword arguments (``instance_id=``, ``wait=`` ...)."""
        return PersistentWorkflowStateMachine(db, self.definition, steps=self.steps, **options)
