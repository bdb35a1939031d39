"""Secure Boot keys and authenticated variable updates: signer rules and negative cases."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from bastion.cli.main import main
from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    RollbackError,
    SignatureError,
    VerificationError,
)
from bastion.formats import efivars as ev
from bastion.formats.pkcs7_signed import SignedData
from bastion.trust import secureboot as sb
from bastion.trust.keys import KeyAlgorithm
from bastion.trust.keyset import KeySet, create_keyset
from bastion.trust.signer import SoftwareSigner

OWNER = uuid.UUID("5a1c7e5a-0000-4000-8000-00000000c0de")
T = ev.EfiTime(2026, 3, 4, 5, 6, 7)


@dataclasses.dataclass
class Keys:
    signers: dict[str, SoftwareSigner]
    certs: dict[str, x509.Certificate]

    def esl(self, name: str) -> bytes:
        return ev.encode_signature_lists([sb.certificate_list(OWNER, self.certs[name])])

    def sign(self, variable: str, data: bytes, by: str, when: ev.EfiTime = T, **kw: bool) -> bytes:
        return sb.sign_update(
            variable, data, self.signers[by], self.certs[by], when, **kw
        ).to_bytes()


@pytest.fixture(scope="module")
def keys() -> Keys:
    signers = {
        n: SoftwareSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        for n in ("PK", "KEK", "db", "other")
    }
    certs = {
        n: sb.create_certificate(s, "db" if n == "other" else n, "acme") for n, s in signers.items()
    }
    return Keys(signers, certs)


def _dbx() -> bytes:
    return ev.encode_signature_lists(
        [ev.SignatureList.sha256(OWNER, [hashlib.sha256(b"x").digest()])]
    )


def test_certificates_fit_firmware(keys: Keys) -> None:
    cert = keys.certs["KEK"]
    assert cert.subject == cert.issuer and cert.signature_hash_algorithm.name == "sha256"  # type: ignore[union-attr]
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048  # type: ignore[union-attr]
    cert.verify_directly_issued_by(cert)
    with pytest.raises(ConfigError):
        sb.create_certificate(SoftwareSigner(ec.generate_private_key(ec.SECP256R1())), "PK", "x")
    with pytest.raises(ConfigError):
        sb.create_certificate(keys.signers["PK"], "dbx", "x")


def test_chain_of_updates(keys: Keys) -> None:
    pk, kek = keys.certs["PK"], keys.certs["KEK"]
    first = sb.verify_update("PK", keys.sign("PK", keys.esl("PK"), "PK"), pk=None)
    assert first.signer == pk and first.attributes == 0x27 and first.timestamp == T
    assert sb.certificates_in(first.lists) == [pk]
    later = ev.EfiTime(2026, 3, 4, 5, 6, 8)
    sb.verify_update("PK", keys.sign("PK", keys.esl("PK"), "PK", later), pk=pk, current=T)
    got = sb.verify_update("KEK", keys.sign("KEK", keys.esl("KEK"), "PK"), pk=pk)
    assert got.vendor == ev.EFI_GLOBAL_VARIABLE and got.signer == pk
    got = sb.verify_update("db", keys.sign("db", keys.esl("db"), "KEK"), pk=pk, kek=[kek])
    assert got.vendor == ev.EFI_IMAGE_SECURITY_DATABASE and got.signer == kek
    got = sb.verify_update(
        "dbx", keys.sign("dbx", _dbx(), "KEK"), pk=pk, kek=[keys.certs["other"], kek]
    )
    assert got.lists[0].signature_type == ev.EFI_CERT_SHA256_GUID
    appended = keys.sign("db", keys.esl("other"), "KEK", append=True)
    got = sb.verify_update("db", appended, pk=pk, kek=[kek], append=True, current=later)
    assert got.attributes == 0x67
    deletion = keys.sign("PK", b"", "PK", later)
    assert sb.verify_update("PK", deletion, pk=pk, current=T).lists == ()


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def _strip_certs(auth: bytes) -> bytes:
    parsed = ev.AuthenticatedVariable.parse(auth)
    sd = dataclasses.replace(SignedData.parse(parsed.signed_data), certificates=())
    return dataclasses.replace(parsed, signed_data=sd.to_bytes()).to_bytes()


def _with_time(auth: bytes, when: ev.EfiTime) -> bytes:
    return when.to_bytes() + auth[16:]


# (case, variable, make auth, verify kwargs, expected error)
NEGATIVE: list[
    tuple[str, str, Callable[[Keys], bytes], Callable[[Keys], dict[str, object]], type[Exception]]
] = [
    (
        "db signed by PK (KEK required)",
        "db",
        lambda k: k.sign("db", k.esl("db"), "PK"),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        SignatureError,
    ),
    (
        "db signed by db",
        "db",
        lambda k: k.sign("db", k.esl("db"), "db"),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        SignatureError,
    ),
    (
        "KEK signed by KEK",
        "KEK",
        lambda k: k.sign("KEK", k.esl("KEK"), "KEK"),
        lambda k: {"pk": k.certs["PK"]},
        SignatureError,
    ),
    (
        "PK replaced by a stranger in user mode",
        "PK",
        lambda k: k.sign("PK", k.esl("other"), "other"),
        lambda k: {"pk": k.certs["PK"]},
        SignatureError,
    ),
    (
        "first PK signed by another key",
        "PK",
        lambda k: k.sign("PK", k.esl("PK"), "other"),
        lambda k: {"pk": None},
        SignatureError,
    ),
    (
        "flipped bit in data",
        "db",
        lambda k: _flip(k.sign("db", k.esl("db"), "KEK"), -40),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        SignatureError,
    ),
    (
        "flipped bit in signature",
        "db",
        lambda k: _flip(
            k.sign("db", k.esl("db"), "KEK"),
            16
            + 24
            + len(ev.AuthenticatedVariable.parse(k.sign("db", k.esl("db"), "KEK")).signed_data)
            - 3,
        ),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        SignatureError,
    ),
    (
        "timestamp edited",
        "db",
        lambda k: _with_time(k.sign("db", k.esl("db"), "KEK"), ev.EfiTime(2027, 1, 1)),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        SignatureError,
    ),
    (
        "timestamp with nanoseconds",
        "db",
        lambda k: _with_time(
            k.sign("db", k.esl("db"), "KEK"), dataclasses.replace(T, nanosecond=1)
        ),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        VerificationError,
    ),
    (
        "rollback: same timestamp",
        "db",
        lambda k: k.sign("db", k.esl("db"), "KEK"),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]], "current": T},
        RollbackError,
    ),
    (
        "rollback: older timestamp",
        "KEK",
        lambda k: k.sign("KEK", k.esl("KEK"), "PK"),
        lambda k: {"pk": k.certs["PK"], "current": ev.EfiTime(2030, 1, 1)},
        RollbackError,
    ),
    (
        "db update replayed as dbx",
        "dbx",
        lambda k: k.sign("db", k.esl("db"), "KEK"),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        SignatureError,
    ),
    (
        "replace signed, verified as append",
        "db",
        lambda k: k.sign("db", k.esl("db"), "KEK"),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]], "append": True},
        SignatureError,
    ),
    (
        "signer certificate missing",
        "db",
        lambda k: _strip_certs(k.sign("db", k.esl("db"), "KEK")),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        SignatureError,
    ),
    (
        "truncated in the header",
        "db",
        lambda k: k.sign("db", k.esl("db"), "KEK")[:30],
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        FormatError,
    ),
    (
        "truncated in the SignedData",
        "db",
        lambda k: k.sign("db", k.esl("db"), "KEK")[:300],
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        FormatError,
    ),
    (
        "truncated in the data",
        "db",
        lambda k: k.sign("db", k.esl("db"), "KEK")[:-5],
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        FormatError,
    ),
    (
        "hash entry in KEK",
        "KEK",
        lambda k: k.sign("KEK", _dbx(), "PK"),
        lambda k: {"pk": k.certs["PK"]},
        VerificationError,
    ),
    (
        "two certificates in PK",
        "PK",
        lambda k: k.sign("PK", k.esl("PK") + k.esl("other"), "PK"),
        lambda k: {"pk": None},
        VerificationError,
    ),
    (
        "KEK with no PK",
        "KEK",
        lambda k: k.sign("KEK", k.esl("KEK"), "PK"),
        lambda k: {"pk": None},
        VerificationError,
    ),
    (
        "db with no KEK",
        "db",
        lambda k: k.sign("db", k.esl("db"), "KEK"),
        lambda k: {"pk": k.certs["PK"], "kek": []},
        VerificationError,
    ),
    (
        "PK deletion in setup mode",
        "PK",
        lambda k: k.sign("PK", b"", "PK"),
        lambda k: {"pk": None},
        VerificationError,
    ),
    (
        "SignedData version 2",
        "db",
        lambda k: _resigned_data(k.sign("db", k.esl("db"), "KEK"), version=2),
        lambda k: {"pk": k.certs["PK"], "kek": [k.certs["KEK"]]},
        SignatureError,
    ),
    (
        "setup-mode PK whose certificate subject is malformed",
        "PK",
        lambda k: _bad_subject(k.sign("PK", k.esl("PK"), "PK")),
        lambda k: {"pk": None},
        FormatError,
    ),
]


def _resigned_data(auth: bytes, **changes: object) -> bytes:
    parsed = ev.AuthenticatedVariable.parse(auth)
    sd = dataclasses.replace(SignedData.parse(parsed.signed_data), **changes)  # type: ignore[arg-type]
    return dataclasses.replace(parsed, signed_data=sd.to_bytes()).to_bytes()


def _bad_subject(auth: bytes) -> bytes:
    """Re-tag the last CommonName (in the new PK's certificate) as an illegal string type."""
    at = auth.rfind(b"\x0c\x13acme Secure Boot PK")
    assert at > len(auth) // 2
    return auth[:at] + b"\x0d" + auth[at + 1 :]


def test_rsa_signature_oid_forms_are_both_accepted(keys: Keys) -> None:
    from bastion.formats.pkcs7_signed import OID_SHA256_WITH_RSA

    auth = keys.sign("db", keys.esl("db"), "KEK")
    parsed = ev.AuthenticatedVariable.parse(auth)
    sd = SignedData.parse(parsed.signed_data)
    si = dataclasses.replace(sd.signer_infos[0], signature_oid=OID_SHA256_WITH_RSA)
    other = dataclasses.replace(sd, signer_infos=(si,)).to_bytes()
    changed = dataclasses.replace(parsed, signed_data=other).to_bytes()
    got = sb.verify_update("db", changed, pk=keys.certs["PK"], kek=[keys.certs["KEK"]])
    assert got.signer == keys.certs["KEK"]


@pytest.mark.parametrize(
    ("case", "variable", "make", "kwargs", "error"), NEGATIVE, ids=[n[0] for n in NEGATIVE]
)
def test_verify_negative(
    keys: Keys,
    case: str,
    variable: str,
    make: Callable[[Keys], bytes],
    kwargs: Callable[[Keys], dict[str, object]],
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        sb.verify_update(variable, make(keys), **kwargs(keys))  # type: ignore[arg-type]


def _attributes_auth(keys: Keys, content_for_digest: bytes | None = None) -> bytes:
    """An auth whose SignedData has signed attributes (as sbvarsign writes), via cryptography."""
    data = keys.esl("db")
    content = ev.signable_bytes("db", ev.EFI_IMAGE_SECURITY_DATABASE, 0x27, T, data)
    key = keys.signers["KEK"]._private_key()
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content_for_digest or content)
        .add_signer(keys.certs["KEK"], key, hashes.SHA256())  # type: ignore[arg-type]
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        )
    )
    bare = SignedData.parse(der, allow_content_info=True)
    assert bare.signer_infos[0].attributes
    return ev.AuthenticatedVariable(T, bare.to_bytes(), data).to_bytes()


