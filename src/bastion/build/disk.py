"""A bootable disk for a UEFI machine (a VM, or a real board): ESP + verity root, one slot.

``build_vm_image`` makes, from a kernel, an initrd and a root folder (or a ready root
filesystem image):

1. the root filesystem (erofs, :mod:`bastion.build.fs`) and its dm-verity hash
   partition (:func:`bastion.storage.verity_reader.format_region`: superblock + tree);
2. the kernel command line ``roothash=<hex>`` (+ console and the caller's words) and the
   UKI (:mod:`bastion.build.uki`, Debian's systemd stub), signed for Secure Boot with
   :func:`bastion.trust.authenticode.sign_pe` when a db key is given;
3. the ESP, a FAT filesystem made by ``mkfs.vfat --invariant`` and filled by one
   ``mcopy -s -m`` (mtools) from a staged tree with fixed timestamps. At the
   removable-media path ``\\EFI\\BOOT\\BOOTX64.EFI`` (booted by any UEFI firmware
   without boot entries) it holds systemd-boot, signed like the UKI, with a
   ``loader.conf`` without menu or editor; the UKI is a Boot Loader Specification
   type #2 entry ``\\EFI\\Linux\\bastion+3-0.efi`` carrying a boot counter
   (:mod:`bastion.formats.bls`). With ``loader=None`` the UKI itself is BOOTX64.EFI;
4. the GPT (:mod:`bastion.formats.gpt`): ESP, root and root-verity with the Discoverable
   Partitions Specification type GUIDs for x86-64, and the root and verity PARTUUIDs
   taken from the root hash (first and last 128 bits), so the initrd finds both from
   ``roothash=`` alone. Every other GUID and the FAT volume id are derived from the
   inputs: the same inputs give the same bytes;
5. optionally (``data_volume``) a fourth partition, type "Linux data", holding a LUKS2
   image from :mod:`bastion.build.datavol`; with ``pcr_signer`` the UKI carries
   ``.pcrpkey`` and a ``.pcrsig`` for its own sections, which the guest's token unlock needs.

This is not the A/B product image of :mod:`bastion.build.image`; it is the smallest
disk a stock UEFI firmware boots into bastion's verity root, for the ``vm`` platform.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from bastion.build.fs import FsType, build_filesystem
from bastion.build.uki import UkiInputs, build_uki, with_pcr_signature
from bastion.errors import ConfigError
from bastion.formats import bls, gpt
from bastion.formats.verity import VerityParams
from bastion.io.runner import CommandRunner
from bastion.storage.verity_reader import format_region
from bastion.trust.authenticode import sign_pe
from bastion.trust.signer import Signer

MiB = 1024 * 1024
BLOCK = 4096
#: the removable-media boot path of x86-64 UEFI
BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"
#: where systemd-boot finds Boot Loader Specification type #2 entries (UKIs)
BLS_TYPE2_DIR = "EFI/Linux"
LOADER_CONF = "loader/loader.conf"
#: no menu, no command line editing (a UKI's command line is signed anyway)
DEFAULT_LOADER_CONF = b"timeout 0\neditor no\nconsole-mode keep\n"
DEFAULT_LOADER = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
DEFAULT_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
DEFAULT_TRIES = 3
ESP_MIN_SIZE = 32 * MiB
DEFAULT_CONSOLE = ("console=ttyS0", "panic=-1", "loglevel=4")
PART_ESP = "esp"
PART_ROOT = "root-x86-64"
PART_VERITY = "root-x86-64-verity"
PART_DATA = "data"
DEFAULT_OSREL = b'NAME="bastion"\nID=bastion\nPRETTY_NAME="bastion VM image"\nVERSION_ID=1\n'
_EPOCH = 315532800  # 1980-01-01, the earliest FAT timestamp


def _mib(size: int) -> int:
    return (size + MiB - 1) // MiB * MiB


@dataclass(frozen=True, slots=True)
class SecureBootSigner:
    """A Secure Boot db key and its certificate, to sign what the firmware loads."""

    signer: Signer
    certificate: x509.Certificate
    chain: Sequence[x509.Certificate] = ()

    def sign(self, image: bytes) -> bytes:
        return sign_pe(image, self.signer, self.certificate, chain=self.chain)


def esp_size(files: Mapping[str, bytes]) -> int:
    """A FAT size for ``files``: 25% + 4 MiB headroom, at least 32 MiB, MiB-aligned."""
    used = sum(len(data) + 4096 for data in files.values())
    return max(ESP_MIN_SIZE, _mib(used * 5 // 4 + 4 * MiB))


def build_esp(
    out: Path,
    files: Mapping[str, bytes],
    *,
    size: int | None = None,
    volume_id: int = 0x0B45710,
    runner: CommandRunner | None = None,
) -> int:
    """Make the FAT image ``out`` holding ``files`` (paths like ``EFI/BOOT/BOOTX64.EFI``)."""
    runner = runner or CommandRunner()
    size = size or esp_size(files)
    if size % MiB:
        raise ConfigError(f"ESP size {size} is not a whole number of MiB")
    for name in files:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ConfigError(f"ESP path {name!r} must be relative without '.' or '..'")
    out.unlink(missing_ok=True)
    runner.run(
        [
            "mkfs.vfat",
            "--invariant",
            "-C",
            "-n",
            "ESP",
            "-i",
            f"{volume_id & 0xFFFFFFFF:08X}",
            str(out),
            str(size // 1024),
        ]
    )
    env = {"MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    with tempfile.TemporaryDirectory(prefix="bastion-esp-") as tmp:
        stage = Path(tmp)
        for name, data in files.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_bytes(data)
        # one timestamp for every file and folder: mcopy -m keeps it, so the same
        # files give the same FAT image (mmd would stamp folders with the clock)
        for root, dirs, names in os.walk(stage):
            for entry in dirs + names:
                os.utime(Path(root) / entry, (_EPOCH, _EPOCH))
        tops = sorted({name.split("/")[0] for name in files})
        runner.run(
            ["mcopy", "-s", "-m", "-o", "-i", str(out), *(str(stage / t) for t in tops), "::/"],
            env=env,
        )
    return size


@dataclass(frozen=True, slots=True)
class DiskPart:
    """One partition to write: its GPT entry fields and the file holding its content."""

    name: str
    type_guid: uuid.UUID
    part_guid: uuid.UUID
    content: Path
    size: int
    attributes: int = 0


def write_disk(out: Path, disk_guid: uuid.UUID, parts: Sequence[DiskPart]) -> gpt.GptDisk:
    """Write a GPT disk to ``out``: 1 MiB-aligned partitions in order, each with its content."""
    lba = MiB // gpt.SECTOR
    entries = []
    for part in parts:
        size = _mib(max(part.size, part.content.stat().st_size))
        sectors = size // gpt.SECTOR
        entries.append(
            gpt.Partition(
                part.type_guid,
                part.part_guid,
                lba,
                lba + sectors - 1,
                part.attributes,
                part.name,
            )
        )
        lba += sectors
    total = lba + MiB // gpt.SECTOR
    layout = gpt.GptDisk(total, disk_guid, tuple(entries))
    tmp_out = out.with_name(out.name + ".tmp")
    fd = os.open(tmp_out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, layout.size)
        os.pwrite(fd, layout.head_bytes(), 0)
        os.pwrite(fd, layout.tail_bytes(), layout.tail_offset)
        for part, entry in zip(parts, entries, strict=True):
            offset = entry.offset
            with open(part.content, "rb") as src:
                while chunk := src.read(4 * MiB):
                    offset += os.pwrite(fd, chunk, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp_out, out)
    return layout


@dataclass(frozen=True, slots=True)
class VmImageSpec:
    """Inputs of a VM disk: a kernel, an initrd and a root (a folder or an image)."""

    kernel: bytes
    initrd: bytes
    root_dir: Path | None = None
    #: a ready erofs image (the test initrd mounts erofs only)
    root_image: Path | None = None
    cmdline: Sequence[str] = DEFAULT_CONSOLE
    osrel: bytes = DEFAULT_OSREL
    stub: Path = DEFAULT_STUB
    #: systemd-boot as the removable-media loader, the UKI a BLS type #2 entry;
    #: None puts the UKI itself at \\EFI\\BOOT\\BOOTX64.EFI
    loader: Path | None = DEFAULT_LOADER
    entry_name: str = "bastion"
    #: boot counting tries for the entry (None: not assessed)
    tries: int | None = DEFAULT_TRIES
    loader_conf: bytes = DEFAULT_LOADER_CONF
    extra_esp_files: Mapping[str, bytes] = field(default_factory=dict)
    #: signs the predicted PCR 11 into the UKI's ``.pcrsig`` (its key is ``.pcrpkey``)
    pcr_signer: Signer | None = None
    #: a ready ``.pcrpkey``/``.pcrsig`` pair (signed elsewhere); not with ``pcr_signer``
    pcrpkey: bytes | None = None
    pcrsig: bytes | None = None
    #: a LUKS2 image (:mod:`bastion.build.datavol`) for the data partition
    data_volume: Path | None = None

    def entry(self) -> bls.EntryName:
        """The UKI's BLS entry file name (``NAME+TRIES-0.efi``)."""
        return bls.EntryName(self.entry_name, ".efi", self.tries, None if self.tries is None else 0)

    def uki_path(self) -> str:
        """Where the UKI goes in the ESP."""
        if self.loader is None:
            return BOOT_PATH
        return f"{BLS_TYPE2_DIR}/{self.entry().to_string()}"


