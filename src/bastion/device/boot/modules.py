"""The sim kernel's module loader: which initrd modules it loads, and the signature
check Linux's ``module_sig_check`` makes before it links one.

Decisions only (bytes in, raise on refusal); the chain (device/boot/efi_chain.py) hands
in the UKI's ``.initrd``, the command line and the kernel's trusted keys.

**What is loaded.** systemd-modules-load in the initrd: every module named in
``etc/modules-load.d/*.conf`` and ``usr/lib/modules-load.d/*.conf`` (one name a line,
``#``/``;`` comments; ``-`` and ``_`` alike), in file-name order, each found as
``NAME.ko`` under ``lib/modules/`` or ``usr/lib/modules/`` in the archive. The initrd is
a ``newc`` cpio, plain or gzip (decompression bounded by ``INITRD_MAX_SIZE``); one the sim
cannot unpack (zstd, xz) is reported, never treated as empty. A name with no module
file is reported (systemd-modules-load logs it and goes on). Compressed module files
(``.ko.xz``, ``.ko.zst``) are not looked for. Dependencies (``modules.dep``) are not
followed: each listed module is checked on its own.

**The check** (kernel/module/signing.c, Linux 6.1), against the kernel's built-in
trusted keys (``.builtin_trusted_keys``: the certificates the product's kernel is built
with; the sim device keeps them as ``kernel-keys.pem``, ADR 0039):

========================================  ============================================
module                                    result
========================================  ============================================
signed by a trusted key, verifies         loaded
signature present but does not verify,    refused always (``EKEYREJECTED`` / ``EBADMSG``)
or malformed
unsigned                                  refused under enforcement, else loaded and
                                          the kernel tainted
signed by a key not in the keyring        refused under enforcement (``ENOKEY``), else
                                          loaded and the kernel tainted
========================================  ============================================

Enforcement is ``module.sig_enforce=`` on the (signed, measured) command line, read as
the kernel's ``kstrtobool`` reads it, or ``enforce=True`` from the caller (a kernel built
with ``CONFIG_MODULE_SIG_FORCE``, or lockdown under Secure Boot).
"""

from __future__ import annotations

import stat
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509

from bastion.errors import FormatError, LimitError, SignatureError
from bastion.formats import cpio, modsig
from bastion.limits import INITRD_MAX_SIZE

#: the sim kernel's built-in trusted keys (PEM) in the platform store (ADR 0039)
KERNEL_KEYS_FILE = "kernel-keys.pem"
#: the command-line switch the kernel reads
SIG_ENFORCE_PARAM = "module.sig_enforce"
#: where systemd-modules-load reads its lists
LOAD_LISTS = ("etc/modules-load.d/", "usr/lib/modules-load.d/")
MODULE_FOLDERS = ("lib/modules/", "usr/lib/modules/")
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSIONS = {
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ": "xz",
    b"BZh": "bzip2",
    b"\x89LZO": "lzo",
    b"\x02\x21\x4c\x18": "lz4",
}


def enforced(params: Mapping[str, str]) -> bool:
    """``module.sig_enforce`` from the command line's parameters (kstrtobool: ``1``,
    ``y``, ``t``, ``on`` and a bare switch enable; anything else leaves it off)."""
    value = params.get(SIG_ENFORCE_PARAM)
    if value is None:
        return False
    return value == "" or value[:1] in "1yYtT" or value.lower() == "on"


@dataclass(frozen=True, slots=True)
class LoadedModule:
    """A module the kernel linked: its name, and why the kernel is tainted (or "")."""

    name: str
    signer: str
    taint: str = ""


def _kernel_refusal(name: str, reason: str, errno_name: str) -> SignatureError:
    return SignatureError(f"module {name}: Loading of {reason} is rejected ({errno_name})")


def _signer_of(cms: modsig.CmsSignature, keyring: Sequence[x509.Certificate]) -> x509.Certificate:
    """The keyring certificate the signature names (issuer + serial, or key id)."""
    for cert in keyring:
        if cms.subject_key_id:
            try:
                if modsig.certificate_key_id(cert) == cms.subject_key_id:
                    return cert
            except FormatError:
                continue
        elif cms.issuer == cert.issuer.public_bytes() and cms.serial == cert.serial_number:
            return cert
    raise LookupError


