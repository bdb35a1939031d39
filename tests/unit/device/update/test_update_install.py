"""Verified streaming install: the happy path, adaptive delta, resume, and the negative
table (each refused with its own error, nothing activated)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests import updatekit as uk
from tests.bundlekit import release_keys

from bastion.device.platform.sim import SimPlatform
from bastion.device.update import commit, install, journal, slots, stream
from bastion.errors import (
    ConflictError,
    DigestMismatchError,
    FormatError,
    IncompatibleError,
    MixAndMatchError,
    PolicyError,
    RollbackError,
    SignatureError,
    TransportError,
)
from bastion.formats.bundle import TRAILER_SIZE

BLOCKS = 48
A_BLOCKS = uk.rootfs_blocks(1, BLOCKS)
CHANGED = (5, 40)


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, uk.ReleaseFiles]:
    folder = tmp_path_factory.mktemp("releases")
    b_blocks = list(A_BLOCKS)
    for i in CHANGED:
        b_blocks[i] = bytes([i]) * uk.BLOCK
    return {
        "A": uk.make_release(folder, "1.0", 1, b"".join(A_BLOCKS)),
        "B": uk.make_release(folder, "1.1", 2, b"".join(b_blocks)),
        "B3": uk.make_release(folder, "2.1", 3, b"".join(b_blocks)),
        "sick": uk.make_release(
            folder,
            "1.5",
            2,
            b"".join(b_blocks),
            health={"required": [{"command": ["false"], "timeout": 5}]},
        ),
        # every block new: the whole rootfs is downloaded
        "C": uk.make_release(folder, "2.0", 3, b"".join(uk.rootfs_blocks(7, BLOCKS))),
        "old": uk.make_release(folder, "0.9", 0, b"".join(uk.rootfs_blocks(9, BLOCKS))),
        "other-hw": uk.make_release(
            folder, "1.2", 2, b"".join(uk.rootfs_blocks(3, BLOCKS)), hardware="board-y"
        ),
        "other-product": uk.make_release(
            folder, "1.3", 2, b"".join(uk.rootfs_blocks(4, BLOCKS)), product="someone-else"
        ),
        "needs-base": uk.make_release(
            folder, "3.0", 3, b"".join(uk.rootfs_blocks(5, BLOCKS)), min_base="2.0"
        ),
    }


@pytest.fixture
def dev(tmp_path: Path, rel: dict[str, uk.ReleaseFiles]) -> SimPlatform:
    return uk.make_device(tmp_path / "dev", rel["A"])


@pytest.fixture
def server(rel: dict[str, uk.ReleaseFiles]) -> Iterator[uk.RangeServer]:
    srv = uk.RangeServer(rel["A"].bundle.parent)
    yield srv
    srv.close()


def _slot_bytes(dev: SimPlatform, slot: str, size: int) -> bytes:
    return dev.read_partition(slots.root_partition(slot), size)


def _nothing_activated(dev: SimPlatform) -> None:
    assert uk.entry_names(dev) == ["bastion-1-a.efi"]
    assert slots.firmware_boot(dev).slot == "a"


def test_install_then_commit(dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]) -> None:
    b = rel["B"]
    result = install.install(dev, stream.FileSource(b.bundle), [uk.KEYS.ca])
    assert (result.slot, result.version, result.svn) == ("b", "1.1", 2)
    assert result.entry == "bastion-2-b+3-0.efi"
    assert _slot_bytes(dev, "b", len(b.rootfs)) == b.rootfs
    assert dev.read_partition(slots.verity_partition("b"), len(b.verity)) == b.verity
    assert dev.esp().read(f"EFI/Linux/{result.entry}") == b.uki
    assert dev.fuses().counter() == 1  # never before the commit
    boot = slots.firmware_boot(dev)
    assert (boot.slot, boot.trial) == ("b", True)
    assert "bastion-2-b+2-1.efi" in uk.entry_names(dev)
    settled = commit.settle(dev, probe=lambda _c: None)
    assert settled.action == "committed"
    assert sorted(uk.entry_names(dev)) == ["bastion-1-a.efi", "bastion-2-b.efi"]
    assert dev.fuses().counter() == 2
    # after the commit the older SVN never boots again, whatever happens to b's entry
    dev.esp().remove("EFI/Linux/bastion-2-b.efi")
    with pytest.raises(Exception, match="no bootable slot"):
        slots.firmware_boot(dev)


def test_adaptive_delta_downloads_only_changed_blocks(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    b = rel["B"]
    result = install.install(dev, stream.FileSource(b.bundle), [uk.KEYS.ca])
    assert result.blocks_downloaded == len(CHANGED)
    assert result.blocks_copied == BLOCKS - len(CHANGED)
    assert result.bytes_downloaded < b.bundle.stat().st_size * 0.25


def test_install_over_http_range(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], server: uk.RangeServer
) -> None:
    c = rel["C"]
    src = stream.HttpSource(f"{server.url}/{c.bundle.name}")
    result = install.install(dev, src, [uk.KEYS.ca])
    assert result.blocks_downloaded == BLOCKS
    assert _slot_bytes(dev, "b", len(c.rootfs)) == c.rootfs
    assert result.bytes_downloaded == src.bytes_read <= c.bundle.stat().st_size


def test_resume_after_a_dropped_link(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], server: uk.RangeServer
) -> None:
    c = rel["C"]
    url = f"{server.url}/{c.bundle.name}"
    server.fail_after = 120_000  # the link drops part way through the rootfs
    with pytest.raises(TransportError):
        install.install(dev, stream.HttpSource(url), [uk.KEYS.ca], chunk=16384, journal_every=1)
    _nothing_activated(dev)
    first = journal.load(dev)
    assert first is not None and first.slot == "b" and first.done > 0
    server.fail_after = None
    result = install.install(dev, stream.HttpSource(url), [uk.KEYS.ca])
    assert result.resumed
    assert result.blocks_in_place >= first.done  # the written blocks are kept, not fetched
    assert result.blocks_downloaded == BLOCKS - result.blocks_in_place
    assert _slot_bytes(dev, "b", len(c.rootfs)) == c.rootfs


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_bit_in_block_n_names_it_and_activates_nothing(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], tmp_path: Path
) -> None:
    c = rel["C"]
    bad = tmp_path / "bad.raucb"
    bad.write_bytes(c.bundle.read_bytes())
    opened = stream.open_bundle(stream.FileSource(c.bundle), [uk.KEYS.ca])
    n = opened.release.images["rootfs"].first_block + 17
    _flip(bad, n * uk.BLOCK + 1234)
    with pytest.raises(DigestMismatchError, match=f"payload block {n} ") as err:
        install.install(dev, stream.FileSource(bad), [uk.KEYS.ca], chunk=16384, journal_every=1)
    assert err.value.block == n
    _nothing_activated(dev)
    assert slots.load_records(dev)["b"].state == slots.SlotState.INSTALLING
    # nothing of block N reached the slot; the 4-block segments before its own did
    image = _slot_bytes(dev, "b", len(c.rootfs))
    assert image[: 16 * uk.BLOCK] == c.rootfs[: 16 * uk.BLOCK]
    assert image[17 * uk.BLOCK : 18 * uk.BLOCK] != c.rootfs[17 * uk.BLOCK : 18 * uk.BLOCK]


def test_bad_signature_refused(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], tmp_path: Path
) -> None:
    with pytest.raises(SignatureError):
        install.install(dev, stream.FileSource(rel["B"].bundle), [release_keys("x").ca])
    bad = tmp_path / "badsig.raucb"
    data = bytearray(rel["B"].bundle.read_bytes())
    size = int.from_bytes(data[-TRAILER_SIZE:], "big")
    data[len(data) - TRAILER_SIZE - 20] ^= 0x01  # inside the CMS signature value
    bad.write_bytes(bytes(data))
    assert size > 20
    with pytest.raises((SignatureError, FormatError)):
        install.install(dev, stream.FileSource(bad), [uk.KEYS.ca])
    _nothing_activated(dev)
    assert "b" not in slots.load_records(dev)


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("other-hw", IncompatibleError, "board-y"),
        ("other-product", IncompatibleError, "someone-else"),
        ("needs-base", PolicyError, "2.0 or later"),
    ],
)
def test_incompatible_release_refused(
    dev: SimPlatform,
    rel: dict[str, uk.ReleaseFiles],
    name: str,
    error: type[Exception],
    words: str,
) -> None:
    with pytest.raises(error, match=words):
        install.install(dev, stream.FileSource(rel[name].bundle), [uk.KEYS.ca])
    _nothing_activated(dev)
    assert "b" not in slots.load_records(dev)


def test_svn_below_fuses_refused(dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]) -> None:
    with pytest.raises(RollbackError, match="security version 0, below the fuse counter 1"):
        install.install(dev, stream.FileSource(rel["old"].bundle), [uk.KEYS.ca])
    _nothing_activated(dev)


def test_truncated_download_refused(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], tmp_path: Path
) -> None:
    data = rel["C"].bundle.read_bytes()
    cut = tmp_path / "cut.raucb"
    cut.write_bytes(data[: len(data) - 5000])
    with pytest.raises(FormatError):
        install.install(dev, stream.FileSource(cut), [uk.KEYS.ca])
    _nothing_activated(dev)


def test_truncated_http_answer_refused(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], server: uk.RangeServer
) -> None:
    server.fail_after = 30_000
    with pytest.raises(TransportError):
        install.install(
            dev, stream.HttpSource(f"{server.url}/{rel['C'].bundle.name}"), [uk.KEYS.ca]
        )
    _nothing_activated(dev)


def test_tampered_journal_cannot_activate_unverified_blocks(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    c = rel["C"]
    opened = stream.open_bundle(stream.FileSource(c.bundle), [uk.KEYS.ca])
    # a journal claiming every block is written (the slot holds none of them)
    forged = journal.Journal(opened.bundle_id, "b", 7, journal.Stage.ACTIVATING, BLOCKS, 0)
    journal.save(dev, forged)
    result = install.install(dev, stream.FileSource(c.bundle), [uk.KEYS.ca])
    assert result.resumed and result.journal_mismatches == BLOCKS
    assert result.blocks_downloaded == BLOCKS
    assert _slot_bytes(dev, "b", len(c.rootfs)) == c.rootfs


def test_unreadable_journal_is_set_aside(dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]) -> None:
    dev.store(journal.JOURNAL, b'{"bundle": 1, "slot": "z"')
    result = install.install(dev, stream.FileSource(rel["B"].bundle), [uk.KEYS.ca])
    assert not result.resumed
    assert _slot_bytes(dev, "b", len(rel["B"].rootfs)) == rel["B"].rootfs


def test_install_over_a_slot_in_trial_refused(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    install.install(dev, stream.FileSource(rel["B"].bundle), [uk.KEYS.ca])
    slots.firmware_boot(dev)  # b in trial, not committed
    with pytest.raises(ConflictError, match="not committed"):
        install.install(dev, stream.FileSource(rel["C"].bundle), [uk.KEYS.ca])


def test_tuf_target_must_match_the_bundle(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    b = rel["B"]
    for changes in (
        {"svn": 5},
        {"version": "9.9"},
        {"length": 1},
        {"custom": {"verity": {"hash": "00" * 32}}},
    ):
        with pytest.raises(MixAndMatchError, match="does not match TUF target"):
            install.install(
                dev, stream.FileSource(b.bundle), [uk.KEYS.ca], target=uk.target_for(b, **changes)
            )
    result = install.install(
        dev, stream.FileSource(b.bundle), [uk.KEYS.ca], target=uk.target_for(b)
    )
    assert result.version == "1.1"


def test_check_and_install_from_tuf(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], server: uk.RangeServer
) -> None:
    targets = [uk.target_for(rel[n]) for n in ("B", "C", "old")]
    client = uk.FakeTufClient(targets, server.url)
    picked = install.check_update(dev, client)
    assert picked is not None and picked.version == "2.0"
    result = install.install_from_tuf(dev, client, [uk.KEYS.ca])
    assert result is not None and result.version == "2.0" and client.refreshed == 2


def test_status_reports_slots(dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]) -> None:
    install.install(dev, stream.FileSource(rel["B"].bundle), [uk.KEYS.ca])
    doc = commit.status(dev)
    json.dumps(doc)
    assert doc["booted"] == {"slot": "a", "stem": "bastion-1-a", "trial": False}
    assert doc["slots"]["b"]["state"] == "trial"  # type: ignore[index]
    assert doc["last_result"]["result"] == "installed"  # type: ignore[index]


def test_delta_reuses_the_target_slots_own_blocks_in_place(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    # a -> C (committed in b); then B3, which is A with two blocks changed, goes into a:
    # A's blocks are still there, in place, and are kept without a write
    install.install(dev, stream.FileSource(rel["C"].bundle), [uk.KEYS.ca])
    slots.firmware_boot(dev)
    assert commit.settle(dev, probe=lambda _c: None).action == "committed"
    result = install.install(dev, stream.FileSource(rel["B3"].bundle), [uk.KEYS.ca])
    assert result.slot == "a"
    assert result.blocks_in_place == BLOCKS - len(CHANGED)
    assert result.blocks_downloaded == len(CHANGED)
    assert _slot_bytes(dev, "a", len(rel["B3"].rootfs)) == rel["B3"].rootfs


def test_http_source_refuses_what_is_not_the_range(
    rel: dict[str, uk.ReleaseFiles], server: uk.RangeServer
) -> None:
    from bastion.errors import NotFoundError
    from bastion.io.http import HttpClient

    name = rel["B"].bundle.name
    data = rel["B"].bundle.read_bytes()
    with HttpClient(server.url) as http:
        assert http.size_of(f"/{name}") == len(data)
        assert http.get_range(f"/{name}", 100, 50) == data[100:150]
        with pytest.raises(TransportError, match=r"truncated|Content-Range"):
            http.get_range(f"/{name}", len(data) - 10, 50)  # past the end: a short answer
        with pytest.raises((NotFoundError, TransportError), match="404"):
            http.get_range("/missing.raucb", 0, 10)


def test_install_without_delta_downloads_every_block(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    b = rel["B"]
    result = install.install(dev, stream.FileSource(b.bundle), [uk.KEYS.ca], delta=False)
    assert (result.blocks_downloaded, result.blocks_copied, result.blocks_in_place) == (
        BLOCKS,
        0,
        0,
    )
    assert _slot_bytes(dev, "b", len(b.rootfs)) == b.rootfs


def test_release_health_check_fails_then_falls_back(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    reports: list[commit.UpdateEvent] = []
    install.install(dev, stream.FileSource(rel["sick"].bundle), [uk.KEYS.ca])
    assert slots.firmware_boot(dev).slot == "b"
    failed = commit.settle(dev, report=reports.append)  # the real prober runs `false`
    assert failed.action == "failed" and "command false: exited 1" in failed.reason
    assert "bastion-2-b+0-1.efi" in uk.entry_names(dev)
    assert slots.firmware_boot(dev).slot == "a"
    fell = commit.settle(dev, report=reports.append)
    assert fell.action == "fell-back" and "command false" in fell.reason
    assert [(r.result, r.slot, r.version) for r in reports] == [("fell-back", "a", "1.5")]
    assert dev.fuses().counter() == 1  # never blown for a slot that did not commit
    doc = commit.status(dev)
    assert doc["last_result"]["result"] == "fell-back"  # type: ignore[index]
    assert doc["slots"]["b"]["state"] == "failed"  # type: ignore[index]
    commit.settle(dev, report=reports.append)
    assert len(reports) == 1  # reported once