def test_signed_attributes(keys: Keys) -> None:
    kw = {"pk": keys.certs["PK"], "kek": [keys.certs["KEK"]]}
    assert sb.verify_update("db", _attributes_auth(keys), **kw).signer == keys.certs["KEK"]  # type: ignore[arg-type]
    with pytest.raises(DigestMismatchError):
        sb.verify_update("db", _attributes_auth(keys, b"something else"), **kw)  # type: ignore[arg-type]


def test_sign_refuses(keys: Keys) -> None:
    with pytest.raises(ConfigError, match="does not match"):
        sb.sign_update("db", keys.esl("db"), keys.signers["KEK"], keys.certs["PK"], T)
    with pytest.raises(ConfigError, match="nanosecond"):
        sb.sign_update(
            "db", b"", keys.signers["KEK"], keys.certs["KEK"], dataclasses.replace(T, timezone=60)
        )
    with pytest.raises(ConfigError, match="expected one of"):
        sb.sign_update("MokList", b"", keys.signers["KEK"], keys.certs["KEK"], T)
    with pytest.raises(FormatError):
        sb.sign_update("db", b"not a list", keys.signers["KEK"], keys.certs["KEK"], T)


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    folder = tmp_path_factory.mktemp("sbks") / "keys"
    return create_keyset(folder, product="acme", rsa_algorithm=KeyAlgorithm.RSA_2048)


