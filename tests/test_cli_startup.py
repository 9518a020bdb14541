"""The command line starts without the benchmark: only ``fsmflow bench`` imports it.

Each check runs in a fresh interpreter, since this test process may have imported the
benchmark already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fsmflow.cli.main import build_parser

# Build the parser, show the help of the program and of one command, parse the command's
# arguments as its handler would get them, then list what got imported.
PROBE = """
import contextlib, io, json, sys
from fsmflow.cli.main import build_parser, main
command, argv = sys.argv[1], sys.argv[2:]
with contextlib.redirect_stdout(io.StringIO()):
    main(["--help"])
    main([command, "--help"])
build_parser().parse_args([command, *argv])
bench = [n for n in sys.modules if n == "fsmflow.bench" or n.startswith("fsmflow.bench.")]
print(json.dumps(sorted(bench)))
"""

# A valid command line for each command (its required arguments), bench excluded.
ARGUMENTS: dict[str, list[str]] = {
    "init-db": [],
    "migrate": ["--dry-run"],
    "reset-db": ["--yes"],
    "check": [],
    "list": [],
    "show": ["wf", "i-1"],
    "history": ["wf", "i-1"],  # an alias of show
    "graph": ["some.module:DEFINITION"],
    "fork": ["wf", "i-1", "--seq", "1"],
    "retry": ["wf", "i-1"],
    "cancel": ["wf", "i-1"],
    "send-event": ["wf", "i-1", "approval", "--data", "{}"],
    "submit": ["m:W"],
    "worker": ["m:W"],
    "workers": [],
    "prune": ["--older-than", "30d", "--dry-run"],
    "embedded": ["status"],
    "ui": ["--port", "0"],
}


def bench_modules_after(command: str, argv: list[str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, command, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return modules


def test_every_command_but_bench_is_covered() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert sorted(commands) == sorted([*ARGUMENTS, "bench"])


@pytest.mark.parametrize("command", sorted(ARGUMENTS))
def test_command_starts_without_the_benchmark(command: str) -> None:
    assert bench_modules_after(command, ARGUMENTS[command]) == []


def test_program_help_imports_no_benchmark_module() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fsmflow", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: fsmflow" in done.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert "fsmflow.cli.main" in imported  # the probe sees fsmflow's own imports
    assert [name for name in imported if name.startswith("fsmflow.bench")] == []


def test_bench_still_parses_its_options() -> None:
    args = build_parser().parse_args(["bench", "--steps", "3", "--json", "--no-throughput"])
    assert (args.steps, args.json, args.no_throughput, args.instances) == (3, True, True, 100)
    assert callable(args.handler)
