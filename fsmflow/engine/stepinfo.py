"""What a running step may ask about itself: :func:`step_info` and its :class:`StepInfo`.

The attempt loop (:class:`~fsmflow.engine.attempts.Attempts`) sets a context variable
around each attempt of a step and resets it afterwards. An async step reads it on the
event loop; a sync step reads it on its worker thread, which runs in a copy of the
attempt's context (:class:`~fsmflow.engine.steps.StepCall`). Anything outside an
attempt (a condition, an ``after`` callback, code around ``run_workflow``) sees no step.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Final

from fsmflow.errors import NotInStepError

__all__ = ["StepInfo", "idempotency_key", "running_step", "step_info"]


@dataclass(frozen=True, slots=True)
class StepInfo:
    """The step that is running: which instance, which entry of which state, which attempt.

    ``seq`` is the seq of the instance's last stored row when the step started, the row
    that entered ``state``. A rerun of the same state entry (after a crash, a retry
    attempt, a lost session) sees the same ``seq``; the next entry of the same state (a
    loop) sees a later one. An instance that failed and is run again (``fsmflow retry``,
    ``retry_failed=True``) stands at a newer row, so its rerun is a new entry.

    ``attempt`` counts the attempts of this entry in this run, from 1 (a restarted
    process starts again at 1; a rerun after a lost session keeps its number).

    ``idempotency_key`` is ``"<workflow>:<instance>:<seq>"`` (a ``%`` or ``:`` inside the
    names is written ``%25`` / ``%3A``, so two instances never share a key): equal for every
    rerun of one state entry, different for every other entry and for a fork (another
    instance id). It is unique within one history table; an instance started again under
    the id of a deleted one gets the same keys again. It can be up to ~1,200 characters
    long: hash it if a provider caps key length.

    It holds identifiers only, never a context value.
    """

    workflow_name: str
    instance_id: str
    state: str
    seq: int
    attempt: int
    idempotency_key: str = field(init=False)

    def __post_init__(self) -> None:
        key = idempotency_key(self.workflow_name, self.instance_id, self.seq)
        object.__setattr__(self, "idempotency_key", key)


def idempotency_key(workflow_name: str, instance_id: str, seq: int) -> str:
    """The key of the state entry that row ``seq`` of the instance began (see
    :class:`StepInfo`)."""
    return f"{_escaped(workflow_name)}:{_escaped(instance_id)}:{seq}"


def _escaped(name: str) -> str:
    # Names may contain ':'; escaping it (and the escape character) keeps keys unambiguous.
    return name.replace("%", "%25").replace(":", "%3A")


# One variable for the whole process, but its value belongs to a context: each task (and
# each sync step's thread, which runs in a copy) sees only the step it is running.
_CURRENT: Final[ContextVar[running_step | None]] = ContextVar("fsmflow_step_info", default=None)


def step_info() -> StepInfo:
    """The :class:`StepInfo` of the step that is running (async or sync).

    Call it from inside a step: anywhere else (a condition, an ``after`` callback, the
    program around ``run_workflow``) it raises :class:`~fsmflow.errors.NotInStepError`.
    A task or thread the step starts itself sees it only if it copies the step's context
    (``asyncio.create_task`` and ``asyncio.to_thread`` do; a bare ``threading.Thread``
    does not).
    """
    running = _CURRENT.get()
    if running is None:
        raise NotInStepError()
    return running.info


class running_step:  # lower case: used like a function, ``with running_step(...):``
    """Make the attempt (``workflow_name`` .. ``attempt``, :class:`StepInfo`'s fields) what
    :func:`step_info` returns while the block runs.

    A class, not a generator-based context manager, and the :class:`StepInfo` is built only
    if the step asks for it: this runs on every attempt, most steps never ask, and the
    key alone costs more than setting the variable.
    """

    __slots__ = ("_fields", "_info", "_token")
    _token: Token[running_step | None]

    def __init__(
        self, workflow_name: str, instance_id: str, state: str, seq: int, attempt: int
    ) -> None:
        self._fields = (workflow_name, instance_id, state, seq, attempt)
        self._info: StepInfo | None = None

    @property
    def info(self) -> StepInfo:
        """The attempt's :class:`StepInfo` (one object, also in a sync step's thread)."""
        if self._info is None:  # two threads racing here build equal objects
            self._info = StepInfo(*self._fields)
        return self._info

    def __enter__(self) -> None:
        self._token = _CURRENT.set(self)

    def __exit__(self, *exc: object) -> None:
        _CURRENT.reset(self._token)
