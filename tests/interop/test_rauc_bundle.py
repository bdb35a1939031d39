"""RAUC 1.8 and bastion read each other's ``verity`` bundles (Debian package ``rauc``).

``rauc info`` checks the CMS and prints the signed manifest; ``rauc extract`` also checks
the payload against the verity tree in user space (no device mapper, docs/reference.rst
"verity Format"), then unsquashfs's it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.bundlekit import ReleaseKeys, release_keys
from tests.conftest import need_tool

from bastion.build.bundle import BundleImage, build_bundle
from bastion.errors import DigestMismatchError, SignatureError
from bastion.trust.bundle import verify_bundle

pytestmark = pytest.mark.interop

KEYS = release_keys()
OTHER = release_keys("other")


def _rauc(*args: str) -> subprocess.CompletedProcess[str]:
    need_tool("rauc")
    return subprocess.run(["rauc", *args], capture_output=True, text=True, timeout=60, check=False)


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def _keyrings(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    ca, cert, key = KEYS.write(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = OTHER.write(other)
    return ca, cert, key, other_ca


def _bastion_bundle(tmp_path: Path, keys: ReleaseKeys) -> tuple[Path, bytes, bytes]:
    need_tool("mksquashfs")
    root = os.urandom(200_000)
    uki = b"MZ" + os.urandom(30_000)
    (tmp_path / "root.img").write_bytes(root)
    (tmp_path / "uki.efi").write_bytes(uki)
    out = tmp_path / "bastion.raucb"
    build_bundle(
        out,
        [
            BundleImage("rootfs", tmp_path / "root.img", "rootfs.img"),
            BundleImage("efi", tmp_path / "uki.efi", "uki.efi"),
        ],
        compatible="bastion-edge",
        version="2026.12.1",
        signer=keys.signer(),
        certificate=keys.cert,
    )
    return out, root, uki


def test_rauc_accepts_bastion_bundle(tmp_path: Path) -> None:
    ca, _, _, other_ca = _keyrings(tmp_path)
    bundle, root, uki = _bastion_bundle(tmp_path, KEYS)
    info = _rauc("info", "--keyring", str(ca), str(bundle))
    assert info.returncode == 0, info.stderr
    assert "Compatible: \t'bastion-edge'" in info.stdout
    assert "Version:    \t'2026.12.1'" in info.stdout
    assert "Bundle Format: \tverity" in info.stdout
    extract = _rauc("extract", "--keyring", str(ca), str(bundle), str(tmp_path / "out"))
    assert extract.returncode == 0, extract.stderr
    assert "Verifying bundle payload" in extract.stderr
    assert (tmp_path / "out" / "rootfs.img").read_bytes() == root
    assert (tmp_path / "out" / "uki.efi").read_bytes() == uki
    with bundle.open("rb") as f:
        assert verify_bundle(f, [KEYS.ca]).manifest.version == "2026.12.1"
    # wrong keyring: both refuse
    wrong = _rauc("info", "--keyring", str(other_ca), str(bundle))
    assert wrong.returncode != 0
    assert "signature verification failed" in wrong.stderr
    with bundle.open("rb") as f, pytest.raises(SignatureError, match="does not chain"):
        verify_bundle(f, [OTHER.ca])


def test_flipped_payload_bit_refused_by_both(tmp_path: Path) -> None:
    ca, _, _, _ = _keyrings(tmp_path)
    bundle, _, _ = _bastion_bundle(tmp_path, KEYS)
    _flip(bundle, 4096 * 20 + 123)
    extract = _rauc("extract", "--keyring", str(ca), str(bundle), str(tmp_path / "out"))
    assert extract.returncode != 0
    assert "bundle payload is corrupted" in extract.stderr
    with bundle.open("rb") as f, pytest.raises(DigestMismatchError) as info:
        verify_bundle(f, [KEYS.ca])
    assert (info.value.area, info.value.block) == ("data", 20)


def test_bastion_verifies_rauc_bundle(tmp_path: Path) -> None:
    ca, cert, key, other_ca = _keyrings(tmp_path)
    need_tool("mksquashfs")
    content = tmp_path / "content"
    content.mkdir()
    (content / "rootfs.img").write_bytes(os.urandom(150_000))
    (content / "manifest.raucm").write_text(
        "[update]\ncompatible=rauc-made\nversion=7.1\n\n[bundle]\nformat=verity\n\n"
        "[image.rootfs]\nfilename=rootfs.img\n"
    )
    bundle = tmp_path / "rauc.raucb"
    made = _rauc("bundle", "--cert", str(cert), "--key", str(key), str(content), str(bundle))
    assert made.returncode == 0, made.stderr
    with bundle.open("rb") as f:
        v = verify_bundle(f, [KEYS.ca])
    assert (v.manifest.compatible, v.manifest.version) == ("rauc-made", "7.1")
    assert v.manifest.images[0].size == 150_000
    assert v.signer == KEYS.cert
    with bundle.open("rb") as f, pytest.raises(SignatureError):
        verify_bundle(f, [OTHER.ca])
    wrong = _rauc("info", "--keyring", str(other_ca), str(bundle))
    assert "signature verification failed" in wrong.stderr
    _flip(bundle, 4096 * 3)
    with bundle.open("rb") as f, pytest.raises(DigestMismatchError) as info:
        verify_bundle(f, [KEYS.ca])
    assert (info.value.area, info.value.block) == ("data", 3)
    extract = _rauc("extract", "--keyring", str(ca), str(bundle), str(tmp_path / "out"))
    assert "bundle payload is corrupted" in extract.stderr


def test_bastion_refuses_rauc_plain_bundle(tmp_path: Path) -> None:
    _, cert, key, _ = _keyrings(tmp_path)
    content = tmp_path / "content"
    content.mkdir()
    (content / "rootfs.img").write_bytes(os.urandom(20_000))
    (content / "manifest.raucm").write_text(
        "[update]\ncompatible=rauc-made\n\n[bundle]\nformat=plain\n\n"
        "[image.rootfs]\nfilename=rootfs.img\n"
    )
    bundle = tmp_path / "plain.raucb"
    made = _rauc("bundle", "--cert", str(cert), "--key", str(key), str(content), str(bundle))
    assert made.returncode == 0, made.stderr
    assert "Creating bundle in 'plain' format" in made.stdout + made.stderr
    with bundle.open("rb") as f, pytest.raises(SignatureError, match="detached content"):
        verify_bundle(f, [KEYS.ca])


@pytest.mark.parametrize("alg", ["ecdsa-p256", "rsa-2048"])
def test_tpm_key_signs_bundle_rauc_accepts(tpm_rig, tmp_path: Path, alg: str) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    from bastion.trust.keys import create_tpm_key
    from bastion.trust.pki import create_root_ca

    need_tool("mksquashfs")
    signer = create_tpm_key(tpm_rig.tpm, alg, tmp_path / "release.tpmkey")
    cert = create_root_ca(signer, f"bastion tpm release {alg}")
    ca = tmp_path / "tpm-ca.pem"
    ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "root.img").write_bytes(os.urandom(20_000))
    out = tmp_path / "tpm.raucb"
    build_bundle(
        out,
        [BundleImage("rootfs", tmp_path / "root.img", "rootfs.img")],
        compatible="bastion-tpm",
        version="3",
        signer=signer,
        certificate=cert,
    )
    info = _rauc("info", "--keyring", str(ca), str(out))
    assert info.returncode == 0, info.stderr
    assert "Compatible: \t'bastion-tpm'" in info.stdout
    with out.open("rb") as f:
        assert verify_bundle(f, [cert]).signer == cert


def test_rauc_accepts_a_bastion_release_with_its_layout(tmp_path: Path) -> None:
    """A release bundle (uncompressed, rootfs block-aligned by a padding file, signed
    [meta.bastion] and [meta.bastion-layout]) is still a bundle RAUC verifies and
    extracts (ADR 0030)."""
    from tests import updatekit

    rootfs = b"".join(updatekit.rootfs_blocks(5, 12))
    rel = updatekit.make_release(tmp_path / "rel", "1.0", 1, rootfs)
    ca, _, _ = updatekit.KEYS.write(tmp_path)
    info = _rauc("info", "--keyring", str(ca), str(rel.bundle))
    assert info.returncode == 0, info.stderr
    out = tmp_path / "out"
    done = _rauc("extract", "--keyring", str(ca), str(rel.bundle), str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "rootfs.img").read_bytes() == rootfs
    assert (out / "uki.efi").read_bytes() == rel.uki
    with rel.bundle.open("rb") as f:
        verified = verify_bundle(f, [updatekit.KEYS.ca])
    layout = dict(dict(verified.manifest.meta)["bastion-layout"])
    offset = int(layout["offset-rootfs"])
    assert offset % 4096 == 0
    assert rel.bundle.read_bytes()[offset : offset + len(rootfs)] == rootfs


def test_rauc_accepts_a_bundle_carrying_golden_values(tmp_path: Path) -> None:
    """ADR 0037: the golden statement is a payload file no [image.*] names and the signed
    manifest has [meta.bastion-golden]; RAUC verifies and extracts the bundle (it reads
    past meta groups) and installs images only."""
    from tests.attestkit import boot_events, golden_of

    from bastion.trust.bundle import bundle_golden
    from bastion.trust.golden import sign_golden

    ca, _, _, _ = _keyrings(tmp_path)
    need_tool("mksquashfs")
    statement = sign_golden(golden_of(boot_events(), version="2026.12.2"), KEYS.signer())
    (tmp_path / "root.img").write_bytes(os.urandom(100_000))
    bundle = tmp_path / "golden.raucb"
    build_bundle(
        bundle,
        [BundleImage("rootfs", tmp_path / "root.img", "rootfs.img")],
        compatible="bastion-edge",
        version="2026.12.2",
        signer=KEYS.signer(),
        certificate=KEYS.cert,
        golden=statement,
    )
    info = _rauc("info", "--keyring", str(ca), str(bundle))
    assert info.returncode == 0, info.stderr
    assert "Version:    \t'2026.12.2'" in info.stdout
    extract = _rauc("extract", "--keyring", str(ca), str(bundle), str(tmp_path / "out"))
    assert extract.returncode == 0, extract.stderr
    assert (tmp_path / "out" / "golden.dsse").read_bytes() == statement
    with bundle.open("rb") as f:
        assert bundle_golden(f, verify_bundle(f, [KEYS.ca])) == statement
