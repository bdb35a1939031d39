"""RAUC 1.8 installs a bastion release bundle on a real kernel (issue 12, ADR 0040).

One boot of the RAUC guest (tests/raucguestkit.py: the host's kernel, Debian's ``rauc``
and its D-Bus service in the initramfs, ``bootloader=noop``, A/B raw slots on virtio
disks, booted from A) runs, in order:

* ``rauc info`` of the good bundle and of one signed by a key outside the keyring;
* ``rauc install`` of the outside-keyring bundle (refused: signature), of the good
  bundle with one payload byte flipped inside its root image (refused: dm-verity reads
  the block as corrupted), of a release that also carries a UKI (refused: RAUC 1.8
  has no update handler for ``.efi``, see ADR 0040), then of the good bundle
  (installed into slot B).

The refusals come first so the bytes left in slot B are the last install's: the host
reads the disk files after the power-off and compares them with the release's image.
Every bundle is made by ``bastion release build`` with the signed release fields, as a
release is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests import raucguestkit
from tests.bundlekit import ReleaseKeys, release_keys
from tests.conftest import need_tool
from tests.e2e.conftest import BOOT_TIMEOUT, LOCK_FILE

from bastion.build import initrd
from bastion.cli.main import main
from bastion.errors import DigestMismatchError, SignatureError
from bastion.trust.bundle import verify_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.interop]

COMPATIBLE = "bastion-edge"
VERSION = "2026.12.1"
SLOT_SIZE = 1 << 20
ROOT_SIZE = 300_000  # 73 payload blocks and a partial one
FLIP_AT = 40 * 4096 + 123  # the byte flipped inside the root image
KEYS = release_keys()
OTHER = release_keys("other")


@dataclass(frozen=True)
class Installed:
    run: raucguestkit.GuestRun
    slots: dict[str, raucguestkit.Slot]
    before: dict[str, bytes]  # each slot disk before the boot
    root: bytes
    flipped_block: int  # the payload block (4096 bytes) holding the flipped byte


def _need_guest_tools() -> Path:
    for tool in ("qemu-system-x86_64", "rauc", "dbus-daemon", "mksquashfs", "depmod", "ldd"):
        need_tool(tool)
    if not Path(initrd.DEFAULT_BUSYBOX).is_file():
        need_tool(initrd.DEFAULT_BUSYBOX, "busybox-static")
    kernels = initrd.host_kernels()
    if not kernels:
        need_tool("/boot/vmlinuz-*", "linux-image-amd64")
    return kernels[-1]


def _release(folder: Path, keys: ReleaseKeys, root: bytes, uki: bytes | None = None) -> Path:
    """``bastion release build`` of the root image (and a UKI), signed by ``keys``."""
    folder.mkdir(parents=True)
    _, cert, key = keys.write(folder)
    (folder / "root.img").write_bytes(root)
    argv = ["release", "build", "--root", str(folder / "root.img")]
    if uki is not None:
        (folder / "uki.efi").write_bytes(uki)
        argv += ["--uki", str(folder / "uki.efi")]
    out = folder / "release.raucb"
    code = main(
        [
            *argv, "--compatible", COMPATIBLE, "--version", VERSION, "--product", COMPATIBLE,
            "--svn", "3", "--hardware", "board-x", "--key", f"file:{key}",
            "--cert", str(cert), "-o", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    return out


def _flip(good: Path, out: Path) -> int:
    """Write to ``out`` a copy of ``good`` with the byte FLIP_AT of its root image
    inverted (signature and tree untouched); return the payload block it is in."""
    with good.open("rb") as f:
        layout = dict(dict(verify_bundle(f, [KEYS.ca]).manifest.meta)["bastion-layout"])
    at = int(layout["offset-rootfs"]) + FLIP_AT
    data = bytearray(good.read_bytes())
    data[at] ^= 0x01
    out.write_bytes(bytes(data))
    return at // 4096


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    kernel = _need_guest_tools()
    folder = tmp_path_factory.mktemp("rauc-guest")
    root = os.urandom(ROOT_SIZE)
    uki = b"MZ" + os.urandom(40_000)
    good = _release(folder / "good", KEYS, root)
    # another root image, so slot B's final bytes can only be the last install's
    with_uki = _release(folder / "with-uki", KEYS, os.urandom(ROOT_SIZE), uki)
    other = _release(folder / "other", OTHER, root)
    flipped = folder / "flipped.raucb"
    block = _flip(good, flipped)
    # what bastion says of each, so the guest's refusals are for the same reasons
    with good.open("rb") as f:
        assert verify_bundle(f, [KEYS.ca]).manifest.version == VERSION
    with flipped.open("rb") as f, pytest.raises(DigestMismatchError) as bad:
        verify_bundle(f, [KEYS.ca])
    assert (bad.value.area, bad.value.block) == ("data", block)
    with other.open("rb") as f, pytest.raises(SignatureError):
        verify_bundle(f, [KEYS.ca])

    disks = folder / "disks"
    disks.mkdir()
    slots = {
        "rootfs.0": raucguestkit.Slot("rootfs.0", disks / "rootfs-a.img", bootname="A"),
        "rootfs.1": raucguestkit.Slot("rootfs.1", disks / "rootfs-b.img", bootname="B"),
        "efi.0": raucguestkit.Slot("efi.0", disks / "efi-a.img", parent="rootfs.0"),
        "efi.1": raucguestkit.Slot("efi.1", disks / "efi-b.img", parent="rootfs.1"),
    }
    before = {}
    for name, slot in slots.items():
        before[name] = os.urandom(SLOT_SIZE)  # what must stay where nothing was installed
        slot.disk.write_bytes(before[name])
    ca, _, _ = KEYS.write(folder)
    image = raucguestkit.guest_initrd(
        initrd.host_kernel_release(kernel),
        config=raucguestkit.system_conf(COMPATIBLE, list(slots.values())),
        keyring=ca.read_bytes(),
        bundles={
            "good": good.read_bytes(),
            "flipped": flipped.read_bytes(),
            "other": other.read_bytes(),
            "with-uki": with_uki.read_bytes(),
        },
        steps=[
            ("info", "good"),
            ("info", "other"),
            ("install", "other"),
            ("install", "flipped"),
            ("install", "with-uki"),
            ("install", "good"),
        ],
        slots=list(slots.values()),
    )
    run = raucguestkit.boot_guest(
        kernel,
        image,
        list(slots.values()),
        folder / "run",
        booted="A",
        lock_file=LOCK_FILE,
        timeout=BOOT_TIMEOUT * 2,
    )
    return Installed(run, slots, before, root, block)


def test_guest_ran_every_step(installed: Installed) -> None:
    run = installed.run
    assert run.done, (run.failed, run.panic, run.console[-4000:])
    assert run.failed is None and run.panic is None
    status = run.step("status")
    assert status.rc == 0, status.output
    # RAUC took A as booted (rauc.slot=A matches its bootname), so it installs into B
    assert re.search(r"Booted from: rootfs\.0 \(A\)", status.output), status.output


def test_rauc_info_verifies_the_bastion_release(installed: Installed) -> None:
    info = installed.run.step("info-good")
    assert info.rc == 0, info.output
    assert "Verified inline signature by 'CN = bastion release signer'" in info.output
    assert f"Compatible: \t'{COMPATIBLE}'" in info.output
    assert f"Version:    \t'{VERSION}'" in info.output
    assert "Bundle Format: \tverity" in info.output


def test_rauc_install_writes_the_release_into_slot_b(installed: Installed) -> None:
    step = installed.run.step("install-good")
    assert step.rc == 0, step.output
    assert "Installing `/bundles/good.raucb` succeeded" in step.output
    # RAUC read the image through the kernel's dm-verity, with the signed root hash
    assert "Configured dm-verity device" in installed.run.step("service-log").output
    root_b = installed.slots["rootfs.1"].disk.read_bytes()
    size = len(installed.root)
    assert root_b[:size] == installed.root
    # a raw slot gets the image bytes and nothing else
    assert root_b[size:] == installed.before["rootfs.1"][size:]
    # B's efi slot: the release carries no UKI, and the one with a UKI was refused
    # before anything was written to it (test_release_with_a_uki_needs_rauc_1_15)
    assert installed.slots["efi.1"].disk.read_bytes() == installed.before["efi.1"]
    # the booted slot group is never touched
    for name in ("rootfs.0", "efi.0"):
        assert installed.slots[name].disk.read_bytes() == installed.before[name], name


def test_release_with_a_uki_needs_rauc_1_15(installed: Installed) -> None:
    """RAUC before 1.15 picks an update handler by the image's file-name suffix and has
    none for ``.efi`` (1.15 added ``type=`` to the manifest's image groups, which 1.8
    refuses as an unknown key): it installs the root image, then refuses the UKI.
    ADR 0040 records this; a RAUC 1.8 device installs bastion releases built without
    ``--uki``."""
    step = installed.run.step("install-with-uki")
    assert step.rc != 0, step.output
    assert "Unsupported image /mnt/rauc/bundle/uki.efi for slot type raw" in step.output


def test_flipped_payload_byte_refused_by_dm_verity(installed: Installed) -> None:
    step = installed.run.step("install-flipped")
    assert step.rc != 0, step.output
    assert "Installing `/bundles/flipped.raucb` failed" in step.output
    assert "Failed updating slot rootfs.1" in step.output
    assert "Input/output error" in step.output
    # the kernel, not RAUC's user space, found the bad block while RAUC copied the image
    dmesg = installed.run.step("dmesg").output
    corrupted = re.findall(r"device-mapper: verity: \S+: data block (\d+) is corrupted", dmesg)
    assert corrupted, dmesg
    # the block bastion's verifier names (the bundle's payload is the verity data)
    assert {int(n) for n in corrupted} == {installed.flipped_block}, dmesg


def test_bundle_signed_outside_the_keyring_refused(installed: Installed) -> None:
    for name in ("info-other", "install-other"):
        step = installed.run.step(name)
        assert step.rc != 0, (name, step.output)
    for name in ("info-other", "install-other"):
        output = installed.run.step(name).output
        assert "signature verification failed" in output, output
        assert "unable to get local issuer certificate" in output, output
    # refused before any slot was chosen: nothing of it was written anywhere
    assert "Determining target install group" not in installed.run.step("install-other").output
