"""The worker processes of ``fsmflow bench --workers``, both ends.

The child, ``python -m fsmflow.bench.fleet_child``, reads its order from stdin (JSON:
``settings``, the bench's own :class:`~fsmflow.settings.DBConfig` values, secrets
included, so that nothing rides on the command line or depends on a ``.env`` file;
``workflow`` and ``steps``, the :func:`~fsmflow.bench.fleet_workflow.fleet_workflow` to
serve; ``concurrency``), runs a :class:`~fsmflow.engine.worker.Worker` until SIGTERM, and
writes its :class:`~fsmflow.engine.claims.WorkerReport` as one JSON line on stdout.
Its warnings go to stderr, which the parent keeps in a log file.

The parent side, :class:`WorkerProcess`, starts one, reads its CPU time from ``/proc``,
pauses, kills or stops it; :class:`Children` kills whatever is left when the bench ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from fsmflow.bench.fleet_workflow import fleet_workflow
from fsmflow.engine.worker import Worker
from fsmflow.settings import DBConfig

MODULE: Final = "fsmflow.bench.fleet_child"
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_TAIL: Final = 2_000  # characters of a child's stderr quoted in an error


# -- the child ----------------------------------------------------------------------------


async def serve(order: dict[str, Any]) -> dict[str, Any]:
    """Run a worker as ``order`` says until SIGTERM; what it did."""
    config = DBConfig(_env_file=None, **order["settings"])
    workflow = fleet_workflow(order["workflow"], order["steps"])
    worker = Worker(config, [workflow], concurrency=order["concurrency"])
    try:
        report = await worker.run()
    finally:
        await config.close()
    return {
        "pid": os.getpid(),
        "completed": report.completed,
        "failed": report.failed,
        "suspended": report.suspended,
        "released": report.released,
        "steps_cancelled": report.steps_cancelled,
        "exit_code": report.exit_code,
    }


def main() -> int:
    """The child's entry point: the order on stdin, the report on stdout."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(serve(json.loads(sys.stdin.read())))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return int(result["exit_code"])


# -- the parent ---------------------------------------------------------------------------


def child_settings(config: DBConfig) -> dict[str, Any]:
    """``config``'s values as JSON for a child (secrets in clear: sent on a pipe only)."""
    values: dict[str, Any] = {}
    for key, value in config.model_dump().items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = str(value)
        values[key] = value
    return values


def _cpu_ticks(pid: int) -> int | None:
    """User + system clock ticks of process ``pid`` so far (None without ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except (OSError, ValueError):
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)


class WorkerProcess:
    """One worker process the bench started (see :meth:`Children.start`)."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.log = log
        self.report: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"WorkerProcess(pid={self.pid}, returncode={self.process.returncode})"

    @property
    def alive(self) -> bool:
        """True until the process has exited."""
        return self.process.returncode is None

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the process has used so far."""
        ticks = _cpu_ticks(self.pid)
        return None if ticks is None else ticks / _CLOCK_TICKS

    def log_tail(self) -> str:
        """The end of what the process wrote to stderr."""
        with contextlib.suppress(OSError):
            return self.log.read_text(encoding="utf-8", errors="replace")[-_TAIL:]
        return ""

    def pause(self) -> None:
        """SIGSTOP: it holds its locks and claims but makes no progress."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL it and wait until it is gone."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()

    async def stop(self, grace: float) -> dict[str, Any]:
        """SIGTERM, as a supervisor stops a worker; its report (killed after ``grace`` s)."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(grace):
                output = await self.process.stdout.read()
                await self.process.wait()
        except TimeoutError:
            await self.kill()
            raise RuntimeError(
                f"worker process {self.pid} did not stop within {grace:.0f} s of SIGTERM; "
                f"killed. Its stderr:\n{self.log_tail()}"
            ) from None
        lines = output.decode("utf-8", "replace").strip().splitlines()
        try:
            self.report = dict(json.loads(lines[-1]))
        except (IndexError, ValueError):
            raise RuntimeError(
                f"worker process {self.pid} exited with {self.process.returncode} and no "
                f"report. Its stderr:\n{self.log_tail()}"
            ) from None
        return self.report


class Children:
    """The worker processes of one bench run; :meth:`close` kills any left running."""

    def __init__(self, log_dir: Path, settings: dict[str, Any]) -> None:
        self.log_dir = log_dir
        self.settings = settings
        self.started: list[WorkerProcess] = []

    async def start(self, workflow: str, steps: int, concurrency: int) -> WorkerProcess:
        """Start a worker process serving ``fleet_workflow(workflow, steps)``."""
        order = {
            "settings": self.settings,
            "workflow": workflow,
            "steps": steps,
            "concurrency": concurrency,
        }
        log = self.log_dir / f"worker-{len(self.started)}.log"
        with _opened(log) as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", MODULE,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            )  # fmt: skip
        child = WorkerProcess(process, log)
        self.started.append(child)
        assert process.stdin is not None
        process.stdin.write(json.dumps(order).encode("utf-8"))
        await process.stdin.drain()
        process.stdin.close()
        return child

    async def close(self) -> None:
        """Kill every process still running (a failed or interrupted bench) and reap it."""
        for child in self.started:
            await child.kill()


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    with open(path, "wb") as handle:
        yield handle


if __name__ == "__main__":
    raise SystemExit(main())
