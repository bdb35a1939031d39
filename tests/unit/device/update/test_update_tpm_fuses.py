"""device/update on a device whose fuses are TPM NV bits indexes (``"fuses": "tpm"``).

Negative table first: every entry point that reads or blows the fuses refuses without
the device's TPM (ConfigError), before it writes anything; a TPM-fused device whose TPM
state is gone is refused rather than read as a bank with no fuse blown. Then the flow
with the TPM: install, boot, settle; the NV counter rises to the new SVN only at commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests import updatekit as uk

from bastion.device.platform.sim import SimPlatform
from bastion.device.update import commit, health, install, journal, slots, stream, tuf_update
from bastion.errors import ConfigError, NotFoundError
from bastion.tpm.fuses import TpmFuseBank

BLOCKS = 16


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, uk.ReleaseFiles]:
    folder = tmp_path_factory.mktemp("releases")
    blocks = uk.rootfs_blocks(1, BLOCKS)
    a = uk.make_release(folder, "1.0", 1, b"".join(blocks))
    blocks[3] = b"z" * uk.BLOCK
    return {"A": a, "B": uk.make_release(folder, "1.1", 2, b"".join(blocks))}


@pytest.fixture
def dev(tmp_path: Path, rel: dict[str, uk.ReleaseFiles]) -> SimPlatform:
    return uk.make_device(tmp_path / "dev", rel["A"], fuses="tpm")


def _counter(dev: SimPlatform) -> int:
    with dev.fuse_tpm() as tpm:
        assert tpm is not None
        return TpmFuseBank(tpm).counter()


def _snapshot(dev: SimPlatform) -> dict[str, Any]:
    """Everything the update path may write: records, journal, result, booted, entries."""
    return {
        "records": dev.load("update-slots.json"),
        "journal_clear": journal.is_clear(dev),
        "result": dev.load(install.RESULT),
        "booted": dev.load(slots.BOOTED),
        "entries": uk.entry_names(dev),
        "slot_b": dev.read_partition(slots.root_partition("b"), uk.BLOCK * BLOCKS),
    }


def _install(dev: SimPlatform, rel: dict[str, uk.ReleaseFiles], tpm: Any = None) -> Any:
    source = stream.FileSource(rel["B"].bundle)
    try:
        return install.install(dev, source, [uk.KEYS.ca], tpm=tpm)
    finally:
        source.close()


def _installed(dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]) -> None:
    with dev.fuse_tpm() as tpm:
        _install(dev, rel, tpm)
        slots.firmware_boot(dev, tpm)


def _tuf() -> uk.FakeTufClient:
    """A TUF double that must not be refreshed: the fuses are read first."""
    client = uk.FakeTufClient([], "http://127.0.0.1:9")

    def refresh() -> None:
        raise AssertionError("TUF refreshed before the fuses were read")

    client.refresh = refresh  # type: ignore[method-assign]
    return client


NO_TPM: list[tuple[str, Callable[[SimPlatform, dict[str, uk.ReleaseFiles]], object]]] = [
    ("install", _install),
    ("check_update", lambda d, r: install.check_update(d, _tuf())),  # type: ignore[arg-type]
    ("tuf check", lambda d, r: tuf_update.check(d, _tuf())),  # type: ignore[arg-type]
    ("firmware_boot", lambda d, r: slots.firmware_boot(d)),
    ("status", lambda d, r: commit.status(d)),
]


@pytest.mark.parametrize(("name", "call"), NO_TPM, ids=[n for n, _ in NO_TPM])
def test_no_tpm_refused_before_any_write(
    dev: SimPlatform,
    rel: dict[str, uk.ReleaseFiles],
    name: str,
    call: Callable[[SimPlatform, dict[str, uk.ReleaseFiles]], object],
) -> None:
    before = _snapshot(dev)
    with pytest.raises(ConfigError, match="keeps its fuses in the TPM"):
        call(dev, rel)
    assert _snapshot(dev) == before, name
    assert _counter(dev) == 1


def test_settle_without_tpm_neither_blesses_nor_commits(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    _installed(dev, rel)
    before = _snapshot(dev)
    assert before["entries"] == ["bastion-1-a.efi", "bastion-2-b+2-1.efi"]
    with pytest.raises(ConfigError, match="keeps its fuses in the TPM"):
        commit.settle(dev, probe=health.Prober())
    assert _snapshot(dev) == before  # still in trial: entry counting, record trial
    assert slots.load_records(dev)["b"].state == slots.SlotState.TRIAL
    assert _counter(dev) == 1


def test_tpm_state_missing_refused(dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]) -> None:
    (dev.folder / "tpm.state").unlink()
    before = _snapshot(dev)
    with (
        pytest.raises(NotFoundError, match="refusing to read the fuses from a new TPM"),
        dev.fuse_tpm(),
    ):
        pass
    assert not (dev.folder / "tpm.state").exists()  # no fresh TPM was made
    assert _snapshot(dev) == before


def test_file_fused_device_needs_no_tpm(tmp_path: Path, rel: dict[str, uk.ReleaseFiles]) -> None:
    plat = uk.make_device(tmp_path / "dev", rel["A"])
    with plat.fuse_tpm() as tpm:
        assert tpm is None
    assert commit.status(plat)["fuse_counter"] == 1


def test_install_boot_settle_with_tpm_fuses_rise_at_commit(
    dev: SimPlatform, rel: dict[str, uk.ReleaseFiles]
) -> None:
    _installed(dev, rel)
    assert _counter(dev) == 1  # installed and booted in trial: fuses untouched
    assert not (dev.folder / "fuses").exists()  # no file bank was made on the side
    with dev.fuse_tpm() as tpm:
        assert commit.status(dev, tpm)["fuse_counter"] == 1
        result = commit.settle(dev, probe=health.Prober(), tpm=tpm)
        assert result.action == "committed"
        doc = commit.status(dev, tpm)
    assert doc["fuse_counter"] == 2
    assert _counter(dev) == 2
    assert json.loads(dev.load(install.RESULT) or b"{}")["fuse_counter"] == 2
    with dev.fuse_tpm() as tpm:  # settling again changes nothing
        assert commit.settle(dev, probe=health.Prober(), tpm=tpm).action == "none"
    assert _counter(dev) == 2
