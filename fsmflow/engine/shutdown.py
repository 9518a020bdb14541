"""Graceful shutdown on SIGTERM/SIGINT, and the exit codes of a workflow program.

On the first signal, runners stop at their next step boundary: the running step may
finish within the grace period, its transition is recorded, locks are released and
:class:`~fsmflow.errors.WorkflowInterruptedError` is raised. A runner that is not running
a step (starting up, waiting for a lock, sleeping before a retry, recovering a lost
session) stops at once. Past the grace period (or on a second signal) the step is
cancelled; it runs again when the instance resumes.

Exit codes used by :func:`run_program`: ``0`` completed, ``1`` failed, ``2`` usage/configuration,
``75`` (EX_TEMPFAIL) stopped early by a signal, resume by starting again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, Final, Protocol

from fsmflow.errors import ConfigError, FsmflowError, WorkflowInterruptedError

logger = logging.getLogger("fsmflow.shutdown")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 75
SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class Interruptible(Protocol):
    """A runner that can be told to stop: ``"stop"`` (a first signal: stop now unless a
    step is running) or ``"shutdown"`` (cancel whatever runs, the step included)."""

    def interrupt(self, reason: str) -> None:
        """Stop for ``reason`` if the runner is at a point that reason may cancel."""


class Shutdown:
    """Signal handling for the runners of one event loop.

    Handlers are installed with the first runner (only where the process still has
    Python's or asyncio's default handlers) and stay; a signal that arrives while no runner
    runs gets the previous handling (terminate, KeyboardInterrupt, asyncio's cancel).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, grace: float) -> None:
        self.loop = loop
        self.grace = grace
        self.requested = False
        self.expired = False
        self.second_signal = False
        self._runners: set[Interruptible] = set()
        self._installed: list[tuple[signal.Signals, Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        runners = len(self._runners)
        return f"Shutdown(grace={self.grace}, requested={self.requested}, runners={runners})"

    def register(self, runner: Interruptible) -> None:
        """Track a runner; installs the handlers if they are not installed yet."""
        if not self._installed:
            self._install()
        self._runners.add(runner)

    def unregister(self, runner: Interruptible) -> None:
        """Stop tracking a runner. The handlers stay: installing them costs a third of a
        millisecond, per instance; a signal that finds no runner is passed on instead."""
        self._runners.discard(runner)

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask runners to stop at their next step boundary; a second request forces it.

        With no runner running, the signal gets the handling it had before fsmflow's.
        """
        if not self._runners:  # also after a first signal once every runner has stopped
            self._pass_on(signal.Signals(signum))
            return
        name = signal.Signals(signum).name
        if self.requested:
            logger.warning("%s again: cancelling running steps now", name)
            self.second_signal = True
            self.expire()
            return
        self.requested = True
        logger.warning(
            "%s received: finishing running steps (grace %.0fs), then stopping; "
            "the next start resumes",
            name,
            self.grace,
        )
        self._timer = self.loop.call_later(self.grace, self.expire)
        for runner in list(self._runners):
            runner.interrupt("stop")

    def expire(self) -> None:
        """The grace period is over (or a second signal came): cancel every running step."""
        self.expired = True
        for runner in list(self._runners):
            runner.interrupt("shutdown")

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if _is_default_handler(previous):
                try:
                    self.loop.add_signal_handler(sig, self.request, sig)
                except (NotImplementedError, RuntimeError):  # e.g. Windows
                    continue
                self._installed.append((sig, previous))

    def _pass_on(self, sig: signal.Signals) -> None:
        previous = dict(self._installed).get(sig, signal.SIG_DFL)
        self._uninstall()
        if callable(previous):  # asyncio's SIGINT handler, or KeyboardInterrupt
            previous(sig, None)
        else:  # SIG_DFL: terminate as if fsmflow had never been there
            signal.raise_signal(sig)

    def _uninstall(self) -> None:
        for sig, previous in self._installed:
            self.loop.remove_signal_handler(sig)
            signal.signal(sig, previous)
        self._installed.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _is_default_handler(handler: Any) -> bool:
    """Python's own handlers, or the SIGINT handler ``asyncio.run`` installs (which would
    cancel the main task at once): fsmflow takes over only from these, never from a
    handler the program installed itself."""
    if handler in (signal.SIG_DFL, signal.default_int_handler):
        return True
    func = handler.func if isinstance(handler, functools.partial) else handler
    return isinstance(getattr(func, "__self__", None), asyncio.Runner)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Shutdown] = (
    weakref.WeakKeyDictionary()
)


def for_running_loop(grace: float) -> Shutdown:
    """The :class:`Shutdown` of the running event loop (one per loop)."""
    loop = asyncio.get_running_loop()
    shutdown = _by_loop.get(loop)
    if shutdown is None:
        shutdown = _by_loop[loop] = Shutdown(loop, grace)
    return shutdown


def exit_code(exc: BaseException | None) -> int:
    """The documented exit code for a program that ended with ``exc`` (None: success)."""
    if exc is None:
        return EXIT_OK
    if isinstance(exc, WorkflowInterruptedError):
        return EXIT_INTERRUPTED
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_FAILED


def run_program(main: Coroutine[Any, Any, Any]) -> int:
    """Run a workflow program's ``main()`` and return its exit code (0, 1, 2 or 75).

    fsmflow errors are logged as one line (no traceback, no secrets); anything else is
    logged with its traceback. Use as ``sys.exit(fsmflow.run_program(main()))``.
    """
    try:
        asyncio.run(main)
    except FsmflowError as exc:
        log = logger.warning if isinstance(exc, WorkflowInterruptedError) else logger.error
        log("%s: %s", type(exc).__name__, exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:
        logger.exception("workflow program failed")
        return EXIT_FAILED
    sys.stdout.flush()
    return EXIT_OK
