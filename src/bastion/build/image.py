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
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bastion.build.fs import FsType, build_filesystem
from bastion.device import measure
from bastion.errors import ConfigError, FormatError, SignatureError
from bastion.formats import bootctl, gpt, modsig, strict_json
from bastion.formats import bootunit as bu
from bastion.formats.verity import VerityParams
from bastion.io.runner import CommandRunner
from bastion.storage.luks2_volume import DEFAULT_DATA_OFFSET
from bastion.storage.verity_reader import format_region, verify_region
from bastion.trust.envelope import parse_envelope, sign_envelope, verify_envelope
from bastion.trust.keys import load_public_key
from bastion.trust.signer import PublicKey, SignatureScheme, Signer, Verifier

MiB = 1024 * 1024
IMAGE_PAYLOAD_TYPE = "application/vnd.bastion.disk-image+json"
LOADER_VERSION = bu.LOADER_VERSION
DEFAULT_DATA_SIZE = 64 * MiB
SIG_PART_SIZE = 16 * 1024
BOOTCTL_PART_SIZE = 64 * 1024

PART_BOOT = "boot"
PART_BOOTCTL = "bootctl"
PART_DATA = "data"
#: kernel command line word carrying the verity data block count (4 KiB blocks): the root
#: hash does not bind the count a superblock claims, so the signed command line does
VERITY_BLOCKS_PARAM = "bastion.verity_blocks"
#: the dm-verity data and hash block size bastion uses: a root slot is a multiple of it
VERITY_BLOCK = 4096
#: the smallest data partition: LUKS2 headers and keyslot area, plus 1 MiB of data
DATA_MIN_SIZE = DEFAULT_DATA_OFFSET + MiB
#: command-line parameters the boot chain sets or reads itself, and why; ``--cmdline``
#: may not set them (a second ``roothash=`` or a ``root=`` would point past verity)
RESERVED_CMDLINE = {
    "roothash": "the verity root hash of the slot, set by bastion",
    "usrhash": "a verity /usr hash would bypass bastion's signed root",
    "root": "the root device is the verity device bastion opens from roothash=",
    "mount.usr": "a /usr mount outside the signed root",
    "systemd.verity": "verity is set up by bastion from the signed command line",
    "rd.systemd.verity": "verity is set up by bastion from the signed command line",
}
RESERVED_CMDLINE_PREFIXES = {
    "bastion.": "bastion's own parameters (slot, verity block count)",
    "systemd.verity_": "verity is set up by bastion from the signed command line",
    "rd.systemd.verity_": "verity is set up by bastion from the signed command line",
}


def root_part(slot: str) -> str:
    return f"root-{slot}"


def verity_part(slot: str) -> str:
    return f"root-{slot}-verity"


def sig_part(slot: str) -> str:
    return f"root-{slot}-verity-sig"


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
class ImageTrust:
    """The public side: what verifies an image (and what a device trusts)."""

    platform_root: Verifier
    boot: Verifier
    image: Verifier
    verity_cert: x509.Certificate
    module_cert: x509.Certificate | None = None

    @property
    def platform_root_hash(self) -> bytes:
        """SHA-256 of the platform root key's SubjectPublicKeyInfo: what is fused."""
        return bytes.fromhex(self.platform_root.key_id)


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


def _mib(n: int) -> int:
    return (n + MiB - 1) // MiB * MiB


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


def verify_verity_signature(sig: bu.VeritySignature, cert: x509.Certificate) -> bytes:
    """Check the PKCS#7 over the hex root hash with ``cert``; returns the root hash."""
    cms = modsig.CmsSignature.parse(sig.signature)
    if cms.issuer != cert.issuer.public_bytes() or cms.serial != cert.serial_number:
        raise SignatureError("verity signature was made by another certificate")
    fpr = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    if sig.certificate_fingerprint and sig.certificate_fingerprint != fpr:
        raise SignatureError("verity signature names another certificate fingerprint")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("verity certificate does not hold an RSA key")
    try:
        Verifier.of(key, SignatureScheme.RSA_PKCS1V15_SHA256).verify(
            sig.root_hash.hex().encode(), cms.signature
        )
    except SignatureError as exc:
        raise SignatureError(f"verity root hash signature does not verify: {exc}") from exc
    return sig.root_hash


def sign_statement(payload_type: str, statement: bytes, signer: Signer) -> bytes:
    """A one-signature envelope over a statement, serialised."""
    return sign_envelope(payload_type, statement, [signer]).to_bytes()


