"""fsmflow's pytest plugin (entry point ``pytest11: fsmflow``): database fixtures.

Inert unless a test asks for one of its fixtures: no server starts and no table is made
before that. The fixtures' names start with ``fsmflow_`` so that they clash with no
project's own ``db``, ``postgresql`` or ``db_config`` fixtures.

* ``fsmflow_server`` (session): a throwaway PostgreSQL: the embedded server (the
  ``fsmflow[embedded]`` extra) in a temporary data directory, stopped and deleted at the
  end; or, with ``FSMFLOW_TESTING_DATABASE_URL`` set, that server (its role must be
  allowed to create tables), which is left as it was.
* ``fsmflow_db`` (function): a :class:`~fsmflow.DBConfig` bound to a table of its own
  (``init_db`` has run); the table and its events table are dropped after the test. It
  is not opened yet: an async test opens it on its own loop and closes it with
  ``await fsmflow_db.close()``.

Disable the plugin with ``-p no:fsmflow``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fsmflow.settings import DBConfig
from fsmflow.testing._server import PostgresServer, fresh_table, start_server

__all__ = ["fsmflow_db", "fsmflow_server"]


@pytest.fixture(scope="session")
def fsmflow_server() -> Iterator[PostgresServer]:
    """The session's throwaway PostgreSQL (or ``FSMFLOW_TESTING_DATABASE_URL``'s)."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fsmflow_db(fsmflow_server: PostgresServer) -> Iterator[DBConfig]:
    """Settings bound to a fresh fsmflow table on ``fsmflow_server``, dropped afterwards."""
    with fresh_table(fsmflow_server) as config:
        yield config
