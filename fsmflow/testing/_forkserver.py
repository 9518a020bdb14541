"""A fork server for crash tests: ``python -m fsmflow.testing._forkserver TARGET [STEPS]``.

Starting a Python interpreter and importing fsmflow and the user's workflow costs most of
a short run, and a crash test needs about two runs per boundary. This server imports them
once, then forks one process per order: each is a real, separate process, killed for real,
with nothing of a previous run in it (the server itself never opens a connection nor an
event loop, so a fork of it holds none).

Protocol, one JSON object per line: an order on stdin is ``{"id": ..., "order": {...}}``
(the order of :mod:`fsmflow.testing._child`, plus ``output``: the file its stdout and
stderr go to); the server answers ``{"id": ..., "pid": ...}`` once forked and
``{"id": ..., "exit": code}`` once it exited (``-9``: SIGKILLed). EOF on stdin: the server
waits for its children and exits.
"""

from __future__ import annotations

import json
import os
import selectors
import sys
import traceback
from typing import IO, Any, Final

from fsmflow.testing._child import configure_logging, execute
from fsmflow.testing._target import load_workflow

_POLL_SECONDS: Final = 0.01


def _child(order: dict[str, Any]) -> None:
    """In the forked process: run the order with stdout/stderr in its file; never return."""
    code = 1
    try:
        out = os.open(order["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        code = execute(order)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Server:
    def __init__(self, report: IO[str]) -> None:
        self._report = report
        self._children: dict[int, Any] = {}
        self._buffer = b""

    def _say(self, message: dict[str, Any]) -> None:
        self._report.write(json.dumps(message) + "\n")
        self._report.flush()

    def _fork(self, line: bytes) -> None:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request["order"])
        self._children[pid] = request["id"]
        self._say({"id": request["id"], "pid": pid})

    def _reap(self) -> None:
        while self._children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            ident = self._children.pop(pid)
            self._say({"id": ident, "exit": os.waitstatus_to_exitcode(status)})

    def serve(self, stdin: int) -> None:
        selector = selectors.DefaultSelector()
        selector.register(stdin, selectors.EVENT_READ)
        open_ = True
        while open_ or self._children:
            self._reap()
            if not open_:
                selector.select(_POLL_SECONDS)  # only children left: just wait
                continue
            for _ in selector.select(_POLL_SECONDS):
                chunk = os.read(stdin, 65536)
                if not chunk:
                    open_ = False
                    selector.unregister(stdin)
                    break
                self._buffer += chunk
                *lines, self._buffer = self._buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._fork(line)


def main(argv: list[str]) -> int:
    """Import the workflow, then serve orders until stdin closes."""
    configure_logging()
    # Reports go to the original stdout; anything else printed (an import's output)
    # goes to stderr, so that it cannot corrupt the protocol.
    report = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    load_workflow(argv[0], argv[1] if len(argv) > 1 else None)
    _Server(report).serve(sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
