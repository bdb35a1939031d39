"""A bundle's golden-values statement (ADR 0037): named by the signed manifest, read back
from the verified payload, opened with the product key for the release's version/SVN.

Negative table first: every way the statement or its reference can be wrong.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from tests.attestkit import boot_events, golden_of
from tests.bundlekit import release_keys, synthetic_bundle
from tests.conftest import need_tool

from bastion.build.bundle import BundleImage, build_bundle
from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    LimitError,
    SignatureError,
    VerificationError,
)
from bastion.formats.raucm import GOLDEN_FILE, GOLDEN_GROUP, GoldenRef, Manifest, golden_ref
from bastion.trust.bundle import bundle_golden, verify_bundle
from bastion.trust.golden import open_release_golden, peek_golden, sign_golden
from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import SoftwareSigner, Verifier

KEYS = release_keys()
PRODUCT = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
OTHER = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
TRUSTED = [Verifier.of(PRODUCT.public_key())]
STATEMENT = sign_golden(golden_of(boot_events(), svn=3, version="2.0"), PRODUCT)
SHA = hashlib.sha256(STATEMENT).hexdigest()


def _read(data: bytes) -> bytes | None:
    stream = io.BytesIO(data)
    return bundle_golden(stream, verify_bundle(stream, [KEYS.ca]))


# --- the manifest group ----------------------------------------------------------------------


def _manifest(*pairs: tuple[str, str]) -> Manifest:
    return Manifest(compatible="c", meta=((GOLDEN_GROUP, pairs),))


@pytest.mark.parametrize(
    ("pairs", "kind", "needle"),
    [
        ((("filename", GOLDEN_FILE), ("sha256", SHA), ("size", "10")), FormatError, "no offset"),
        (
            (("filename", GOLDEN_FILE), ("sha256", SHA), ("size", "1"), ("offset", "0"), ("x", "")),
            FormatError,
            "unknown key",
        ),
        (
            (("filename", "a/b"), ("sha256", SHA), ("size", "1"), ("offset", "0")),
            FormatError,
            "plain file name",
        ),
        (
            (("filename", GOLDEN_FILE), ("sha256", "AB" * 32), ("size", "1"), ("offset", "0")),
            FormatError,
            "64 hex",
        ),
        (
            (("filename", GOLDEN_FILE), ("sha256", SHA), ("size", "0"), ("offset", "0")),
            LimitError,
            "is not 1..",
        ),
        (
            (("filename", GOLDEN_FILE), ("sha256", SHA), ("size", "70000"), ("offset", "0")),
            LimitError,
            "is not 1..",
        ),
        (
            (("filename", GOLDEN_FILE), ("sha256", SHA), ("size", "-1"), ("offset", "0")),
            FormatError,
            "not an unsigned integer",
        ),
    ],
)
def test_golden_group_refusals(
    pairs: tuple[tuple[str, str], ...], kind: type[Exception], needle: str
) -> None:
    with pytest.raises(kind, match=needle):
        golden_ref(_manifest(*pairs))


def test_golden_group_round_trip() -> None:
    ref = GoldenRef(GOLDEN_FILE, SHA, 100, 4096)
    assert golden_ref(Manifest(compatible="c", meta=(ref.meta(),))) == ref
    assert golden_ref(Manifest(compatible="c")) is None


# --- reading it back from a verified bundle --------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "kind", "needle"),
    [
        # the signed manifest names other bytes than the payload holds
        (GoldenRef(GOLDEN_FILE, "00" * 32, len(STATEMENT), 4096), DigestMismatchError, "names"),
        # one byte short: another digest
        (GoldenRef(GOLDEN_FILE, SHA, len(STATEMENT) - 1, 4096), DigestMismatchError, "names"),
        # outside the verity-protected payload (the tree or the signature follow it)
        (GoldenRef(GOLDEN_FILE, SHA, len(STATEMENT), 40 * 4096 - 10), FormatError, "outside"),
    ],
)
def test_bundle_golden_refusals(ref: GoldenRef, kind: type[Exception], needle: str) -> None:
    data = synthetic_bundle(KEYS, 40, version="2.0", svn=3, golden=STATEMENT, golden_ref=ref)
    with pytest.raises(kind, match=needle):
        _read(data)


def test_bundle_golden_flipped_payload_bit_fails_verification_first() -> None:
    data = bytearray(synthetic_bundle(KEYS, 40, version="2.0", svn=3, golden=STATEMENT))
    data[4096 + 20] ^= 1
    with pytest.raises(DigestMismatchError, match="data block 1"):
        _read(bytes(data))


def test_bundle_golden_read_back() -> None:
    assert _read(synthetic_bundle(KEYS, 40, version="2.0", svn=3, golden=STATEMENT)) == STATEMENT
    assert _read(synthetic_bundle(KEYS, 40, version="2.0", svn=3)) is None


# --- opening it for a release -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "version", "svn", "kind", "needle"),
    [
        (
            sign_golden(golden_of(boot_events(), version="2.0"), OTHER),
            "2.0",
            3,
            SignatureError,
            "0 of 1",
        ),
        (STATEMENT[:-40], "2.0", 3, FormatError, "not valid JSON"),
        (STATEMENT, "2.1", 3, VerificationError, "for version '2.0'"),
        (STATEMENT, "2.0", 4, VerificationError, "security version 3"),
    ],
)
def test_open_release_golden_refusals(
    statement: bytes, version: str, svn: int, kind: type[Exception], needle: str
) -> None:
    with pytest.raises(kind, match=needle):
        open_release_golden(statement, TRUSTED, version=version, svn=svn)


def test_open_release_golden() -> None:
    golden = open_release_golden(STATEMENT, TRUSTED, version="2.0", svn=3)
    assert golden.version == "2.0" and golden.security_version == 3
    assert open_release_golden(STATEMENT, TRUSTED, version="2.0", svn=None) == golden
    assert peek_golden(STATEMENT) == golden


# --- the builder ------------------------------------------------------------------------------


def test_build_bundle_carries_the_statement(tmp_path: Path) -> None:
    need_tool("mksquashfs")
    root = tmp_path / "root.img"
    root.write_bytes(os.urandom(3 * 4096 + 100))
    uki = tmp_path / "uki.efi"
    uki.write_bytes(b"MZ" + os.urandom(5000))
    built = build_bundle(
        tmp_path / "b.raucb",
        [BundleImage("rootfs", root, "rootfs.img"), BundleImage("efi", uki, "uki.efi")],
        compatible="bastion-test",
        version="2.0",
        signer=KEYS.signer(),
        certificate=KEYS.cert,
        chain=[KEYS.ca],
        golden=STATEMENT,
    )
    ref = golden_ref(built.manifest)
    assert ref is not None and ref.sha256 == SHA and ref.filename == GOLDEN_FILE
    # the rootfs image still starts on a payload block
    layout = dict(next(p for label, p in built.manifest.meta if label == "bastion-layout"))
    assert int(layout["offset-rootfs"]) % 4096 == 0
    assert [i.filename for i in built.manifest.images] == ["rootfs.img", "uki.efi"]
    with (tmp_path / "b.raucb").open("rb") as f:
        assert bundle_golden(f, verify_bundle(f, [KEYS.ca])) == STATEMENT


def test_build_bundle_refuses_a_hand_written_golden_group(tmp_path: Path) -> None:
    root = tmp_path / "root.img"
    root.write_bytes(os.urandom(8192))
    with pytest.raises(ConfigError, match="written by the bundle builder"):
        build_bundle(
            tmp_path / "b.raucb",
            [BundleImage("rootfs", root, "rootfs.img")],
            compatible="c",
            version="2.0",
            signer=KEYS.signer(),
            certificate=KEYS.cert,
            meta=[GoldenRef(GOLDEN_FILE, SHA, 10, 0).meta()],
        )
    with pytest.raises(ConfigError, match="golden file"):
        build_bundle(
            tmp_path / "b.raucb",
            [BundleImage("rootfs", root, GOLDEN_FILE)],
            compatible="c",
            version="2.0",
            signer=KEYS.signer(),
            certificate=KEYS.cert,
            golden=STATEMENT,
        )
