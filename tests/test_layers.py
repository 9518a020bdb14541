"""The package's architecture, checked: folders are layers and imports point one way.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a cycle
hidden there is still a cycle in the call graph. The layers, lowest first::

    errors                      one exception hierarchy
    model, sql                  definitions, contexts, records; the SQL text
    telemetry                   OpenTelemetry spans and metrics (the store and engine call it)
    store                       the only code that talks to PostgreSQL
    dsn, settings               configuration (DBConfig builds the Store)
    engine                      the runner, the machine, attempts, shutdown
    cli, bench, testing, ui     the command line; the benchmark; the test kit; the dashboard
    fsmflow (the package face)

A module may import modules of its own layer or lower ones, never higher, and no two
modules may import each other, directly or through others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fsmflow"
LAYERS = [
    ["fsmflow.errors"],
    ["fsmflow.model", "fsmflow.sql"],
    ["fsmflow.telemetry"],
    ["fsmflow.store"],
    ["fsmflow.dsn", "fsmflow.settings"],
    ["fsmflow.engine"],
    ["fsmflow.cli", "fsmflow.bench", "fsmflow.testing", "fsmflow.ui"],
    ["fsmflow.__init__", "fsmflow.__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    # ``from .x import y`` in a.b.c (or in a.b.__init__) is relative to package a.b.
    base = module.split(".")[: -node.level]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The fsmflow modules ``module`` imports, wherever the import statement is."""
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names = [f"{target}.{alias.name}" for alias in node.names] + [target]
        for name in names:
            if not name.startswith("fsmflow"):
                continue
            while name and name not in known and f"{name}.__init__" not in known:
                name = name.rpartition(".")[0]
            if name in known:
                yield name
            elif f"{name}.__init__" in known:
                yield f"{name}.__init__"


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {m: set(imports_of(m, p, known)) - {m} for m, p in found.items()}


# A package's face importing its own modules is how a face works, not a cycle in the code.
def _edges_without_faces(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if not t.endswith(".__init__")} for m, targets in edges.items()}


def test_every_module_belongs_to_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_imports_point_down_the_layers_only() -> None:
    wrong = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in graph().items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m) and not t.endswith(".__init__")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    edges = _edges_without_faces(graph())
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["fsmflow.engine.machine"])
def test_only_the_machine_imports_transitions(module: str) -> None:
    importers = {
        m
        for m, p in modules().items()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(
            (getattr(node, "module", None) or alias.name).startswith("transitions")
            for alias in node.names
        )
    }
    # The benchmark's baseline is a hand-rolled transitions loop: it may use the library.
    assert sorted(m for m in importers if not m.startswith("fsmflow.bench.")) == [module]


def test_only_the_store_imports_asyncpg() -> None:
    importers = sorted(
        m
        for m, p in modules().items()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(
            (getattr(node, "module", None) or alias.name).startswith("asyncpg")
            for alias in node.names
        )
    )
    outside = [m for m in importers if not m.startswith(("fsmflow.store.", "fsmflow.bench."))]
    assert not outside, outside
