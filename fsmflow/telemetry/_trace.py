"""What a run tells its telemetry: :class:`RunTrace`, whose every hook does nothing.

The engine holds one per run and calls it at the points below; with OpenTelemetry
configured it is an :class:`~fsmflow.telemetry._otel.OtelRunTrace`, otherwise the shared
:data:`NO_TRACE`, so a hook costs one method call and nothing is imported or allocated.
Hooks never raise and are never given a context value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from types import TracebackType
from typing import Final, Self

TraceParentReader = Callable[[str, str], Awaitable[str | None]]
_NO_ATTEMPT: Final = contextlib.nullcontext()  # reusable: no generator made per attempt


class RunTrace:
    """The telemetry of one run of one instance (the base class: every hook a no-op).

    ``with run_trace(...) as trace:`` around the run: leaving the block ends it (with the
    error that left it, if any) by :meth:`ended`.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ended(error)

    def started(self, instance_id: str) -> str | None:
        """The instance is new: its seq 0 is about to be written. Returns the W3C
        traceparent to store on it (None: none), the one every later run continues."""
        return None

    async def opened(
        self, instance_id: str, stored: TraceParentReader, *, created: bool | None = None
    ) -> None:
        """The run holds the instance's lock and has read its last row; ``stored(workflow,
        instance_id)`` reads the traceparent its seq 0 stored (a resumed run's parent).
        ``created``: whether this run wrote seq 0 (None: it did if :meth:`started` was
        called); False after :meth:`started` drops the start span unexported (a start
        path that asks for the traceparent before it knows the instance exists)."""

    def ended(self, error: BaseException | None = None) -> None:
        """The run returned, or raised ``error``."""

    def attempt(self, state: str, seq: int, attempt: int) -> AbstractContextManager[None]:
        """Around one attempt of ``state``'s step (entered at row ``seq``): the step's span
        is the current span while the step runs."""
        return _NO_ATTEMPT

    def retrying(self, error: BaseException) -> None:
        """The attempt that just ended raised ``error`` and will be tried again."""

    def failing(self, error: BaseException) -> None:
        """The instance is about to be recorded as failed because of ``error``."""

    def recorded(
        self,
        seq: int,
        trigger: str | None,
        source: str | None,
        dest: str | None,
        status: str,
        seconds: float,
    ) -> None:
        """Row ``seq`` committed (its append took ``seconds``)."""

    def waiting(self, state: str, events: Sequence[str], deadline: datetime | None) -> None:
        """The instance waits in ``state`` for ``events`` or until ``deadline``."""

    def woke(self, why: str, event: str | None = None) -> None:
        """A wait ended: ``why`` is ``"event"`` (``event`` named) or ``"timeout"``."""


NO_TRACE: Final = RunTrace()


class Start:
    """The start of an instance without a run (a submission, a fork): ``trace_parent`` is
    what its seq 0 stores (None: no tracing); :meth:`named` gives the span its id."""

    __slots__ = ("trace_parent",)

    def __init__(self) -> None:
        self.trace_parent: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(trace_parent={self.trace_parent!r})"

    def named(self, instance_id: str) -> None:
        """The new instance's id, once it is known."""
