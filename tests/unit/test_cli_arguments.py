"""``fsmflow`` arguments checked at parse time: out-of-range numbers and durations,
``--set`` values that look like JSON but are not, ``--set-str``; and the ``--help`` text
about ``.env`` files agrees with what DBConfig does."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsmflow import DBConfig
from fsmflow.cli.main import build_parser, main

DEEP = "[" * 20000 + "]" * 20000


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["prune", "--older-than", "740000d", "--dry-run"], "--older-than"),
        (["list", "--limit", "2147483647"], "--limit"),
        (["prune", "--older-than", "1d", "--batch-size", "3000000000"], "--batch-size"),
        (["fork", "wf", "i", "--seq", "99999999999"], "--seq"),
        (["fork", "wf", "i", "--set", f"x={DEEP}"], "--set"),
        (["fork", "wf", "i", "--set", "k=[1,"], "--set"),
    ],
)
def test_out_of_range_values_are_usage_errors_naming_the_option(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


@pytest.mark.parametrize("raw", ["[1,", "{", '"open', "12abc", "-x", "true!", "null x"])
def test_a_value_that_starts_like_json_must_parse(
    raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fork", "wf", "i", "--set", f"amount={raw}"]) == 2
    err = capsys.readouterr().err
    assert "'amount'" in err and "--set-str" in err


def test_set_parses_json_or_plain_text_and_set_str_keeps_text() -> None:
    args = build_parser().parse_args(
        ["fork", "wf", "i", "--set", "a=[1, 2]", "--set", "b=hello", "--set", "c=",
         "--set-str", "d=[1,", "--set", "e=-1.5", "--set-str", "f=42"]
    )  # fmt: skip
    assert dict(args.set) == {"a": [1, 2], "b": "hello", "c": "", "d": "[1,", "e": -1.5, "f": "42"}


def test_help_names_the_env_files_in_the_order_dbconfig_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home_file, cwd_file = DBConfig.model_config["env_file"]  # type: ignore[misc]
    assert (home_file, cwd_file) == (str(Path.home() / ".env"), ".env")
    (tmp_path / "home.env").write_text("FSMFLOW_TABLE=from_home\nFSMFLOW_POOL_SIZE=3\n")
    (tmp_path / "cwd.env").write_text("FSMFLOW_TABLE=from_cwd\n")
    files = (tmp_path / "home.env", tmp_path / "cwd.env")  # in the same order
    for name in ("FSMFLOW_TABLE", "FSMFLOW_POOL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    config = DBConfig(_env_file=files)  # type: ignore[call-arg]
    assert config.table == "from_cwd" and config.pool_size == 3  # ./.env wins over ~/.env
    monkeypatch.setenv("FSMFLOW_TABLE", "from_env")
    assert DBConfig(_env_file=files).table == "from_env"  # type: ignore[call-arg]

    assert main(["--help"]) == 0
    assert "~/.env, then ./.env (which wins)" in " ".join(capsys.readouterr().out.split())
