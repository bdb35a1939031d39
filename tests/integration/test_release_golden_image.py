"""``release build --golden-image``: the bundle carries the golden values of the signed
EFI image it is built from (ADR 0037), made by ``bastion image golden``'s code and
signed with the key set's image key.

A real product disk (``image build``: signed systemd-boot and UKI, verity root) is built
once; the bundle built from it carries its slot UKI and a statement equal in values to
``image golden``'s; a UKI that is not the image's, a version or SVN other than the
image's, and a missing key set are refused before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.bootkit import KERNEL, make_tree
from tests.bundlekit import release_keys
from tests.conftest import need_tool
from tests.simefikit import need_efi_tools

from bastion.cli.main import main
from bastion.trust.golden import open_golden
from bastion.trust.keyset import KeySet
from bastion.trust.signer import Verifier

pytestmark = pytest.mark.integration
KEYS = release_keys()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what earlier commands printed
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_release_build_from_the_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_efi_tools()
    need_tool("mksquashfs")
    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    disk = tmp_path / "disk.img"
    assert main([
        "image", "build", "--rootfs", str(make_tree(tmp_path / "tree")),
        "--kernel", str(tmp_path / "vmlinuz"), "--version", "3.1", "--security-version", "4",
        "--keys", str(keys), "--data-size", "24", "-o", str(disk),
    ]) == 0  # fmt: skip
    code, out, err = _run(
        capsys, "image", "golden", str(disk), "--keys", str(keys), "-o",
        str(tmp_path / "golden.sig"), "--json",
    )  # fmt: skip
    assert code == 0, err
    expected = json.loads(out)
    ca, cert, key = KEYS.write(tmp_path)
    (tmp_path / "root.img").write_bytes(b"\x00" * 40_000)
    (tmp_path / "other.efi").write_bytes(b"MZ" + b"\x01" * 9000)
    bundle = tmp_path / "r.raucb"
    base = [
        "release", "build", "--root", str(tmp_path / "root.img"), "--compatible", "edge",
        "--key", f"file:{key}", "--cert", str(cert), "--chain", str(ca), "-o", str(bundle),
        "--golden-image", str(disk),
    ]  # fmt: skip
    refusals = [
        ([*base, "--version", "3.1"], "needs --keys"),
        ([*base, "--keys", str(keys), "--version", "3.2"], "for version '3.1'"),
        (
            [
                *base,
                "--keys",
                str(keys),
                "--version",
                "3.1",
                "--product",
                "edge",
                "--svn",
                "5",
                "--hardware",
                "pi",
            ],
            "security version 4",
        ),
        (
            [*base, "--keys", str(keys), "--version", "3.1", "--uki", str(tmp_path / "other.efi")],
            "is not slot a's UKI",
        ),
    ]
    for argv, needle in refusals:
        code, _, err = _run(capsys, *argv)
        assert code != 0 and needle in err, (argv, err)
        assert not bundle.exists()
    code, out, err = _run(capsys, *base, "--keys", str(keys), "--version", "3.1", "--json")
    assert code == 0, err
    built = json.loads(out)
    assert [i["filename"] for i in built["images"]] == ["rootfs.img", "uki.efi"]
    assert built["golden"]["pcrs"] == expected["pcrs"]
    assert built["golden"]["components"] == expected["components"]
    code, out, err = _run(capsys, "release", "verify", "--keyring", str(ca), str(bundle), "--json")
    assert code == 0, err
    assert json.loads(out)["golden"]["sha256"] == built["golden"]["sha256"]
    # the statement is the image key's: the fleet's product key opens it
    from bastion.trust.bundle import bundle_golden, verify_bundle

    with bundle.open("rb") as f:
        statement = bundle_golden(f, verify_bundle(f, [KEYS.ca]))
    assert statement is not None
    image_key = Verifier.of(KeySet.load(str(keys)).public_key("image"))
    golden = open_golden(statement, [image_key])
    assert (golden.version, golden.security_version) == ("3.1", 4)
