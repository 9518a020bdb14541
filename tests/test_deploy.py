"""The deploy/ files pass their validators and agree with each other and with fsmflow.

- systemd units: ``systemd-analyze verify`` and ``security --offline`` on the unchanged files,
  placed under a throwaway root that holds fake ``/opt/fsmflow`` executables and the host's
  targets (a template unit on one of its instances, ``fsmflow-worker@1.service``). Without
  ``systemd-analyze`` (>= 250) these tests fail, unless ``FSMFLOW_SKIP_SYSTEMD_VERIFY=1`` skips
  them explicitly (Debian/Ubuntu: ``apt-get install -y systemd``; nothing needs to run).
- Kubernetes manifests: the JSON schemas bundled with ``kubernetes-validate`` (offline, strict),
  for the oldest Kubernetes we support and the newest the installed package ships.
- Consistency: shutdown grace vs. stop timeouts, exit codes vs. restart rules, probes vs. the
  database retry budget, non-root users, setting names, the worker fleet's ``MODULE:ATTR`` and
  its PodDisruptionBudget, the runtime role's grants, all read from the files themselves.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s

import fsmflow
from fsmflow import EXIT_INTERRUPTED, EXIT_USAGE, DBConfig
from fsmflow import sql as fsql
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBERNETES = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "Containerfile"
WORKFLOW_UNIT = "fsmflow-support-ticket.service"
INIT_UNIT = "fsmflow-init-db.service"
WORKER_TEMPLATE = "fsmflow-worker@.service"
WORKER_UNIT = "fsmflow-worker@1.service"  # systemd-analyze checks a template on an instance
UNITS = (WORKFLOW_UNIT, INIT_UNIT, WORKER_UNIT)
BACKOFF_DROPIN = SYSTEMD / f"{WORKFLOW_UNIT}.d" / "restart-backoff.conf"
EXAMPLE = "examples/support_ticket.py"
FLEET_TARGET = "examples.support_ticket:WORKFLOW"  # what the fleet's files submit and run
WORKER = ("Deployment", "fsmflow-worker")
SUBMIT_JOB = ("Job", "fsmflow-submit-ticket-2")

# Oldest Kubernetes the manifests support (podFailurePolicy + podReplacementPolicy: Failed).
K8S_MIN_VERSION = "1.30.0"
K8S_VERSIONS = sorted({K8S_MIN_VERSION, "{}.{}.0".format(*k8s.latest_version().split(".")[:2])})
# After the grace period the runner still records the transition, releases the lock and closes
# its connections: stop timeouts must leave at least this much on top of the grace period.
STOP_MARGIN_SECONDS = 5
SKIP_SYSTEMD_ENV = "FSMFLOW_SKIP_SYSTEMD_VERIFY"
SYSTEMD_MIN_VERSION = 250  # systemd-analyze verify --root, security --offline
RESTART_STEPS_VERSION = 254  # RestartSteps=, RestartMaxDelaySec=
# systemd-analyze security --offline exposure, 0-100 (shown as 0.0-10.0; <= 2.0 is "OK").
MAX_EXPOSURE = 20
# Settings read by something other than DBConfig.
OTHER_SETTINGS = {"FSMFLOW_LOG_LEVEL", "PGSSLROOTCERT", "SUPPORT_TICKET_INSTANCE_ID"}


# -- parsing ----------------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat, unlike INI)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_file(name: str) -> str:
    """The file behind a unit name: ``fsmflow-worker@1.service`` is ``fsmflow-worker@.service``."""
    return re.sub(r"@[^.]+\.", "@.", name)


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit(SYSTEMD / unit_file(name))


def last(values: dict[str, list[str]], key: str) -> str:
    """The effective value of a single-valued key (systemd: the last assignment wins)."""
    assert key in values, f"{key}= is not set"
    return values[key][-1]


def seconds(timespan: str) -> float:
    """A systemd time span (``30s``, ``5min``, ``1min 30s``, bare seconds) in seconds."""
    scale = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan)
    assert parts and all(u in scale for _, u in parts), f"unsupported time span {timespan!r}"
    return sum(float(n) * scale[u] for n, u in parts)


def parse_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads it: KEY=VALUE lines, whole-line comments only."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        where = f"{path.name}:{number}"
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{where}: not KEY=VALUE"
        assert " #" not in value, f"{where}: systemd keeps a trailing '# ...' in the value"
        env[key] = value
    return env


def settings(env: dict[str, str]) -> DBConfig:
    """DBConfig built from these variables only (validates every value fsmflow reads)."""
    return DBConfig(_env_file=None, **env)  # type: ignore[call-arg]


def known_settings() -> set[str]:
    names = set(OTHER_SETTINGS)
    for field in DBConfig.model_fields.values():
        choices = getattr(field.validation_alias, "choices", [])
        names |= {c for c in choices if isinstance(c, str) and c.isupper()}
    return names


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every Kubernetes manifest of deploy/kubernetes (not the kustomization), by file name."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBERNETES.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def resource(kind: str, name: str) -> dict[str, Any]:
    for docs in manifests().values():
        for doc in docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in {KUBERNETES}")


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload: the Jobs and the worker Deployment."""
    for docs in manifests().values():
        for doc in docs:
            if doc["kind"] in ("Job", "Deployment"):
                yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def pod_spec(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = resource(kind, name)["spec"]["template"]["spec"]
    return spec


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instruction(name: str) -> list[str]:
    return [args for inst, args in containerfile() if inst == name]


# -- systemd-analyze --------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_analyze() -> tuple[str, int]:
    """(path, version) of systemd-analyze; a missing one fails unless skipped explicitly."""
    if os.environ.get(SKIP_SYSTEMD_ENV) == "1":
        pytest.skip(f"{SKIP_SYSTEMD_ENV}=1: systemd unit verification skipped on request")
    found = shutil.which("systemd-analyze")
    hint = (
        f"install systemd >= {SYSTEMD_MIN_VERSION} (Debian/Ubuntu: apt-get install -y systemd; "
        f"it need not run), or set {SKIP_SYSTEMD_ENV}=1 to skip these checks explicitly"
    )
    if found is None:
        pytest.fail(f"systemd-analyze not found: {hint}", pytrace=False)
    out = subprocess.run(
        [found, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    version = int(match.group(1))
    if version < SYSTEMD_MIN_VERSION:
        pytest.fail(f"systemd-analyze is version {version}: {hint}", pytrace=False)
    return found, version


def host_unit_dir() -> Path:
    for candidate in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(candidate, "sysinit.target").exists():
            return Path(candidate)
    raise AssertionError("no systemd unit directory with sysinit.target on this machine")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory, systemd_analyze: Any) -> Path:
    """A root with the units (byte for byte), the host's targets and fake executables."""
    root = tmp_path_factory.mktemp("systemd-root")
    targets = root / "usr/lib/systemd/system"
    targets.mkdir(parents=True)
    for target in host_unit_dir().glob("*.target"):
        shutil.copyfile(target, targets / target.name)  # follows alias symlinks
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for name in map(unit_file, UNITS):
        shutil.copyfile(SYSTEMD / name, system / name)
        executable = Path(last(unit(name)["Service"], "ExecStart").split()[0])
        assert executable.is_absolute(), f"{name}: ExecStart needs an absolute path"
        fake = root / executable.relative_to("/")
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
    return root


def analyze(tool: tuple[str, int], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool[0], *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(
    name: str, systemd_analyze: tuple[str, int], fake_root: Path
) -> None:
    path = fake_root / "etc/systemd/system" / name
    result = analyze(systemd_analyze, "verify", "--man=no", f"--root={fake_root}", str(path))
    # verify exits 0 on "Unknown key ..., ignoring" and unparsable values: any output fails.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("name", UNITS)
def test_unit_hardening_exposure_stays_low(
    name: str, systemd_analyze: tuple[str, int], fake_root: Path
) -> None:
    path = fake_root / "etc/systemd/system" / name
    result = analyze(
        systemd_analyze, "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}",
        f"--root={fake_root}", "--no-pager", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_restart_backoff_dropin_verifies_with_the_unit(
    systemd_analyze: tuple[str, int], fake_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(fake_root, root, symlinks=True)
    system = root / "etc/systemd/system"
    dropin = system / BACKOFF_DROPIN.parent.name / BACKOFF_DROPIN.name
    dropin.parent.mkdir()
    shutil.copyfile(BACKOFF_DROPIN, dropin)
    result = analyze(
        systemd_analyze, "verify", "--man=no", f"--root={root}", str(system / WORKFLOW_UNIT)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    if systemd_analyze[1] >= RESTART_STEPS_VERSION:
        assert output == ""
    else:  # older systemd ignores exactly these keys, and nothing else is wrong
        unknown = re.findall(r"Unknown (?:key|lvalue)[^']*'(\w+)'", output)
        assert sorted(unknown) == ["RestartMaxDelaySec", "RestartSteps"], output
        assert len(output.strip().splitlines()) == 2, output


# -- systemd units: consistency -----------------------------------------------------------


def test_env_examples_use_known_settings_with_valid_values() -> None:
    for name in ("fsmflow.env.example", "migrator.env.example"):
        env = parse_env_file(SYSTEMD / name)
        assert set(env) <= known_settings(), f"{name}: unknown {set(env) - known_settings()}"
    env = parse_env_file(SYSTEMD / "fsmflow.env.example")
    config = settings(env)
    assert config.sslmode == "verify-full"
    assert config.shutdown_grace == DBConfig.model_fields["shutdown_grace"].default
    assert env["PGSSLROOTCERT"].startswith("/etc/fsmflow/")


def test_workflow_unit_stops_after_the_grace_period_and_restarts_on_failure() -> None:
    service = unit(WORKFLOW_UNIT)["Service"]
    grace = settings(parse_env_file(SYSTEMD / "fsmflow.env.example")).shutdown_grace
    assert seconds(last(service, "TimeoutStopSec")) >= grace + STOP_MARGIN_SECONDS
    assert last(service, "KillSignal") == "SIGTERM"
    assert last(service, "KillMode") == "mixed"  # only the program gets SIGTERM
    assert last(service, "Restart") == "on-failure"
    assert seconds(last(service, "RestartSec")) > 0
    # exit 75 (interrupted): clean when systemd stopped it, a restart (= resume) otherwise.
    assert str(EXIT_INTERRUPTED) in " ".join(service["SuccessExitStatus"]).split()
    assert str(EXIT_INTERRUPTED) in " ".join(service["RestartForceExitStatus"]).split()
    assert str(EXIT_USAGE) in " ".join(service["RestartPreventExitStatus"]).split()


def test_start_limit_trips_on_crash_loops_but_not_on_a_database_outage() -> None:
    sections = unit(WORKFLOW_UNIT)
    interval = seconds(last(sections["Unit"], "StartLimitIntervalSec"))
    burst = int(last(sections["Unit"], "StartLimitBurst"))
    restart = seconds(last(sections["Service"], "RestartSec"))
    retry = settings(parse_env_file(SYSTEMD / "fsmflow.env.example")).retry_budget
    assert burst * restart < interval  # immediate exits (bad settings) stop restarting
    assert burst * (restart + retry) > interval  # runs that retried the database do not


@pytest.mark.parametrize("name", UNITS)
def test_units_run_unprivileged_with_the_environment_file(name: str) -> None:
    service = unit(name)["Service"]
    assert last(service, "User") not in ("root", "0")
    assert last(service, "DynamicUser") == "yes"
    assert last(service, "NoNewPrivileges") == "yes"
    assert last(service, "ProtectSystem") == "strict"
    assert service["EnvironmentFile"][0] == "/etc/fsmflow/fsmflow.env"
    home = dict(e.split("=", 1) for e in service["Environment"])["HOME"]
    assert home == "%S/" + last(service, "StateDirectory")  # ProtectHome hides /home


def test_init_db_unit_runs_migrate_as_the_migrator() -> None:
    sections = unit(INIT_UNIT)
    service = sections["Service"]
    assert last(service, "Type") == "oneshot"
    assert shlex.split(last(service, "ExecStart"))[1:] == ["migrate"]
    assert service["EnvironmentFile"] == [
        "/etc/fsmflow/fsmflow.env",
        "/etc/fsmflow/migrator.env",  # last: its DB_USER/DB_PASSWORD win
    ]
    assert "Install" not in sections  # never runs unattended with the migrator's password
    migrator = parse_env_file(SYSTEMD / "migrator.env.example")
    assert set(migrator) == {"DB_USER", "DB_PASSWORD"}
    runtime = parse_env_file(SYSTEMD / "fsmflow.env.example")
    assert migrator["DB_USER"] != runtime["DB_USER"]


def test_workflow_unit_runs_the_example_after_init_db() -> None:
    sections = unit(WORKFLOW_UNIT)
    argv = shlex.split(last(sections["Service"], "ExecStart"))
    assert argv[1].endswith(EXAMPLE)
    assert argv[2:] == ["--instance-id", "${SUPPORT_TICKET_INSTANCE_ID}"]
    assert INIT_UNIT in " ".join(sections["Unit"]["After"]).split()


# What the worker template may set differently from the workflow unit; everything else
# (ordering, start limit, restart delay, stop, user, hardening) must be the same.
WORKER_OWN_KEYS = {
    "Unit": {"Description"},
    "Service": {"ExecStart", "Environment", "SyslogIdentifier", "RestartForceExitStatus"},
}


def without(sections: dict[str, dict[str, list[str]]], keys: dict[str, set[str]]) -> Any:
    return {
        section: {k: v for k, v in values.items() if k not in keys.get(section, set())}
        for section, values in sections.items()
    }


def test_worker_template_is_the_workflow_unit_with_its_own_command() -> None:
    worker, workflow = unit(WORKER_UNIT), unit(WORKFLOW_UNIT)
    assert without(worker, WORKER_OWN_KEYS) == without(workflow, WORKER_OWN_KEYS)
    # Each instance of the template is told apart in its description and journal identifier.
    assert "%i" in last(worker["Unit"], "Description")
    assert last(worker["Service"], "SyslogIdentifier").endswith("-%i")


def test_worker_unit_stops_after_the_grace_period_and_restarts_on_failure() -> None:
    service = unit(WORKER_UNIT)["Service"]
    grace = settings(parse_env_file(SYSTEMD / "fsmflow.env.example")).shutdown_grace
    # After the grace period the worker still records the steps and gives its claims back.
    assert seconds(last(service, "TimeoutStopSec")) > grace + STOP_MARGIN_SECONDS
    assert (last(service, "KillSignal"), last(service, "KillMode")) == ("SIGTERM", "mixed")
    assert last(service, "Restart") == "on-failure"
    # 75: a step was cancelled at the end of the grace period; a clean stop all the same.
    assert str(EXIT_INTERRUPTED) in " ".join(service["SuccessExitStatus"]).split()
    assert str(EXIT_USAGE) in " ".join(service["RestartPreventExitStatus"]).split()
    # A worker never ends on its own: a stop systemd did not ask for (exit 0 or 75) restarts it.
    forced = " ".join(service["RestartForceExitStatus"]).split()
    assert {"0", str(EXIT_INTERRUPTED)} <= set(forced)


def python_path(environment: list[str]) -> Path:
    return Path(dict(e.split("=", 1) for e in environment)["PYTHONPATH"])


def test_worker_unit_runs_the_fleet_command_where_the_example_is_installed() -> None:
    worker = unit(WORKER_UNIT)["Service"]
    argv = shlex.split(last(worker, "ExecStart"))
    assert argv[1:] == fleet_command("worker")[1:]
    # The same venv as the workflow unit, and the example where that unit runs it from.
    program = shlex.split(last(unit(WORKFLOW_UNIT)["Service"], "ExecStart"))
    assert Path(argv[0]) == Path(program[0]).with_name("fsmflow")
    assert python_path(worker["Environment"]) / module_file(FLEET_TARGET) == Path(program[1])


ROLE_SETUP_FILES = (KUBERNETES / "secret-migrator.yaml", SYSTEMD / "migrator.env.example")
_SETUP_LINE = re.compile(r"^#\s+((?:CREATE|GRANT|ALTER)\b.*;)\s*$")


def documented_role_setup(path: Path) -> list[str]:
    """The SQL a deploy file documents for the DBA (comment lines ``#   CREATE ...;``)."""
    return [m.group(1) for line in path.read_text().splitlines() if (m := _SETUP_LINE.match(line))]


def test_deploy_files_document_one_role_setup() -> None:
    setups = [documented_role_setup(path) for path in ROLE_SETUP_FILES]
    assert setups[0] and all(setup == setups[0] for setup in setups), setups
    text = " ".join(setups[0])
    runtime = parse_env_file(SYSTEMD / "fsmflow.env.example")
    migrator = parse_env_file(SYSTEMD / "migrator.env.example")
    for role in (runtime["DB_USER"], migrator["DB_USER"]):
        assert f"CREATE ROLE {role} " in text
    assert runtime["FSMFLOW_TABLE"].split(".")[0] in text


def readme_runtime_grants() -> list[str]:
    """The runtime role's GRANT statements in the README's Deployment section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deployment") :]
    start = section.index("```sql")
    block = section[start : section.index("```", start + len("```sql"))]
    return re.findall(r"^GRANT [^;]+;", block, re.MULTILINE)


def granted(statement: str) -> tuple[set[str], set[str]]:
    """(privileges, tables) of ``GRANT ... ON table, ... TO role;``."""
    match = re.fullmatch(r"GRANT (.+) ON (?!SCHEMA )(.+) TO \w+;", statement)
    assert match, statement
    return set(match.group(1).split(", ")), set(match.group(2).split(", "))


def test_history_stays_append_only_and_only_the_fleet_tables_get_update_delete() -> None:
    table = parse_env_file(SYSTEMD / "fsmflow.env.example")["FSMFLOW_TABLE"]
    schema, name = table.split(".")
    fleet = {f"{schema}.{fsql.table_of(name, s)}" for s in (fsql.QUEUE_SUFFIX, fsql.WORKERS_SUFFIX)}
    for path in ROLE_SETUP_FILES:
        setup = documented_role_setup(path)
        for statement in setup:
            if statement.startswith("ALTER DEFAULT PRIVILEGES"):
                # A default reaches every new table, the history too: SELECT, INSERT only.
                assert statement.endswith("GRANT SELECT, INSERT ON TABLES TO fsmflow_app;")
        writes = [s for s in setup if s.startswith("GRANT ") and "UPDATE" in s]
        assert len(writes) == 1, (path.name, writes)
        privileges, tables = granted(writes[0])
        assert {"UPDATE", "DELETE"} <= privileges and tables == fleet, path.name
        # A GRANT needs the tables, which `fsmflow migrate` creates: documented after it runs.
        text = path.read_text()
        assert text.index("# After `fsmflow migrate`") < text.index(f"#   {writes[0]}"), path.name
        assert writes[0] in readme_runtime_grants()
    for statement in readme_runtime_grants():
        if " ON SCHEMA " in statement:
            continue
        privileges, tables = granted(statement)
        if privileges & {"UPDATE", "DELETE"}:
            assert tables == fleet, statement
        else:
            assert privileges == {"SELECT", "INSERT"} and table in tables, statement


def test_units_reference_only_existing_units() -> None:
    """Typos in Wants=/After=/WantedBy= are silent in systemd: catch them here."""
    standard = {"network-online.target", "multi-user.target"}  # on every systemd machine
    for name in UNITS:
        sections = unit(name)
        referenced = {
            ref
            for section, key in (("Unit", "Wants"), ("Unit", "After"), ("Install", "WantedBy"))
            for value in sections.get(section, {}).get(key, [])
            for ref in value.split()
        }
        assert referenced <= standard | set(UNITS), f"{name}: {referenced - standard}"


# -- Kubernetes -------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("filename", sorted(manifests()))
def test_manifest_matches_the_kubernetes_schema(filename: str, version: str) -> None:
    for doc in manifests()[filename]:
        try:
            validated = k8s.validate(doc, version, strict=True)
        except k8s.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{filename} ({doc['kind']}) against {version}: {path}: {exc.message}")
        assert validated == k8s.major_minor(version)


def test_kustomization_lists_every_manifest_and_the_image() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(manifests())
    images = {c["image"].split(":")[0] for _, pod in pod_specs() for c in containers(pod)}
    assert images == {i["name"] for i in kustomization["images"]}


def test_settings_and_secrets_hold_known_settings_split_by_sensitivity() -> None:
    config = resource("ConfigMap", "fsmflow-settings")["data"]
    assert set(config) <= known_settings()
    assert not set(config) & {"DB_PASSWORD", "DB_URL", "DATABASE_URL"}
    parsed = settings(config)
    assert parsed.sslmode == "verify-full"
    assert parsed.shutdown_grace == DBConfig.model_fields["shutdown_grace"].default
    for name in ("fsmflow-db-runtime", "fsmflow-db-migrator"):
        assert set(resource("Secret", name)["stringData"]) == {"DB_USER", "DB_PASSWORD"}


def env_sources(container: dict[str, Any]) -> list[str]:
    return [
        (source.get("configMapRef") or source["secretRef"])["name"]
        for source in container.get("envFrom", [])
    ]


def test_only_the_init_db_job_gets_the_migrator_credentials() -> None:
    for job, pod in pod_specs():
        for container in containers(pod):
            sources = env_sources(container)
            if job == "fsmflow-init-db":
                assert sources == ["fsmflow-settings", "fsmflow-db-migrator"]  # last wins
                assert container["command"][-2:] == ["fsmflow", "migrate"]
            else:
                assert sources == ["fsmflow-settings", "fsmflow-db-runtime"]


def test_pods_stop_after_the_grace_period_and_run_unprivileged() -> None:
    grace = settings(resource("ConfigMap", "fsmflow-settings")["data"]).shutdown_grace
    uid = int(instruction("USER")[-1].split(":")[0])
    assert uid != 0
    for job, pod in pod_specs():
        assert pod["terminationGracePeriodSeconds"] >= grace + STOP_MARGIN_SECONDS, job
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid  # the image's user
        assert pod["automountServiceAccountToken"] is False
        for container in containers(pod):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (job, kind)


def test_workflow_job_resumes_after_interruptions_and_fails_fast_on_bad_settings() -> None:
    spec = resource("Job", "fsmflow-support-ticket")["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    assert spec["backoffLimit"] > 0
    assert spec["podReplacementPolicy"] == "Failed"  # never two pods of this Job at once
    actions = {}
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == "support-ticket"
            assert rule["onExitCodes"]["operator"] == "In"
            for code in rule["onExitCodes"]["values"]:
                actions[code] = rule["action"]
        else:
            conditions = rule["onPodConditions"]
            assert conditions == [{"type": "DisruptionTarget", "status": "True"}]
            actions["disruption"] = rule["action"]
    assert actions == {EXIT_INTERRUPTED: "Ignore", "disruption": "Ignore", EXIT_USAGE: "FailJob"}


@pytest.mark.parametrize("workload", [("Job", "fsmflow-support-ticket"), WORKER])
def test_probes_run_fsmflow_check_and_tolerate_the_database_retry_budget(
    workload: tuple[str, str],
) -> None:
    pod = pod_spec(*workload)
    (main,) = pod["containers"]
    retry = settings(resource("ConfigMap", "fsmflow-settings")["data"]).retry_budget
    probes = [k for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in main]
    assert {"livenessProbe", "readinessProbe"} <= set(probes)
    for kind in probes:
        probe = main[kind]
        command = probe["exec"]["command"]
        if command[-1] == "--workers":  # a worker's readiness: what `fsmflow worker` needs too
            assert workload == WORKER and kind == "readinessProbe", (workload, kind)
            command = command[:-1]
        assert command[-2:] == ["fsmflow", "check"]
        overrides = dict(arg.split("=", 1) for arg in command[1:-2])
        assert command[0] == "env" and float(overrides["FSMFLOW_DB_RETRY_SECONDS"]) == 0
        assert probe["timeoutSeconds"] > float(overrides["FSMFLOW_CONNECT_TIMEOUT"])
    # Neither kills a process that is still riding out a database outage.
    for kind in ("startupProbe", "livenessProbe"):
        if kind in main:
            assert main[kind]["periodSeconds"] * main[kind]["failureThreshold"] > retry, kind
    (wait,) = pod["initContainers"]
    assert "fsmflow check" in wait["command"][-1]
    if workload == WORKER:  # a missing fleet grant stops the pod here, named, not later
        assert "fsmflow check --workers" in wait["command"][-1]
        assert main["readinessProbe"]["exec"]["command"][-1] == "--workers"


# -- Kubernetes and systemd: the worker fleet ---------------------------------------------


def module_file(target: str) -> str:
    """``examples.support_ticket:WORKFLOW`` -> ``examples/support_ticket.py``."""
    return target.split(":")[0].replace(".", "/") + ".py"


def fleet_command(verb: str) -> list[str]:
    """``fsmflow worker|submit ...`` as the worker Deployment or the submit Job runs it."""
    kind, name = {"worker": WORKER, "submit": SUBMIT_JOB}[verb]
    (container,) = pod_spec(kind, name)["containers"]
    command: list[str] = container["command"]
    assert command[:2] == ["tini", "--"], f"{name}: tini forwards SIGTERM and the exit code"
    assert command[2:4] == ["fsmflow", verb], name
    return command[2:]


def test_fleet_target_is_a_workflow_of_the_example() -> None:
    assert module_file(FLEET_TARGET) == EXAMPLE
    module_name, attr = FLEET_TARGET.split(":")
    module = importlib.import_module(module_name)
    assert isinstance(getattr(module, attr), fsmflow.Workflow)
    for verb in ("worker", "submit"):
        assert fleet_command(verb)[2] == FLEET_TARGET


def test_worker_deployment_runs_three_workers_that_stop_after_the_grace_period() -> None:
    deployment = resource(*WORKER)["spec"]
    pod = deployment["template"]["spec"]
    grace = settings(resource("ConfigMap", "fsmflow-settings")["data"]).shutdown_grace
    assert deployment["replicas"] == 3
    assert pod["terminationGracePeriodSeconds"] > grace + STOP_MARGIN_SECONDS
    assert pod.get("restartPolicy", "Always") == "Always"
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    rolling = deployment["strategy"]["rollingUpdate"]
    assert deployment["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxSurge"] >= 1 and rolling["maxUnavailable"] == 0  # never below 3 ready
    # The same worker as the systemd template, importing the example from where the image has it.
    command = fleet_command("worker")
    assert command[3:] == ["--concurrency", "4"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    entrypoint = json.loads(instruction("ENTRYPOINT")[-1])
    assert Path(env["PYTHONPATH"]) / module_file(FLEET_TARGET) == Path(entrypoint[-1])


def test_disruption_budget_selects_exactly_the_worker_pods_and_allows_one_eviction() -> None:
    budget = resource("PodDisruptionBudget", WORKER[1])["spec"]
    deployment = resource(*WORKER)["spec"]
    selector = budget["selector"]["matchLabels"]
    assert selector == deployment["selector"]["matchLabels"]
    for kind in ("Job", "Deployment"):
        for docs in manifests().values():
            for doc in docs:
                if doc["kind"] == kind:
                    labels = doc["spec"]["template"]["metadata"]["labels"]
                    selected = selector.items() <= labels.items()
                    assert selected == ((kind, doc["metadata"]["name"]) == WORKER), doc
    (rule,) = set(budget) & {"minAvailable", "maxUnavailable"}
    assert isinstance(budget[rule], int)  # a percentage would round differently per size
    # Leaves a drain room to evict one worker and keeps at least one running.
    assert 1 <= budget[rule] < deployment["replicas"]


def test_submit_job_submits_one_ticket_once_and_fails_fast_on_bad_arguments() -> None:
    spec = resource(*SUBMIT_JOB)["spec"]
    command = fleet_command("submit")
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert set(options) == {"--id", "--context"}  # a pinned id: a retried pod cannot resubmit
    ticket = json.loads(options["--context"])["ticket"]
    example = importlib.import_module(FLEET_TARGET.split(":")[0])
    assert set(ticket) == set(example.DEFAULT_TICKET)
    assert "ttlSecondsAfterFinished" not in spec  # a later apply leaves the finished Job alone
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    fail_job = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert [r["onExitCodes"]["values"] for r in fail_job] == [[EXIT_USAGE]]


SETTING_NAME = re.compile(r"\b(?:FSMFLOW|DB)_[A-Z0-9_]*[A-Z0-9]\b")


def readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n{title}\n")
    end = readme.find("\n## ", start + len(title) + 2)
    return readme[start : end if end != -1 else None]


def test_deploy_files_and_scaling_out_name_only_real_settings() -> None:
    """Setting names in comments too: a renamed setting must not live on in the docs."""
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in DEPLOY.rglob("*") if p.is_file()}
    texts["README.md, Scaling out"] = readme_section("## Scaling out")
    for name, text in texts.items():
        named = set(SETTING_NAME.findall(text)) - {SKIP_SYSTEMD_ENV}
        assert named <= known_settings(), f"{name}: {sorted(named - known_settings())}"
    worker_files = (KUBERNETES / "deployment-worker.yaml", SYSTEMD / WORKER_TEMPLATE)
    for path in worker_files:
        for setting in ("FSMFLOW_WORKER_SWEEP_SECONDS", "FSMFLOW_WORKER_STALE_SECONDS"):
            assert setting in path.read_text(), f"{path.name} does not explain {setting}"


# -- Containerfile ----------------------------------------------------------------------


def test_containerfile_runs_the_example_as_a_non_root_user_under_tini() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    user = instruction("USER")[-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "numeric, so runAsNonRoot can check it"
    entrypoint = json.loads(instruction("ENTRYPOINT")[-1])
    assert entrypoint[:2] == ["tini", "--"]
    assert entrypoint[-1] == f"/opt/fsmflow/{EXAMPLE}"
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    copies = [args.split() for args in instruction("COPY")]
    assert [EXAMPLE.split("/")[0], "./examples"] in copies


def test_containerfile_copies_enough_to_pip_install(tmp_path: Path) -> None:
    """`pip install .` in the image sees only what COPY put there: build a wheel from that."""
    context = tmp_path / "context"
    context.mkdir()
    for args in instruction("COPY"):
        *sources, _ = args.split()
        for source in sources:
            src = ROOT / source
            assert src.exists(), f"COPY {source}: missing from the repository"
            if src.is_dir():
                shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copyfile(src, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=context, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(tmp_path.glob("fsmflow-*.whl"))
