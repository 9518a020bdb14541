"""The wheel ships the SQL and the type marker, and init_db works from it (the public
surface is checked in tests/unit/test_exported_members.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fsmflow.sql import SCHEMA_VERSION
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("fsmflow-*.whl")
    return built


def test_wheel_contains_sql_and_type_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fsmflow/sql/schema.sql", "fsmflow/sql/queries.sql", "fsmflow/py.typed"} <= names
    assert "fsmflow/sql/migrations/0002_context_json.sql" in names


def test_wheel_ships_the_dashboard_templates_and_assets(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assets = ("ui.js", "ui.css", "favicon.svg")
    assert {f"fsmflow/ui/static/{name}" for name in assets} | {"fsmflow/sql/ui.sql"} <= names
    templates = ("base", "instances", "_listing", "instance", "_diagram", "_actions",
                 "_context", "workers", "error")  # fmt: skip
    assert {f"fsmflow/ui/templates/{name}.html" for name in templates} <= names


def test_wheel_ships_the_test_kit_and_its_pytest_entry_point(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    assert {"fsmflow/testing/__init__.py", "fsmflow/testing/plugin.py"} <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "[pytest11]\nfsmflow = fsmflow.testing.plugin" in text


def test_top_level_sql_is_the_packaged_sql() -> None:
    for name in ("schema.sql", "queries.sql"):
        assert (ROOT / "sql" / name).read_text() == (ROOT / "fsmflow" / "sql" / name).read_text()


def test_init_db_from_the_unpacked_wheel(wheel: Path, tmp_path: Path, postgresql: Any) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    info = postgresql.info
    code = (
        "import asyncio, fsmflow\n"
        f"assert fsmflow.__file__.startswith({str(site)!r}), fsmflow.__file__\n"
        f"cfg = fsmflow.DBConfig(_env_file=None, table='from_wheel', host={info.host!r}, "
        f"port={info.port}, user={info.user!r}, database={info.dbname!r})\n"
        "async def main():\n"
        "    await cfg.init_db()\n"
        "    await cfg.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with postgresql.cursor() as cur:
        cur.execute("SELECT obj_description('from_wheel'::regclass, 'pg_class')")
        assert cur.fetchone()[0] == f"fsmflow schema_version={SCHEMA_VERSION}"
