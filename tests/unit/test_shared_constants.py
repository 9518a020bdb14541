"""Constants defined once: the compact JSON form and the list of statuses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import fsmflow.store.operations
from fsmflow.cli.main import build_parser
from fsmflow.model.context import compact_json
from fsmflow.model.records import STATUSES, Status

PACKAGE = Path(__file__).resolve().parents[2] / "fsmflow"
COMPACT_SEPARATORS = re.compile(r"separators\s*=\s*\(\s*['\"],['\"]\s*,\s*['\"]:['\"]\s*\)")


def test_compact_json_has_no_spaces_and_keeps_text_readable() -> None:
    assert compact_json({"b": [1, "é"], "a": None}) == '{"b":[1,"é"],"a":null}'
    assert compact_json({"b": 1, "a": "é"}, sort_keys=True, ensure_ascii=True) == (
        '{"a":"\\u00e9","b":1}'
    )
    assert json.loads(compact_json({"x": {"y": [1.5]}})) == {"x": {"y": [1.5]}}


def test_engine_cli_and_bench_use_compact_json_instead_of_their_own_separators() -> None:
    own = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for folder in ("engine", "cli", "bench")
        for path in sorted((PACKAGE / folder).glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if COMPACT_SEPARATORS.search(line)
    ]
    assert own == []


def test_statuses_are_the_status_literal_everywhere() -> None:
    assert (
        STATUSES == get_args(Status) == ("running", "waiting", "completed", "failed", "cancelled")
    )
    assert fsmflow.store.operations.STATUSES is STATUSES
    list_parser = build_parser()._subparsers._group_actions[0].choices["list"]  # type: ignore[union-attr]
    status = next(a for a in list_parser._actions if a.dest == "status")
    assert tuple(status.choices or ()) == STATUSES
