"""``bastion server init`` and ``server user add`` refusing a missing data folder (item 27).

Every path is under ``tmp_path`` and the working directory is moved there too, so a
mistake in an argument cannot create folders in the working tree.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bastion.cli.main import main

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("BASTION_SERVER_"):
            monkeypatch.delenv(key)
    for key, value in {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "8"}.items():
        monkeypatch.setenv(f"BASTION_SERVER_{key}", value)
    monkeypatch.setenv("BASTION_SERVER_ARGON2_PARALLELISM", "1")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _password(tmp_path: Path) -> str:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    return str(pw)


def test_user_add_refuses_a_missing_data_folder(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "typo" / "data"
    code, _out, err = run(
        capsys, "server", "user", "add", "ops@example.org",
        "--password-file", _password(tmp_path), "--data-dir", str(missing),
    )  # fmt: skip
    assert code == 9, err
    assert str(missing) in err and "bastion server init" in err
    assert len(err.strip().splitlines()) == 1
    assert not missing.exists() and not missing.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pw"]


def test_init_then_user_add(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    code, out, err = run(capsys, "server", "init", "--data-dir", str(data), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["data_dir"] == str(data) and report["key_id"]
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "bastion.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "secret.key").stat().st_mode) == 0o600
    key = (data / "secret.key").read_bytes()
    # init is idempotent: the key is kept
    assert run(capsys, "server", "init", "--data-dir", str(data))[0] == 0
    assert (data / "secret.key").read_bytes() == key
    code, out, err = run(
        capsys, "server", "user", "add", "ops@example.org",
        "--password-file", _password(tmp_path), "--data-dir", str(data),
    )  # fmt: skip
    assert code == 0, err
    assert "created" in out
    code, out, err = run(capsys, "server", "audit", "verify", "--data-dir", str(data), "--json")
    assert code == 0, err
    assert json.loads(out)["entries"] == 1


def test_audit_verify_refuses_a_missing_folder(tmp_path: Path, capsys) -> None:
    code, _out, err = run(capsys, "server", "audit", "verify", "--data-dir", str(tmp_path / "x"))
    assert code == 9
    assert "does not exist" in err
    assert not (tmp_path / "x").exists()