@dataclass(frozen=True, slots=True)
class VmImage:
    """What :func:`build_vm_image` wrote."""

    path: Path
    root_hash: bytes
    cmdline: str
    uki: bytes
    layout: gpt.GptDisk
    signed: bool
    uki_path: str = BOOT_PATH
    #: the (signed) systemd-boot written as BOOTX64.EFI; None when the UKI is booted directly
    loader: bytes | None = None

    def partition(self, name: str) -> gpt.Partition:
        return self.layout.find(name)


def _seed(spec: VmImageSpec, root: Path) -> bytes:
    h = hashlib.sha256(b"bastion-vm-image\0")
    for part in (spec.kernel, spec.initrd, spec.osrel, " ".join(spec.cmdline).encode()):
        h.update(hashlib.sha256(part).digest())
    with open(root, "rb") as src:
        while chunk := src.read(4 * MiB):
            h.update(chunk)
    return h.digest()


def _root_fs(spec: VmImageSpec, out: Path, runner: CommandRunner) -> int:
    if (spec.root_dir is None) == (spec.root_image is None):
        raise ConfigError("give exactly one of a root folder or a root image")
    if spec.root_dir is not None:
        fs_uuid = gpt.derived_uuid("vm-root-fs", str(spec.root_dir.resolve()).encode())
        return build_filesystem(spec.root_dir, out, FsType.EROFS, fs_uuid=fs_uuid, runner=runner)
    image = spec.root_image
    if image is None:  # pragma: no cover - excluded by the check above
        raise ConfigError("no root image")
    size = image.stat().st_size
    if size == 0:
        raise ConfigError(f"root image {image} is empty")
    with open(image, "rb") as src, open(out, "wb") as dst:
        while chunk := src.read(4 * MiB):
            dst.write(chunk)
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        dst.truncate(padded)
    return padded


