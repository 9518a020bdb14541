"""The wheel ships the SQL, the type marker and a working init_db; a deliberate public surface."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import fsmflow
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
        assert cur.fetchone()[0] == "fsmflow schema_version=1"


def test_public_names_are_exported_deliberately() -> None:
    public = {
        name
        for name in dir(fsmflow)
        if not name.startswith("_")
        and name != "annotations"
        and not inspect.ismodule(getattr(fsmflow, name))
    }
    assert set(fsmflow.__all__) - {"__version__"} == public
    for name in fsmflow.__all__:
        assert getattr(fsmflow, name) is not None
        if name[0].isupper() and not name.startswith("EXIT_"):
            assert getattr(fsmflow, name).__doc__, f"{name} has no docstring"


def test_every_error_derives_from_one_root() -> None:
    errors = [getattr(fsmflow, n) for n in fsmflow.__all__ if n.endswith("Error")]
    assert errors and all(issubclass(e, fsmflow.FsmflowError) for e in errors)
