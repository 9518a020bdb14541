""":func:`check_crash_safety`: kill a workflow at every boundary of every step, for real.

Every run is a child process (``python -m fsmflow.testing._child``) on the settings given:
twice uninterrupted (the reference outcome, and the determinism check), then, for each
boundary the first uninterrupted run passed, one child that SIGKILLs itself there and one
that restarts the same instance and drives it to its end. Each crash uses a fresh instance
id, so the crashes are independent and run in parallel.

Synchronous on purpose: it only starts processes and waits for them, and is called from a
test (sync or async) the way a CLI is called from a shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fsmflow.errors import FsmflowError
from fsmflow.settings import DBConfig
from fsmflow.testing._launch import ForkServer, Launcher, Spawner
from fsmflow.testing._probe import Point
from fsmflow.testing._report import BoundaryResult, CrashReport, differences
from fsmflow.testing._server import environment_of
from fsmflow.testing._target import load_workflow

__all__ = ["RUN_DIR_VARIABLE", "CrashCheckError", "check_crash_safety"]

RUN_DIR_VARIABLE: Final = "FSMFLOW_TESTING_RUN_DIR"
_INHERITED_NOT: Final = ("DB_", "DATABASE_URL", "FSMFLOW_")
_STDERR_TAIL: Final = 1500


class CrashCheckError(FsmflowError):
    """The crash test could not run: the uninterrupted run failed unexpectedly, waited for
    an event, or a child process hung (the message says which, with its stderr)."""


@dataclass(frozen=True)
class _Run:
    """What one child reported (None: it was killed at its boundary)."""

    result: dict[str, Any] | None
    error: str | None = None


class _Runner:
    """Starts the children of one check with ``launcher``, each with a result file and an
    output file in the scratch directory ``root``."""

    def __init__(
        self, order: dict[str, Any], launcher: Launcher, root: Path, timeout: float
    ) -> None:
        self._order, self._launcher, self._root, self._timeout = order, launcher, root, timeout

    def run(self, instance_id: str, run_dir: Path, kill: Point | None = None) -> _Run:
        name = uuid.uuid4().hex[:8]
        result, output = run_dir / f"result-{name}.json", run_dir / f"output-{name}.txt"
        order = {
            **self._order,
            "instance_id": instance_id,
            "kill": None if kill is None else kill.as_json(),
            "result": str(result),
            "output": str(output),
            "env": {RUN_DIR_VARIABLE: str(run_dir)},
        }
        try:
            code = self._launcher.launch(order, self._timeout)
        except RuntimeError as exc:  # the fork server died (its stderr is in the message)
            return _Run(None, str(exc))
        if code is None:
            return _Run(None, f"a child process did not finish within {self._timeout:g}s")
        if kill is not None and code == -signal.SIGKILL:
            return _Run(None)
        if code != 0 or not result.exists():
            tail = output.read_text(encoding="utf-8", errors="replace").strip()
            return _Run(None, f"a child process exited with {code}: {tail[-_STDERR_TAIL:]}")
        loaded: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
        return _Run(loaded)

    def fresh_dir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self._root))


@contextlib.contextmanager
def _launcher(
    env: dict[str, str], target: str, steps: str | None, root: Path, *, fork: bool
) -> Iterator[Launcher]:
    if not fork:
        yield Spawner(env)
        return
    server = ForkServer(env, target, steps, str(root / "forkserver.log"))
    try:
        yield server
    finally:
        server.close()


def _environment(db: DBConfig, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_NOT)}
    env.update(environment_of(db))
    # The children import what this process can import (the test's rootdir, src/ ...).
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths, env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def _uninterrupted(runner: _Runner, label: str) -> dict[str, Any]:
    run = runner.run(f"kit-{label}-{uuid.uuid4().hex[:12]}", runner.fresh_dir())
    if run.result is None:
        raise CrashCheckError(f"the uninterrupted run ({label}) failed: {run.error}")
    outcome = run.result["outcome"]
    if outcome["status"] == "waiting":
        raise CrashCheckError(
            f"workflow {run.result['workflow']!r} waits in state {outcome['state']!r} for an "
            "event or a deadline; check_crash_safety drives workflows whose steps run to the "
            "end by themselves"
        )
    return run.result


def _crash_at(runner: _Runner, point: Point, expected: Mapping[str, Any]) -> BoundaryResult:
    instance_id = f"kit-{point.seq}-{point.boundary}-{uuid.uuid4().hex[:12]}"
    run_dir = runner.fresh_dir()
    killed = runner.run(instance_id, run_dir, point)
    if killed.error is not None:
        return _result(point, reached=False, equal=False, error=killed.error)
    restarted = runner.run(instance_id, run_dir)
    if restarted.result is None:
        return _result(point, reached=True, equal=False, error=restarted.error)
    # A killed run that finished instead never got to the point (its result was written).
    diff = differences(expected, restarted.result["outcome"], label="after the crash")
    return _result(point, reached=killed.result is None, equal=not diff, differences=diff)


def _result(
    point: Point,
    *,
    reached: bool,
    equal: bool,
    differences: tuple[str, ...] = (),
    error: str | None = None,
) -> BoundaryResult:
    return BoundaryResult(
        point.state, point.seq, point.boundary, reached, equal, differences, error
    )


def check_crash_safety(
    target: str,
    *,
    db: DBConfig,
    steps: str | None = None,
    context: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    jobs: int | None = None,
    timeout: float = 120.0,
    fork: bool = True,
) -> CrashReport:
    """Kill the workflow ``target`` names at every boundary of every step it runs, restart
    it, and compare how each instance ends with a run that was never killed.

    ``target`` is ``"module:attribute"``: a :class:`~fsmflow.WorkflowDefinition` (then
    ``steps`` names its steps the same way) or a factory returning ``(definition,
    steps)``; child processes import it, with this process's ``sys.path``. ``context``
    seeds every instance (JSON values). ``db`` says where the instances go (the
    ``fsmflow_db`` fixture's table); the children get it as ``DB_*``/``FSMFLOW_*``
    environment variables, plus ``env``, plus ``FSMFLOW_TESTING_RUN_DIR``: an empty
    directory per crash (shared by the killed run and its restart) where fakes of outside
    systems can keep what must survive the crash (this process's own ``DB_*``,
    ``DATABASE_URL`` and ``FSMFLOW_*`` variables are not passed on: give the ones your
    steps read in ``env``). ``jobs`` crashes run at once (default:
    the CPU count, at least 2); each child gets ``timeout`` seconds. The children are
    forked from a server that imported fsmflow and the workflow once (``fork=False``: a
    fresh interpreter each, several times slower, for code that is not safe to fork).

    Returns a :class:`CrashReport` (``assert report.ok, report``); raises
    :class:`CrashCheckError` if the workflow cannot be checked at all.
    """
    definition, _ = load_workflow(target, steps)  # wrong names fail here, not in 90 children
    order = {"target": target, "steps": steps, "context": dict(context or {})}
    json.dumps(order)  # a context that is not JSON fails before any child starts
    workers = jobs or max(2, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="fsmflow-crash-") as root:
        child_env = _environment(db, env)
        with (
            _launcher(child_env, target, steps, Path(root), fork=fork) as launcher,
            ThreadPoolExecutor(max_workers=workers) as pool,
        ):
            runner = _Runner(order, launcher, Path(root), timeout)
            first, second = pool.map(lambda label: _uninterrupted(runner, label), ["a", "b"])
            expected = first["outcome"]
            points = list(dict.fromkeys(map(Point.from_json, first["passed"])))
            boundaries = tuple(pool.map(lambda p: _crash_at(runner, p, expected), points))
    return CrashReport(
        workflow=definition.name,
        target=target if steps is None else f"{target}, steps {steps}",
        outcome=expected,
        nondeterminism=differences(expected, second["outcome"], label="the second time"),
        boundaries=boundaries,
    )
