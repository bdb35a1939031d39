"""UKI on the Debian systemd stub against objdump, objcopy and sbverify."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tests.conftest import need_tool
from tests.interop.test_authenticode_sbsign import STUB, Material, need_stub, sbverify
from tests.pebuild import make_pe

from bastion.build.uki import UkiInputs, build_uki
from bastion.formats.pe import PeImage
from bastion.formats.uki import uki_sections
from bastion.trust.authenticode import sign_pe, verify_pe

pytestmark = pytest.mark.interop

INPUTS = UkiInputs(
    linux=make_pe(((".text", b"\x90" * 5000), (".data", b"k" * 3000))),
    osrel=b'ID=debian\nVERSION_ID="12"\n',
    cmdline=b"console=ttyS0 roothash=00ff\0",
    initrd=bytes(range(256)) * 97,
    pcrpkey=b"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
    pcrsig=b'{"sha256":[{"pcrs":[11]}]}',
)
# (name, objcopy VMA) as a hand-made objcopy UKI places them
OBJCOPY_VMAS = {
    ".osrel": 0x20000,
    ".cmdline": 0x30000,
    ".pcrpkey": 0x40000,
    ".pcrsig": 0x50000,
    ".initrd": 0x3000000,
    ".linux": 0x2000000,
}


def _objdump_sections(path: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (size, vma, flags) from ``objdump -h``."""
    text = subprocess.run(
        [need_tool("objdump"), "-h", str(path)], capture_output=True, text=True, check=True
    ).stdout
    out = {}
    rows = re.findall(
        r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+[0-9a-f]+\s+\S+\n\s+(.+)$",
        text,
        re.M,
    )
    for name, size, vma, flags in rows:
        out[name] = (int(size, 16), int(vma, 16), flags.strip())
    return out


def _dump(path: Path, name: str, folder: Path) -> bytes:
    out = folder / f"dump{name}"
    subprocess.run(
        [
            need_tool("objcopy"),
            "--dump-section",
            f"{name}={out}",
            str(path),
            str(folder / "scratch"),
        ],
        capture_output=True,
        check=True,
    )
    return out.read_bytes()


def test_objdump_sees_the_sections(tmp_path: Path) -> None:
    stub = need_stub()
    uki = tmp_path / "uki.efi"
    uki.write_bytes(build_uki(stub, INPUTS))
    seen = _objdump_sections(uki)
    image = PeImage.parse(uki.read_bytes())
    for name, content in INPUTS.sections().items():
        size, vma, flags = seen[name]
        assert size == len(content), name
        section = image.section(name)
        assert section is not None and vma == section.virtual_address
        assert "CONTENTS" in flags and "READONLY" in flags
        assert ("CODE" if name == ".linux" else "DATA") in flags, (name, flags)
    # the stub's own sections are still there, unchanged
    stub_image = PeImage.parse(stub)
    for name in (".text", ".sbat", ".sdmagic"):
        assert seen[name][0] == next(s.virtual_size for s in stub_image.sections if s.name == name)


def test_contents_equal_an_objcopy_uki(tmp_path: Path) -> None:
    stub = need_stub()
    files = {}
    for name, content in INPUTS.sections().items():
        files[name] = tmp_path / name.lstrip(".")
        files[name].write_bytes(content)
    theirs = tmp_path / "objcopy.efi"
    argv = [need_tool("objcopy")]
    for name, vma in OBJCOPY_VMAS.items():
        argv += [
            "--add-section",
            f"{name}={files[name]}",
            "--change-section-vma",
            f"{name}={vma:#x}",
        ]
    subprocess.run([*argv, str(STUB), str(theirs)], capture_output=True, check=True)
    ours = tmp_path / "bastion.efi"
    ours.write_bytes(build_uki(stub, INPUTS))
    for name in INPUTS.sections():
        assert _dump(ours, name, tmp_path) == _dump(theirs, name, tmp_path), name
    assert uki_sections(ours.read_bytes()) == uki_sections(theirs.read_bytes())


def test_signed_uki_passes_sbverify(tmp_path: Path) -> None:
    m = Material(tmp_path)
    signer = m.signer(m.db_key)
    signed = sign_pe(build_uki(need_stub(), INPUTS), signer, m.db)
    path = m.write("uki.signed.efi", signed)
    assert sbverify(path, m.db_crt) == 0
    assert verify_pe(signed, [m.db]).index == 0
    tampered = bytearray(signed)
    cmdline = PeImage.parse(signed).section(".cmdline")
    assert cmdline is not None
    tampered[cmdline.pointer_to_raw_data] ^= 1
    assert sbverify(m.write("uki.tampered.efi", bytes(tampered)), m.db_crt) != 0
