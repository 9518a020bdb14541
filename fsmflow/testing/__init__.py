"""fsmflow's test kit: prove that *your* workflow survives a crash at every boundary.

* :func:`check_crash_safety` runs a workflow once uninterrupted, then kills it (SIGKILL,
  in a child process) before, inside and after each step and after each commit, restarts
  it, and reports per boundary whether it ended the same, naming the steps whose rerun
  changed the outcome: a :class:`CrashReport`.
* A pytest plugin, registered by entry point and inert until a test asks for one of its
  fixtures (see :mod:`fsmflow.testing.plugin`): ``fsmflow_server``, a throwaway
  PostgreSQL for the session (embedded, or ``FSMFLOW_TESTING_DATABASE_URL``), and
  ``fsmflow_db``, a :class:`~fsmflow.DBConfig` bound to a fresh table per test.
"""

from __future__ import annotations

from fsmflow.testing._crash import RUN_DIR_VARIABLE, CrashCheckError, check_crash_safety
from fsmflow.testing._probe import BOUNDARIES, Boundary
from fsmflow.testing._report import BoundaryResult, CrashReport
from fsmflow.testing._server import PostgresServer, environment_of, fresh_table, start_server

__all__ = [
    "BOUNDARIES",
    "RUN_DIR_VARIABLE",
    "Boundary",
    "BoundaryResult",
    "CrashCheckError",
    "CrashReport",
    "PostgresServer",
    "check_crash_safety",
    "environment_of",
    "fresh_table",
    "start_server",
]
