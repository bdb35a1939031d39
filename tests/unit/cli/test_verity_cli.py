"""``bastion verity format|verify|dump``: output, exit codes and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bastion.cli.main import main

UUID = "a60c98d2-ae9b-4865-bfcb-b4e3ace11033"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.img"
    path.write_bytes(hashlib.shake_256(b"cli").digest(300 * 4096))
    return path


def _format_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code, out, err = _run(capsys, "verity", "format", *argv, "--json")
    assert code == 0, err
    doc: dict[str, object] = json.loads(out)
    return doc


def test_format_prints_veritysetup_style_header(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    code, out, _ = _run(
        capsys, "verity", "format", str(data), str(tmp_path / "h"), "--salt", "ab", "--uuid", UUID
    )
    assert code == 0
    assert f"VERITY header information for {tmp_path / 'h'}" in out
    assert f"UUID:            \t{UUID}" in out
    assert "Data blocks:     \t300" in out
    assert "Hash blocks:     \t4" in out  # 3 level-0 blocks + the top
    assert "Salt:            \tab" in out
    root = next(line.split()[-1] for line in out.splitlines() if line.startswith("Root hash:"))
    assert len(root) == 64
    assert "Hash device size: \t20480 [bytes]" in out


def test_format_json_verify_and_dump(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    hash_file = tmp_path / "h"
    doc = _format_json(
        capsys,
        str(data),
        str(hash_file),
        "--uuid",
        UUID,
        "--root-hash-file",
        str(tmp_path / "root"),
    )
    root = str(doc["root_hash"])
    assert (tmp_path / "root").read_text() == root
    assert len(str(doc["salt"])) == 64  # random 32-byte salt by default
    assert doc["hash_start_block"] == 1 and doc["data_blocks"] == 300
    code, out, _ = _run(capsys, "verity", "verify", str(data), str(hash_file), root, "--json")
    assert code == 0 and json.loads(out)["verified"] is True
    code, out, _ = _run(capsys, "verity", "verify", str(data), str(hash_file), root)
    assert code == 0 and "Verified 300 data blocks" in out
    code, out, _ = _run(capsys, "verity", "dump", str(hash_file), "--json")
    dumped = json.loads(out)
    assert code == 0 and dumped["uuid"] == UUID and dumped["salt"] == doc["salt"]
    code, out, _ = _run(capsys, "verity", "dump", str(hash_file))
    assert code == 0 and "Hash algorithm:  \tsha256" in out and "Root hash" not in out


def test_verify_refuses_flipped_bit_naming_the_block(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    hash_file = tmp_path / "h"
    root = str(_format_json(capsys, str(data), str(hash_file), "--no-salt")["root_hash"])
    raw = bytearray(data.read_bytes())
    raw[123 * 4096 + 7] ^= 0x20
    data.write_bytes(raw)
    code, out, err = _run(capsys, "verity", "verify", str(data), str(hash_file), root)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "data block 123" in err and "Traceback" not in err
    code, out, _ = _run(capsys, "verity", "verify", str(data), str(hash_file), root, "--json")
    doc = json.loads(out)["error"]  # the one JSON error object (docs/cli.md)
    assert code == 2 == doc["code"] and doc["kind"] == "DigestMismatchError"
    assert (doc["area"], doc["block"], doc["level"]) == ("data", 123, None)


def test_appended_hash_area_default_offset(capsys: pytest.CaptureFixture[str], data: Path) -> None:
    size = data.stat().st_size
    doc = _format_json(capsys, str(data), "--hash", "sha512", "--format", "0")
    assert doc["hash_offset"] == size and doc["hash_file"] == str(data)
    assert data.stat().st_size == size + int(str(doc["hash_device_size"]))
    code, _, err = _run(
        capsys,
        "verity",
        "verify",
        str(data),
        str(data),
        str(doc["root_hash"]),
        "--hash-offset",
        str(size),
    )
    assert code == 0, err
    # formatting the same file again protects only the region before --hash-offset
    doc2 = _format_json(capsys, str(data), "--hash-offset", str(size), "--salt", "-")
    assert doc2["data_blocks"] == 300 and doc2["salt"] == "-"


def test_no_superblock_round_trip(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    hash_file = tmp_path / "h"
    doc = _format_json(
        capsys,
        str(data),
        str(hash_file),
        "--no-superblock",
        "--salt",
        "0102",
        "--data-block-size",
        "1024",
        "--hash-block-size",
        "512",
    )
    assert doc["uuid"] is None and doc["hash_start_block"] == 0
    code, _, err = _run(
        capsys,
        "verity",
        "verify",
        str(data),
        str(hash_file),
        str(doc["root_hash"]),
        "--no-superblock",
        "--data-blocks",
        "1200",
        "--salt",
        "0102",
        "--data-block-size",
        "1024",
        "--hash-block-size",
        "512",
    )
    assert code == 0, err


def _setup_bad(tmp_path: Path, data: Path) -> dict[str, Path]:
    files = {
        "data": data,
        "odd": tmp_path / "odd.img",
        "sb": tmp_path / "sb.img",
        "hash": tmp_path / "good.hash",
        "short": tmp_path / "short.hash",
        "empty": tmp_path / "empty.img",
    }
    files["odd"].write_bytes(bytes(4096 * 2 + 100))
    files["sb"].write_bytes(b"verity\x00\x00" + bytes(100))
    files["empty"].write_bytes(b"")
    return files


BAD = [
    ("truncated superblock", ["verity", "dump", "{sb}"], 3, "truncated"),
    ("not a superblock", ["verity", "dump", "{data}"], 3, "signature"),
    ("unknown algorithm", ["verity", "format", "{data}", "{tmp}/x", "--hash", "md5"], 3, "md5"),
    (
        "data block size out of range",
        ["verity", "format", "{data}", "{tmp}/x", "--data-block-size", "131072"],
        3,
        "131072",
    ),
    (
        "hash block size not a power of two",
        ["verity", "format", "{data}", "{tmp}/x", "--hash-block-size", "1000"],
        3,
        "1000",
    ),
    ("format 2", ["verity", "format", "{data}", "{tmp}/x", "--format", "2"], 3, "format 2"),
    (
        "data not a multiple of the block size",
        ["verity", "format", "{odd}", "{tmp}/x"],
        3,
        "not a multiple",
    ),
    ("empty data", ["verity", "format", "{empty}", "{tmp}/x"], 3, "no whole"),
    (
        "salt not hex",
        ["verity", "format", "{data}", "{tmp}/x", "--salt", "xyz"],
        9,
        "not hexadecimal",
    ),
    ("salt too long", ["verity", "format", "{data}", "{tmp}/x", "--salt", "ab" * 257], 3, "257"),
    (
        "salt and no-salt",
        ["verity", "format", "{data}", "{tmp}/x", "--salt", "ab", "--no-salt"],
        9,
        "exclude",
    ),
    ("bad uuid", ["verity", "format", "{data}", "{tmp}/x", "--uuid", "nope"], 9, "UUID"),
    (
        "odd hash offset",
        ["verity", "format", "{data}", "--hash-offset", "1229100"],
        3,
        "multiple of 512",
    ),
    (
        "overlapping hash offset",
        ["verity", "format", "{data}", "--hash-offset", "4096", "--data-blocks", "300"],
        9,
        "overlaps",
    ),
    ("missing data", ["verity", "format", "{tmp}/missing", "{tmp}/x"], 5, "does not exist"),
    ("hash file too small", ["verity", "verify", "{data}", "{short}", "{root}"], 3, "too small"),
    ("root hash not hex", ["verity", "verify", "{data}", "{hash}", "zz"], 9, "not hexadecimal"),
    ("root hash wrong length", ["verity", "verify", "{data}", "{hash}", "abcd"], 3, "expected 32"),
    ("wrong root hash", ["verity", "verify", "{data}", "{hash}", "00" * 32], 2, "root hash"),
    (
        "no-superblock without data blocks",
        ["verity", "verify", "{data}", "{hash}", "00" * 32, "--no-superblock"],
        9,
        "--data-blocks",
    ),
]


@pytest.mark.parametrize(("name", "argv", "code", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_no_traceback(
    capsys: pytest.CaptureFixture[str],
    data: Path,
    tmp_path: Path,
    name: str,
    argv: list[str],
    code: int,
    needle: str,
) -> None:
    files = _setup_bad(tmp_path, data)
    root = str(_format_json(capsys, str(data), str(files["hash"]))["root_hash"])
    raw = files["hash"].read_bytes()
    files["short"].write_bytes(raw[: len(raw) - 4096])
    subst = {k: str(v) for k, v in files.items()} | {"tmp": str(tmp_path), "root": root}
    actual, out, err = _run(capsys, *[a.format(**subst) for a in argv])
    assert actual == code, err
    assert out == ""
    assert err.startswith("bastion: ") and err.count("\n") == 1, err
    assert needle in err
    assert "Traceback" not in err


def test_group_without_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "verity")
    assert code == 9 and "format" in err  # usage errors exit 9 (docs/cli.md), help on stderr


def test_hash_file_is_not_truncated(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    hash_file = tmp_path / "h"
    hash_file.write_bytes(b"\xff" * 100_000)
    _format_json(capsys, str(data), str(hash_file))
    assert hash_file.stat().st_size == 100_000
    assert os.path.getsize(hash_file) == 100_000


# --- bastion demo ------------------------------------------------------------------------


def test_demo_runs_every_step(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from bastion.cli.demo import STEPS

    code, out, err = _run(capsys, "demo", "--json", "--dir", str(tmp_path / "demo"))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True
    assert [s["name"] for s in doc["steps"]] == [s.name for s in STEPS]
    tamper = next(s for s in doc["steps"] if s["name"] == "verity-tamper-data")
    assert (tamper["area"], tamper["block"]) == ("data", 700)
    assert "data block 700" in tamper["detail"]
    hashed = next(s for s in doc["steps"] if s["name"] == "verity-tamper-hash")
    assert (hashed["area"], hashed["level"]) == ("hash", 0)
    assert (tmp_path / "demo" / "rootfs.verity").exists()
    code, out, _ = _run(capsys, "demo")
    assert code == 0
    assert out.splitlines()[-1] == f"demo passed: {len(STEPS)}/{len(STEPS)} steps"
    assert all(line.startswith("[ok] ") for line in out.splitlines()[:-1])


def test_demo_stops_at_first_unexpected_outcome(tmp_path: Path) -> None:
    from bastion.cli.demo import DemoContext, DemoStep, StepOutcome, run_steps
    from bastion.errors import FormatError

    def boom(_ctx: DemoContext) -> StepOutcome:
        raise FormatError("broken image")

    def never(_ctx: DemoContext) -> StepOutcome:
        raise AssertionError("must not run")

    results = run_steps([DemoStep("boom", boom), DemoStep("never", never)], DemoContext(tmp_path))
    assert len(results) == 1
    assert not results[0][1].ok and "broken image" in results[0][1].detail
    undetected = run_steps(
        [DemoStep("miss", lambda _c: StepOutcome(False, "not detected")), DemoStep("never", never)],
        DemoContext(tmp_path),
    )
    assert len(undetected) == 1
