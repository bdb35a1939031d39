"""Build signed A/B disk images: GPT with DPS partitions, verity root, signed boot chain.

``build_image`` turns a root tree, a kernel, an initrd and a command line into
``disk.img`` + ``disk.img.sig``:

1. the root filesystem (build/fs.py), its dm-verity hash partition (storage/verity_reader)
   and the DPS verity signature partition (PKCS#7 over the hex root hash, made with the
   verity key and certificate);
2. the boot unit (kernel, initrd, command line with ``roothash=``, os-release, security
   version, the module and verity certificates, signed modules) and its signed statement
   (boot key); the bootloader stage carrying the boot public key and its signed statement
   (platform root key); all four in the boot partition archive;
3. the GPT (formats/gpt.py): partition UUIDs of root and verity from the root hash, all
   other GUIDs derived from the inputs, so the same inputs give the same bytes;
4. ``disk.img.sig``: a signed envelope (image key) over the image's SHA-256 and metadata.

Orchestration only: the formats are pure modules, signatures go through ``Signer``s.
This module only builds: the layout is formats/image.py, reading an image file
storage/disk_image.py, verifying it and predicting its PCRs trust/image.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bastion.build.fs import FsType, build_filesystem
from bastion.errors import ConfigError, FormatError, SignatureError
from bastion.formats import bootctl, gpt, modsig
from bastion.formats import bootunit as bu
from bastion.formats.image import (
    ARCHIVE_ORDER,
    IMAGE_PAYLOAD_TYPE,
    LOADER_VERSION,
    PART_BOOT,
    PART_BOOTCTL,
    PART_DATA,
    RESERVED_CMDLINE,
    RESERVED_CMDLINE_PREFIXES,
    VERITY_BLOCK,
    VERITY_BLOCKS_PARAM,
    mib_align,
    plan_layout,
    root_part,
    sig_part,
    verity_part,
)
from bastion.formats.verity import VerityParams
from bastion.io.runner import CommandRunner
from bastion.limits import MiB
from bastion.storage.disk_image import (
    file_sha256,
    pwrite_all,
    read_archive,
    read_layout,
    read_partition,
)
from bastion.storage.luks2_volume import DEFAULT_DATA_OFFSET
from bastion.storage.verity_reader import format_region
from bastion.trust.envelope import sign_envelope
from bastion.trust.image import open_statement
from bastion.trust.signer import PublicKey, SignatureScheme, Signer, Verifier

DEFAULT_DATA_SIZE = 64 * MiB
#: the smallest data partition: LUKS2 headers and keyslot area, plus 1 MiB of data
DATA_MIN_SIZE = DEFAULT_DATA_OFFSET + MiB


@dataclass(frozen=True)
class ImageKeys:
    """The signers an image build needs (from ``bastion keys init``).

    ``platform_root`` is the platform root key's Signer, or only its public side
    (a Verifier) together with ``loader_statement``, the bootloader statement it signed
    at ``keys init``: then the build never needs the offline key.
    """

    platform_root: Signer | Verifier
    boot: Signer
    image: Signer
    verity: Signer
    verity_cert: x509.Certificate
    module: Signer | None = None
    module_cert: x509.Certificate | None = None
    loader_statement: bytes | None = None

    def platform_root_public(self) -> PublicKey:
        """The platform root's public key (whichever side was given)."""
        if isinstance(self.platform_root, Verifier):
            return self.platform_root.public_key
        return self.platform_root.public_key()


@dataclass(frozen=True)
class ImageSpec:
    """Inputs of one image build."""

    rootfs: Path
    kernel: bytes
    version: str
    security_version: int
    initrd: bytes = b""
    cmdline: str = ""
    modules: tuple[tuple[str, bytes], ...] = ()
    fs: FsType = FsType.EXT4
    data_size: int = DEFAULT_DATA_SIZE
    root_size: int | None = None  # slot capacity; default: the root filesystem, MiB-aligned
    epoch: int = 0
    os_release: bytes = field(default=b"")


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """What was built: the digest, the root hash and the layout."""

    path: Path
    sha256: bytes
    size: int
    root_hash: bytes
    layout: gpt.GptDisk
    metadata: dict[str, Any]


