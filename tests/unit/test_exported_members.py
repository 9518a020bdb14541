"""The public surface is deliberate (after httpx's ``tests/test_exported_members.py``).

Every name in ``fsmflow.__all__`` is importable from ``fsmflow``; every public, non-module
name of the package is listed there; public classes and their public methods and
properties say what they do.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

import pytest

import fsmflow

EXPORTED = list(fsmflow.__all__)
PUBLIC_CLASSES = [n for n in EXPORTED if inspect.isclass(getattr(fsmflow, n))]


def test_all_has_no_duplicates() -> None:
    assert len(EXPORTED) == len(set(EXPORTED))


@pytest.mark.parametrize("name", EXPORTED)
def test_every_exported_name_is_importable(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from fsmflow import {name}", namespace)
    assert namespace[name] is getattr(fsmflow, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from fsmflow import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(EXPORTED)


def test_every_public_name_of_the_package_is_exported() -> None:
    public = {
        name
        for name, value in vars(fsmflow).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)  # submodules
        and name != "annotations"  # from __future__ import annotations
    }
    assert public == set(EXPORTED) - {"__version__"}


def test_exported_objects_come_from_fsmflow() -> None:
    for name in EXPORTED:
        value = getattr(fsmflow, name)
        module = getattr(value, "__module__", None)
        if module is not None and (inspect.isclass(value) or inspect.isfunction(value)):
            assert module.startswith("fsmflow."), (name, module)
            assert getattr(importlib.import_module(module), name) is value


def test_version() -> None:
    assert isinstance(fsmflow.__version__, str)
    assert fsmflow.__version__.count(".") >= 2


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_public_classes_have_docstrings(name: str) -> None:
    cls = getattr(fsmflow, name)
    assert inspect.getdoc(cls), f"{name} has no docstring"
    assert cls.__doc__ and cls.__doc__.strip(), f"{name} only inherits a docstring"


def _own_public_members(cls: type) -> list[tuple[str, Any]]:
    members = []
    for attr, value in vars(cls).items():
        if attr.startswith("_") or attr.startswith("model_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            members.append((attr, value))
    return members


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_public_methods_and_properties_have_docstrings(name: str) -> None:
    cls = getattr(fsmflow, name)
    missing = [attr for attr, value in _own_public_members(cls) if not inspect.getdoc(value)]
    assert missing == [], f"{name}: {missing} have no docstring"


@pytest.mark.parametrize("name", [n for n in EXPORTED if inspect.isfunction(getattr(fsmflow, n))])
def test_public_functions_have_docstrings(name: str) -> None:
    assert inspect.getdoc(getattr(fsmflow, name)), f"{name} has no docstring"


def test_every_error_derives_from_one_root_and_is_exported() -> None:
    errors_module = importlib.import_module("fsmflow.errors")
    defined = {
        name
        for name, value in vars(errors_module).items()
        if inspect.isclass(value) and issubclass(value, BaseException) and not name.startswith("_")
    }
    assert defined <= set(EXPORTED)
    for name in defined:
        assert issubclass(getattr(fsmflow, name), fsmflow.FsmflowError)


def test_exit_codes() -> None:
    codes = (fsmflow.EXIT_OK, fsmflow.EXIT_FAILED, fsmflow.EXIT_USAGE, fsmflow.EXIT_INTERRUPTED)
    assert codes == (0, 1, 2, 75)
