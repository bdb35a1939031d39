"""The A/B product disk that a UEFI machine, QEMU and the sim all boot (ADR 0027).

``build_efi_image(spec, keys, out)`` makes ``out`` and ``out.sig`` from the same
:class:`~bastion.build.image.ImageSpec` as the container image:

1. slot a's root filesystem (build/fs.py) and its dm-verity hash partition;
2. slot a's UKI (build/uki.py, systemd's stub): ``.cmdline`` = the user's words +
   ``roothash=``, ``.osrel`` with ``VERSION_ID`` and ``BASTION_SECURITY_VERSION``
   (the anti-rollback version the fuses are compared with), ``.linux``, ``.initrd``,
   ``.pcrpkey`` and a ``.pcrsig`` signing PCR 11 for the ``enter-initrd`` phase only
   (so the data key is released in the initrd and never after it), signed for Secure
   Boot with the key set's db key;
3. the ESP (build/disk.py ``build_esp``: FAT by mkfs.vfat + mtools): signed
   systemd-boot at ``\\EFI\\BOOT\\BOOTX64.EFI``, ``loader/loader.conf``, and the UKI as
   the counted Boot Loader Specification entry ``\\EFI\\Linux\\bastion-1-a+3-0.efi``
   (``bastion-GENERATION-SLOT``, as device/update/slots.py names them);
4. the GPT: ``esp``, ``root-a``/``root-a-verity`` (DPS types, PARTUUIDs from the root
   hash), ``root-b``/``root-b-verity`` (same types and sizes, empty, no-auto: filled by
   an update), and ``data`` (empty: the first boot formats it, sealed to the signed PCR
   11 policy);
5. ``out.sig``: the image key's signed statement over size, SHA-256 and metadata
   (``layout: "efi"``), as for the container image.

Every GUID and the FAT volume id derive from the inputs: the same inputs give the same
bytes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.build import disk
from bastion.build.image import (
    ImageSpec,
    _build_root_fs,
    _root_seed,
    check_cmdline,
    check_sizes,
    sign_statement,
)
from bastion.build.uki import UkiInputs, build_uki, with_pcr_signature
from bastion.errors import ConfigError
from bastion.formats import bls, gpt
from bastion.formats.image import (
    IMAGE_PAYLOAD_TYPE,
    PART_DATA,
    PART_ESP,
    SLOTS,
    entry_name,
    mib_align,
    root_part,
    verity_part,
)
from bastion.formats.verity import VerityParams
from bastion.io.runner import CommandRunner
from bastion.storage.disk_image import file_sha256
from bastion.storage.verity_reader import format_region
from bastion.trust.signer import Signer

#: the phase paths each UKI's .pcrsig signs: the data key is released in the initrd only
PCR_PHASES = ("enter-initrd",)
#: boot counting tries of a freshly installed slot
TRIES = disk.DEFAULT_TRIES


@dataclass(frozen=True)
class EfiImageKeys:
    """The signers of an EFI image: the image key (disk.img.sig), the Secure Boot db key
    (Authenticode of systemd-boot and the UKIs), the PCR policy key (``.pcrsig``)."""

    image: Signer
    secure_boot: disk.SecureBootSigner
    pcr: Signer


@dataclass(frozen=True, slots=True)
class BuiltEfiImage:
    """What was built."""

    path: Path
    sha256: bytes
    size: int
    root_hash: bytes
    layout: gpt.GptDisk
    uki: bytes
    loader: bytes
    entry: str
    metadata: dict[str, Any]


def osrel_for(spec: ImageSpec) -> bytes:
    """The UKI's ``.osrel``: the spec's, with bastion's version and security version."""
    lines = [
        ln
        for ln in spec.os_release.decode("utf-8", "replace").splitlines()
        if ln.strip() and not ln.startswith(("VERSION_ID=", "BASTION_SECURITY_VERSION="))
    ]
    if not any(ln.startswith("ID=") for ln in lines):
        lines[:0] = ["ID=bastion", 'NAME="bastion"']
    lines.append(f'VERSION_ID="{spec.version}"')
    lines.append(f"BASTION_SECURITY_VERSION={spec.security_version}")
    return ("\n".join(lines) + "\n").encode()


def make_uki(
    spec: ImageSpec, keys: EfiImageKeys, root_hash: bytes, stub: Path = disk.DEFAULT_STUB
) -> tuple[bytes, str]:
    """The signed UKI of a slot whose root hash is ``root_hash``, and its command line."""
    cmdline = " ".join(w for w in (spec.cmdline.strip(), f"roothash={root_hash.hex()}") if w)
    inputs = UkiInputs(
        linux=spec.kernel,
        osrel=osrel_for(spec),
        cmdline=cmdline.encode() + b"\0",
        initrd=spec.initrd or None,
    )
    inputs = with_pcr_signature(inputs, keys.pcr, PCR_PHASES)
    return keys.secure_boot.sign(build_uki(stub.read_bytes(), inputs)), cmdline


