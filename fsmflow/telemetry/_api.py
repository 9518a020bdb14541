"""Which telemetry a run uses: none, the global OpenTelemetry providers, or chosen ones.

Cheap when off: OpenTelemetry is never imported here. A program that configured a provider
imported ``opentelemetry`` itself, so until ``opentelemetry.trace`` or
``opentelemetry.metrics`` is loaded no provider can be set, and a run gets
:data:`~fsmflow.telemetry.NO_TRACE` after two dictionary lookups.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final

from fsmflow.telemetry import _names as n
from fsmflow.telemetry._trace import NO_TRACE, RunTrace, Start

if TYPE_CHECKING:
    from fsmflow.telemetry._otel import Telemetry

_OTEL_MODULES: Final = ("opentelemetry.trace", "opentelemetry.metrics")
# Chosen by `using()` for the runs started in a block: a context variable, so concurrent
# tasks (and tests) each see their own, and tasks a run creates inherit it.
_CHOSEN: Final[ContextVar[Telemetry | None]] = ContextVar("fsmflow_telemetry", default=None)


def active() -> Telemetry | None:
    """The telemetry a run started now uses: the one :func:`using` chose, else that of the
    global providers if the program set one, else None (nothing is recorded)."""
    chosen = _CHOSEN.get()
    if chosen is not None:
        return chosen
    if not any(name in sys.modules for name in _OTEL_MODULES):
        return None
    from fsmflow.telemetry import _otel  # loaded already: the program imported the API

    return _otel.global_telemetry() if _otel.configured() else None


def run_trace(workflow: str, redact: bool, status: Callable[[], str]) -> RunTrace:
    """The :class:`RunTrace` of a run of ``workflow`` starting now (``redact``:
    ``FSMFLOW_REDACT_ERRORS``, no error messages in spans; ``status()``: the instance's
    status, read when the run ends)."""
    telemetry = active()
    if telemetry is None:
        return NO_TRACE
    from fsmflow.telemetry._run import OtelRunTrace

    return OtelRunTrace(telemetry, workflow, redact=redact, status=status)


@contextlib.contextmanager
def using(telemetry: Telemetry) -> Iterator[Telemetry]:
    """Runs (and submissions, forks) started inside the block use ``telemetry`` instead of
    the global providers: ``with using(Telemetry(tracer_provider=p)): ...``."""
    token = _CHOSEN.set(telemetry)
    try:
        yield telemetry
    finally:
        _CHOSEN.reset(token)


def submitting(workflow: str, *, redact: bool) -> AbstractContextManager[Start]:
    """Around the submission of an instance of ``workflow`` (span ``fsmflow.submit``): the
    :class:`Start` whose ``trace_parent`` its seq 0 stores."""
    return _starting(n.SUBMIT_SPAN, workflow, {}, redact=redact)


def forking(
    workflow: str, instance_id: str, *, source: str, seq: int, redact: bool
) -> AbstractContextManager[Start]:
    """Around the fork of ``source`` at ``seq`` into ``instance_id`` (span ``fsmflow.fork``):
    the :class:`Start` whose ``trace_parent`` the new seq 0 stores."""
    attributes: dict[str, str | int] = {n.INSTANCE: instance_id, n.FORKED_FROM: source, n.SEQ: seq}
    return _starting(n.FORK_SPAN, workflow, attributes, redact=redact)


def _starting(
    name: str, workflow: str, attributes: Mapping[str, str | int], *, redact: bool
) -> AbstractContextManager[Start]:
    telemetry = active()
    if telemetry is None:
        return contextlib.nullcontext(Start())
    from fsmflow.telemetry._starts import start_span

    return start_span(telemetry, name, workflow, attributes, redact=redact)
