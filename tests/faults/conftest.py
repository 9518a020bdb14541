"""The ``scenario`` fixture every fault-injection test uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import Scenario


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest, postgresql: Any, db_env: dict[str, str], tmp_path: Path
) -> Iterator[Scenario]:
    """A scenario on this test's database: workers, ledger and superuser SQL; closed after."""
    s = Scenario(request.node.name, postgresql, db_env, tmp_path)
    yield s
    s.close()
