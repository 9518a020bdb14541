"""Least privilege as documented, for real processes: the role setup the deploy files document
is enough for ``fsmflow migrate``, and each example runs under a role with exactly the README's
runtime grants (USAGE on the schema, SELECT and INSERT on the history and events tables,
and the worker fleet's grants on its two tables) after the migrator created them. The
examples call ``init_db()`` at start: on an up-to-date table that needs nothing more.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsmflow import sql as fsql
from tests.conftest import ROOT, run_python
from tests.e2e.support import output_of
from tests.integration.reliability_support import Harness

pytestmark = pytest.mark.timeout(300)

SCHEMA = "fsmflow"  # as the deploy files and the README name it
TABLE = f"{SCHEMA}.transitions"
DEPLOY_SETUP = ROOT / "deploy" / "kubernetes" / "secret-migrator.yaml"
_SETUP_LINE = re.compile(r"^#\s+((?:CREATE|GRANT|ALTER)\b.*;)\s*$")
_AFTER_MIGRATE = "# After `fsmflow migrate`"
EXAMPLES = {
    "examples/basic.py": "basic_orders",
    "examples/support_ticket.py": "support_ticket",
    "examples/dspy_pipeline.py": "dspy_pipeline",
    "examples/approval.py": "approval",
}
# approval waits for a review: with a 1 s deadline it records the wait, times out, escalates.
EXAMPLE_ARGS = {"examples/approval.py": ["--timeout", "1"]}


@pytest.fixture
async def h(postgresql: Any, pg_server: Any) -> AsyncIterator[Harness]:
    harness = Harness(postgresql, pg_server)
    yield harness
    await harness.aclose()


def env_as(db_env: dict[str, str], role: str, table: str = TABLE) -> dict[str, str]:
    env = {k: v for k, v in db_env.items() if k != "DB_PASSWORD"}
    return {**env, "DB_USER": role, "FSMFLOW_TABLE": table, "FSMFLOW_DB_RETRY_SECONDS": "2"}


def fsmflow(env: dict[str, str], *args: str) -> Any:
    return run_python(["-m", "fsmflow", *args], env)


def with_roles(statement: str, migrator: str, runtime: str) -> str:
    return re.sub(r"\bfsmflow_migrator\b", migrator, re.sub(r"\bfsmflow_app\b", runtime, statement))


def readme_runtime_grants() -> list[str]:
    """The runtime role's grants from the README's Deployment section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deployment") :]
    block = section[section.index("```sql") : section.index("```", section.index("```sql") + 6)]
    return re.findall(r"^GRANT [^;]+;", block, re.MULTILINE)


def deploy_setup(*, after_migrate: bool) -> list[str]:
    """The deploy files' role setup statements: those before the first ``fsmflow migrate``,
    or those the comments say to run after it (grants on the tables it creates)."""
    text = DEPLOY_SETUP.read_text()
    before, _, after = text.partition(_AFTER_MIGRATE)
    assert after, f"{DEPLOY_SETUP.name} no longer says what to run after `fsmflow migrate`"
    part = after if after_migrate else before
    statements = [m.group(1) for line in part.splitlines() if (m := _SETUP_LINE.match(line))]
    assert statements
    return statements


def apply_deploy_setup(h: Harness) -> tuple[str, str]:
    """The deploy files' role setup before migrating, with this test's role names."""
    migrator, runtime = h.create_role("migrator"), h.create_role("runtime")
    for statement in deploy_setup(after_migrate=False):
        if not statement.startswith("CREATE ROLE"):
            h.sql(with_roles(statement, migrator, runtime))
    return migrator, runtime


def test_the_deploy_role_setup_suffices_for_migrate(h: Harness, db_env: dict[str, str]) -> None:
    migrator, runtime = apply_deploy_setup(h)
    # A fresh install: the migrator creates the table, the runtime role may use it.
    created = fsmflow(env_as(db_env, migrator), "migrate", "--json")
    assert created.returncode == 0, output_of(created)
    assert [s["name"] for s in json.loads(created.stdout)["applied"]] == ["schema.sql"]
    assert fsmflow(env_as(db_env, runtime), "check").returncode == 0
    assert fsmflow(env_as(db_env, runtime), "check", "--workers").returncode == 1
    owner = h.connect_as(migrator)  # the grants on the tables migrate created, as documented
    for statement in deploy_setup(after_migrate=True):
        owner.execute(with_roles(statement, migrator, runtime))
    ready = fsmflow(env_as(db_env, runtime), "check", "--workers")
    assert ready.returncode == 0, output_of(ready)

    # An upgrade: a version-1 table the migrator created under fsmflow 0.1.
    old = f"{SCHEMA}.old_history"
    v1 = fsql.bind_table(fsql.read("migrations/0001_initial.sql"), SCHEMA, "old_history")
    h.connect_as(migrator).execute(v1)
    dry = fsmflow(env_as(db_env, migrator, old), "migrate", "--dry-run")
    assert dry.returncode == 0, output_of(dry)
    assert "would apply 0002_context_json.sql" in dry.stdout, output_of(dry)
    assert fsmflow(env_as(db_env, runtime, old), "check").returncode == 1  # still version 1
    denied = fsmflow(env_as(db_env, runtime, old), "migrate")
    assert denied.returncode == 1 and "migrator role" in denied.stderr, output_of(denied)
    applied = fsmflow(env_as(db_env, migrator, old), "migrate")
    assert applied.returncode == 0, output_of(applied)
    assert "applied 0003_list_by_status.sql" in applied.stdout, output_of(applied)
    assert fsmflow(env_as(db_env, runtime, old), "check").returncode == 0
    again = fsmflow(env_as(db_env, migrator, old), "migrate")
    assert again.returncode == 0 and "nothing to apply" in again.stdout, output_of(again)


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_each_example_runs_under_the_readme_runtime_grants(
    h: Harness, db_env: dict[str, str], example: str
) -> None:
    migrator, runtime = h.create_role("migrator"), h.create_role("runtime")
    h.sql(f"CREATE SCHEMA {SCHEMA} AUTHORIZATION {migrator}")
    created = fsmflow(env_as(db_env, migrator), "migrate")
    assert created.returncode == 0, output_of(created)
    grants = readme_runtime_grants()
    assert len(grants) == 3, grants
    owner = h.connect_as(migrator)
    for grant in grants:
        owner.execute(with_roles(grant, migrator, runtime))
    privileges = h.sql(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = %s ORDER BY 1, 2",
        (runtime,),
    )
    assert privileges == [
        ("transitions", "INSERT"),
        ("transitions", "SELECT"),
        ("transitions_events", "INSERT"),
        ("transitions_events", "SELECT"),
        *((table, privilege) for table in ("transitions_queue", "transitions_workers")
          for privilege in ("DELETE", "INSERT", "SELECT", "UPDATE")),
    ]  # fmt: skip

    args = [example, "--instance-id", "least-1", *EXAMPLE_ARGS.get(example, [])]
    result = run_python(args, env_as(db_env, runtime))

    assert result.returncode == 0, output_of(result)
    last = h.sql(
        f"SELECT status FROM {TABLE} WHERE workflow_name = %s AND instance_id = 'least-1' "
        "ORDER BY seq DESC LIMIT 1",
        (EXAMPLES[example],),
    )
    assert last == [("completed",)]
