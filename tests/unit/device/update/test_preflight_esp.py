"""Update preflight refuses a UKI the ESP cannot hold, before anything is written.

The table is the pure decision (device/update/preflight.py ``check`` with an ``EspRoom``);
the install test fills a real FAT ESP on a sim disk (ImageEsp, mtools) and checks that a
refused install left the device as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests import updatekit as uk

from bastion.device.platform.esp import EspSpace, FolderEsp
from bastion.device.update import install, journal, preflight, slots, stream
from bastion.device.update.release import ImageRange, Release
from bastion.errors import FormatError, LimitError

MiB = 1024 * 1024
CLUSTER = 2048
UKI = 10_000  # five clusters
CONFIG = preflight.DeviceConfig(uk.PRODUCT, uk.HARDWARE)
RUNNING = slots.SlotRecord(
    slot="a", version="1.0", svn=1, bundle="x", uki_sha256="", rootfs_sha256="",
    rootfs_size=0, generation=1, state=slots.SlotState.COMMITTED,
)  # fmt: skip


def _release(uki_size: int = UKI) -> Release:
    images = {
        "rootfs": ImageRange("rootfs", 0, 4096, "00" * 32),
        "efi": ImageRange("efi", 4096, uki_size, "00" * 32),
    }
    return Release(uk.PRODUCT, "1.1", 2, (uk.HARDWARE,), None, None, images, "ab" * 32)


def _check(room: preflight.EspRoom, release: Release | None = None) -> preflight.Preflight:
    return preflight.check(
        release or _release(),
        config=CONFIG,
        running=RUNNING,
        fuse_counter=1,
        partition_sizes={"rootfs": MiB},
        bundle_size=0,
        esp=room,
    )


# the UKI takes 5 clusters, and one more is kept for the folder's directory entries
@pytest.mark.parametrize(
    ("free", "reclaimed", "words"),
    [
        (0, 0, "ESP has 0 bytes free"),
        (5 * CLUSTER, 0, "needs 12288"),  # the file fits, the directory entry may not
        (UKI, 0, "needs 12288"),  # bytes are not clusters
        (2 * CLUSTER, 3 * CLUSTER, "6144 from slot b's old entries"),
    ],
)
def test_full_esp_refused(free: int, reclaimed: int, words: str) -> None:
    room = preflight.EspRoom(EspSpace(free, CLUSTER), reclaimed, "b")
    with pytest.raises(LimitError, match=words):
        _check(room)


@pytest.mark.parametrize(("free", "reclaimed"), [(6 * CLUSTER, 0), (CLUSTER, 5 * CLUSTER)])
def test_esp_with_room_accepted(free: int, reclaimed: int) -> None:
    _check(preflight.EspRoom(EspSpace(free, CLUSTER), reclaimed, "b"))


def test_esp_space_is_sane() -> None:
    for free, cluster in ((-1, 512), (0, 0), (10, -512)):
        with pytest.raises(FormatError):
            EspSpace(free, cluster)
    assert EspSpace(0, 512).allocated(0) == 0
    assert EspSpace(0, 512).allocated(513) == 1024


def test_folder_esp_space_and_size(tmp_path: Path) -> None:
    esp = FolderEsp(tmp_path)
    esp.write("EFI/Linux/x.efi", b"x" * 1234)
    assert esp.size("EFI/Linux/x.efi") == 1234
    space = esp.space()
    assert space.free > 0 and space.cluster > 0


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, uk.ReleaseFiles]:
    folder = tmp_path_factory.mktemp("releases")
    blocks = uk.rootfs_blocks(1, 16)
    return {
        "A": uk.make_release(folder, "1.0", 1, b"".join(blocks)),
        "B": uk.make_release(folder, "1.1", 2, b"".join(reversed(blocks))),
    }


def test_install_onto_a_full_esp_is_refused_before_anything_is_written(
    tmp_path: Path, rel: dict[str, uk.ReleaseFiles]
) -> None:
    dev = uk.make_device(tmp_path / "dev", rel["A"], esp_size=MiB)
    esp = dev.esp()
    space = esp.space()
    assert space.free > 0 and esp.size("EFI/Linux/bastion-1-a.efi") == len(rel["A"].uki)
    esp.write("filler.bin", bytes(space.free - 2 * space.cluster))  # two clusters left
    before_disk = dev.disk.read_bytes()
    before_store = sorted(p.name for p in dev.folder.iterdir())
    with pytest.raises(LimitError, match=r"ESP has .* bytes free.* needs"):
        install.install(dev, stream.FileSource(rel["B"].bundle), [uk.KEYS.ca])
    assert dev.disk.read_bytes() == before_disk  # no slot byte, no ESP file written
    assert sorted(p.name for p in dev.folder.iterdir()) == before_store
    assert journal.load(dev) is None and "b" not in slots.load_records(dev)
    # with room again the same install goes through
    esp.remove("filler.bin")
    result = install.install(dev, stream.FileSource(rel["B"].bundle), [uk.KEYS.ca])
    assert esp.read(f"EFI/Linux/{result.entry}") == rel["B"].uki
