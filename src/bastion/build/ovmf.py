"""An OVMF variable store with the product's Secure Boot keys enrolled and Secure Boot on.

OVMF (edk2 for QEMU) keeps its non-volatile variables in a flash image; Debian ships an
empty one as ``/usr/share/OVMF/OVMF_VARS_4M.fd`` (package ``ovmf``) to pair with
``OVMF_CODE_4M.secboot.fd``. :func:`enrol_ovmf_vars` writes a copy of it holding:

* ``PK``, ``KEK``, ``db``: bastion's signature lists, byte for byte, with the
  authenticated attributes (0x27) and the enrolment timestamp (later signed updates
  must be newer);
* ``dbx``: the given list, or one SHA-256 entry of the empty string owned by the
  product (it matches no image; it is there because OS tools expect a dbx, and it is
  the shape ``virt-fw-vars --sb`` writes);
* ``SecureBootEnable`` = 1 and ``CustomMode`` = 0, so the firmware boots in user mode
  with Secure Boot enforced (``SecureBoot`` itself is volatile: OVMF derives it).

The edk2 variable-store format is read and written by virt-firmware (Gerd Hoffmann's
library, the reference for these stores); bastion only hands it the variable data and
writes the result atomically. No QEMU is needed to make or check a store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.errors import ConfigError, FormatError
from bastion.formats.efivars import (
    EFI_CERT_X509_GUID,
    SECURE_BOOT_VARIABLES,
    SignatureList,
    encode_signature_lists,
    parse_signature_lists,
)
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import OVMF_VARS_MAX_SIZE

if TYPE_CHECKING:
    from bastion.trust.keyset import KeySet

DEBIAN_OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass(frozen=True, slots=True)
class SecureBootStore:
    """The Secure Boot variables of a store: data of PK, KEK, db, dbx; SecureBootEnable."""

    pk: bytes
    kek: bytes
    db: bytes
    dbx: bytes
    secure_boot_enable: bool
    custom_mode: bool

    def variable(self, name: str) -> bytes:
        """The data of ``PK``, ``KEK``, ``db`` or ``dbx`` (empty when absent)."""
        return {"PK": self.pk, "KEK": self.kek, "db": self.db, "dbx": self.dbx}[name]


def _virt() -> Any:
    try:
        from virt.firmware.efi import efivar, siglist, ucs16
        from virt.firmware.varstore import edk2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConfigError("virt-firmware is not installed: pip install virt-firmware") from exc
    return efivar, siglist, ucs16, edk2


def _store(template: Path) -> Any:
    _, _, _, edk2 = _virt()
    read_bounded(template, OVMF_VARS_MAX_SIZE, "OVMF variable store")  # size bound first
    if not edk2.Edk2VarStore.probe(str(template)):
        raise FormatError(f"{template} is not a raw edk2 variable store (OVMF_VARS*.fd)")
    return edk2.Edk2VarStore(str(template))


def enrol_ovmf_vars(
    output: str | os.PathLike[str],
    *,
    pk: bytes,
    kek: bytes,
    db: bytes,
    owner: uuid.UUID,
    timestamp: dt.datetime,
    dbx: bytes | None = None,
    template: str | os.PathLike[str] = DEBIAN_OVMF_VARS,
) -> SecureBootStore:
    """Write ``template`` to ``output`` with PK/KEK/db(/dbx) set and Secure Boot enabled.

    ``pk``, ``kek``, ``db`` and ``dbx`` are signature-list data (the ``.esl`` files).
    PK must hold exactly one X.509 certificate, KEK at least one.
    """
    efivar, siglist, ucs16, _ = _virt()
    if timestamp.tzinfo is None:
        raise ConfigError("enrolment timestamp must carry a timezone")
    pk_lists = parse_signature_lists(pk)
    if len(pk_lists) != 1 or len(pk_lists[0].signatures) != 1:
        raise ConfigError("PK must hold exactly one certificate")
    for name, data in (("PK", pk), ("KEK", kek)):
        if not data or any(
            sl.signature_type != EFI_CERT_X509_GUID for sl in parse_signature_lists(data)
        ):
            raise ConfigError(f"{name} must hold X.509 certificates only")
    parse_signature_lists(db)
    if dbx is None:
        dbx = encode_signature_lists([SignatureList.sha256(owner, [hashlib.sha256().digest()])])
    parse_signature_lists(dbx)
    store = _store(Path(template))
    varlist = store.get_varlist()
    when = timestamp.astimezone(dt.UTC).replace(microsecond=0)
    for name, data in (("PK", pk), ("KEK", kek), ("db", db), ("dbx", dbx)):
        var = efivar.EfiVar(ucs16.from_string(name), guid=str(SECURE_BOOT_VARIABLES[name]))
        var.sigdb = siglist.EfiSigDB(data)
        var.data = data
        var.time = when
        varlist[name] = var
    varlist.set_bool("SecureBootEnable", True)
    varlist.set_bool("CustomMode", False)
    try:
        blob = store.bytes_varstore(varlist)
    except SystemExit as exc:  # virt-firmware exits when the store is full
        raise ConfigError(f"the variables do not fit the store {template}") from exc
    atomic_write(output, blob, 0o644)
    return read_secureboot_store(output)


def enrol_from_keyset(
    keyset: KeySet,
    output: str | os.PathLike[str],
    *,
    timestamp: dt.datetime,
    template: str | os.PathLike[str] = DEBIAN_OVMF_VARS,
) -> SecureBootStore:
    """:func:`enrol_ovmf_vars` with the key set's PK, KEK and db certificates."""
    from bastion.trust.secureboot import ROLES, certificate_list, owner_guid

    certs = {v: keyset.certificate(role) for v, role in ROLES.items()}
    owner = owner_guid(certs["PK"])
    data = {v: encode_signature_lists([certificate_list(owner, c)]) for v, c in certs.items()}
    return enrol_ovmf_vars(
        output,
        pk=data["PK"],
        kek=data["KEK"],
        db=data["db"],
        owner=owner,
        timestamp=timestamp,
        template=template,
    )


def read_secureboot_store(path: str | os.PathLike[str]) -> SecureBootStore:
    """The Secure Boot variables of an edk2 store, as virt-firmware reads them."""
    varlist = _store(Path(path)).get_varlist()

    def data(name: str) -> bytes:
        var = varlist.get(name)
        if var is None:
            return b""
        if str(var.guid) != str(SECURE_BOOT_VARIABLES[name]):
            raise FormatError(f"{path}: {name} has vendor GUID {var.guid}")
        return bytes(var.data)

    def flag(name: str) -> bool:
        var = varlist.get(name)
        return bool(var is not None and bytes(var.data)[:1] == b"\x01")

    return SecureBootStore(
        data("PK"),
        data("KEK"),
        data("db"),
        data("dbx"),
        flag("SecureBootEnable"),
        flag("CustomMode"),
    )