def test_enrolment_from_keyset(keyset: KeySet) -> None:
    enrolment = sb.build_enrolment(keyset, T)
    f = enrolment.files
    assert sorted(f) == sorted(
        f"{v}.{e}" for v in ("PK", "KEK", "db") for e in ("esl", "auth", "cer")
    )
    pk = keyset.certificate("secureboot-pk")
    kek = keyset.certificate("secureboot-kek")
    assert enrolment.owner == sb.owner_guid(pk)
    assert f["PK.cer"] == pk.public_bytes(serialization.Encoding.DER)
    assert sb.verify_update("PK", f["PK.auth"], pk=None).signer == pk
    assert sb.verify_update("KEK", f["KEK.auth"], pk=pk).signer == pk
    db = sb.verify_update("db", f["db.auth"], pk=pk, kek=[kek])
    assert db.signer == kek
    assert sb.certificates_in(db.lists) == [keyset.certificate("secureboot-db")]
    assert db.lists[0].signatures[0].owner == enrolment.owner
    assert ev.AuthenticatedVariable.parse(f["db.auth"]).data == f["db.esl"]
    assert keyset.entry("secureboot-pk").offline and not keyset.entry("secureboot-db").offline


def test_cli_keys_secureboot(
    keyset: KeySet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = hashlib.sha256(b"revoked").hexdigest()
    out = tmp_path / "sb"
    code = main(
        [
            "keys",
            "secureboot",
            str(keyset.folder),
            "-o",
            str(out),
            "--timestamp",
            "2026-05-06T07:08:09+00:00",
            "--dbx-hash",
            digest,
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)["secureboot"]
    assert doc["timestamp"] == "2026-05-06 07:08:09" and "dbx.auth" in doc["files"]
    kek = keyset.certificate("secureboot-kek")
    dbx = sb.verify_update("dbx", (out / "dbx.auth").read_bytes(), pk=None, kek=[kek])
    assert dbx.lists[0].signatures[0].data.hex() == digest
    assert dbx.timestamp == ev.EfiTime.from_datetime(
        dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    )
    code = main(["keys", "secureboot", str(keyset.folder), "-o", str(out), "--dbx-hash", "zz"])
    assert code != 0 and "dbx-hash" in capsys.readouterr().err


def test_keys_init_writes_enrolment_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KS_PASS", "correct horse battery")
    folder = tmp_path / "keys"
    assert main(["keys", "init", str(folder), "--passphrase-env", "KS_PASS", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    info = doc["secureboot"]
    assert info["files"] == sorted(
        f"{v}.{e}" for v in ("PK", "KEK", "db") for e in ("auth", "cer", "esl")
    )
    assert {"secureboot-pk.key.pem", "secureboot-kek.key.pem"} <= set(doc["keep_offline"])
    assert "secureboot-db.key.pem" not in doc["keep_offline"]
    ks = KeySet.load(folder)
    assert b"ENCRYPTED" in (folder / "secureboot-pk.key.pem").read_bytes()
    pk = ks.certificate("secureboot-pk")
    assert info["owner_guid"] == str(sb.owner_guid(pk))
    out = folder / "secureboot"
    assert sb.verify_update("PK", (out / "PK.auth").read_bytes(), pk=None).signer == pk
    kek = ks.certificate("secureboot-kek")
    assert sb.verify_update("db", (out / "db.auth").read_bytes(), pk=pk, kek=[kek]).signer == kek
    again = tmp_path / "again"
    args = ["keys", "secureboot", str(folder), "-o", str(again)]
    assert main([*args, "--passphrase-env", "KS_PASS"]) == 0
    assert sb.verify_update("KEK", (again / "KEK.auth").read_bytes(), pk=pk).signer == pk
    capsys.readouterr()
    assert main([*args, "--timestamp", "2030-01-01T00:00:00Z"]) == 4  # encrypted, no passphrase
    assert "secureboot-pk.key.pem" in capsys.readouterr().err
    assert main(["keys", "show", str(folder)]) == 0
    listing = capsys.readouterr().out
    assert "secureboot-pk and secureboot-kek are OFFLINE keys" in listing
    assert "secureboot-db is the online key that signs boot artefacts" in listing


def test_tpm_held_kek_signs_db_updates(keys: Keys, tpm_rig, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Keys by URI: a KEK that never leaves a TPM (both backends) signs db updates."""
    from bastion.trust.keys import create_tpm_key

    signer = create_tpm_key(tpm_rig.tpm, "rsa-2048", tmp_path / "kek.tpmkey")
    cert = sb.create_certificate(signer, "KEK", "acme")
    cert.verify_directly_issued_by(cert)
    auth = sb.sign_update("db", keys.esl("db"), signer, cert, T).to_bytes()
    got = sb.verify_update("db", auth, pk=keys.certs["PK"], kek=[cert])
    assert got.signer == cert
    with pytest.raises(SignatureError):
        sb.verify_update("db", auth, pk=keys.certs["PK"], kek=[keys.certs["KEK"]])
