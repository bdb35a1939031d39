"""The initrd's anti-rollback script (build/antirollback.sh, ADR 0028 2026-12-06) run by
a real shell over a fake efivarfs, an ESP folder with a UKI built by bastion, and fake
tpm2_getcap/tpm2_nvread on PATH: refusals first, then what passes."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.conftest import need_tool
from tests.pebuild import make_pe

from bastion.build import device_initrd as di
from bastion.build.uki import UkiInputs, build_uki

GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
STUB = make_pe(((".text", b"\xc3" * 300), (".sbat", b"sbat,1,x\n")), spare_headers=8)
ENTRY = "bastion-1-a.efi"
REAL_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


def uki(osrel: bytes | None, stub: bytes = STUB) -> bytes:
    return build_uki(stub, UkiInputs(linux=make_pe(), osrel=osrel, cmdline=b"quiet\0"))


def osrel(svn: str | None) -> bytes:
    lines = ["ID=bastion", 'VERSION_ID="1"']
    if svn is not None:
        lines.append(f"BASTION_SECURITY_VERSION={svn}")
    return ("\n".join(lines) + "\n").encode()


def efivar(value: str) -> bytes:
    """An efivarfs file: 4 attribute bytes, then the UTF-16LE value with its NUL."""
    return b"\x07\x00\x00\x00" + (value + "\0").encode("utf-16-le")


def fuse_bits(n: int) -> bytes:
    return ((1 << n) - 1).to_bytes(8, "big")


@dataclass
class Device:
    """What the script sees: EFI variables, ESP files, the TPM's fuse index."""

    vars: dict[str, str] = field(default_factory=lambda: {"LoaderEntrySelected": ENTRY})
    esp: dict[str, bytes] = field(default_factory=lambda: {f"EFI/Linux/{ENTRY}": uki(osrel("1"))})
    fuses: bytes | None = field(default_factory=lambda: fuse_bits(1))  # None: index undefined
    getcap_fails: bool = False
    nvread_fails: bool = False


def _fake_tools(bindir: Path, dev: Device, state: Path) -> None:
    bindir.mkdir()
    listed = "- 0x1500016\n" + ("- 0x13BA500\n" if dev.fuses is not None else "")
    (state / "handles").write_text(listed)
    if dev.fuses is not None:
        (state / "bits").write_bytes(dev.fuses)
    getcap = (
        'echo "ERROR: Could not open TPM device" >&2; exit 1'
        if dev.getcap_fails
        else f'[ "$1" = handles-nv-index ] || exit 2; cat "{state}/handles"'
    )
    nvread = (
        'echo "ERROR: Esys_NV_Read(0x14A) - tpm:error(2.0): NV access locked" >&2; exit 1'
        if dev.nvread_fails
        else (
            'out=; idx=; while [ $# -gt 0 ]; do case "$1" in -o) out=$2; shift ;; -s|-C) shift ;;'
            ' -Q) ;; *) idx=$1 ;; esac; shift; done; [ "$idx" = 0x13ba500 ] || exit 3;'
            f' cat "{state}/bits" > "$out"'
        )
    )
    for name, body in (("tpm2_getcap", getcap), ("tpm2_nvread", nvread)):
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)


SHELLS = ["dash", "busybox"]


