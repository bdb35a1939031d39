"""The sim firmware's LoadImage check against db/dbx in edk2's order, including db
entries that are image hashes (EFI_CERT_SHA256_GUID): a hash in db admits an unsigned
image, or one whose signature db does not trust; dbx wins over db; a signature that
carries a dbx certificate is refused whatever db holds."""

from __future__ import annotations

import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.certkit import self_signed
from tests.pebuild import make_pe
from tests.unit.trust.conftest import make_key

from bastion.device.boot.firmware import LoadedImage, SecureBootVariables, check_image, load_events
from bastion.errors import SignatureError, VerificationError
from bastion.formats.efivars import (
    EFI_CERT_SHA256_GUID,
    SignatureData,
    SignatureList,
    encode_signature_lists,
)
from bastion.formats.pe import PeImage
from bastion.trust import pcr7
from bastion.trust.authenticode import sign_pe
from bastion.trust.signer import SignatureScheme, SoftwareSigner

OWNER = uuid.UUID("0b457100-0000-4000-8000-000000000001")
PATH = "\\EFI\\Linux\\a.efi"


KEY, OTHER_KEY = make_key("rsa-2048", 0), make_key("rsa-2048", 1)
DB_CERT, OTHER_CERT = self_signed(KEY, "db"), self_signed(OTHER_KEY, "other")
UNSIGNED = make_pe(trailing=b"unsigned")
UNSIGNED_HASH = PeImage.parse(UNSIGNED).authenticode_digest("sha256")
SIGNED = sign_pe(UNSIGNED, SoftwareSigner(KEY, SignatureScheme.RSA_PKCS1V15_SHA256), DB_CERT)
BY_OTHER = sign_pe(
    UNSIGNED, SoftwareSigner(OTHER_KEY, SignatureScheme.RSA_PKCS1V15_SHA256), OTHER_CERT
)


def _digest(image: bytes) -> bytes:
    return PeImage.parse(image).authenticode_digest("sha256")


def _vars(
    *, db_certs: tuple[x509.Certificate, ...] = (), db_hashes: tuple[bytes, ...] = (),
    dbx_certs: tuple[x509.Certificate, ...] = (), dbx_hashes: tuple[bytes, ...] = (),
) -> SecureBootVariables:  # fmt: skip
    def lists(certs: tuple[x509.Certificate, ...], digests: tuple[bytes, ...]) -> bytes:
        out = [SignatureList.x509(OWNER, c.public_bytes(Encoding.DER)) for c in certs]
        if digests:
            out.append(SignatureList.sha256(OWNER, digests))
        return encode_signature_lists(out)

    pk = encode_signature_lists([SignatureList.x509(OWNER, DB_CERT.public_bytes(Encoding.DER))])
    return SecureBootVariables(
        pk=pk, kek=pk, db=lists(db_certs, db_hashes), dbx=lists(dbx_certs, dbx_hashes)
    )


# --- refused (negative table first) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "variables", "words"),
    [
        # an image hash in db AND dbx: dbx wins
        (UNSIGNED, _vars(db_hashes=(UNSIGNED_HASH,), dbx_hashes=(UNSIGNED_HASH,)), "dbx"),
        (BY_OTHER, _vars(db_hashes=(_digest(BY_OTHER),), dbx_hashes=(_digest(BY_OTHER),)), "dbx"),
        # unsigned, and db lists another image's hash (or certificates only)
        (UNSIGNED, _vars(db_hashes=(bytes(32),)), "not in db"),
        (UNSIGNED, _vars(db_certs=(DB_CERT,)), "not in db"),
        # signed by a key db does not hold, its hash not in db
        (BY_OTHER, _vars(db_certs=(DB_CERT,), db_hashes=(bytes(32),)), "not in db"),
        # its hash in db, but its signature carries a certificate dbx revokes
        (BY_OTHER, _vars(db_hashes=(_digest(BY_OTHER),), dbx_certs=(OTHER_CERT,)), "in dbx"),
        (
            SIGNED,
            _vars(db_certs=(DB_CERT,), db_hashes=(_digest(SIGNED),), dbx_certs=(DB_CERT,)),
            "in dbx",
        ),
        # nothing in db at all
        (UNSIGNED, _vars(), "not in db"),
    ],
)
def test_refused(image: bytes, variables: SecureBootVariables, words: str) -> None:
    with pytest.raises(SignatureError, match=words) as err:
        check_image(PATH, image, variables)
    assert str(err.value).startswith(f"{PATH}: Access Denied")


# --- accepted -----------------------------------------------------------------------------


def _hash_entry(digest: bytes) -> SignatureData:
    return SignatureData(OWNER, digest)