def open_statement(data: bytes, payload_type: str, verifier: Verifier) -> dict[str, Any]:
    """Verify a signed statement envelope and return its JSON (SignatureError/FormatError)."""
    payload = verify_envelope(parse_envelope(data), [verifier], payload_type=payload_type)
    return strict_json.loads_object(payload, what="signed statement")


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


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def file_sha256(path: Path) -> bytes:
    """SHA-256 of a whole file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(4 * MiB), b""):
            h.update(chunk)
    return h.digest()


def plan_layout(
    seed: bytes,
    root_hash: bytes,
    *,
    boot_size: int,
    root_size: int,
    verity_size: int,
    data_size: int,
) -> gpt.GptDisk:
    """The GPT for the given sizes (each partition starts on a MiB boundary)."""
    root_uuid, verity_uuid = gpt.verity_partition_uuids(root_hash)
    ro = gpt.FLAG_READ_ONLY
    na = gpt.FLAG_NO_AUTO
    d = gpt.derived_uuid
    spans: list[tuple[str, uuid.UUID, uuid.UUID, int, int]] = [
        (PART_BOOT, gpt.TYPE_XBOOTLDR, d("boot", seed), boot_size, 0),
        (root_part("a"), gpt.TYPE_ROOT_X86_64, root_uuid, root_size, ro),
        (verity_part("a"), gpt.TYPE_ROOT_VERITY_X86_64, verity_uuid, verity_size, ro),
        (sig_part("a"), gpt.TYPE_ROOT_VERITY_SIG_X86_64, d("sig-a", seed), SIG_PART_SIZE, ro),
        (root_part("b"), gpt.TYPE_ROOT_X86_64, d("root-b", seed), root_size, ro | na),
        (verity_part("b"), gpt.TYPE_ROOT_VERITY_X86_64, d("verity-b", seed), verity_size, ro | na),
        (sig_part("b"), gpt.TYPE_ROOT_VERITY_SIG_X86_64, d("sig-b", seed), SIG_PART_SIZE, ro | na),
        (PART_BOOTCTL, gpt.TYPE_LINUX_DATA, d("bootctl", seed), BOOTCTL_PART_SIZE, na),
        (PART_DATA, gpt.TYPE_LINUX_DATA, d("data", seed), data_size, na),
    ]
    parts = []
    lba = MiB // gpt.SECTOR
    for name, tguid, pguid, size, flags in spans:
        sectors = _mib(size) // gpt.SECTOR
        parts.append(gpt.Partition(tguid, pguid, lba, lba + sectors - 1, flags, name))
        lba += sectors
    total = lba + MiB // gpt.SECTOR
    return gpt.GptDisk(total, gpt.derived_uuid("disk", seed), tuple(parts))


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
        root_size = _mib(max(fs_size, spec.root_size or 0))
        params = VerityParams(
            data_blocks=fs_size // 4096,
            salt=hashlib.sha256(b"bastion-verity-salt\0" + root_seed).digest(),
        )
        verity_size = _mib(4096 + params.tree_size())
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
        boot_size = _mib(2 * len(archive) + MiB)
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
            _pwrite(fd, layout.head_bytes(), 0)
            _pwrite(fd, layout.tail_bytes(), layout.tail_offset)
            _pwrite(fd, archive, layout.find(PART_BOOT).offset)
            _copy_into(root_img, fd, layout.find(root_part("a")).offset)
            _pwrite(fd, scratch.read_bytes(), layout.find(verity_part("a")).offset)
            _pwrite(fd, verity_sig.to_bytes(), layout.find(sig_part("a")).offset)
            _pwrite(fd, bootctl.initial_partition(), layout.find(PART_BOOTCTL).offset)
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


# --- reading images back -----------------------------------------------------------------


def read_layout(path: Path) -> gpt.GptDisk:
    """Parse the GPT of an image file (backup used if the primary is damaged)."""
    head, tail, sectors = _gpt_ends(path)
    return gpt.parse(head, sectors, tail)


def _gpt_ends(path: Path) -> tuple[bytes, bytes, int]:
    """The bytes of the primary and the backup GPT copies, and the disk's sector count."""
    size = path.stat().st_size
    if size % gpt.SECTOR:
        raise FormatError(f"image {path} size {size} is not a multiple of 512")
    sectors = size // gpt.SECTOR
    with open(path, "rb") as handle:
        head = handle.read(34 * gpt.SECTOR)
        try:  # a table longer than 128 entries: read as much as its header says
            need = gpt.head_length(head)
        except FormatError:
            need = len(head)
        if need > len(head):
            handle.seek(0)
            head = handle.read(min(need, size))
        handle.seek(max(0, size - 33 * gpt.SECTOR))
        tail = handle.read(33 * gpt.SECTOR)
        try:
            need = gpt.tail_length(tail)
        except FormatError:
            need = len(tail)
        if need > len(tail):
            handle.seek(max(0, size - need))
            tail = handle.read(need)
    return head, tail, sectors