def run(tmp_path: Path, dev: Device, shell: str = "dash", esp: bool = True) -> tuple[int, str, str]:
    script = tmp_path / "antirollback.sh"
    script.write_bytes(di.antirollback_script())
    efivars = tmp_path / "efivars"
    efivars.mkdir()
    for name, value in dev.vars.items():
        (efivars / f"{name}-{GUID}").write_bytes(efivar(value))
    espdir = tmp_path / "esp"
    for name, content in dev.esp.items():
        (espdir / name).parent.mkdir(parents=True, exist_ok=True)
        (espdir / name).write_bytes(content)
    state = tmp_path / "tpm"
    state.mkdir()
    bindir = tmp_path / "bin"
    _fake_tools(bindir, dev, state)
    argv = [need_tool("busybox"), "sh"] if shell == "busybox" else [need_tool(shell)]
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "BASTION_EFIVARS": str(efivars),
        "TMPDIR": str(tmp_path),
        "BASTION_WAIT": "0",
    }
    if esp:
        env["BASTION_ESP"] = str(espdir)
    out = subprocess.run(
        [*argv, str(script)], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    return out.returncode, out.stdout, out.stderr


def refused(tmp_path: Path, dev: Device, reason: str, shell: str = "dash") -> None:
    code, out, err = run(tmp_path, dev, shell)
    assert code == 1, (out, err)
    assert reason in err, err


_BAD_PE = uki(osrel("1"))


@pytest.mark.parametrize(
    ("dev", "reason"),
    [
        # the rollback itself: an older signed UKI after a commit raised the fuses
        (
            Device(fuses=fuse_bits(2)),
            f"rollback: {ENTRY} has security version 1, below the fuse counter 2",
        ),
        (
            Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel(None))}, fuses=fuse_bits(1)),
            f"rollback: {ENTRY} has security version 0, below the fuse counter 1",
        ),
        (
            Device(fuses=fuse_bits(64)),
            f"rollback: {ENTRY} has security version 1, below the fuse counter 64",
        ),
        # which UKI was booted cannot be told
        (Device(vars={}), "no LoaderBootCountPath or LoaderEntrySelected"),
        (Device(vars={"LoaderEntrySelected": ""}), "no LoaderBootCountPath"),
        (Device(vars={"LoaderBootCountPath": "\\EFI\\Linux\\..\\x.efi"}), "not a plain ESP path"),
        (Device(vars={"LoaderBootCountPath": "\\EFI\\Linux\\a b.efi"}), "not a plain ESP path"),
        (Device(vars={"LoaderEntrySelected": "bastion-a.conf"}), "is not a UKI"),
        # the UKI is not there, not a PE, or its .osrel cannot be read
        (Device(esp={}), "cannot be read"),
        (Device(esp={f"EFI/Linux/{ENTRY}": b""}), "is not a PE file (no MZ)"),
        (Device(esp={f"EFI/Linux/{ENTRY}": b"MZ" + b"\0" * 200}), "no PE signature"),
        (Device(esp={f"EFI/Linux/{ENTRY}": _BAD_PE[:0x100]}), "truncated"),
        (Device(esp={f"EFI/Linux/{ENTRY}": uki(None)}), "has no .osrel section"),
        (
            Device(esp={f"EFI/Linux/{ENTRY}": _BAD_PE.replace(b".osrel\0\0", b".osreL\0\0", 1)}),
            "has no .osrel section",
        ),
        (
            Device(esp={f"EFI/Linux/{ENTRY}": _BAD_PE[: _BAD_PE.index(b"ID=bastion") + 4]}),
            "runs past the end of the file",
        ),
        (
            Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel("1") + b"#" * 4096)}),
            "at most 4096",
        ),
        # a malformed security version
        (Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel("abc"))}), "is not a small integer"),
        (Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel(""))}), "is not a small integer"),
        (Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel("-1"))}), "is not a small integer"),
        (Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel("1234567890"))}), "is not a small integer"),
        (
            Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel("5") + b"BASTION_SECURITY_VERSION=9\n")}),
            "BASTION_SECURITY_VERSION 2 times",
        ),
        # the fuse counter cannot be read
        (Device(getcap_fails=True), "listing the TPM NV indexes: ERROR: Could not open"),
        (Device(nvread_fails=True), "reading the fuse counter: ERROR: Esys_NV_Read"),
        (Device(fuses=b"\xff" * 7), "the fuse counter is 7 bytes, expected 8"),
    ],
)
def test_refusals(tmp_path: Path, dev: Device, reason: str) -> None:
    refused(tmp_path, dev, reason)


@pytest.mark.parametrize("shell", SHELLS)
def test_rollback_refused_in_each_shell(tmp_path: Path, shell: str) -> None:
    refused(
        tmp_path, Device(fuses=fuse_bits(3)), "has security version 1, below the fuse counter 3"
    )