def _tree_digest(root: Path) -> bytes:
    """A digest of a tree's names, modes, link targets and contents (the build seed)."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files + dirs):
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix().encode()
            st = path.lstat()
            h.update(rel + b"\0" + str(st.st_mode).encode() + b"\0")
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                with open(path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(MiB), b""):
                        h.update(chunk)
    return h.digest()


def sign_verity_root(
    root_hash: bytes, signer: Signer, cert: x509.Certificate
) -> bu.VeritySignature:
    """The DPS signature partition content: PKCS#7 over the lower-case hex root hash."""
    if signer.scheme is not SignatureScheme.RSA_PKCS1V15_SHA256:
        raise ConfigError(f"verity key must sign rsa-pkcs1v15-sha256, is {signer.scheme}")
    message = root_hash.hex().encode()
    cms = modsig.CmsSignature(
        "sha256", cert.issuer.public_bytes(), cert.serial_number, signer.sign(message)
    )
    fpr = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return bu.VeritySignature(root_hash, cms.to_bytes(), fpr)


def sign_statement(payload_type: str, statement: bytes, signer: Signer) -> bytes:
    """A one-signature envelope over a statement, serialised."""
    return sign_envelope(payload_type, statement, [signer]).to_bytes()


def make_unit(
    spec: ImageSpec, keys: ImageKeys, root_hash: bytes, slot: str, *, data_blocks: int
) -> tuple[bu.BootUnit, bytes]:
    """The boot unit for ``slot`` and its signed statement."""
    modules: list[tuple[str, bytes]] = []
    for name, data in spec.modules:
        if not modsig.is_signed(data):
            if keys.module is None or keys.module_cert is None:
                raise ConfigError(f"module {name!r} is unsigned and no module key is given")
            signer = keys.module
            data = modsig.sign_module(data, keys.module_cert, signer.sign)
        modules.append((name, data))
    cmdline = " ".join(
        w
        for w in (
            spec.cmdline.strip(),
            f"roothash={root_hash.hex()}",
            f"{VERITY_BLOCKS_PARAM}={data_blocks}",
            f"bastion.slot={slot}",
        )
        if w
    )
    cert_pem = (
        keys.module_cert.public_bytes(serialization.Encoding.PEM) if keys.module_cert else b""
    )
    osrel = (
        spec.os_release
        or (
            f'ID=bastion\nNAME="bastion"\nVERSION_ID="{spec.version}"\n'
            f"BASTION_SECURITY_VERSION={spec.security_version}\n"
        ).encode()
    )
    unit = bu.BootUnit(
        linux=spec.kernel,
        osrel=osrel,
        cmdline=cmdline.encode(),
        initrd=spec.initrd,
        security_version=spec.security_version,
        modcert=cert_pem,
        veritycert=keys.verity_cert.public_bytes(serialization.Encoding.PEM),
        modules=tuple(sorted(modules)),
    )
    statement = bu.unit_statement(unit, slot, spec.version)
    return unit, sign_statement(bu.STATEMENT_TYPE_UNIT, statement, keys.boot)


def make_loader(keys: ImageKeys) -> tuple[bytes, bytes]:
    """The bootloader stage bytes and their signed statement (platform root key)."""
    boot_pem = keys.boot.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    loader = bu.LoaderStage(LOADER_VERSION, boot_pem).to_bytes()
    if keys.loader_statement is not None:
        # signed once at `keys init`: check it covers this loader, never re-sign it
        root = Verifier.of(keys.platform_root_public())
        try:
            doc = open_statement(keys.loader_statement, bu.STATEMENT_TYPE_LOADER, root)
        except (SignatureError, FormatError) as exc:
            raise SignatureError(f"key set loader statement: {exc}") from exc
        if doc != json.loads(bu.loader_statement(loader)):
            raise SignatureError(
                "key set loader statement covers another boot key than the key set's"
            )
        return loader, keys.loader_statement
    if isinstance(keys.platform_root, Verifier):
        raise ConfigError(
            "the platform root private key is needed to sign the bootloader: "
            "the key set has no loader statement"
        )
    return loader, sign_statement(
        bu.STATEMENT_TYPE_LOADER, bu.loader_statement(loader), keys.platform_root
    )


