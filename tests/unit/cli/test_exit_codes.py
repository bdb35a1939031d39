"""Item 23: one documented table of exit codes, usage errors that show the sub-command's
usage, and a JSON error object on stdout for ``--json`` failures."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import bastion
from bastion import errors
from bastion.cli import main as cli_main
from bastion.cli.main import main

DOC = Path(__file__).resolve().parents[3] / "docs" / "cli.md"


def _documented() -> dict[str, int]:
    """error class -> exit code, from the table in docs/cli.md."""
    table: dict[str, int] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| (\d+) \| [^|]+ \| (.+) \|$", line)
        if m:
            for name in re.findall(r"`(\w+)`", m.group(2)):
                assert name not in table, f"{name} is documented twice"
                table[name] = int(m.group(1))
    return table


def _all_error_classes() -> set[type[errors.BastionError]]:
    for info in pkgutil.walk_packages(bastion.__path__, "bastion."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)  # every module: every error class
    found: set[type[errors.BastionError]] = set()
    todo = [errors.BastionError]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.add(cls)
            todo.extend(cls.__subclasses__())
    return found


def test_every_code_has_one_row_and_the_special_codes_match_main() -> None:
    codes = [int(c) for c in re.findall(r"^\| (\d+) \|", DOC.read_text(), re.M)]
    assert codes == sorted(set(codes)), "one row per code, in order"
    table = _documented()
    assert table["UsageError"] == cli_main.EXIT_USAGE == errors.ConfigError.exit_code
    assert table["OSError"] == cli_main.EXIT_OS
    assert table["Interrupted"] == cli_main.EXIT_INTERRUPTED
    assert cli_main.EXIT_BROKEN_PIPE in codes


def test_every_bastion_error_maps_to_its_documented_code() -> None:
    table = _documented()
    wrong = []
    for cls in sorted(_all_error_classes(), key=lambda c: c.__name__):
        listed = next((c for c in cls.__mro__ if c.__name__ in table), None)
        if listed is None:
            wrong.append(f"{cls.__module__}.{cls.__name__}: not in docs/cli.md")
        elif cls.exit_code != table[listed.__name__]:
            wrong.append(
                f"{cls.__name__} exits {cls.exit_code}, docs/cli.md says "
                f"{table[listed.__name__]} (row of {listed.__name__})"
            )
    assert not wrong, wrong
    # and the table lists every class of errors.py by name
    public = {c.__name__ for c in vars(errors).values() if isinstance(c, type)}
    assert public <= set(table), public - set(table)


@pytest.mark.parametrize(
    ("argv", "usage", "complaint"),
    [
        (["image", "pcrs", "x", "--bogus"], "usage: bastion image pcrs", "unrecognized arguments"),
        (["image", "build"], "usage: bastion image build", "the following arguments are required"),
        (["image", "nope"], "usage: bastion image ", "invalid choice"),
        (["device", "boot"], "usage: bastion device boot", "required: DEV"),
        (["server", "audit", "verify", "--what"], "usage: bastion server audit verify", "unrecog"),
        (["keys", "generate", "rsa-9", "-o", "x"], "usage: bastion keys generate", "invalid"),
        (["verity", "format", "a", "b", "--data-blocks", "x"], "usage: bastion verity format",
         "'x' is not an integer"),
        (["image"], "usage: bastion image ", "choose a sub-command: build, inspect"),
        (["fuses"], "usage: bastion fuses ", "choose a sub-command: show, blow, burn"),
        (["server", "audit"], "usage: bastion server audit ", "required: SUBCOMMAND"),
        (["--bogus"], "usage: bastion ", "unrecognized arguments"),
    ],
)  # fmt: skip
def test_usage_error_shows_the_subcommand_usage(
    argv: list[str], usage: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == cli_main.EXIT_USAGE
    assert usage in err and complaint in err, err
    assert out == ""
    if argv[0] != "--bogus":
        assert "usage: bastion [-h]" not in err  # never the top-level usage


def test_usage_error_with_json_is_a_json_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["image", "inspect", "x.img", "--json", "--nope"])
    out, err = capsys.readouterr()
    assert code == 9 and "usage: bastion image inspect" in err
    assert json.loads(out) == {
        "error": {
            "code": 9,
            "kind": "UsageError",
            "message": "bastion image inspect: unrecognized arguments: --nope",
        }
    }


def test_json_failure_prints_an_error_object_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.img"
    code = main(["image", "inspect", "--json", str(missing)])
    out, err = capsys.readouterr()
    assert code == 10
    doc = json.loads(out)
    assert doc["error"]["code"] == 10 and doc["error"]["kind"] == "OSError"
    assert str(missing) in doc["error"]["message"] and str(missing) in err
    code = main(["keys", "show", "--json", str(tmp_path)])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert code == 5 == doc["error"]["code"] and doc["error"]["kind"] == "NotFoundError"
    assert str(tmp_path / "keys.json") in doc["error"]["message"]
    assert err.count("\n") == 1 and err.startswith("bastion: NotFoundError: ")


def test_text_failure_prints_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "show", str(tmp_path)]) == 5
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "build", "--help"]) == 0
    assert "usage: bastion image build" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("bastion ")
