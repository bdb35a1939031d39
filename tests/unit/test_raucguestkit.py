"""The RAUC guest kit's pure parts (tests/raucguestkit.py): console framing, system.conf,
names. The boot itself is tests/e2e/test_rauc_guest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests import raucguestkit
from tests.raucguestkit import Slot, Step, parse_console, system_conf

from bastion.errors import ConfigError

FRAMED = (
    "RAUCGUEST: disks: slot-rootfs-0\r\n"
    "RAUCGUEST: begin install-good\r\n"
    " 20% Checking bundle\r\n"
    "[   52.2] device-mapper: verity: 7:0: data block 41 is corrupted\r\n"
    "RAUCGUEST: end install-good rc=1\r\n"
    "between steps\n"
    "RAUCGUEST: begin dmesg\n"
    "RAUCGUEST: end dmesg rc=0\n"
    "RAUCGUEST: begin cut-off\n"
    "half a step\n"
)


def test_console_steps_keep_their_lines_and_codes() -> None:
    steps = parse_console(FRAMED)
    assert steps["install-good"] == Step(
        "install-good",
        1,
        " 20% Checking bundle\n[   52.2] device-mapper: verity: 7:0: data block 41 is corrupted",
    )
    assert steps["dmesg"] == Step("dmesg", 0, "")
    # a step the guest never ended is not reported as run
    assert set(steps) == {"install-good", "dmesg"}


@pytest.mark.parametrize(
    ("console", "why"),
    [
        ("RAUCGUEST: begin a\nRAUCGUEST: begin b\n", "begins out of order"),
        (
            "RAUCGUEST: begin a\nRAUCGUEST: end a rc=0\nRAUCGUEST: begin a\n",
            "begins out of order",
        ),
        ("RAUCGUEST: end a rc=0\n", "ends without its begin"),
        ("RAUCGUEST: begin a\nRAUCGUEST: end b rc=0\n", "ends without its begin"),
    ],
)
def test_broken_framing_refused(console: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_console(console)


def test_system_conf_has_noop_keyring_and_raw_slots(tmp_path: Path) -> None:
    slots = [
        Slot("rootfs.0", tmp_path / "a.img", bootname="A"),
        Slot("efi.0", tmp_path / "e.img", parent="rootfs.0"),
    ]
    text = system_conf("bastion-edge", slots).decode()
    assert text.startswith("[system]\ncompatible=bastion-edge\nbootloader=noop\n")
    assert "[keyring]\npath=/etc/rauc/keyring.pem\n" in text
    assert "[slot.rootfs.0]\ndevice=/dev/raucguest/slot-rootfs-0\ntype=raw\nbootname=A\n" in text
    assert "[slot.efi.0]\ndevice=/dev/raucguest/slot-efi-0\ntype=raw\nparent=rootfs.0\n" in text


@pytest.mark.parametrize(
    ("compatible", "slot"),
    [
        ("bastion\nedge", "rootfs.0"),
        ("bastion-edge", "rootfs.0\n[system]"),
    ],
)
def test_system_conf_refuses_line_breaks(tmp_path: Path, compatible: str, slot: str) -> None:
    with pytest.raises(ConfigError):
        system_conf(compatible, [Slot(slot, tmp_path / "a.img", bootname="A")])


@pytest.mark.parametrize("name", ["rootfs.10000000000000", "RootFS.0", "root fs.0"])
def test_slot_names_that_make_no_virtio_serial(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="no virtio serial"):
        _ = Slot(name, tmp_path / "a.img").serial


@pytest.mark.parametrize(
    ("bundles", "steps", "why"),
    [
        ({"good": b""}, [("extract", "good")], "expected info|install"),
        ({"good": b""}, [("install", "bad")], "expected info|install"),
        ({"Good": b""}, [], "lower-case"),
        ({"a/b": b""}, [], "lower-case"),
    ],
)
def test_guest_initrd_refuses_bad_steps_before_building(
    tmp_path: Path, bundles: dict[str, bytes], steps: list[tuple[str, str]], why: str
) -> None:
    with pytest.raises(ConfigError, match=why):
        raucguestkit.guest_initrd(
            "0-none",
            config=b"",
            keyring=b"",
            bundles=bundles,
            steps=steps,
            slots=[Slot("rootfs.0", tmp_path / "a.img")],
        )


def test_qemu_argv_attaches_each_slot_writable_by_serial(tmp_path: Path) -> None:
    slots = [Slot("rootfs.0", tmp_path / "a.img"), Slot("rootfs.1", tmp_path / "b.img")]
    argv = raucguestkit.qemu_argv(
        Path("/k"), tmp_path / "i.gz", tmp_path / "s.log", slots, "rauc.slot=A"
    )
    drives = [argv[i + 1] for i, word in enumerate(argv) if word == "-drive"]
    assert drives == [
        f"if=none,id=slot0,file={tmp_path / 'a.img'},format=raw",
        f"if=none,id=slot1,file={tmp_path / 'b.img'},format=raw",
    ]
    assert "virtio-blk-pci,drive=slot1,serial=slot-rootfs-1" in argv
    assert argv[argv.index("-append") + 1] == "rauc.slot=A"
    with pytest.raises(ConfigError, match="comma"):
        raucguestkit.qemu_argv(
            Path("/k"), tmp_path / "i", tmp_path / "s", [Slot("x.0", tmp_path / "a,b")], ""
        )