def repair_layout(path: Path) -> tuple[gpt.GptDisk, list[str]]:
    """The image's GPT, with a damaged primary or backup copy rewritten from the other.

    Returns the layout and one line per copy repaired (empty when both were intact), so
    the caller can report it. A disk whose copies are both damaged raises FormatError.
    """
    head, tail, sectors = _gpt_ends(path)
    layout = gpt.parse(head, sectors, tail)
    repaired: list[str] = []
    writes: list[tuple[bytes, int]] = []
    try:
        gpt.parse(head, sectors)
    except FormatError as exc:
        writes.append((layout.head_bytes(), 0))
        repaired.append(f"primary GPT header damaged ({exc}); rewritten from the backup")
    try:
        gpt.parse_backup(tail, sectors)
    except FormatError as exc:
        writes.append((layout.tail_bytes(), layout.tail_offset))
        repaired.append(f"backup GPT header damaged ({exc}); rewritten from the primary")
    if writes:
        fd = os.open(path, os.O_RDWR)
        try:
            for data, offset in writes:
                _pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    return layout, repaired


def read_partition(path: Path, part: gpt.Partition, limit: int | None = None) -> bytes:
    """The bytes of one partition (the first ``limit`` bytes when given)."""
    with open(path, "rb") as handle:
        handle.seek(part.offset)
        return handle.read(part.size if limit is None else min(limit, part.size))


def read_archive(path: Path, layout: gpt.GptDisk) -> bu.Container:
    """The boot partition archive (trailing zero padding of the partition ignored)."""
    raw = read_partition(path, layout.find(PART_BOOT))
    return bu.parse(_trim_container(raw), bu.Kind.ARCHIVE)


def _trim_container(raw: bytes) -> bytes:
    """Cut a container out of a zero-padded partition using its own entry table."""
    if len(raw) < 16 or raw[:8] != bu.MAGIC:
        raise FormatError("boot partition does not start with a bastion boot archive")
    count = int.from_bytes(raw[12:16], "little")
    end = 16 + 32 * count
    if end > len(raw):
        raise FormatError("boot archive entry table runs past the partition")
    for i in range(count):
        base = 16 + 32 * i + 16
        off = int.from_bytes(raw[base : base + 8], "little")
        size = int.from_bytes(raw[base + 8 : base + 16], "little")
        end = max(end, off + size)
    end = (end + 7) // 8 * 8
    if end > len(raw):
        raise FormatError("boot archive entries run past the partition")
    return raw[:end]


def verify_image_signature(path: Path, trust: ImageTrust) -> dict[str, Any]:
    """Check ``disk.img.sig`` against the image key and the image bytes; returns metadata."""
    sig_path = path.with_name(path.name + ".sig")
    if not sig_path.exists():
        raise SignatureError(f"image signature {sig_path} is missing")
    doc = open_statement(sig_path.read_bytes(), IMAGE_PAYLOAD_TYPE, trust.image)
    size = path.stat().st_size
    if doc.get("size") != size:
        raise SignatureError(f"image is {size} bytes, the signature says {doc.get('size')}")
    actual = file_sha256(path).hex()
    if doc.get("sha256") != actual:
        raise SignatureError(f"image SHA-256 is {actual}, the signature says {doc.get('sha256')}")
    return doc


def platform_key_hash(pem: bytes) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo of a PEM public key (the fused value)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise FormatError(f"platform key is not a PEM public key: {exc}") from exc
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def predict_pcrs(path: Path, slot: str = "a") -> dict[int, bytes]:
    """The PCRs (sha256) a device has after booting ``slot`` of this image: golden values.

    A pure replay of what each stage measures (device/measure.py), read from the image.
    """
    layout = read_layout(path)
    archive = read_archive(path, layout)
    unit = bu.parse_unit(archive.get(f"unit.{slot}"))
    root_hash = bytes.fromhex(unit.cmdline_params().get("roothash", ""))
    events = measure.boot_events(
        platform_key_hash(archive.get("loader.key")),
        archive.get("loader"),
        unit.sections(),
        root_hash,
    )
    return measure.predict(events)


