"""How a crash test starts its child processes: forked by a warm server, or fresh.

Both launchers take an order (see :mod:`fsmflow.testing._child`) and return the child's
exit code (negative: the signal that ended it, ``-9`` for SIGKILL), or None if it did not
end within the timeout (it is then killed). Its stdout and stderr go to the order's
``output`` file. Both are safe to call from several threads at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import IO, Any, Final, Protocol

__all__ = ["ForkServer", "Launcher", "Spawner"]

_CHILD: Final = [sys.executable, "-m", "fsmflow.testing._child"]
_SERVER: Final = [sys.executable, "-m", "fsmflow.testing._forkserver"]


class Launcher(Protocol):
    """Runs one order in a child process and returns its exit code (None: timed out)."""

    def launch(self, order: Mapping[str, Any], timeout: float) -> int | None: ...


class Spawner:
    """A fresh interpreter per child: slower, for code that is not safe to fork."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)

    def launch(self, order: Mapping[str, Any], timeout: float) -> int | None:
        with open(order["output"], "ab") as output:
            process = subprocess.Popen(
                _CHILD, stdin=subprocess.PIPE, stdout=output, stderr=output, env=self._env
            )
            try:
                process.communicate(json.dumps(order).encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return None
        return process.returncode


class ForkServer:
    """A warm ``fsmflow.testing._forkserver`` that forks each child; ``close()`` it."""

    def __init__(self, env: Mapping[str, str], target: str, steps: str | None, log: str) -> None:
        self._log_path = log
        self._log: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed by close()
        args = [*_SERVER, target, *([steps] if steps is not None else [])]
        self._process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=dict(env)
        )
        self._lock = threading.Lock()
        self._pids: dict[int, Future[int]] = {}
        self._exits: dict[int, Future[int]] = {}
        self._next = 0
        self._reader = threading.Thread(target=self._read, name="fsmflow-forkserver", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            message = json.loads(line)
            with self._lock:
                if "pid" in message:
                    self._pids[message["id"]].set_result(message["pid"])
                else:
                    self._exits.pop(message["id"]).set_result(message["exit"])
        with self._lock:  # the server is gone: nobody will answer the rest
            pending = [f for f in [*self._pids.values(), *self._exits.values()] if not f.done()]
            if pending:
                with open(self._log_path, encoding="utf-8", errors="replace") as log:
                    tail = log.read().strip()[-1500:]
                for future in pending:
                    future.set_exception(RuntimeError(f"the fork server exited: {tail}"))

    def launch(self, order: Mapping[str, Any], timeout: float) -> int | None:
        started: Future[int] = Future()
        ended: Future[int] = Future()
        with self._lock:
            ident = self._next = self._next + 1
            self._pids[ident], self._exits[ident] = started, ended
            assert self._process.stdin is not None
            self._process.stdin.write((json.dumps({"id": ident, "order": order}) + "\n").encode())
            self._process.stdin.flush()
        try:
            return ended.result(timeout)
        except TimeoutError:
            pid = started.result(timeout)
            os.kill(pid, signal.SIGKILL)  # not reaped yet: its end is not reported
            ended.result(timeout)
            return None
        finally:
            with self._lock:
                self._pids.pop(ident, None)

    def close(self) -> None:
        """Let the server finish (it waits for its children) and close its log."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait()
        self._reader.join()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()
