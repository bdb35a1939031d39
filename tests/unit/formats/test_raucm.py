"""manifest.raucm: RAUC's key-file manifest, written byte for byte as RAUC writes it."""

from __future__ import annotations

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats.raucm import Manifest, ManifestImage, parse_manifest

HASH = "a4" * 32
SALT = "c7" * 32
IMG = "dd" * 32

# what rauc 1.8 signs for a verity bundle (captured from `rauc bundle`, values replaced)
RAUC_TEXT = (
    "[update]\ncompatible=bastion-test\nversion=1.0\n\n"
    "[bundle]\nformat=verity\n"
    f"verity-hash={HASH}\nverity-salt={SALT}\nverity-size=4096\n\n"
    f"[image.rootfs]\nsha256={IMG}\nsize=100000\nfilename=rootfs.img\n"
)


def test_round_trip_is_byte_identical_to_rauc() -> None:
    m = parse_manifest(RAUC_TEXT.encode())
    assert m.compatible == "bastion-test"
    assert m.version == "1.0"
    assert (m.verity_hash, m.verity_salt, m.verity_size) == (HASH, SALT, 4096)
    assert m.images == (ManifestImage("rootfs", "rootfs.img", IMG, 100000),)
    assert m.to_text() == RAUC_TEXT


def test_internal_manifest_has_no_verity_metadata() -> None:
    m = parse_manifest(RAUC_TEXT.encode()).without_verity()
    assert "verity-" not in m.to_text()
    assert "[bundle]\nformat=verity\n\n" in m.to_text()
    assert parse_manifest(m.to_bytes()) == m


def test_meta_sections_are_kept_and_comments_read_past() -> None:
    text = RAUC_TEXT + "\n[meta.release]\nchannel=stable\n"
    m = parse_manifest(("# made by hand\n" + text).encode())
    assert m.meta == (("release", (("channel", "stable"),)),)
    assert m.to_text() == text


def test_variant_image_group() -> None:
    text = RAUC_TEXT.replace("[image.rootfs]", "[image.rootfs.board-a]")
    m = parse_manifest(text.encode())
    assert m.images[0].variant == "board-a"
    assert m.to_text() == text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[bundle]\nformat=verity\n", "no [update] compatible"),
        (RAUC_TEXT + "\n[extra]\na=b\n", "unknown group [extra]"),
        (RAUC_TEXT.replace("version=1.0", "version=1.0\nchannel=x"), "unknown key(s): channel"),
        (RAUC_TEXT + "\n[handler]\nfilename=h.sh\n", "does not run bundle handlers"),
        (RAUC_TEXT + "\n[hooks]\nfilename=h.sh\n", "does not run bundle hooks"),
        (RAUC_TEXT + "hooks=install\n", "does not support slot hooks"),
        (RAUC_TEXT + "adaptive=block-hash-index\n", "does not support adaptive"),
        (RAUC_TEXT.replace("format=verity", "format=crypt"), "not supported"),
        (RAUC_TEXT.replace("version=1.0", "version=1.0\nversion=2.0"), "appears twice"),
        (RAUC_TEXT + "\n[update]\nbuild=1\n", "appears twice"),
        (RAUC_TEXT.replace("version=1.0", "version = 1.0"), "expected key=value"),
        (RAUC_TEXT.replace("version=1.0", "version=1.0 "), "surrounding blanks"),
        (RAUC_TEXT.replace("version=1.0", "version=1\\n0"), "backslash"),
        (RAUC_TEXT.replace("version=1.0", "version[de]=1.0"), "expected key=value"),
        (RAUC_TEXT.replace("verity-size=4096", "verity-size=4097"), "multiple of 4096"),
        (RAUC_TEXT.replace("verity-size=4096", "verity-size=-4096"), "unsigned integer"),
        (RAUC_TEXT.replace(f"verity-salt={SALT}\n", ""), "incomplete"),
        (RAUC_TEXT.replace(HASH, HASH.upper()), "lowercase hex"),
        (RAUC_TEXT.replace("filename=rootfs.img", "filename=../rootfs.img"), "plain file name"),
        (RAUC_TEXT.replace("size=100000\n", ""), "has no size"),
        (RAUC_TEXT.replace("[image.rootfs]", "[image.rootfs.]"), "empty variant"),
        ("compatible=x\n[update]\n", "before the first group"),
        (RAUC_TEXT.replace("\n", "\r\n"), "carriage return"),
    ],
)
def test_refusals(text: str, needle: str) -> None:
    with pytest.raises(FormatError, match=None) as info:
        parse_manifest(text.encode())
    assert needle in str(info.value)


def test_limits() -> None:
    with pytest.raises(LimitError):
        parse_manifest(b"#" * (64 * 1024 + 1))
    images = "".join(f"\n[image.s{i}]\nsha256={IMG}\nsize=1\nfilename=f{i}\n" for i in range(33))
    with pytest.raises(LimitError):
        parse_manifest((RAUC_TEXT + images).encode())
    with pytest.raises(LimitError):
        Manifest(compatible="x", version="v" * 5000)
    with pytest.raises(FormatError, match="not UTF-8"):
        parse_manifest(b"[update]\ncompatible=\xff\n")
