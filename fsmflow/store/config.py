"""What the store needs to know of the settings: a protocol, so that the store layer does
not import :mod:`fsmflow.settings` (which builds the store: the import points one way).
:class:`fsmflow.DBConfig` satisfies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class StoreConfig(Protocol):
    """The settings a :class:`~fsmflow.store.Store` reads."""

    table: str
    pool_size: int
    owner_connections: int
    command_timeout: float
    connect_timeout: float
    retry_budget: float
    max_context_bytes: int
    strict_durability: bool
    embedded_dir: Path | None
    # Not the store's own: the engine reads them from the settings its store was built with.
    redact_errors: bool
    shutdown_grace: float
    # The worker fleet's timings (the store's own: its sweep and liveness queries use them).
    worker_sweep: float
    worker_stale: float

    @property
    def configured(self) -> bool:
        """True when a server is configured (else the embedded one is used)."""

    def display_target(self) -> str:
        """Where the database is, safe to log."""

    def secrets(self) -> list[str]:
        """Every secret the settings hold, to scrub error texts of."""

    def connect_kwargs(self) -> dict[str, Any]:
        """asyncpg connect arguments (hold secrets: never log them)."""
