"""``bastion vm build|boot``: JSON output, exit codes for expected and other outcomes.

``vm build`` runs for real (mkfs.erofs, mkfs.vfat, mtools) with a stand-in kernel; the
boot itself is replaced by a canned result here (real boots are in tests/e2e).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.bootkit import _cert
from tests.conftest import need_tool

from bastion.build import disk
from bastion.cli.main import main
from bastion.formats import bootlog
from bastion.formats.bootlog import Outcome
from bastion.io import qemu
from bastion.trust.keys import private_key_to_pem


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for tool in ("mkfs.erofs", "mkfs.vfat", "mcopy"):
        need_tool(tool)
    if not disk.DEFAULT_LOADER.is_file():
        pytest.skip("systemd-boot-efi is not installed")
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello").write_text("hi\n")
    (tmp_path / "vmlinuz").write_bytes(b"MZ kernel" * 100)
    (tmp_path / "initrd").write_bytes(b"070701" * 10)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "db.key").write_bytes(private_key_to_pem(key))
    (tmp_path / "db.pem").write_bytes(_cert(key, "cli db").public_bytes(serialization.Encoding.PEM))
    code, out, err = _run(
        capsys,
        "vm",
        "build",
        str(tmp_path / "disk.img"),
        "--root",
        str(root),
        "--kernel",
        str(tmp_path / "vmlinuz"),
        "--initrd",
        str(tmp_path / "initrd"),
        "--db-key",
        f"file:{tmp_path / 'db.key'}",
        "--db-cert",
        str(tmp_path / "db.pem"),
        "--tries",
        "5",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["signed"] is True
    assert doc["uki_path"] == "EFI/Linux/bastion+5-0.efi"
    assert doc["cmdline"].endswith("roothash=" + doc["root_hash"])
    assert [p["name"] for p in doc["partitions"]] == ["esp", "root-x86-64", "root-x86-64-verity"]


def test_build_needs_key_and_cert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        capsys,
        "vm",
        "build",
        str(tmp_path / "d.img"),
        "--root",
        str(tmp_path),
        "--kernel",
        str(tmp_path / "k"),
        "--initrd",
        str(tmp_path / "i"),
        "--db-key",
        "file:x",
    )
    assert code == 9 and "--db-key and --db-cert go together" in err


def _build_args(tmp_path: Path) -> list[str]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "hello").write_text("hi\n")
    (tmp_path / "vmlinuz").write_bytes(b"MZ kernel" * 100)
    (tmp_path / "initrd").write_bytes(b"070701" * 10)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "pcr.key").write_bytes(private_key_to_pem(key))
    (tmp_path / "recovery").write_bytes(b"recovery words\n")
    return [
        "vm",
        "build",
        str(tmp_path / "disk.img"),
        "--root",
        str(root),
        "--kernel",
        str(tmp_path / "vmlinuz"),
        "--initrd",
        str(tmp_path / "initrd"),
    ]


def test_build_with_pcrsig_and_data_volume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for tool in ("mkfs.erofs", "mkfs.vfat", "mcopy", "swtpm", "swtpm_setup"):
        need_tool(tool)
    if not disk.DEFAULT_LOADER.is_file():
        pytest.skip("systemd-boot-efi is not installed")
    argv = _build_args(tmp_path)
    argv += ["--pcr-key", f"file:{tmp_path / 'pcr.key'}", "--data-tpm-state"]
    argv += [str(tmp_path / "tpm"), "--data-recovery-file", str(tmp_path / "recovery")]
    code, out, err = _run(capsys, *argv, "--data-size", "24", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pcrsig"] is True
    assert doc["data_volume"]["tpm_state"] == str((tmp_path / "tpm").resolve())
    names = [p["name"] for p in doc["partitions"]]
    assert names == ["esp", "root-x86-64", "root-x86-64-verity", "data"]
    assert doc["partitions"][3]["size"] == 24 * 1024 * 1024


DATA_REFUSALS = [
    ("state without pcr key", ["--data-tpm-state", "T", "--data-recovery-file", "R"], "--pcr-key"),
    ("state without recovery", ["--pcr-key", "K", "--data-tpm-state", "T"], "recovery"),
    ("recovery without state", ["--data-recovery-file", "R"], "needs --data-tpm-state"),
]


@pytest.mark.parametrize(
    ("case", "extra", "message"), DATA_REFUSALS, ids=[r[0] for r in DATA_REFUSALS]
)
def test_build_data_volume_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, extra: list[str], message: str
) -> None:
    names = {"T": str(tmp_path / "tpm"), "R": str(tmp_path / "recovery")}
    names["K"] = f"file:{tmp_path / 'pcr.key'}"
    argv = _build_args(tmp_path) + [names.get(word, word) for word in extra]
    code, _, err = _run(capsys, *argv)
    assert code == 9 and message in err, err
    assert not (tmp_path / "tpm").exists() and not (tmp_path / "disk.img").exists()


def _canned(tmp_path: Path, text: str) -> qemu.BootResult:
    serial = tmp_path / "serial.log"
    serial.write_text(text)
    report = bootlog.parse(text)
    result = bootlog.outcome(report, timed_out=False)
    return qemu.BootResult(
        outcome=result,
        reason=bootlog.reason(report, result),
        seconds=21.0,
        outcome_seconds=20.5,
        serial_log=serial,
        report=report,
        qemu_exit=0,
        work_dir=tmp_path,
    )


BOOTS = [
    (
        "running as expected",
        f"BASTION: pcr sha256 7 {'00ff' * 16}\nBASTION: running\n",
        "running",
        0,
    ),
    ("failed when running expected", "BASTION: failed: verity: x\n", "running", 1),
    ("failed as expected", "BASTION: failed: verity: x\n", "failed", 0),
    ("refused when running expected", "Access Denied\n", "running", 1),
    ("refused as expected", "Access Denied\n", "firmware-refused", 0),
]


@pytest.mark.parametrize(("case", "text", "expect", "code"), BOOTS, ids=[b[0] for b in BOOTS])
def test_boot_exit_codes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    text: str,
    expect: str,
    code: int,
) -> None:
    seen: dict[str, object] = {}

    def fake_boot(image: Path, work: Path, config: qemu.VmConfig, **kw: object) -> qemu.BootResult:
        seen.update(image=image, config=config)
        return _canned(tmp_path, text)

    monkeypatch.setattr(qemu, "boot", fake_boot)
    got, out, _ = _run(
        capsys,
        "vm",
        "boot",
        str(tmp_path / "disk.img"),
        "--expect",
        expect,
        "--vars",
        str(tmp_path / "sb-vars.fd"),
        "--timeout",
        "99",
        "--work",
        str(tmp_path / "w"),
        "--json",
    )
    assert got == code
    doc = json.loads(out)
    assert doc["ok"] is (code == 0)
    assert doc["expected"] == expect
    assert doc["outcome"] in [str(o) for o in Outcome]
    assert doc["serial_log"] == str(tmp_path / "serial.log")
    if code == 0 and expect == "running":
        assert doc["pcrs"] == {"sha256": {"7": "00ff" * 16}}
    config = seen["config"]
    assert isinstance(config, qemu.VmConfig)
    assert config.vars == tmp_path / "sb-vars.fd" and config.timeout == 99.0


def test_boot_writes_the_event_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "BASTION: eventlog begin\nAAECAw==\nBASTION: eventlog end\nBASTION: running\n"
    monkeypatch.setattr(qemu, "boot", lambda image, work, config, **kw: _canned(tmp_path, text))
    out = tmp_path / "log.bin"
    work = ("--work", str(tmp_path / "w"))
    code, _, err = _run(
        capsys, "vm", "boot", str(tmp_path / "d.img"), *work, "--eventlog", str(out)
    )
    assert code == 0, err
    assert out.read_bytes() == bytes([0, 1, 2, 3])
    # no event log on the console: an error, not an empty file
    monkeypatch.setattr(
        qemu, "boot", lambda image, work, config, **kw: _canned(tmp_path, "BASTION: running\n")
    )
    out.unlink()
    code, _, err = _run(
        capsys, "vm", "boot", str(tmp_path / "d.img"), *work, "--eventlog", str(out)
    )
    assert code == 9 and "no event log" in err and not out.exists()


def test_boot_missing_image_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (qemu.DEFAULT_CODE.is_file() and qemu.DEFAULT_VARS.is_file()):
        pytest.skip("ovmf is not installed")
    code, _, err = _run(capsys, "vm", "boot", str(tmp_path / "nope.img"), "--work", str(tmp_path))
    assert code == 9 and "nope.img" in err


def test_boot_passes_the_tpm_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []

    def fake(image: Path, work: Path, config: qemu.VmConfig, **kw: object) -> qemu.BootResult:
        seen.append(kw.get("tpm_state"))
        return _canned(tmp_path, "BASTION: running\n")

    monkeypatch.setattr(qemu, "boot", fake)
    work = ("--work", str(tmp_path / "w"))
    state = tmp_path / "tpm"
    assert _run(capsys, "vm", "boot", "d.img", *work, "--tpm-state", str(state))[0] == 0
    assert _run(capsys, "vm", "boot", "d.img", *work)[0] == 0
    assert seen == [state, None]


def _plain_build(tmp_path: Path, *extra: str) -> list[str]:
    for tool in ("mkfs.erofs", "mkfs.vfat", "mcopy"):
        need_tool(tool)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "hello").write_text("hi\n")
    (tmp_path / "vmlinuz").write_bytes(b"MZ kernel" * 100)
    (tmp_path / "initrd").write_bytes(b"070701" * 10)
    return [
        "vm",
        "build",
        str(tmp_path / "disk.img"),
        "--root",
        str(root),
        "--kernel",
        str(tmp_path / "vmlinuz"),
        "--initrd",
        str(tmp_path / "initrd"),
        "--no-loader",
        *extra,
        "--json",
    ]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ((), ""),
        (("--tamper-response", "halt"), "systemd.verity_root_options=panic-on-corruption panic=0"),
        (
            ("--tamper-response", "try-other-slot"),
            "systemd.verity_root_options=restart-on-corruption",
        ),
        (("--audit", "verity"), "systemd.verity_root_options=ignore-corruption"),
    ],
)
def test_build_puts_the_profile_response_on_the_signed_cmdline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], words: str
) -> None:
    code, out, err = _run(capsys, *_plain_build(tmp_path, *flags))
    assert code == 0, err
    doc = json.loads(out)
    expected = " ".join([*disk.DEFAULT_CONSOLE, *words.split(), f"roothash={doc['root_hash']}"])
    assert doc["cmdline"] == expected


def test_initrd_files_from_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, *_plain_build(tmp_path))
    assert code == 0, err
    root_hash = json.loads(out)["root_hash"]
    code, out, err = _run(
        capsys,
        "vm",
        "initrd-files",
        str(tmp_path / "files"),
        "--image",
        str(tmp_path / "disk.img"),
        "--tamper-response",
        "try-other-slot",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    # the root hash is read back from the DPS PARTUUIDs; no data partition: no crypttab
    assert doc["cmdline"] == [
        f"roothash={root_hash}",
        "systemd.verity_root_options=restart-on-corruption",
    ]
    # the anti-rollback unit and its script, with or without a data volume
    assert doc["files"] == [
        "cmdline",
        "usr/lib/bastion/antirollback.sh",
        "usr/lib/systemd/system/bastion-antirollback.service",
    ]
    assert doc["verity_response"] == "restart-on-corruption"
    assert (tmp_path / "files/cmdline").read_text().split() == doc["cmdline"]


def test_initrd_files_from_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    part = "6f0c8a5e-3c1b-4b47-9a52-5d7f3a1e2b90"
    code, out, err = _run(
        capsys,
        "vm",
        "initrd-files",
        str(tmp_path / "files"),
        "--root-hash",
        "ab" * 32,
        "--data-partuuid",
        part,
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert "panic=0" in doc["cmdline"]  # no profile flags: the default profile halts
    crypttab = (tmp_path / "files/etc/crypttab").read_text()
    assert crypttab.startswith(f"data PARTUUID={part} none tpm2-device=auto,")
    assert (tmp_path / "files/usr/lib/systemd/system/bastion-tpm-lock.service").is_file()
    unit = tmp_path / "files/usr/lib/systemd/system/bastion-antirollback.service"
    assert "ExecStart=/bin/sh /usr/lib/bastion/antirollback.sh" in unit.read_text()
    script = (tmp_path / "files/usr/lib/bastion/antirollback.sh").read_bytes()
    assert b"bastion_antirollback_check" in script


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "give the disk"),
        (("--root-hash", "zz"), "not hex"),
        (("--root-hash", "abcd"), "64 lower-case hex"),
        (("--root-hash", "ab" * 32, "--data-partuuid", "nope"), "not a UUID"),
    ],
)
def test_initrd_files_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, _, err = _run(capsys, "vm", "initrd-files", str(tmp_path / "out"), *argv)
    assert code == 9 and message in err, err


def test_boot_hands_the_quote_nonce_and_reports_the_quote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[qemu.VmConfig] = []
    text = "BASTION: quote attest /1RDRw==\nBASTION: quote signature ABgA\nBASTION: running\n"

    def fake(image: Path, work: Path, config: qemu.VmConfig, **kw: object) -> qemu.BootResult:
        seen.append(config)
        return _canned(tmp_path, text)

    monkeypatch.setattr(qemu, "boot", fake)
    work = ("--work", str(tmp_path / "w"))
    code, out, err = _run(capsys, "vm", "boot", "d.img", *work, "--quote-nonce", "00AB", "--json")
    assert code == 0, err
    assert seen[0].extra_args == ("-fw_cfg", "name=opt/bastion/nonce,string=00ab")
    assert json.loads(out)["quote"] == {"attest": "/1RDRw==", "signature": "ABgA"}
    for bad in ("abc", "zz", "", "00" * 65):
        code, _, err = _run(capsys, "vm", "boot", "d.img", *work, "--quote-nonce", bad)
        assert code == 9 and "--quote-nonce" in err
