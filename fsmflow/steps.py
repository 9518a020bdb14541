"""Running one step: async steps on the loop, sync steps on a daemon thread.

A sync step runs on its own daemon thread so it never blocks the event loop and never
keeps a stopping process alive past its grace period (Python waits for executor threads
at exit, not for daemon threads). A cancelled sync step cannot be stopped: its thread
runs on, its result is dropped, and the runner waits for it before running the step again.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import Any

from .context import WorkflowContext


class StepCall:
    """One attempt of one step; ``thread`` is set for sync steps."""

    def __init__(self, execute: Callable[[WorkflowContext], Any], context: WorkflowContext) -> None:
        self.execute = execute
        self.context = context
        self.thread: threading.Thread | None = None

    async def run(self, time_limit: float | None) -> Any:
        """Run the attempt (bounded by ``time_limit`` seconds) and return the step's result."""
        if inspect.iscoroutinefunction(self.execute):
            work = self.execute(self.context)
        else:
            work = self._in_thread()
        result = await (work if time_limit is None else asyncio.wait_for(work, time_limit))
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine
            result = await result
        return result

    async def _in_thread(self) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        ctx = contextvars.copy_context()

        def settle(ok: bool, value: Any) -> None:
            if not future.done():
                (future.set_result if ok else future.set_exception)(value)

        def work() -> None:
            try:
                value = ctx.run(self.execute, self.context)
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, False, exc)
            else:
                loop.call_soon_threadsafe(settle, True, value)

        name = f"fsmflow-step-{getattr(self.execute, '__name__', 'step')}"
        self.thread = threading.Thread(target=work, name=name, daemon=True)
        self.thread.start()
        return await future

    async def wait_abandoned(self) -> None:
        """After a cancellation: wait until a sync step's thread has really finished."""
        if self.thread is not None and self.thread.is_alive():
            await asyncio.to_thread(self.thread.join)