def verity_data_size(unit: bu.BootUnit) -> int:
    """The root's verity data size in bytes, from the signed command line."""
    text = unit.cmdline_params().get(VERITY_BLOCKS_PARAM, "")
    if not text.isdigit() or not 0 < int(text) < 1 << 40:
        raise FormatError(f"command line has no valid {VERITY_BLOCKS_PARAM}=")
    return int(text) * 4096


def verify_slot(
    path: Path,
    layout: gpt.GptDisk,
    archive: bu.Container,
    slot: str,
    *,
    boot: Verifier,
    verity_cert: x509.Certificate,
    full: bool,
) -> dict[str, Any]:
    """Offline checks of one slot: unit statement and sections, verity signature, UUIDs,
    and (``full``) every root block against the root hash."""
    raw = archive.get(f"unit.{slot}")
    doc = open_statement(archive.get(f"unit.{slot}.sig"), bu.STATEMENT_TYPE_UNIT, boot)
    unit = bu.parse_unit(raw)
    container = bu.parse(raw, bu.Kind.UNIT)
    signed = doc.get("sections", {})
    for name, digest in bu.section_digests(container.entries).items():
        if signed.get(name) != digest:
            raise SignatureError(f"slot {slot}: section {name} does not match its signed digest")
    if doc.get("sha256") != hashlib.sha256(raw).hexdigest() or doc.get("slot") != slot:
        raise SignatureError(f"slot {slot}: boot unit does not match its signed statement")
    root_hash = bytes.fromhex(unit.cmdline_params().get("roothash", ""))
    data_size = verity_data_size(unit)
    sig = bu.parse_verity_signature(read_partition(path, layout.find(sig_part(slot))))
    if verify_verity_signature(sig, verity_cert) != root_hash:
        raise SignatureError(f"slot {slot}: signed root hash differs from the command line's")
    root, verity = layout.find(root_part(slot)), layout.find(verity_part(slot))
    if (root.part_guid, verity.part_guid) != gpt.verity_partition_uuids(root_hash):
        raise SignatureError(f"slot {slot}: partition UUIDs do not derive from the root hash")
    if full:
        verify_region(
            path,
            path,
            root_hash,
            data_offset=root.offset,
            hash_offset=verity.offset,
            data_size=data_size,
        )
    return {
        "version": doc.get("version"),
        "security_version": unit.security_version,
        "root_hash": root_hash.hex(),
        "root_verified": full,
    }


def verify_image(path: Path, trust: ImageTrust, *, full: bool = True) -> dict[str, Any]:
    """Everything a device will check, offline: image signature, loader, units, verity."""
    meta = verify_image_signature(path, trust)
    layout = read_layout(path)
    archive = read_archive(path, layout)
    if platform_key_hash(archive.get("loader.key")) != trust.platform_root_hash:
        raise SignatureError("boot partition carries another platform key")
    loader = archive.get("loader")
    doc = open_statement(archive.get("loader.sig"), bu.STATEMENT_TYPE_LOADER, trust.platform_root)
    if doc != json.loads(bu.loader_statement(loader)):
        raise SignatureError("bootloader does not match its signed statement")
    stage = bu.parse_loader(loader)
    boot = Verifier.of(load_public_key(stage.boot_key))
    if boot.key_id != trust.boot.key_id:
        raise SignatureError("bootloader trusts another boot key than the product's")
    slots = {}
    for slot in ("a", "b"):
        if f"unit.{slot}" in archive.names():
            slots[slot] = verify_slot(
                path, layout, archive, slot, boot=boot, verity_cert=trust.verity_cert, full=full
            )
    return dict(meta, slots=slots)


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
    order = ["loader.key", "loader", "loader.sig", "unit.a", "unit.a.sig", "unit.b", "unit.b.sig"]
    new_archive = bu.Container(
        bu.Kind.ARCHIVE, tuple((n, entries[n]) for n in order if n in entries)
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
        _pwrite(fd, sig + bytes(sig_p.size - len(sig)), sig_p.offset)
        _pwrite(fd, new_archive + bytes(boot_p.size - len(new_archive)), boot_p.offset)
        _pwrite(fd, new_layout.head_bytes(), 0)
        _pwrite(fd, new_layout.tail_bytes(), new_layout.tail_offset)
        _pwrite(fd, record, ctl_p.offset + offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return root_hash


def iter_modules(unit: bu.BootUnit) -> Iterator[tuple[str, bytes]]:
    """The unit's modules in load order."""
    yield from unit.modules
