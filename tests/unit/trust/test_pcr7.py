"""PCR 7 prediction for Secure Boot: event layout, known answer, authority choice."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from bastion.errors import FormatError, VerificationError
from bastion.formats import efivars as ev
from bastion.formats import eventlog as el
from bastion.trust import pcr7
from bastion.trust import secureboot as sb
from bastion.trust.signer import SoftwareSigner

OWNER = uuid.UUID("5a1c7e5a-0000-4000-8000-00000000c0de")
GLOBAL = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
IMAGE_DB = bytes.fromhex("cbb219d73a3d9645a3bcdad00e67656f")


@pytest.fixture(scope="module")
def enrolled() -> dict[str, object]:
    signers = {
        n: SoftwareSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        for n in ("PK", "KEK", "db")
    }
    certs = {n: sb.create_certificate(s, n, "acme") for n, s in signers.items()}
    esl = {n: ev.encode_signature_lists([sb.certificate_list(OWNER, c)]) for n, c in certs.items()}
    dbx = ev.encode_signature_lists([ev.SignatureList.sha256(OWNER, [hashlib.sha256().digest()])])
    return {"certs": certs, "esl": esl, "dbx": dbx, "signers": signers}


def _by_hand(guid: bytes, name: str, data: bytes) -> bytes:
    """TCG PFP UEFI_VARIABLE_DATA, written out independently of the module under test."""
    n = name.encode("utf-16-le")
    return hashlib.sha256(guid + struct.pack("<QQ", len(name), len(data)) + n + data).digest()


def test_known_answer_from_enrolled_variables(enrolled: dict[str, object]) -> None:
    esl: dict[str, bytes] = enrolled["esl"]  # type: ignore[assignment]
    certs: dict[str, x509.Certificate] = enrolled["certs"]  # type: ignore[assignment]
    dbx: bytes = enrolled["dbx"]  # type: ignore[assignment]
    state = pcr7.state_for_boot(
        pk=esl["PK"], kek=esl["KEK"], db=esl["db"], dbx=dbx, boot_signer=certs["db"]
    )
    pcr = bytes(32)
    for digest in (
        _by_hand(GLOBAL, "SecureBoot", b"\x01"),
        _by_hand(GLOBAL, "PK", esl["PK"]),
        _by_hand(GLOBAL, "KEK", esl["KEK"]),
        _by_hand(IMAGE_DB, "db", esl["db"]),
        _by_hand(IMAGE_DB, "dbx", dbx),
        hashlib.sha256(bytes(4)).digest(),
        _by_hand(IMAGE_DB, "db", OWNER.bytes_le + certs["db"].public_bytes(Encoding.DER)),
    ):
        pcr = hashlib.sha256(pcr + digest).digest()
    assert pcr7.predict(state) == pcr
    types = [e.event_type for e in pcr7.events(state)]
    assert types == [0x80000001] * 5 + [el.EventType.EV_SEPARATOR, 0x800000E0]
    # the log round-trips through the event-log codec and replays to the same value
    log = el.EventLog(el.SpecIdEvent(), tuple(pcr7.events(state)))
    assert el.replay(el.parse(log.to_bytes()).events)[7] == pcr


def test_every_input_moves_pcr7(enrolled: dict[str, object]) -> None:
    esl: dict[str, bytes] = enrolled["esl"]  # type: ignore[assignment]
    certs: dict[str, x509.Certificate] = enrolled["certs"]  # type: ignore[assignment]
    dbx: bytes = enrolled["dbx"]  # type: ignore[assignment]
    base = {"pk": esl["PK"], "kek": esl["KEK"], "db": esl["db"], "dbx": dbx}
    ref = pcr7.predict(pcr7.state_for_boot(**base, boot_signer=certs["db"]))
    variants = [
        pcr7.state_for_boot(**base, boot_signer=None),
        pcr7.state_for_boot(**base, secure_boot=False, boot_signer=certs["db"]),
        pcr7.state_for_boot(**{**base, "dbx": b""}, boot_signer=certs["db"]),
        pcr7.state_for_boot(**{**base, "kek": esl["PK"]}, boot_signer=certs["db"]),
        pcr7.state_for_boot(**{**base, "db": esl["db"] + esl["KEK"]}, boot_signer=certs["db"]),
    ]
    values = {pcr7.predict(s) for s in variants}
    assert ref not in values and len(values) == len(variants)
    off = variants[1]
    assert off.authorities == () and pcr7.events(off)[0].data.endswith(b"\x00")


def _leaf(ca_key: rsa.RSAPrivateKey, ca: x509.Certificate) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "uki signer")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )


def test_authority_entry(enrolled: dict[str, object]) -> None:
    esl: dict[str, bytes] = enrolled["esl"]  # type: ignore[assignment]
    certs: dict[str, x509.Certificate] = enrolled["certs"]  # type: ignore[assignment]
    signers: dict[str, SoftwareSigner] = enrolled["signers"]  # type: ignore[assignment]
    hashes_first = ev.encode_signature_lists([ev.SignatureList.sha256(OWNER, [bytes(32)])])
    db = hashes_first + esl["KEK"] + esl["db"]
    entry = pcr7.authority_entry(db, certs["db"])
    assert entry.data == certs["db"].public_bytes(Encoding.DER) and entry.owner == OWNER
    issued = _leaf(signers["db"]._private_key(), certs["db"])  # type: ignore[arg-type]
    assert pcr7.authority_entry(db, issued) == entry  # the CA entry that verified it
    with pytest.raises(VerificationError, match="no db certificate"):
        pcr7.authority_entry(esl["KEK"], certs["db"])
    with pytest.raises(FormatError):
        pcr7.SecureBootState(False, {}, (entry,))
    with pytest.raises(FormatError):
        pcr7.SecureBootState(True, {"MokList": b""})


def test_uefi_variable_data_layout() -> None:
    blob = pcr7.uefi_variable_data("PK", ev.EFI_GLOBAL_VARIABLE, b"xyz")
    assert blob == GLOBAL + struct.pack("<QQ", 2, 3) + "PK".encode("utf-16-le") + b"xyz"