def test_unsigned_image_whose_hash_is_in_db_is_accepted_and_the_hash_is_its_authority() -> None:
    loaded = check_image(PATH, UNSIGNED, _vars(db_certs=(DB_CERT,), db_hashes=(UNSIGNED_HASH,)))
    assert loaded == LoadedImage(PATH, UNSIGNED_HASH, _hash_entry(UNSIGNED_HASH))
    # PCR 7 measures the db hash entry as the authority, once
    measured: set[bytes] = set()
    events = load_events(loaded, measured)
    assert [e.pcr for e in events] == [4, 7]
    blob = pcr7.uefi_variable_data(
        "db", pcr7.EFI_IMAGE_SECURITY_DATABASE, _hash_entry(UNSIGNED_HASH).to_bytes()
    )
    assert events[1].data == blob
    assert [e.pcr for e in load_events(loaded, measured)] == [4]


def test_image_signed_outside_db_is_accepted_by_its_hash_in_db() -> None:
    digest = _digest(BY_OTHER)
    loaded = check_image(PATH, BY_OTHER, _vars(db_certs=(DB_CERT,), db_hashes=(digest,)))
    assert loaded.authority == _hash_entry(digest)


def test_a_db_certificate_verifies_before_the_hash_is_looked_at() -> None:
    digest = _digest(SIGNED)
    loaded = check_image(PATH, SIGNED, _vars(db_certs=(DB_CERT,), db_hashes=(digest,)))
    assert loaded.authority is not None
    assert loaded.authority.data == DB_CERT.public_bytes(Encoding.DER)


def test_secure_boot_off_checks_nothing() -> None:
    loaded = check_image(PATH, UNSIGNED, SecureBootVariables())
    assert loaded.authority is None and loaded.digest == UNSIGNED_HASH


def test_hash_entry_lookup_needs_sha256_lists() -> None:
    variables = _vars(db_hashes=(UNSIGNED_HASH,))
    assert variables.db_hash_entry(UNSIGNED_HASH) == _hash_entry(UNSIGNED_HASH)
    assert variables.db_hash_entry(bytes(32)) is None
    assert pcr7.hash_entry(variables.db, UNSIGNED_HASH) == _hash_entry(UNSIGNED_HASH)
    assert EFI_CERT_SHA256_GUID != OWNER


# --- the offline prediction agrees with the firmware (trust/pcr7.admitting_entry) ---------


@pytest.mark.parametrize(
    ("image", "variables"),
    [
        (UNSIGNED, _vars(db_certs=(DB_CERT,), db_hashes=(UNSIGNED_HASH,))),
        (BY_OTHER, _vars(db_certs=(DB_CERT,), db_hashes=(_digest(BY_OTHER),))),
        (SIGNED, _vars(db_certs=(DB_CERT,), db_hashes=(_digest(SIGNED),))),
        (SIGNED, _vars(db_certs=(OTHER_CERT, DB_CERT))),
    ],
)
def test_admitting_entry_is_the_authority_the_firmware_measures(
    image: bytes, variables: SecureBootVariables
) -> None:
    loaded = check_image(PATH, image, variables)
    assert pcr7.admitting_entry(variables.db, image) == loaded.authority


@pytest.mark.parametrize(
    ("image", "variables"),
    [
        (UNSIGNED, _vars(db_hashes=(bytes(32),))),
        (UNSIGNED, _vars(db_certs=(DB_CERT,))),
        (BY_OTHER, _vars(db_certs=(DB_CERT,), db_hashes=(bytes(32),))),
        (UNSIGNED, _vars()),
    ],
)
def test_admitting_entry_refuses_what_db_does_not_admit(
    image: bytes, variables: SecureBootVariables
) -> None:
    with pytest.raises(SignatureError):
        check_image(PATH, image, variables)
    with pytest.raises(VerificationError, match="db admits this image neither"):
        pcr7.admitting_entry(variables.db, image)


def test_state_for_images_measures_each_distinct_authority_once() -> None:
    variables = _vars(db_certs=(DB_CERT,), db_hashes=(UNSIGNED_HASH,))
    names = {"PK": variables.pk, "KEK": variables.kek, "db": variables.db}
    both_signed = pcr7.state_for_images(names, (SIGNED, SIGNED))
    mixed = pcr7.state_for_images(names, (SIGNED, UNSIGNED))
    authority = [
        e for e in pcr7.events(both_signed) if e.event_type == pcr7.EV_EFI_VARIABLE_AUTHORITY
    ]
    assert len(authority) == 1  # the same certificate admitted both: measured once
    assert [e.event_type for e in pcr7.events(mixed)].count(pcr7.EV_EFI_VARIABLE_AUTHORITY) == 2
    assert pcr7.predict(both_signed) != pcr7.predict(mixed)
    off = pcr7.state_for_images({"db": variables.db}, (UNSIGNED,))  # no PK: Secure Boot off
    assert off.authorities == () and not off.secure_boot
