"""Helpers for tests/e2e/test_update_vm.py: one A/B device whose disk QEMU boots and whose
update state the host's sim platform keeps (docs/updates.md, "Proved in QEMU").

The device is a ``sim`` device folder (device/platform/sim.py) with a managed swtpm
(``DEV/swtpm``) and its fuses in that TPM's NV bits indexes (``"fuses": "tpm"``). The
same ``DEV/disk.img`` and the same swtpm state are what QEMU boots (writable disk: the
boot counter renames systemd-boot makes on the ESP stay). Between boots the host runs
bastion's device code on that folder, as the device's agent would after a boot:

* :func:`qemu_boot` powers the VM on and off once, then records the entry systemd-boot
  booted (its ``LoaderEntrySelected``, read by the guest from efivarfs) as
  ``update-booted.json``, which device/update reads;
* :class:`GuestHealth` answers the health checks from the guest's serial console: the
  test initrd (build/vm-init.sh) runs each check in the root's ``health.d`` and prints
  its exit status; the check itself ran in the guest, the decision (commit or fail) is
  device/update/commit.py's on the host;
* :func:`device_tpm` is the sim platform with the device's TPM powered on; the tests
  pass that TPM to device/update (``tpm=``), whose fuses are its NV bank, as an agent
  passes the TPM it holds open.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from tests.bundlekit import ReleaseKeys
from tests.e2e.conftest import BootVm, Parts, make_root

from bastion.build.bundle import BundleImage, build_bundle
from bastion.build.efi_image import BuiltEfiImage, EfiImageKeys, build_efi_image
from bastion.build.fs import FsType
from bastion.build.image import ImageSpec
from bastion.device.platform.sim import SimPlatform
from bastion.device.update import health, slots
from bastion.formats import bls
from bastion.formats.image import root_part, verity_part
from bastion.formats.verity import VeritySuperblock
from bastion.io.qemu import BootResult
from bastion.limits import MiB
from bastion.tpm.base import Tpm
from bastion.trust.signer import SoftwareSigner

PRODUCT = "bastion-vm"
HARDWARE = "qemu-q35"
HEALTH_DIR = "/usr/libexec/bastion/health.d"
#: the release's own check (passes) and an application self-test (fails, says why)
BOOT_OK = f"{HEALTH_DIR}/10-boot-ok"
APP_SELFTEST = f"{HEALTH_DIR}/20-app-selftest"
APP_FAILURE = "app selftest: database schema 7 expected, found 6"
#: a longer limit than conftest's: four boots in a row on a loaded 2-core machine
BOOT_TIMEOUT = 300.0
ROOT_SIZE = 4 * MiB
DATA_SIZE = 24 * MiB
_HEALTH_LINE = re.compile(r"^BASTION: health (\S+) exit (\d{1,3}): (.*?)\r?$", re.M)


def image_spec(parts: Parts, root: Path, version: str, svn: int) -> ImageSpec:
    return ImageSpec(
        rootfs=root,
        kernel=parts.kernel,
        initrd=parts.initrd,
        cmdline="console=ttyS0 panic=-1",
        version=version,
        security_version=svn,
        fs=FsType.EROFS,  # what the test initrd mounts
        data_size=DATA_SIZE,
        root_size=ROOT_SIZE,  # both versions: slot b holds what slot a held
    )


def efi_keys(parts: Parts) -> EfiImageKeys:
    return EfiImageKeys(
        image=SoftwareSigner(ed25519.Ed25519PrivateKey.generate()),
        secure_boot=parts.secure_boot,
        pcr=parts.pcr_signer,
    )


def root_with_health(folder: Path) -> Path:
    """A root (conftest.make_root) carrying two health checks for the initrd to run."""
    root = make_root(folder)
    checks = root / HEALTH_DIR.lstrip("/")
    checks.mkdir(parents=True)
    (checks / "10-boot-ok").write_text(
        '[ -r "$ROOT/etc/hello.txt" ] || { echo "no /etc/hello.txt"; exit 1; }\necho "boot ok"\n'
    )
    (checks / "20-app-selftest").write_text(f'echo "{APP_FAILURE}"\nexit 3\n')
    for check in checks.iterdir():
        check.chmod(0o755)
    return root


@dataclass(frozen=True)
class Release:
    """A release bundle made from slot a of a built image (what ``release build`` takes:
    the root filesystem, its verity hash image, the signed UKI)."""

    version: str
    svn: int
    bundle: Path
    uki: bytes
    root_hash: bytes


def release_from_image(
    built: BuiltEfiImage, folder: Path, keys: ReleaseKeys, health_spec: dict[str, Any]
) -> Release:
    folder.mkdir(parents=True, exist_ok=True)
    layout = built.layout
    with open(built.path, "rb") as disk:

        def read(name: str, size: int) -> bytes:
            disk.seek(layout.find(name).offset)
            return disk.read(size)

        superblock = VeritySuperblock.parse(read(verity_part("a"), 512))
        params = superblock.params
        rootfs = read(root_part("a"), params.data_blocks * params.data_block_size)
        tree = read(verity_part("a"), 4096 + params.tree_size())
    (folder / "rootfs.img").write_bytes(rootfs)
    (folder / "verity.img").write_bytes(tree)
    (folder / "uki.efi").write_bytes(built.uki)
    version = str(built.metadata["version"])
    svn = int(built.metadata["security_version"])
    meta = (("product", PRODUCT), ("svn", str(svn)), ("hardware", HARDWARE))
    groups = [
        ("bastion", meta),
        ("bastion-health", (("spec", json.dumps(health_spec, separators=(",", ":"))),)),
    ]
    out = folder / f"release-{version}.raucb"
    build_bundle(
        out,
        [
            BundleImage("rootfs", folder / "rootfs.img", "rootfs.img"),
            BundleImage("verity", folder / "verity.img", "verity.img"),
            BundleImage("efi", folder / "uki.efi", "uki.efi"),
        ],
        compatible=PRODUCT,
        version=version,
        signer=keys.signer(),
        certificate=keys.cert,
        meta=groups,
    )
    return Release(version, svn, out, built.uki, built.root_hash)


def build_image(parts: Parts, folder: Path, root: Path, version: str, svn: int) -> BuiltEfiImage:
    folder.mkdir(parents=True, exist_ok=True)
    spec = image_spec(parts, root, version, svn)
    return build_efi_image(spec, efi_keys(parts), folder / "disk.img")


# --- the device between boots --------------------------------------------------------------


@contextlib.contextmanager
def device_tpm(dev: Path) -> Iterator[tuple[SimPlatform, Tpm]]:
    """The device folder as a platform with its swtpm running (fuses in its NV)."""
    plat = SimPlatform(dev)
    with plat.power_on() as tpm:
        yield plat, tpm


def fuse_counter(dev: Path) -> int:
    with device_tpm(dev) as (plat, tpm):
        return plat.fuses(tpm).counter()


def entry_files(dev: Path) -> list[str]:
    """``EFI/Linux`` of the ESP inside the disk image, as mtools reads it back."""
    return SimPlatform(dev).esp().list(slots.ENTRY_DIR)


def qemu_boot(dev: Path, work: Path, boot_vm: BootVm, sb_vars: bytes) -> BootResult:
    """Power the device on in QEMU (its disk writable, its swtpm state), then record the
    entry systemd-boot booted, as the device reads ``LoaderEntrySelected`` after boot."""
    state = dev / "swtpm"
    for volatile in state.glob("*volatile*"):  # powered off: the TPM starts afresh
        volatile.unlink()
    result = boot_vm(
        dev / "disk.img", work, sb_vars, tpm_state=state, writable=True, timeout=BOOT_TIMEOUT
    )
    selected = result.report.efivars.get("LoaderEntrySelected")
    if selected is not None:
        name = bls.parse(selected)
        if re.fullmatch(r"bastion-[0-9]+-[ab]", name.name):
            shown = slots.Booted(name.name[-1], name.name, name.counting)
            SimPlatform(dev).store(slots.BOOTED, json.dumps(asdict(shown)).encode())
    return result


def fork_device(dev: Path, into: Path) -> Path:
    """A copy of the whole device (disk, swtpm state, records) to follow another path."""
    shutil.copytree(dev, into)
    return into


@dataclass(frozen=True)
class GuestHealth:
    """A health.Probe over the guest's serial console: a ``command`` check passes when
    the guest ran it and it exited 0; anything the console does not show fails."""

    serial: str

    def __call__(self, check: health.Check) -> str | None:
        if check.kind != "command":
            return f"{check.kind} checks are not observed in the guest"
        runs = {
            m.group(1): (int(m.group(2)), m.group(3)) for m in _HEALTH_LINE.finditer(self.serial)
        }
        ran = runs.get(check.target[0])
        if ran is None:
            return "did not run in the guest"
        code, last = ran
        return None if code == 0 else f"exited {code} in the guest: {last}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
