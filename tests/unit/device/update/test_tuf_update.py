"""TUF-wired installs: the device's TUF settings, the update check's reasons, and the
target's length and SHA-256 checked over the installed bytes (negative table first)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests import updatekit as uk
from tests.tufkit import NOW, Keys, custom, make_repo, publish, serve

from bastion.build.tuf_repo import renew
from bastion.cli.main import main
from bastion.device.platform.sim import SimPlatform
from bastion.device.update import install, slots, stream, tuf_update
from bastion.errors import (
    ConfigError,
    DigestMismatchError,
    FormatError,
    MixAndMatchError,
    NotFoundError,
    TransportError,
)

BLOCKS = 24
A = uk.rootfs_blocks(11, BLOCKS)


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, uk.ReleaseFiles]:
    folder = tmp_path_factory.mktemp("releases")
    b = list(A)
    b[3] = b"\x03" * uk.BLOCK
    return {
        "A": uk.make_release(folder, "1.0", 1, b"".join(A)),
        "B": uk.make_release(folder, "1.1", 2, b"".join(b)),
        "C": uk.make_release(folder, "2.0", 3, b"".join(uk.rootfs_blocks(12, BLOCKS))),
    }


@pytest.fixture
def dev(tmp_path: Path, rel: dict[str, uk.ReleaseFiles]) -> SimPlatform:
    return uk.make_device(tmp_path / "dev", rel["A"])


def _not_activated(dev: SimPlatform) -> None:
    assert uk.entry_names(dev) == ["bastion-1-a.efi"]
    assert slots.load_records(dev)["b"].state == slots.SlotState.INSTALLING
    assert slots.firmware_boot(dev).slot == "a"
    assert dev.fuses().counter() == 1


# --- the target's bytes: negative table -----------------------------------------------


@pytest.mark.parametrize("delta", [True, False])
def test_target_sha256_mismatch_activates_nothing(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], delta: bool
) -> None:
    """Signature and verity tree pass, the TUF SHA-256 does not: refused, not activated."""
    b = rel["B"]
    forged = uk.target_for(b, sha256="5a" * 32)
    with pytest.raises(DigestMismatchError, match="arbitrary software") as err:
        install.install(dev, stream.FileSource(b.bundle), [uk.KEYS.ca], target=forged,
                        delta=delta)  # fmt: skip
    assert err.value.area == "target"
    assert "5a5a" in str(err.value) and "slot b" in str(err.value)
    _not_activated(dev)


def test_target_bytes_check_sees_the_slot_as_written(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    """A rootfs block that changes in the slot after it was verified fails the digest."""
    b = rel["B"]
    opened = stream.open_bundle(stream.FileSource(b.bundle), [uk.KEYS.ca])
    dev.write_partition(slots.root_partition("b"), 0, b.rootfs)
    tuf_update.verify_target_bytes(dev, opened, "b", uk.target_for(b))  # as written: passes
    dev.write_partition(slots.root_partition("b"), 7 * uk.BLOCK, b"\xff")
    with pytest.raises(DigestMismatchError, match="arbitrary software"):
        tuf_update.verify_target_bytes(dev, opened, "b", uk.target_for(b))
    with pytest.raises(MixAndMatchError, match="says 12"):
        tuf_update.verify_target_bytes(dev, opened, "b", uk.target_for(b, length=12))


def test_delta_install_with_target_passes(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    b = rel["B"]
    result = install.install(dev, stream.FileSource(b.bundle), [uk.KEYS.ca],
                             target=uk.target_for(b))  # fmt: skip
    assert result.blocks_in_place + result.blocks_copied == BLOCKS - 1
    assert result.blocks_downloaded == 1
    assert slots.firmware_boot(dev).slot == "b"


def test_resumed_tuf_install_checks_the_whole_bundle(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    """A link dropped mid-rootfs, then a resume: the SHA-256 covers what both runs wrote."""
    c = rel["C"]
    server = uk.RangeServer(c.bundle.parent)
    try:
        url = f"{server.url}/{c.bundle.name}"
        server.fail_after = 60_000
        with pytest.raises(TransportError):
            install.install(dev, stream.HttpSource(url), [uk.KEYS.ca], target=uk.target_for(c),
                            chunk=16384, journal_every=1)  # fmt: skip
        assert uk.entry_names(dev) == ["bastion-1-a.efi"]
        server.fail_after = None
        with pytest.raises(DigestMismatchError, match="arbitrary software"):
            install.install(dev, stream.HttpSource(url), [uk.KEYS.ca],
                            target=uk.target_for(c, sha256="00" * 32))  # fmt: skip
        _not_activated(dev)
        result = install.install(dev, stream.HttpSource(url), [uk.KEYS.ca],
                                 target=uk.target_for(c))  # fmt: skip
        assert result.resumed and result.blocks_in_place > 0
        assert slots.firmware_boot(dev).slot == "b"
    finally:
        server.close()


# --- settings -------------------------------------------------------------------------


def test_settings_negative(dev: SimPlatform, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="update configure"):
        tuf_update.load_settings(dev)
    with pytest.raises(ConfigError, match="ftp://x"):
        tuf_update.TufSettings("ftp://x", "http://127.0.0.1/t")
    good = tuf_update.TufSettings("http://127.0.0.1/m", "http://127.0.0.1/t")
    meta = tmp_path / "meta"
    not_root = json.dumps({"signed": {"_type": "timestamp"}, "signatures": []}).encode()
    with pytest.raises(FormatError, match="not a TUF root"):
        tuf_update.save_settings(dev, meta, good, not_root)
    with pytest.raises(FormatError):
        tuf_update.save_settings(dev, meta, good, b"{not json")
    with pytest.raises(NotFoundError):
        tuf_update.load_settings(dev)  # nothing was recorded by the refused calls
    with pytest.raises(NotFoundError, match="no trusted TUF root"):
        dev.store(
            tuf_update.SETTINGS,
            json.dumps(
                {"metadata_url": good.metadata_url, "targets_url": good.targets_url}
            ).encode(),
        )
        tuf_update.open_client(dev, meta)  # fmt: skip


def test_new_root_drops_metadata_trusted_under_the_old(dev: SimPlatform, tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "timestamp.json").write_text("{}")
    root = json.dumps({"signed": {"_type": "root"}, "signatures": []}).encode()
    settings = tuf_update.TufSettings("http://127.0.0.1/m", "http://127.0.0.1/t")
    tuf_update.save_settings(dev, meta, settings, root)
    assert sorted(p.name for p in meta.iterdir()) == ["root.json"]
    assert tuf_update.load_settings(dev) == settings


# --- the check's reasons --------------------------------------------------------------


def test_check_says_why_nothing_is_picked(dev: SimPlatform, tmp_path: Path) -> None:
    keys = Keys()
    repo = make_repo(tmp_path / "repo", keys)
    repo.delegate(uk.PRODUCT, keys.product, 1, keys.targets, NOW)
    renew(repo, keys.snapshot, keys.timestamp, NOW)
    meta = tmp_path / "meta"
    root = (repo.metadata_dir / "1.root.json").read_bytes()
    files = tmp_path / "files"
    files.mkdir()
    with serve(repo.path) as base:
        settings = tuf_update.TufSettings(f"{base}/metadata", f"{base}/targets")
        tuf_update.save_settings(dev, meta, settings, root)

        def check() -> tuf_update.UpdateCheck:
            client = tuf_update.open_client(dev, meta)
            try:
                return tuf_update.check(dev, client)
            finally:
                client.close()

        empty = check()
        assert (empty.status, empty.target, empty.refused) == ("no-release", None, ())
        publish(repo, keys, files, "y.raucb",
                custom("2.0", 2, hardware=("board-y",), product=uk.PRODUCT))  # fmt: skip
        publish(repo, keys, files, "old.raucb", custom("0.5", 0, hardware=(uk.HARDWARE,),
                                                       product=uk.PRODUCT))  # fmt: skip
        none = check()
        assert none.status == "not-suitable" and none.target is None
        reasons = dict(none.refused)
        assert "not 'board-x'" in reasons[f"{uk.PRODUCT}/stable/y.raucb"]
        assert "below the device's 1" in reasons[f"{uk.PRODUCT}/stable/old.raucb"]
        publish(repo, keys, files, "x.raucb", custom("1.0", 1, hardware=(uk.HARDWARE,),
                                                     product=uk.PRODUCT))  # fmt: skip
        assert check().status == "up-to-date"
        publish(repo, keys, files, "n.raucb", custom("1.2", 1, hardware=(uk.HARDWARE,),
                                                     product=uk.PRODUCT))  # fmt: skip
        found = check()
        assert found.status == "available" and found.target is not None
        assert found.target.version == "1.2"
        assert found.to_json()["target"]["path"] == f"{uk.PRODUCT}/stable/n.raucb"  # type: ignore[index]


# --- the CLI's configuration errors ---------------------------------------------------


def test_cli_configure_and_keyring_errors(
    dev: SimPlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(dev.folder)
    base = ["update", "configure", d, "--product", uk.PRODUCT, "--hardware", uk.HARDWARE]
    assert main([*base, "--metadata-url", "http://127.0.0.1:1/m"]) == 9
    assert "only --metadata-url given" in capsys.readouterr().err
    assert main(["update", "install", d, str(dev.folder / "x.raucb")]) == 9
    assert "no release keyring" in capsys.readouterr().err
    assert main(["update", "check", d]) == 5  # no TUF settings recorded
    assert "update configure" in capsys.readouterr().err