def _copy_into(src: Path, fd: int, offset: int) -> None:
    with open(src, "rb") as handle:
        pos = offset
        for chunk in iter(lambda: handle.read(4 * MiB), b""):
            if chunk.count(0) != len(chunk):  # keep the image sparse
                os.pwrite(fd, chunk, pos)
            pos += len(chunk)


def _root_seed(spec: ImageSpec) -> bytes:
    """The root's identity: derived from the root tree, filesystem type and epoch only."""
    return hashlib.sha256(_tree_digest(spec.rootfs) + f":{spec.fs}:{spec.epoch}".encode()).digest()


def _build_root_fs(
    spec: ImageSpec, out: Path, root_seed: bytes, runner: CommandRunner | None
) -> int:
    """Build the root filesystem image with its UUID derived from ``root_seed``; its size."""
    return build_filesystem(
        spec.rootfs,
        out,
        spec.fs,
        fs_uuid=gpt.derived_uuid("rootfs", root_seed),
        epoch=spec.epoch,
        runner=runner,
    )


def check_cmdline(cmdline: str) -> None:
    """Refuse a user command line that sets a parameter the chain sets or reads itself."""
    if not cmdline.isascii() or not all(c.isprintable() for c in cmdline):
        raise ConfigError("kernel command line: only printable ASCII is allowed")
    for word in cmdline.split():
        key = word.lstrip('"').partition("=")[0].rstrip('"')
        why = RESERVED_CMDLINE.get(key)
        if why is None:
            why = next((w for p, w in RESERVED_CMDLINE_PREFIXES.items() if key.startswith(p)), None)
        if why is not None:
            raise ConfigError(f"kernel command line: {key}= is reserved ({why}); remove it")