def check_module(
    name: str, data: bytes, keyring: Sequence[x509.Certificate], *, enforce: bool
) -> LoadedModule:
    """The kernel's signature check of module ``name`` (module docstring); raises
    SignatureError (refused) or returns what was loaded."""
    if not modsig.is_signed(data):
        if enforce:
            raise _kernel_refusal(name, "unsigned module", "EKEYREJECTED")
        return LoadedModule(name, "", "module verification failed: unsigned module")
    try:
        signed = modsig.SignedModule.parse(data)
        cms = signed.cms()
    except (FormatError, LimitError) as exc:
        raise SignatureError(f"module {name}: malformed signature: {exc} (EBADMSG)") from exc
    try:
        cert = _signer_of(cms, keyring)
    except LookupError:
        if enforce:
            raise _kernel_refusal(name, "module with unavailable key", "ENOKEY") from None
        return LoadedModule(name, "", "module verification failed: required key missing")
    try:
        modsig.verify_module(data, cert)
    except (SignatureError, FormatError) as exc:
        raise SignatureError(f"module {name}: Key was rejected by service: {exc}") from exc
    return LoadedModule(name, cert.subject.rfc4514_string())


# --- the initrd ----------------------------------------------------------------------------


def unpack_initrd(data: bytes) -> tuple[cpio.CpioEntry, ...]:
    """The entries of an initrd (newc cpio, plain or gzip); FormatError naming the
    compression the sim cannot unpack, LimitError past ``INITRD_MAX_SIZE``."""
    if data.startswith(_GZIP_MAGIC):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(data, INITRD_MAX_SIZE)
        except zlib.error as exc:
            raise FormatError(f"initrd: gzip stream is corrupt: {exc}") from exc
        if inflater.unconsumed_tail:
            raise LimitError(f"initrd unpacks to more than {INITRD_MAX_SIZE} bytes")
        data = raw
    for magic, what in _OTHER_COMPRESSIONS.items():
        if data.startswith(magic):
            raise FormatError(f"initrd is {what}-compressed: the sim kernel cannot unpack it")
    try:
        return cpio.parse(data)
    except LimitError:
        raise
    except FormatError as exc:
        raise FormatError(
            f"initrd is not a newc cpio archive (it starts {data[:8].hex() or 'empty'})"
        ) from exc


def _module_key(name: str) -> str:
    return name.replace("-", "_")


def load_list(entries: Sequence[cpio.CpioEntry]) -> list[str]:
    """Module names systemd-modules-load would load, in order, each once."""
    lists = sorted(
        (
            e
            for e in entries
            if e.name.startswith(LOAD_LISTS) and e.name.endswith(".conf") and stat.S_ISREG(e.mode)
        ),
        key=lambda e: e.name.rsplit("/", 1)[1],
    )
    names: list[str] = []
    for entry in lists:
        for line in entry.data.decode("utf-8", "replace").splitlines():
            word = line.strip()
            if word and word[0] not in "#;" and _module_key(word) not in map(_module_key, names):
                names.append(word)
    return names


def module_files(entries: Sequence[cpio.CpioEntry]) -> dict[str, cpio.CpioEntry]:
    """``NAME.ko`` files under the module folders, by module name (``_`` for ``-``)."""
    out: dict[str, cpio.CpioEntry] = {}
    for entry in entries:
        base = entry.name.rsplit("/", 1)[-1]
        regular = stat.S_ISREG(entry.mode)
        if regular and entry.name.startswith(MODULE_FOLDERS) and base.endswith(".ko"):
            out.setdefault(_module_key(base[: -len(".ko")]), entry)
    return out


@dataclass(frozen=True, slots=True)
class ModuleReport:
    """What the loader did with each listed module."""

    loaded: tuple[LoadedModule, ...]
    refused: tuple[tuple[str, str], ...]  # (name, reason)
    missing: tuple[str, ...]


def load_initrd_modules(
    initrd: bytes, keyring: Sequence[x509.Certificate], *, enforce: bool
) -> ModuleReport:
    """Check every module the initrd lists (FormatError if it cannot be unpacked)."""
    entries = unpack_initrd(initrd)
    files = module_files(entries)
    loaded: list[LoadedModule] = []
    refused: list[tuple[str, str]] = []
    missing: list[str] = []
    for name in load_list(entries):
        entry = files.get(_module_key(name))
        if entry is None:
            missing.append(name)
            continue
        try:
            loaded.append(check_module(name, entry.data, keyring, enforce=enforce))
        except SignatureError as exc:
            refused.append((name, str(exc)))
    return ModuleReport(tuple(loaded), tuple(refused), tuple(missing))
