"""The foundation: the error tree, the command runner, atomic files and the CLI shell."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion import errors
from bastion.cli.main import main
from bastion.io.files import atomic_write, read_bounded
from bastion.io.runner import CommandRunner


def test_every_error_derives_from_bastion_error() -> None:
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not errors.BastionError:
            assert issubclass(obj, errors.BastionError), name


def test_exit_codes_differ_by_branch() -> None:
    codes = {
        errors.FormatError.exit_code,
        errors.VerificationError.exit_code,
        errors.AuthError.exit_code,
        errors.BackendError.exit_code,
        errors.ConfigError.exit_code,
    }
    assert len(codes) == 5


def test_digest_mismatch_carries_location() -> None:
    exc = errors.DigestMismatchError("bad", area="hash", block=7, level=1)
    assert (exc.area, exc.block, exc.level) == ("hash", 7, 1)


def test_runner_raises_command_error_with_stderr() -> None:
    with pytest.raises(errors.CommandError) as info:
        CommandRunner().run(["sh", "-c", "echo boom >&2; exit 3"])
    assert info.value.returncode == 3
    assert "boom" in str(info.value)


def test_runner_names_package_of_missing_tool() -> None:
    with pytest.raises(errors.ToolMissingError) as info:
        CommandRunner().run(["definitely-not-a-tool-xyz"])
    assert "definitely-not-a-tool-xyz" in str(info.value)


def test_runner_returns_output() -> None:
    assert CommandRunner().run(["sh", "-c", "printf hi"]).stdout == b"hi"


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert (os.stat(target).st_mode & 0o777) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_read_bounded_refuses_large_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 11)
    assert read_bounded(path, 11) == b"x" * 11
    with pytest.raises(errors.LimitError):
        read_bounded(path, 10)
    with pytest.raises(errors.NotFoundError):
        read_bounded(tmp_path / "missing", 10)


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 9  # a usage error (docs/cli.md): 2 means a failed verification
    assert "usage: bastion" in capsys.readouterr().err


def test_cli_turns_an_unwrapped_os_error_into_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["keys", "init", str(blocker / "keys")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and err.count("\n") == 1
