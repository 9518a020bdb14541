"""The README's "How it works" example is a complete program: it runs as written against
the test's database and completes its instance."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT, run_python


def _how_it_works_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## How it works", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "the How it works section has a python example"
    return found.group(1)


def test_the_how_it_works_example_runs_as_written(db_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "order.py"
    script.write_text(_how_it_works_example(), encoding="utf-8")

    result = run_python([str(script)], db_env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed at seq" in result.stderr  # fsmflow's INFO lines are visible
    assert result.stdout.startswith("ship True"), result.stdout