def build_efi_image(
    spec: ImageSpec,
    keys: EfiImageKeys,
    out: Path,
    *,
    loader: Path = disk.DEFAULT_LOADER,
    stub: Path = disk.DEFAULT_STUB,
    runner: CommandRunner | None = None,
) -> BuiltEfiImage:
    """Build ``out`` and ``out.sig`` (see the module docstring); a refusal writes nothing."""
    if spec.security_version < 0:
        raise ConfigError(f"security version must be >= 0, got {spec.security_version}")
    check_cmdline(spec.cmdline)
    check_sizes(spec)
    runner = runner or CommandRunner()
    root_seed = _root_seed(spec)
    seed_h = hashlib.sha256(b"bastion-efi-image\0" + root_seed)
    for part in (spec.kernel, spec.initrd, spec.cmdline.encode(), spec.version.encode()):
        seed_h.update(hashlib.sha256(part).digest())
    seed_h.update(f"{spec.security_version}".encode())
    seed = seed_h.digest()
    with tempfile.TemporaryDirectory(prefix="bastion-efi-image-") as tmp:
        work = Path(tmp)
        root_img = work / "root.img"
        fs_size = _build_root_fs(spec, root_img, root_seed, runner)
        if spec.root_size is not None and fs_size > spec.root_size:
            raise ConfigError(
                f"partition {root_part('a')}: the {spec.fs} root filesystem is {fs_size} "
                f"bytes, larger than the slot size {spec.root_size} bytes"
            )
        root_size = mib_align(max(fs_size, spec.root_size or 0))
        params = VerityParams(
            data_blocks=fs_size // 4096,
            salt=hashlib.sha256(b"bastion-verity-salt\0" + root_seed).digest(),
        )
        hash_img = work / "verity.img"
        result = format_region(
            root_img, hash_img, params, uuid=gpt.derived_uuid("verity-superblock", root_seed)
        )
        root_hash = result.root_hash
        # the other slot's verity partition holds the tree of a root as large as the slot
        verity_size = mib_align(
            4096 + VerityParams(data_blocks=root_size // 4096, salt=params.salt).tree_size()
        )
        uki, cmdline = make_uki(spec, keys, root_hash, stub)
        signed_loader = keys.secure_boot.sign(loader.read_bytes())
        entry = bls.EntryName(entry_name("a"), ".efi", TRIES, 0).to_string()
        esp_files = {
            disk.BOOT_PATH: signed_loader,
            disk.LOADER_CONF: disk.DEFAULT_LOADER_CONF,
            f"{disk.BLS_TYPE2_DIR}/{entry}": uki,
        }
        # room for the other slot's UKI during an update
        esp_img = work / "esp.img"
        esp_len = disk.build_esp(
            esp_img,
            esp_files,
            size=disk.esp_size({**esp_files, "next.efi": uki}),
            volume_id=int.from_bytes(seed[:4], "big"),
            runner=runner,
        )
        empty = work / "empty"
        empty.touch()
        root_uuid, verity_uuid = gpt.verity_partition_uuids(root_hash)
        ro, na = gpt.FLAG_READ_ONLY, gpt.FLAG_NO_AUTO
        d = gpt.derived_uuid
        parts = [
            disk.DiskPart(PART_ESP, gpt.TYPE_ESP, d("esp", seed), esp_img, esp_len),
            disk.DiskPart(root_part("a"), gpt.TYPE_ROOT_X86_64, root_uuid, root_img, root_size, ro),
            disk.DiskPart(
                verity_part("a"), gpt.TYPE_ROOT_VERITY_X86_64, verity_uuid, hash_img,
                verity_size, ro,
            ),
            disk.DiskPart(
                root_part("b"), gpt.TYPE_ROOT_X86_64, d("root-b", seed), empty, root_size,
                ro | na,
            ),
            disk.DiskPart(
                verity_part("b"), gpt.TYPE_ROOT_VERITY_X86_64, d("verity-b", seed), empty,
                verity_size, ro | na,
            ),
            disk.DiskPart(
                PART_DATA, gpt.TYPE_LINUX_DATA, d("data", seed), empty, spec.data_size, na
            ),
        ]  # fmt: skip
        out = Path(out)
        layout = disk.write_disk(out, d("disk", seed), parts)
    digest = file_sha256(out)
    metadata: dict[str, Any] = {
        "type": "disk-image",
        "layout": "efi",
        "sha256": digest.hex(),
        "size": layout.size,
        "version": spec.version,
        "security_version": spec.security_version,
        "root_hash": root_hash.hex(),
        "fs": str(spec.fs),
        "disk_guid": str(layout.disk_guid),
        "slots": list(SLOTS),
        "entry": entry,
        "cmdline": cmdline,
    }
    statement = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    out.with_name(out.name + ".sig").write_bytes(
        sign_statement(IMAGE_PAYLOAD_TYPE, statement, keys.image)
    )
    return BuiltEfiImage(
        out, digest, layout.size, root_hash, layout, uki, signed_loader, entry, metadata
    )
