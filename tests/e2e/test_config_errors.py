"""Bad settings end a real program with exit 2 and one clear line (no traceback, no secret).

``examples/basic.py`` builds its ``DBConfig()`` inside ``fsmflow.run_program``, whose exit
code 2 for a :class:`~fsmflow.ConfigError` is what systemd's ``RestartPreventExitStatus=2``
relies on; the ``fsmflow`` CLI maps the same settings to 2. No database is needed: every
case is refused before a connection is tried.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_python

pytestmark = pytest.mark.timeout(120)

SECRET = "Pw-Config-3Lm-wombat"

BAD_SETTINGS: list[tuple[dict[str, str], str]] = [
    ({"FSMFLOW_POOL_SIZE": "0"}, "FSMFLOW_POOL_SIZE"),
    ({"DB_PORT": "abc"}, "DB_PORT"),
    ({"DB_SSLMODE": "bogus"}, "DB_SSLMODE"),
    ({"DB_URL": "postgres//oops"}, "DB_URL"),
    ({"DB_URL": f"postgresql://u:{SECRET}@db.invalid:99999/db"}, "DB_URL"),
    ({"DB_URL": f"postgresql://u:a@{SECRET}@db.invalid:5432/db"}, "DB_URL"),
]
IDS = [next(iter(values)) + "=" + next(iter(values.values()))[:24] for values, _ in BAD_SETTINGS]


def clean_env(home: Path, **values: str) -> dict[str, str]:
    """The test's environment without any DB_*/FSMFLOW_* variable, plus ``values``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_URL", "FSMFLOW_"))
    }
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", DB_PASSWORD=SECRET, **values)
    return env


def assert_one_clear_line(result: subprocess.CompletedProcess[str], named: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "ValidationError" not in output, output
    assert SECRET not in output, output
    lines = [
        line for line in result.stderr.splitlines() if "ConfigError" in line or "error" in line
    ]
    assert len(lines) == 1 and named in lines[0], output


@pytest.mark.parametrize(("values", "named"), BAD_SETTINGS, ids=IDS)
def test_example_program_exits_2_on_a_bad_setting(
    tmp_path: Path, values: dict[str, str], named: str
) -> None:
    result = run_python(["examples/basic.py"], clean_env(tmp_path, **values), timeout=60)
    assert_one_clear_line(result, named)


@pytest.mark.parametrize(("values", "named"), BAD_SETTINGS, ids=IDS)
def test_cli_exits_2_on_a_bad_setting(tmp_path: Path, values: dict[str, str], named: str) -> None:
    env = clean_env(tmp_path, **values)
    result = run_python(["-m", "fsmflow", "check"], env, timeout=60, stdin=subprocess.DEVNULL)
    assert_one_clear_line(result, named)