def build_vm_image(
    spec: VmImageSpec,
    out: Path,
    *,
    secure_boot: SecureBootSigner | None = None,
    runner: CommandRunner | None = None,
) -> VmImage:
    """Build the disk ``out`` (see the module docstring)."""
    runner = runner or CommandRunner()
    for word in spec.cmdline:
        if not word or any(c.isspace() for c in word) or word.startswith("roothash="):
            raise ConfigError(f"kernel command line word {word!r} (roothash= is set by bastion)")
    with tempfile.TemporaryDirectory(prefix="bastion-vm-image-") as tmp:
        work = Path(tmp)
        root_img = work / "root.img"
        fs_size = _root_fs(spec, root_img, runner)
        seed = _seed(spec, root_img)
        params = VerityParams(
            data_blocks=fs_size // BLOCK,
            salt=hashlib.sha256(b"bastion-vm-verity-salt\0" + seed).digest(),
        )
        hash_img = work / "verity.img"
        result = format_region(
            root_img, hash_img, params, uuid=gpt.derived_uuid("vm-verity-superblock", seed)
        )
        root_hash = result.root_hash
        cmdline = " ".join([*spec.cmdline, f"roothash={root_hash.hex()}"])
        inputs = UkiInputs(
            linux=spec.kernel,
            osrel=spec.osrel,
            cmdline=cmdline.encode() + b"\0",
            initrd=spec.initrd,
            pcrpkey=spec.pcrpkey,
            pcrsig=spec.pcrsig,
        )
        if spec.pcr_signer is not None:
            if spec.pcrsig is not None or spec.pcrpkey is not None:
                raise ConfigError("give a PCR signing key or a ready .pcrpkey/.pcrsig, not both")
            inputs = with_pcr_signature(inputs, spec.pcr_signer)
        uki = build_uki(spec.stub.read_bytes(), inputs)
        if secure_boot is not None:
            uki = secure_boot.sign(uki)
        esp_files = {spec.uki_path(): uki}
        loader: bytes | None = None
        if spec.loader is not None:
            loader = spec.loader.read_bytes()
            if secure_boot is not None:
                loader = secure_boot.sign(loader)
            esp_files[BOOT_PATH] = loader
            esp_files[LOADER_CONF] = spec.loader_conf
        esp_files.update(spec.extra_esp_files)
        esp_img = work / "esp.img"
        esp_len = build_esp(
            esp_img, esp_files, volume_id=int.from_bytes(seed[:4], "big"), runner=runner
        )
        root_uuid, verity_uuid = gpt.verity_partition_uuids(root_hash)
        read_only = gpt.FLAG_READ_ONLY
        parts = [
            DiskPart(PART_ESP, gpt.TYPE_ESP, gpt.derived_uuid("vm-esp", seed), esp_img, esp_len),
            DiskPart(PART_ROOT, gpt.TYPE_ROOT_X86_64, root_uuid, root_img, fs_size, read_only),
            DiskPart(
                PART_VERITY,
                gpt.TYPE_ROOT_VERITY_X86_64,
                verity_uuid,
                hash_img,
                result.hash_end,
                read_only,
            ),
        ]
        if spec.data_volume is not None:
            parts.append(
                DiskPart(
                    PART_DATA,
                    gpt.TYPE_LINUX_DATA,
                    gpt.derived_uuid("vm-data", seed),
                    spec.data_volume,
                    spec.data_volume.stat().st_size,
                )
            )
        layout = write_disk(Path(out), gpt.derived_uuid("vm-disk", seed), parts)
    return VmImage(
        Path(out),
        root_hash,
        cmdline,
        uki,
        layout,
        secure_boot is not None,
        spec.uki_path(),
        loader,
    )
