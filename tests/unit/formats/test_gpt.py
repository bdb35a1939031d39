"""GPT codec: layout, CRCs, mixed-endian GUIDs, backup fallback, negative cases."""

from __future__ import annotations

import uuid
import zlib

import pytest

from bastion.errors import FormatError
from bastion.formats import gpt

DISK_SECTORS = 8192  # 4 MiB


def _disk() -> gpt.GptDisk:
    return gpt.GptDisk(
        DISK_SECTORS,
        uuid.UUID("11111111-2222-4333-8444-555555555555"),
        (
            gpt.Partition(gpt.TYPE_XBOOTLDR, gpt.derived_uuid("boot", b"x"), 2048, 4095, 0, "boot"),
            gpt.Partition(
                gpt.TYPE_ROOT_X86_64,
                uuid.UUID("00112233-4455-6677-8899-aabbccddeeff"),
                4096,
                6143,
                gpt.FLAG_READ_ONLY,
                "root-a",
            ),
        ),
    )


def _image(disk: gpt.GptDisk) -> bytearray:
    image = bytearray(disk.size)
    head = disk.head_bytes()
    image[: len(head)] = head
    image[disk.tail_offset :] = disk.tail_bytes()
    return image


def test_round_trip() -> None:
    disk = _disk()
    image = _image(disk)
    parsed = gpt.parse(bytes(image[: 34 * 512]), DISK_SECTORS, bytes(image[-33 * 512 :]))
    assert parsed == disk


def test_guid_mixed_endian_encoding() -> None:
    value = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    raw = gpt.guid_to_bytes(value)
    assert raw.hex() == "28732ac11ff8d211ba4b00a0c93ec93b"
    assert gpt.guid_from_bytes(raw) == value


def test_header_fields_and_crc() -> None:
    image = _image(_disk())
    hdr = image[512:1024]
    assert hdr[:8] == b"EFI PART"
    crc = int.from_bytes(hdr[16:20], "little")
    assert zlib.crc32(bytes(hdr[:16]) + bytes(4) + bytes(hdr[20:92])) == crc
    assert image[510:512] == b"\x55\xaa" and image[450] == 0xEE
    backup = image[-512:]
    assert int.from_bytes(backup[24:32], "little") == DISK_SECTORS - 1


def test_dps_verity_uuids_come_from_root_hash() -> None:
    root_hash = bytes(range(32))
    root_uuid, verity_uuid = gpt.verity_partition_uuids(root_hash)
    assert root_uuid.bytes == root_hash[:16] and verity_uuid.bytes == root_hash[16:]


def test_derived_uuid_is_reproducible_and_v4_shaped() -> None:
    a = gpt.derived_uuid("disk", b"seed")
    assert a == gpt.derived_uuid("disk", b"seed") != gpt.derived_uuid("disk", b"seed2")
    assert a.version == 4


@pytest.mark.parametrize(
    ("where", "what"),
    [
        (512 + 0, "signature"),
        (512 + 20, "header CRC"),
        (512 + 90, "header body"),
        (1024 + 40, "entry array"),
    ],
)
def test_damaged_primary_falls_back_to_backup(where: int, what: str) -> None:
    disk = _disk()
    image = _image(disk)
    image[where] ^= 0x01
    head = bytes(image[: 34 * 512])
    with pytest.raises(FormatError):
        gpt.parse(head, DISK_SECTORS)
    assert gpt.parse(head, DISK_SECTORS, bytes(image[-33 * 512 :])) == disk, what


def test_both_copies_damaged_is_refused() -> None:
    image = _image(_disk())
    image[512 + 30] ^= 1
    image[-512 + 30] ^= 1
    with pytest.raises(FormatError, match=r"primary GPT.*backup GPT"):
        gpt.parse(bytes(image[: 34 * 512]), DISK_SECTORS, bytes(image[-33 * 512 :]))


@pytest.mark.parametrize(
    "parts",
    [
        (("a", 2048, 4095), ("b", 4000, 5000)),  # overlap
        (("a", 10, 100),),  # before first usable
        (("a", 2048, DISK_SECTORS),),  # beyond last usable
    ],
)
def test_bad_layouts_refused(parts: tuple[tuple[str, int, int], ...]) -> None:
    disk = gpt.GptDisk(
        DISK_SECTORS,
        uuid.uuid4(),
        tuple(gpt.Partition(gpt.TYPE_LINUX_DATA, uuid.uuid4(), s, e, 0, n) for n, s, e in parts),
    )
    with pytest.raises(FormatError):
        disk.head_bytes()


def test_missing_mbr_signature_refused() -> None:
    image = _image(_disk())
    image[511] = 0
    with pytest.raises(FormatError, match="MBR"):
        gpt.parse(bytes(image[: 34 * 512]), DISK_SECTORS)


def test_find_partition() -> None:
    disk = _disk()
    assert disk.find("root-a").offset == 4096 * 512
    assert disk.find("root-a").size == 2048 * 512
    with pytest.raises(FormatError):
        disk.find("nope")


def test_parse_verdicts_on_hand_made_tables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The interop table's bastion column, without sfdisk: primary alone, then with backup."""
    from tests.interop.test_gpt_sfdisk import HAND_MADE, _craft

    from bastion.storage.disk_image import read_layout

    for name, (kwargs, _sfdisk, accepts, _why) in HAND_MADE.items():
        path = tmp_path / f"{name}.img"
        _craft(path, **kwargs)
        if accepts:
            assert read_layout(path).partitions, name
        else:
            with pytest.raises(FormatError):
                read_layout(path)


@pytest.mark.parametrize(
    ("parts", "fragment"),
    [
        (((2048, 4095), (4095, 5000)), "overlap"),
        (((5000, 6000), (2048, 5000)), "overlap"),  # unsorted entries that overlap
        (((3000, 2048),), "after last"),
        (((2048, 8159),), "outside the usable range"),
        (((33, 100),), "outside the usable range"),
    ],
)
def test_primary_only_negative_table(tmp_path, parts, fragment: str) -> None:  # type: ignore[no-untyped-def]
    from tests.interop.test_gpt_sfdisk import SECTORS, _craft

    path = tmp_path / "d.img"
    _craft(path, parts=parts)
    data = path.read_bytes()
    with pytest.raises(FormatError, match=fragment):
        gpt.parse(data[: 34 * 512], SECTORS)
