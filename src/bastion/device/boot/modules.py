"""The sim kernel's module loader: which initrd modules it loads, and the signature
check Linux's ``module_sig_check`` makes before it links one.

Decisions only (bytes in, raise on refusal); the chain (device/boot/efi_chain.py) hands
in the UKI's ``.initrd``, the command line and the kernel's trusted keys.

**What is loaded.** systemd-modules-load in the initrd: every module named in
``etc/modules-load.d/*.conf`` and ``usr/lib/modules-load.d/*.conf`` (one name a line,
``#``/``;`` comments; ``-`` and ``_`` alike), in file-name order, each found as
``NAME.ko``, else ``NAME.ko.zst``, ``NAME.ko.xz`` or ``NAME.ko.gz`` (decompressed, as
kmod does, before the check: kbuild signs a module before compressing it) under
``lib/modules/`` or ``usr/lib/modules/`` in the archive. The initrd is a ``newc`` cpio,
plain or gzip, xz (CRC32 or no integrity check, as the kernel's decoder) or zstd
(:mod:`bastion.formats.compressed`: bounded by ``INITRD_MAX_SIZE``, truncation and
trailing segments refused); one the sim cannot unpack (bzip2, LZO, LZ4) is reported,
never treated as empty. A name with no module file is reported (systemd-modules-load
logs it and goes on); a compressed module that does not decompress is refused with the
reason. Dependencies (``modules.dep``) are not followed: each listed module is checked
on its own.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509

from bastion.errors import FormatError, LimitError, SignatureError
from bastion.formats import compressed, cpio, modsig
from bastion.limits import INITRD_MAX_SIZE, KERNEL_MODULE_MAX_SIZE

#: the sim kernel's built-in trusted keys (PEM) in the platform store (ADR 0039)
KERNEL_KEYS_FILE = "kernel-keys.pem"
#: the command-line switch the kernel reads
SIG_ENFORCE_PARAM = "module.sig_enforce"
#: where systemd-modules-load reads its lists
LOAD_LISTS = ("etc/modules-load.d/", "usr/lib/modules-load.d/")
MODULE_FOLDERS = ("lib/modules/", "usr/lib/modules/")
#: module file suffixes, in the order they are looked for, and their compression
MODULE_SUFFIXES = {".ko": "", ".ko.zst": "zstd", ".ko.xz": "xz", ".ko.gz": "gzip"}


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
    """The entries of an initrd (newc cpio: plain, or gzip, xz or zstd as the kernel
    unpacks it); FormatError naming what the sim cannot read, LimitError past
    ``INITRD_MAX_SIZE``."""
    if compressed.kind_of(data) is not None:
        data = compressed.decompress(
            data, limit=INITRD_MAX_SIZE, what="initrd", xz_checks=compressed.KERNEL_XZ_CHECKS
        )
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
    """Module files under the module folders, by module name (``_`` for ``-``):
    ``NAME.ko``, else the first of ``NAME.ko.zst``, ``NAME.ko.xz``, ``NAME.ko.gz``."""
    found: dict[str, dict[str, cpio.CpioEntry]] = {}
    for entry in entries:
        if not (stat.S_ISREG(entry.mode) and entry.name.startswith(MODULE_FOLDERS)):
            continue
        base = entry.name.rsplit("/", 1)[-1]
        for suffix in MODULE_SUFFIXES:
            if base.endswith(suffix) and len(base) > len(suffix):
                key = _module_key(base[: -len(suffix)])
                found.setdefault(key, {}).setdefault(suffix, entry)
                break
    return {
        key: next(by_suffix[s] for s in MODULE_SUFFIXES if s in by_suffix)
        for key, by_suffix in found.items()
    }


def module_bytes(entry: cpio.CpioEntry) -> bytes:
    """The module as the kernel links it: the file, decompressed by its suffix (kmod does
    that before ``init_module``; kbuild signed the module before compressing it)."""
    base = entry.name.rsplit("/", 1)[-1]
    kind = next((k for suffix, k in MODULE_SUFFIXES.items() if k and base.endswith(suffix)), "")
    if not kind:
        return entry.data
    return compressed.decompress_as(kind, entry.data, limit=KERNEL_MODULE_MAX_SIZE, what=base)


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
            data = module_bytes(entry)
        except (FormatError, LimitError) as exc:  # kmod cannot read it: not loaded
            refused.append((name, f"module {name}: {exc}"))
            continue
        try:
            loaded.append(check_module(name, data, keyring, enforce=enforce))
        except SignatureError as exc:
            refused.append((name, str(exc)))
    return ModuleReport(tuple(loaded), tuple(refused), tuple(missing))