def test_device_mode_needs_the_esp_partuuid(tmp_path: Path) -> None:
    # without BASTION_ESP the script mounts the ESP LoaderDevicePartUUID names
    code, _, err = run(tmp_path, Device(), esp=False)
    assert code == 1 and "no LoaderDevicePartUUID EFI variable naming the ESP" in err
    (tmp_path / "2").mkdir()
    dev = Device(vars={"LoaderEntrySelected": ENTRY, "LoaderDevicePartUUID": "0" * 36})
    code, _, err = run(tmp_path / "2", dev, esp=False)
    assert code == 1 and "no LoaderDevicePartUUID" in err
    part = "6F0C8A5E-3C1B-4B47-9A52-5D7F3A1E2B90"
    dev = Device(vars={"LoaderEntrySelected": ENTRY, "LoaderDevicePartUUID": part})
    (tmp_path / "3").mkdir()
    code, _, err = run(tmp_path / "3", dev, esp=False)
    assert code == 1 and f"the ESP /dev/disk/by-partuuid/{part.lower()} did not appear" in err


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("dev", "line"),
    [
        (Device(fuses=fuse_bits(1)), "svn 1 fuses 1"),
        (Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel("3"))}, fuses=fuse_bits(2)), "svn 3 fuses 2"),
        (
            Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel('"08"'))}, fuses=fuse_bits(8)),
            "svn 8 fuses 8",
        ),
        # no fuse index: the factory state before the first commit (TpmFuseBank reads 0)
        (Device(esp={f"EFI/Linux/{ENTRY}": uki(osrel(None))}, fuses=None), "svn 0 fuses none"),
        (Device(fuses=None), "svn 1 fuses none"),
        (Device(fuses=b"\x00" * 8), "svn 1 fuses 0"),
    ],
)
def test_passes(tmp_path: Path, dev: Device, line: str, shell: str) -> None:
    code, out, err = run(tmp_path, dev, shell)
    assert code == 0, err
    assert out.strip() == f"BASTION: slot {ENTRY} {line}"


def test_a_counted_entry_is_read_by_its_boot_count_path(tmp_path: Path) -> None:
    name = "bastion-2-b+2-1.efi"
    dev = Device(
        vars={
            "LoaderEntrySelected": "bastion-2-b.efi",
            "LoaderBootCountPath": f"\\EFI\\Linux\\{name}",
        },
        esp={f"EFI/Linux/{name}": uki(osrel("2")), f"EFI/Linux/{ENTRY}": uki(osrel("1"))},
        fuses=fuse_bits(2),
    )
    code, out, err = run(tmp_path, dev)
    assert code == 0, err
    assert out.strip() == f"BASTION: slot {name} svn 2 fuses 2"


def test_a_uki_on_systemd_stub(tmp_path: Path) -> None:
    # the real linuxx64.efi.stub (its own section table, alignment and sections)
    if not REAL_STUB.is_file():
        pytest.skip(f"{REAL_STUB} (systemd-boot-efi) is not installed")
    dev = Device(
        esp={f"EFI/Linux/{ENTRY}": uki(osrel("4"), REAL_STUB.read_bytes())}, fuses=fuse_bits(5)
    )
    refused(tmp_path, dev, "has security version 4, below the fuse counter 5")


def test_sourced_it_only_defines_functions(tmp_path: Path) -> None:
    # as vm-init.sh sources it: nothing runs until bastion_antirollback_check
    script = tmp_path / "antirollback.sh"
    script.write_bytes(di.antirollback_script())
    sh = shutil.which("dash") or "sh"
    out = subprocess.run(
        [sh, "-c", f". {script}; echo sourced; command -v bastion_antirollback_check"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["sourced", "bastion_antirollback_check"]


def test_busybox_alone_with_the_multi_call_tpm2(tmp_path: Path) -> None:
    # the QEMU test initrd: busybox applets only on PATH and tpm2-tools' multi-call `tpm2`
    busybox = need_tool("busybox")
    dev = Device(fuses=fuse_bits(2))
    setup = tmp_path / "setup"
    setup.mkdir()
    run(setup, dev)  # lays out the efivars, the ESP, the script and the fake tools
    applets = tmp_path / "applets"
    applets.mkdir()
    for name in ("sh", "od", "dd", "tr", "sed", "grep", "wc", "tail", "mktemp", "rm", "cat"):
        (applets / name).symlink_to(busybox)
    # `tpm2 SUB ARGS` -> the fake tpm2_SUB (run by busybox sh, not on PATH)
    (applets / "tpm2").write_text(
        f'#!{busybox} sh\nsub=$1; shift; exec {busybox} sh "{setup}/bin/tpm2_$sub" "$@"\n'
    )
    (applets / "tpm2").chmod(0o755)
    env = {
        "PATH": str(applets),
        "BASTION_EFIVARS": str(setup / "efivars"),
        "BASTION_ESP": str(setup / "esp"),
        "TMPDIR": str(tmp_path),
    }
    script = setup / "antirollback.sh"
    out = subprocess.run(
        [busybox, "sh", "-c", f". {script}; bastion_antirollback_check {setup / 'esp'}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout.strip() == f"BASTION: slot {ENTRY} svn 1 fuses 2"
    assert (
        out.stderr.strip() == f"rollback: {ENTRY} has security version 1, below the fuse counter 2"
    )
