"""``bastion demo``: every step of the embedded-default lifecycle behaves as expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.cli.main import main


def test_demo_runs_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_tool("mkfs.ext4")
    code = main(["demo", "--json", "--dir", str(tmp_path / "demo")])
    doc = json.loads(capsys.readouterr().out)
    failed = [s for s in doc["steps"] if not s["ok"]]
    assert code == 0 and doc["ok"] and not failed, failed
    names = [s["name"] for s in doc["steps"]]
    for expected in ("verity-tamper-data", "first-boot", "tpm-locked", "attest", "fleet",
                     "tamper-kernel"):  # fmt: skip
        assert expected in names
    refusals = {s["name"]: s["detail"] for s in doc["steps"]}
    assert "refused (expected)" in refusals["tamper-kernel"]
    assert "refused (expected)" in refusals["tpm-locked"]


def test_demo_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "something").write_text("x")
    assert main(["demo", "--dir", str(tmp_path)]) == 9
    assert "not empty" in capsys.readouterr().err
