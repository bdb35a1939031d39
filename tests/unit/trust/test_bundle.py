"""Bundle verification: signature against a keyring, then every payload and tree block."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from tests.bundlekit import NOW, release_keys, synthetic_bundle
from tests.conftest import need_tool

from bastion.build.bundle import BundleImage, build_bundle
from bastion.errors import ConfigError, DigestMismatchError, FormatError, SignatureError
from bastion.trust.bundle import load_keyring, verify_bundle, verify_bundle_bytes

KEYS = release_keys()
OTHER = release_keys("other")
GOOD = synthetic_bundle(KEYS)
SIG_SIZE = int.from_bytes(GOOD[-8:], "big")
TREE_START = 300 * 4096


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1
    return bytes(out)


def test_good_bundle_verifies_against_ca_and_leaf() -> None:
    v = verify_bundle_bytes(GOOD, [KEYS.ca])
    assert (v.manifest.compatible, v.manifest.version) == ("bastion-test", "1.2.3")
    assert v.payload_size == TREE_START
    assert v.anchor == KEYS.ca
    assert verify_bundle_bytes(GOOD, [KEYS.cert]).anchor == KEYS.cert


def test_rsa_signer() -> None:
    keys = release_keys("rsa", rsa_key=True)
    assert verify_bundle_bytes(synthetic_bundle(keys, 20), [keys.ca]).manifest.compatible


@pytest.mark.parametrize(
    ("offset", "area", "block"),
    [(0, "data", 0), (129 * 4096 + 7, "data", 129), (TREE_START - 1, "data", 299)],
)
def test_flipped_payload_bit_names_the_block(offset: int, area: str, block: int) -> None:
    with pytest.raises(DigestMismatchError) as info:
        verify_bundle_bytes(_flip(GOOD, offset), [KEYS.ca])
    assert (info.value.area, info.value.block) == (area, block)
    assert f"data block {block} is corrupted" in str(info.value)


def test_flipped_tree_bit_names_the_hash_block() -> None:
    # 300 blocks -> level 0 has 3 hash blocks, level 1 one: tree = [L1][L0 x3]
    with pytest.raises(DigestMismatchError) as info:
        verify_bundle_bytes(_flip(GOOD, TREE_START + 4096 + 5), [KEYS.ca])
    assert (info.value.area, info.value.block) == ("hash", 301)


@pytest.mark.parametrize(
    ("data", "keyring", "kind", "needle"),
    [
        (GOOD, [OTHER.ca], SignatureError, "does not chain"),
        (GOOD, [], SignatureError, "at least one keyring"),
        (_flip(GOOD, len(GOOD) - 9 - 10), [KEYS.ca], SignatureError, ""),
        (GOOD[:-1], [KEYS.ca], FormatError, ""),
        (
            GOOD[: TREE_START - 4096] + GOOD[TREE_START:],
            [KEYS.ca],
            DigestMismatchError,
            "truncated or extended payload",
        ),
        (GOOD[:4096] + GOOD, [KEYS.ca], DigestMismatchError, "data block 1 is corrupted"),
        (GOOD[: 200 * 4096] + GOOD, [KEYS.ca], FormatError, "verity-size"),
        (
            synthetic_bundle(KEYS, 20, manifest_edit="\n[hooks]\nfilename=x\n"),
            [KEYS.ca],
            FormatError,
            "hooks",
        ),
    ],
)
def test_refusals(data: bytes, keyring: list, kind: type[Exception], needle: str) -> None:
    with pytest.raises(kind) as info:
        verify_bundle_bytes(data, keyring)
    assert needle in str(info.value)


def test_manifest_edited_inside_the_cms_is_refused() -> None:
    sig_start = len(GOOD) - 8 - SIG_SIZE
    sig = GOOD[sig_start:-8]
    at = sig.index(b"version=1.2.3")
    tampered = GOOD[:sig_start] + sig[:at] + b"version=9.9.9" + sig[at + 13 :] + GOOD[-8:]
    with pytest.raises(SignatureError, match="messageDigest"):
        verify_bundle_bytes(tampered, [KEYS.ca])


def test_expired_signer_is_refused() -> None:
    later = NOW + dt.timedelta(days=45)
    with pytest.raises(SignatureError, match="not valid at"):
        verify_bundle_bytes(GOOD, [KEYS.ca], now=later)


def test_wrong_certificate_for_signer_is_refused() -> None:
    from bastion.trust.bundle import sign_manifest

    with pytest.raises(ConfigError, match="does not hold"):
        sign_manifest(b"[update]\ncompatible=x\n", KEYS.signer(), OTHER.cert)


def test_load_keyring() -> None:
    from cryptography.hazmat.primitives import serialization

    pem = KEYS.ca.public_bytes(serialization.Encoding.PEM) + OTHER.ca.public_bytes(
        serialization.Encoding.PEM
    )
    assert load_keyring(pem) == [KEYS.ca, OTHER.ca]
    with pytest.raises(FormatError):
        load_keyring(b"not pem")


def test_build_bundle_with_mksquashfs(tmp_path: Path) -> None:
    need_tool("mksquashfs")
    root = tmp_path / "root.img"
    root.write_bytes(os.urandom(102400))
    uki = tmp_path / "uki.efi"
    uki.write_bytes(b"MZ" + b"\x00" * 5000)
    built = build_bundle(
        tmp_path / "b.raucb",
        [BundleImage("rootfs", root, "rootfs.img"), BundleImage("efi", uki, "uki.efi")],
        compatible="bastion-test",
        version="2.0",
        signer=KEYS.signer(),
        certificate=KEYS.cert,
        chain=[KEYS.ca],
    )
    assert built.payload_size % 4096 == 0
    assert built.bundle_size == built.payload_size + built.tree_size + built.signature_size + 8
    with (tmp_path / "b.raucb").open("rb") as f:
        v = verify_bundle(f, [KEYS.ca])
    assert [i.filename for i in v.manifest.images] == ["rootfs.img", "uki.efi"]
    assert v.manifest.images[0].size == 102400


def test_build_refuses_a_one_block_squashfs(tmp_path: Path) -> None:
    need_tool("mksquashfs")
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(b"\x00" * 100)
    # an "appfs" image is not block-aligned, so no padding file grows the squashfs
    with pytest.raises(FormatError, match="larger than 4096"):
        build_bundle(
            tmp_path / "t.raucb",
            [BundleImage("appfs", tiny, "app.img")],
            compatible="x",
            version=None,
            signer=KEYS.signer(),
            certificate=KEYS.cert,
        )
    assert not (tmp_path / "t.raucb").exists()
    assert not (tmp_path / "t.raucb.tmp").exists()


def _resign_cms(edit: object) -> bytes:
    """GOOD with its CMS edited by ``edit(signed_data)`` (signature kept as is)."""
    from asn1crypto import cms

    from bastion.formats.bundle import trailer_bytes

    sig_start = len(GOOD) - 8 - SIG_SIZE
    info = cms.ContentInfo.load(GOOD[sig_start:-8])
    sd = info["content"]
    edit(sd)  # type: ignore[operator]
    der = info.dump(force=True)
    return GOOD[:sig_start] + der + trailer_bytes(len(der))


def _no_certs(sd: object) -> None:
    del sd["certificates"]  # type: ignore[attr-defined]


def _detached(sd: object) -> None:
    sd["encap_content_info"] = {"content_type": "data"}  # type: ignore[index]


def _two_signers(sd: object) -> None:
    si = sd["signer_infos"][0]  # type: ignore[index]
    sd["signer_infos"] = [si, si]  # type: ignore[index]


def _no_attrs(sd: object) -> None:
    del sd["signer_infos"][0]["signed_attrs"]  # type: ignore[index]


def _md5(sd: object) -> None:
    sd["signer_infos"][0]["digest_algorithm"] = {"algorithm": "md5"}  # type: ignore[index]


def _bad_signature(sd: object) -> None:
    si = sd["signer_infos"][0]  # type: ignore[index]
    raw = bytearray(si["signature"].native)
    raw[-1] ^= 1
    si["signature"] = bytes(raw)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_no_certs, "does not carry the signer's certificate"),
        (_detached, "detached content"),
        (_two_signers, "2 signers"),
        (_no_attrs, "no signed attributes"),
        (_md5, "digest md5 is not supported"),
        (_bad_signature, ""),
    ],
)
def test_cms_refusals(edit: object, needle: str) -> None:
    data = _resign_cms(edit)
    sig_size = int.from_bytes(data[-8:], "big")
    assert (len(data) - 8 - sig_size) % 4096 == 0
    with pytest.raises(SignatureError) as info:
        verify_bundle_bytes(data, [KEYS.ca])
    assert needle in str(info.value)
