"""Every module stays small (engine, CLI, bench, store, model, the top level) and the
runner's collaborators stay narrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fsmflow.engine.runner import PersistentWorkflowStateMachine

PACKAGE = Path(__file__).resolve().parents[1] / "fsmflow"
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300
# The runner's collaborators: each gets a few callables or a small protocol, never the
# runner that creates it nor the whole Store.
COLLABORATORS = ("attempts", "recorder", "opening", "interrupts")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_class_sizes(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, "split the module by concept"
    classes = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ClassDef)]
    too_big = {
        c.name: size
        for c in classes
        if (size := (c.end_lineno or c.lineno) - c.lineno + 1) > MAX_CLASS_LINES
    }
    assert too_big == {}


@pytest.mark.parametrize("name", COLLABORATORS)
def test_collaborators_know_neither_the_runner_nor_the_whole_store(name: str) -> None:
    names = imported(PACKAGE / "engine" / f"{name}.py")
    assert "fsmflow.engine.runner" not in names
    assert "fsmflow.store.facade" not in names
    assert "fsmflow.settings" not in names


def test_the_runner_keeps_its_role_as_the_transitions_model() -> None:
    runner = PersistentWorkflowStateMachine
    for name in (
        "run_workflow",
        "interrupt",
        "on_manual_transition",
        "condition_context",
        "workflow_state",
        "steps",
        "machine",
    ):
        assert hasattr(runner, name), name
    assert "__repr__" in vars(runner)
    assert "state" in runner.__annotations__