def _tree_bytes(root: Path) -> int:
    """The bytes of the regular files under ``root`` (a lower bound of the filesystem)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            st = Path(folder, name).lstat()
            if not os.path.islink(Path(folder, name)):
                total += st.st_size
    return total


def check_sizes(spec: ImageSpec) -> None:
    """Refuse partition sizes the image cannot have, before anything is built or written."""
    if spec.data_size % gpt.SECTOR:
        raise ConfigError(
            f"partition {PART_DATA}: size {spec.data_size} bytes is not a multiple of the "
            f"{gpt.SECTOR}-byte sector"
        )
    if spec.data_size < DATA_MIN_SIZE:
        raise ConfigError(
            f"partition {PART_DATA}: size {spec.data_size} bytes is smaller than the "
            f"{DATA_MIN_SIZE} bytes its LUKS2 volume needs (16 MiB of headers + 1 MiB)"
        )
    if spec.root_size is not None:
        if spec.root_size <= 0 or spec.root_size % VERITY_BLOCK:
            raise ConfigError(
                f"partition {root_part('a')}: slot size {spec.root_size} bytes is not a "
                f"positive multiple of the {VERITY_BLOCK}-byte verity block"
            )
        if not spec.rootfs.is_dir():
            raise ConfigError(f"root tree {spec.rootfs}: not a folder")
        content = _tree_bytes(spec.rootfs)
        if content > spec.root_size:
            raise ConfigError(
                f"partition {root_part('a')}: the root tree {spec.rootfs} holds {content} "
                f"bytes, more than the slot size {spec.root_size} bytes"
            )


def build_image(
    spec: ImageSpec, keys: ImageKeys, out: Path, *, runner: CommandRunner | None = None
) -> BuiltImage:
    """Build ``out`` and ``out`` + ``.sig``; see the module docstring.

    The command line and the partition sizes are checked first: a refusal writes nothing.
    """
    if spec.security_version < 0:
        raise ConfigError(f"security version must be >= 0, got {spec.security_version}")
    check_cmdline(spec.cmdline)
    check_sizes(spec)
    # the root's identity (fs UUID, verity salt) depends on the root inputs only, so the
    # same root gives the same root hash whatever kernel boots it; other GUIDs on all
    root_seed = _root_seed(spec)
    seed_h = hashlib.sha256(root_seed)
    for part in (spec.kernel, spec.initrd, spec.cmdline.encode(), spec.version.encode()):
        seed_h.update(hashlib.sha256(part).digest())
    seed_h.update(f"{spec.security_version}".encode())
    seed = seed_h.digest()
    with tempfile.TemporaryDirectory(prefix="bastion-image-") as tmp:
        root_img = Path(tmp) / "root.img"
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
        verity_size = mib_align(4096 + params.tree_size())
        # root hash first (in a scratch hash file), then the layout that depends on it
        scratch = Path(tmp) / "hash.img"
        result = format_region(
            root_img, scratch, params, uuid=gpt.derived_uuid("verity-superblock", root_seed)
        )
        root_hash = result.root_hash
        unit, unit_sig = make_unit(spec, keys, root_hash, "a", data_blocks=params.data_blocks)
        loader, loader_sig = make_loader(keys)
        root_pem = keys.platform_root_public().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        archive_entries = [
            ("loader.key", root_pem),
            ("loader", loader),
            ("loader.sig", loader_sig),
            ("unit.a", unit.to_bytes()),
            ("unit.a.sig", unit_sig),
        ]
        archive = bu.Container(bu.Kind.ARCHIVE, tuple(archive_entries)).to_bytes()
        boot_size = mib_align(2 * len(archive) + MiB)
        layout = plan_layout(
            seed,
            root_hash,
            boot_size=boot_size,
            root_size=root_size,
            verity_size=verity_size,
            data_size=spec.data_size,
        )
        verity_sig = sign_verity_root(root_hash, keys.verity, keys.verity_cert)
        out = Path(out)
        tmp_out = out.with_name(out.name + ".tmp")
        fd = os.open(tmp_out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, layout.size)
            pwrite_all(fd, layout.head_bytes(), 0)
            pwrite_all(fd, layout.tail_bytes(), layout.tail_offset)
            pwrite_all(fd, archive, layout.find(PART_BOOT).offset)
            _copy_into(root_img, fd, layout.find(root_part("a")).offset)
            pwrite_all(fd, scratch.read_bytes(), layout.find(verity_part("a")).offset)
            pwrite_all(fd, verity_sig.to_bytes(), layout.find(sig_part("a")).offset)
            pwrite_all(fd, bootctl.initial_partition(), layout.find(PART_BOOTCTL).offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_out, out)
    digest = file_sha256(out)
    metadata: dict[str, Any] = {
        "type": "disk-image",
        "sha256": digest.hex(),
        "size": layout.size,
        "version": spec.version,
        "security_version": spec.security_version,
        "root_hash": root_hash.hex(),
        "fs": str(spec.fs),
        "disk_guid": str(layout.disk_guid),
    }
    statement = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    sig_path = out.with_name(out.name + ".sig")
    sig_path.write_bytes(sign_statement(IMAGE_PAYLOAD_TYPE, statement, keys.image))
    return BuiltImage(out, digest, layout.size, root_hash, layout, metadata)


def install_slot(
    disk: Path,
    spec: ImageSpec,
    keys: ImageKeys,
    slot: str,
    *,
    activate: bool = True,
    runner: CommandRunner | None = None,
) -> bytes:
    """Write a new root + verity + signature + boot unit into ``slot`` of an existing disk.

    The slot's root and verity partition UUIDs are re-derived from the new root hash in
    both GPT copies, the unit is added to the boot archive, and boot control makes the
    slot bootable (and active when ``activate``) with fresh tries. Returns the root hash.
    The building block of an A/B update; the data volume is untouched.
    """
    check_cmdline(spec.cmdline)
    layout = read_layout(disk)
    root_p, verity_p, sig_p = (
        layout.find(root_part(slot)),
        layout.find(verity_part(slot)),
        layout.find(sig_part(slot)),
    )
    root_seed = _root_seed(spec)
    with tempfile.TemporaryDirectory(prefix="bastion-slot-") as tmp:
        root_img = Path(tmp) / "root.img"
        fs_size = _build_root_fs(spec, root_img, root_seed, runner)
        params = VerityParams(
            data_blocks=fs_size // 4096,
            salt=hashlib.sha256(b"bastion-verity-salt\0" + root_seed).digest(),
        )
        if fs_size > root_p.size or 4096 + params.tree_size() > verity_p.size:
            raise ConfigError(
                f"slot {slot} is too small: root {fs_size} bytes in {root_p.size}, "
                f"tree {4096 + params.tree_size()} bytes in {verity_p.size}"
            )
        fd = os.open(disk, os.O_RDWR)
        try:
            _copy_into(root_img, fd, root_p.offset)
        finally:
            os.close(fd)
        result = format_region(
            disk,
            disk,
            params,
            data_offset=root_p.offset,
            hash_offset=verity_p.offset,
            uuid=gpt.derived_uuid("verity-superblock", root_seed),
        )
    root_hash = result.root_hash
    unit, unit_sig = make_unit(spec, keys, root_hash, slot, data_blocks=params.data_blocks)
    archive = read_archive(disk, layout)
    entries = {n: v for n, v in archive.entries}
    entries[f"unit.{slot}"] = unit.to_bytes()
    entries[f"unit.{slot}.sig"] = unit_sig
    new_archive = bu.Container(
        bu.Kind.ARCHIVE, tuple((n, entries[n]) for n in ARCHIVE_ORDER if n in entries)
    ).to_bytes()
    boot_p = layout.find(PART_BOOT)
    if len(new_archive) > boot_p.size:
        raise ConfigError(f"boot archive of {len(new_archive)} bytes exceeds {boot_p.size}")
    sig = sign_verity_root(root_hash, keys.verity, keys.verity_cert).to_bytes()
    ruuid, vuuid = gpt.verity_partition_uuids(root_hash)
    parts = []
    for p in layout.partitions:
        if p.name == root_p.name:
            p = gpt.Partition(
                p.type_guid, ruuid, p.first_lba, p.last_lba, gpt.FLAG_READ_ONLY, p.name
            )
        elif p.name in (verity_p.name, sig_p.name):
            guid = vuuid if p.name == verity_p.name else p.part_guid
            p = gpt.Partition(
                p.type_guid, guid, p.first_lba, p.last_lba, gpt.FLAG_READ_ONLY, p.name
            )
        parts.append(p)
    new_layout = gpt.GptDisk(layout.total_sectors, layout.disk_guid, tuple(parts))
    ctl_p = layout.find(PART_BOOTCTL)
    state = bootctl.parse_partition(read_partition(disk, ctl_p))
    ctl = state.control.with_slot(slot, bootctl.SlotState(15, bootctl.DEFAULT_TRIES, False, False))
    if activate:
        ctl = bootctl.BootControl(ctl.sequence, bootctl.slot_index(slot), ctl.slots)
    offset, record = bootctl.next_write(state, ctl)
    fd = os.open(disk, os.O_RDWR)
    try:
        pwrite_all(fd, sig + bytes(sig_p.size - len(sig)), sig_p.offset)
        pwrite_all(fd, new_archive + bytes(boot_p.size - len(new_archive)), boot_p.offset)
        pwrite_all(fd, new_layout.head_bytes(), 0)
        pwrite_all(fd, new_layout.tail_bytes(), new_layout.tail_offset)
        pwrite_all(fd, record, ctl_p.offset + offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return root_hash


def iter_modules(unit: bu.BootUnit) -> Iterator[tuple[str, bytes]]:
    """The unit's modules in load order."""
    yield from unit.modules
