"""Running one step: async steps on the loop, sync steps on a daemon thread.

A sync step runs on its own daemon thread so it never blocks the event loop and never
keeps a stopping process alive past its grace period (Python waits for executor threads
at exit, not for daemon threads). A cancelled sync step cannot be stopped: its thread
runs on, its result is dropped, and the runner waits for it before running the step again.

Also here, what the runner decides around an attempt without any I/O: which step serves
each state, whether a failed attempt is retried and after how long, and what a step's
return value means.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fsmflow.errors import DefinitionError, StateValidationError, WorkflowError
from fsmflow.model.context import WorkflowContext
from fsmflow.model.definition import (
    RetryPolicy,
    StepFunction,
    Transition,
    WorkflowDefinition,
    WorkflowStep,
)

StepsArgument = Mapping[str, WorkflowStep | StepFunction] | Sequence[WorkflowStep]


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions, partials of them and objects with ``async __call__``.

    Those run on the event loop; everything else runs on a thread. (A plain
    ``inspect.iscoroutinefunction`` misses callable objects, whose coroutine would
    otherwise be created on a thread and awaited outside the step's time limit.)
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - we want the bound __call__ itself
    )


class StepCall:
    """One attempt of one step; ``thread`` is set for sync steps. ``is_async`` is
    :func:`is_async_callable` of ``execute`` (the caller asks it once per run)."""

    def __init__(
        self, execute: Callable[[WorkflowContext], Any], context: WorkflowContext, is_async: bool
    ) -> None:
        self.execute = execute
        self.context = context
        self.is_async = is_async
        self.thread: threading.Thread | None = None
        self._thread_done: asyncio.Event | None = None

    async def run(self, time_limit: float | None, *, name: str = "") -> Any:
        """Run the attempt (bounded by ``time_limit`` seconds) and return the step's result.

        The time limit covers the whole attempt, including awaiting a coroutine that a
        callable returned; running out raises a :class:`TimeoutError` naming the step
        ``name`` and the limit.
        """
        if time_limit is None:
            return await self._attempt()
        try:
            async with asyncio.timeout(time_limit) as scope:
                return await self._attempt()
        except TimeoutError:
            if not scope.expired():
                raise  # the step's own TimeoutError, not the limit
            raise TimeoutError(
                f"step {name!r} did not finish within its timeout of {time_limit:g}s"
            ) from None

    async def _attempt(self) -> Any:
        if self.is_async:
            result = await self.execute(self.context)
        else:
            result = await self._in_thread()
        if inspect.isawaitable(result):  # a sync callable that returned an awaitable
            result = await result
        return result

    async def _in_thread(self) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        done = self._thread_done = asyncio.Event()
        ctx = contextvars.copy_context()

        def settle(ok: bool, value: Any) -> None:
            if not future.done():
                (future.set_result if ok else future.set_exception)(value)

        def work() -> None:
            try:
                value = ctx.run(self.execute, self.context)
            except BaseException as exc:
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, value)
            # The loop may be closed by now (the program ended while the thread ran on).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, *outcome)
                loop.call_soon_threadsafe(done.set)

        name = f"fsmflow-step-{getattr(self.execute, '__name__', 'step')}"
        self.thread = threading.Thread(target=work, name=name, daemon=True)
        self.thread.start()
        return await future

    async def wait_abandoned(self) -> None:
        """After a cancellation: wait until a sync step's thread has really finished.

        The thread tells the loop when it ends: no executor thread is blocked joining it,
        so a program stopped meanwhile is never held up at exit by a hung step.
        """
        if self._thread_done is not None and self.thread is not None and self.thread.is_alive():
            await self._thread_done.wait()


def normalize_steps(steps: StepsArgument) -> dict[str, WorkflowStep]:
    """The steps as a dict state -> :class:`WorkflowStep` (plain functions are wrapped)."""
    if isinstance(steps, Mapping):
        return {
            name: step if isinstance(step, WorkflowStep) else WorkflowStep(name=name, execute=step)
            for name, step in steps.items()
        }
    return {step.name: step for step in steps}


def check_steps(definition: WorkflowDefinition, steps: Mapping[str, WorkflowStep]) -> None:
    """:class:`DefinitionError` unless every state has exactly its own step (a state
    whose transitions are all event/timeout ones needs none: it only waits)."""
    states = definition.steps
    problems = [
        f"state {s!r} has no step"
        for s in states
        if s not in steps and not definition.is_wait_state(s)
    ]
    problems += [f"step {n!r} is not a state of the workflow" for n in steps if n not in states]
    problems += [
        f"step for state {name!r} is named {step.name!r}"
        for name, step in steps.items()
        if step.name != name
    ]
    if problems:
        raise DefinitionError(definition.name, problems)


def should_retry(exc: BaseException, policy: RetryPolicy) -> bool:
    """True if ``policy`` retries a step that raised ``exc`` (a timeout always qualifies;
    a typed step's input that does not fit its model never does: it would not next time)."""
    if isinstance(exc, StateValidationError):
        return False
    return isinstance(exc, (*policy.retry_on, TimeoutError))


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to sleep after failed attempt ``attempt``: the policy's delay, jittered."""
    return policy.delay(attempt) * random.uniform(1 - policy.jitter, 1 + policy.jitter)


def step_outcome(
    result: Any, workflow: str, instance_id: str, state: str
) -> tuple[WorkflowContext, str | None]:
    """``(context, trigger or None)`` from what ``state``'s step returned.

    :class:`WorkflowError` if it returned anything but that pair or a bare context.
    """
    if isinstance(result, WorkflowContext):
        return result, None
    if (
        isinstance(result, tuple)
        and len(result) == 2
        and isinstance(result[0], WorkflowContext)
        and (result[1] is None or isinstance(result[1], str))
    ):
        return result[0], result[1]
    raise WorkflowError(
        workflow,
        instance_id,
        f"step {state!r} returned {type(result).__name__}; a step must return "
        "(WorkflowContext, next_trigger or None) or a WorkflowContext",
    )


async def run_after(transition: Transition | None, context: WorkflowContext) -> None:
    """Run the ``after`` callback (sync or async) of ``transition``, if any, with ``context``."""
    if transition is None or transition.after is None:
        return
    result = transition.after(context)
    if inspect.isawaitable(result):
        await result
