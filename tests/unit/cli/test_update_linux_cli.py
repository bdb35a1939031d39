"""``bastion update ... --platform linux --root FAKE``: the update commands on the linux
platform (cli/_platform.py, ADR 0028) over a fake tree made from a sim device: its disk
as ROOT/dev/vda with sysfs entries, its ESP as ROOT/efi, its store as ROOT/var/lib/bastion,
its software TPM (holding the fuses) given by ``--tpm``; refusals first."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests import updatekit as uk

from bastion.cli._platform import LOADER_ENTRY_SELECTED
from bastion.cli.main import main
from bastion.device.platform.linux import LinuxPlatform
from bastion.device.platform.sim import DEVICE_FILE
from bastion.device.update import slots, tuf_update
from bastion.errors import ConfigError, NotFoundError
from bastion.storage.disk_image import DiskImage

#: files of a sim device folder that are not its store
_NOT_STORE = {"disk.img", "esp", "tpm.state", DEVICE_FILE}


@dataclass(frozen=True)
class Fake:
    root: Path
    tpm: str  # the software TPM URI holding the fuses
    b_bundle: Path
    old_bundle: Path
    ca: Path
    b_rootfs: bytes


def _select(root: Path, entry_id: str | None) -> None:
    """What systemd-boot exports: the id of the entry it booted (None: no variable)."""
    efivars = root / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True, exist_ok=True)
    var = efivars / LOADER_ENTRY_SELECTED
    if entry_id is None:
        var.unlink(missing_ok=True)
    else:
        var.write_bytes(b"\x06\x00\x00\x00" + (entry_id + "\0").encode("utf-16-le"))


def _linux_tree(sim: Path, root: Path) -> None:
    (root / "dev").mkdir(parents=True)
    shutil.copyfile(sim / "disk.img", root / "dev/vda")
    block = root / "sys/class/block"
    for n, part in enumerate(DiskImage(root / "dev/vda").layout().partitions, 1):
        folder = block / "vda" / f"vda{n}"
        folder.mkdir(parents=True)
        (folder / "partition").write_text(f"{n}\n")
        (folder / "start").write_text(f"{part.first_lba}\n")
    shutil.copytree(sim / "esp", root / "efi")
    state = root / "var/lib/bastion"
    state.mkdir(parents=True)
    for item in sim.iterdir():
        if item.name not in _NOT_STORE and item.is_file():
            shutil.copyfile(item, state / item.name)
    _select(root, "bastion-1-a.efi")


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    blocks = uk.rootfs_blocks(1, 32)
    a = uk.make_release(tmp_path / "rel", "1.0", 1, b"".join(blocks))
    blocks[3] = b"z" * uk.BLOCK
    b = uk.make_release(tmp_path / "rel", "1.1", 2, b"".join(blocks))
    old = uk.make_release(tmp_path / "rel", "0.5", 0, b"".join(uk.rootfs_blocks(2, 32)))
    sim = uk.make_device(tmp_path / "sim", a, fuses="tpm")
    uk.KEYS.write(tmp_path)
    root = tmp_path / "root"
    _linux_tree(sim.folder, root)
    tpm = f"software:{(sim.folder / 'tpm.state').resolve()}"
    return Fake(root, tpm, b.bundle, old.bundle, tmp_path / "ca.pem", b.rootfs)


def _linux(fake: Fake, *argv: str, tpm: bool = True) -> list[str]:
    extra = ["--tpm", fake.tpm] if tpm else []
    where = ["--platform", "linux", "--root", str(fake.root), "--disk", "/dev/vda"]
    return ["update", *argv, *where, *extra]


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    assert main([*argv, "--json"]) == 0
    doc: dict = json.loads(capsys.readouterr().out)  # type: ignore[type-arg]
    return doc


def test_platform_choice_refusals(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, says in (
        (["update", "status"], "name the device folder DEV, or give --platform linux"),
        (["update", "status", str(fake.root), "--platform", "linux"], "takes no DEV"),
        (["update", "status", str(fake.root), "--root", "/"], "--root only with --platform"),
        (["update", "status", str(fake.root), "--tpm", fake.tpm], "--tpm only with --platform"),
        (_linux(fake, "check", "DEV", str(fake.b_bundle)), "takes no DEV (got 'DEV')"),
    ):
        assert main(argv) == ConfigError.exit_code, argv
        assert says in capsys.readouterr().err, argv


def test_linux_refuses_without_its_tpm(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    """No /dev/tpmrm0 in the tree: every command that needs the fuses is refused, and
    nothing is written (no fuses read as "none blown")."""
    slots_before = (fake.root / "var/lib/bastion/update-slots.json").read_bytes()
    disk_before = (fake.root / "dev/vda").read_bytes()
    for argv in (
        ["status"],
        ["settle"],
        ["check", str(fake.b_bundle), "--keyring", str(fake.ca)],
        ["install", str(fake.b_bundle), "--keyring", str(fake.ca)],
    ):
        assert main(_linux(fake, *argv, tpm=False)) == NotFoundError.exit_code, argv
        err = capsys.readouterr().err
        assert f"TPM device {fake.root}/dev/tpmrm0 does not exist" in err, argv
    assert (fake.root / "var/lib/bastion/update-slots.json").read_bytes() == slots_before
    assert (fake.root / "dev/vda").read_bytes() == disk_before


def test_linux_refuses_without_the_booted_entry(
    fake: Fake, capsys: pytest.CaptureFixture[str]
) -> None:
    """The booted slot comes from systemd-boot's LoaderEntrySelected, never from a record
    an earlier boot left."""
    for entry_id, says in (
        (None, "no LoaderEntrySelected EFI variable"),
        ("bastion-9-b.efi", "systemd-boot booted 'bastion-9-b.efi', which is not one bastion"),
        ("other.conf", "systemd-boot booted 'other.conf', which is not one bastion"),
    ):
        _select(fake.root, entry_id)
        for argv in (["status"], ["settle"], ["check", str(fake.b_bundle)]):
            assert main(_linux(fake, *argv)) == NotFoundError.exit_code, (entry_id, argv)
            assert says in capsys.readouterr().err, (entry_id, argv)
    _select(fake.root, "bastion-1-a.efi")
    stale = b'{"slot": "b", "stem": "bastion-2-b", "trial": true}'
    (fake.root / "var/lib/bastion/update-booted.json").write_bytes(stale)
    status = _json(capsys, _linux(fake, "status"))
    assert status["booted"] == {"slot": "a", "stem": "bastion-1-a", "trial": False}
    (fake.root / "var/lib/bastion/update-booted.json").write_bytes(b"{damaged")
    status = _json(capsys, _linux(fake, "status"))
    assert status["booted"] == {"slot": "a", "stem": "bastion-1-a", "trial": False}


def test_linux_refuses_the_sim_reboot(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    booted = (fake.root / "var/lib/bastion/update-booted.json").read_bytes()
    assert main(_linux(fake, "reboot")) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert "update reboot (the firmware's slot choice at power-on) is the sim platform's" in err
    assert "run `systemctl reboot`: systemd-boot tries the trial entry" in err
    assert (fake.root / "var/lib/bastion/update-booted.json").read_bytes() == booted


def test_linux_status_check_install(fake: Fake, capsys: pytest.CaptureFixture[str]) -> None:
    status = _json(capsys, _linux(fake, "status"))
    assert status["booted"] == {"slot": "a", "stem": "bastion-1-a", "trial": False}
    assert status["fuse_counter"] == 1  # the TPM's NV bits, as the sim left them
    assert status["slots"]["a"]["version"] == "1.0"
    assert status["slots"]["a"]["state"] == "committed"
    assert main(_linux(fake, "status")) == 0
    assert "slot a: 1.0 svn 1 committed" in capsys.readouterr().out
    ca = str(fake.ca)
    assert main(_linux(fake, "install", str(fake.old_bundle), "--keyring", ca)) == 2
    assert "below the fuse counter" in capsys.readouterr().err
    checked = _json(capsys, _linux(fake, "check", str(fake.b_bundle), "--keyring", ca))
    assert checked["target_slot"] == "b" and checked["svn"] == 2
    done = _json(capsys, _linux(fake, "install", str(fake.b_bundle), "--keyring", ca))
    assert done["slot"] == "b" and done["entry"] == "bastion-2-b+3-0.efi"
    assert (fake.root / "efi/EFI/Linux/bastion-2-b+3-0.efi").is_file()
    plat = LinuxPlatform(fake.root, disk_device="/dev/vda")
    b_root = slots.root_partition("b")
    assert plat.read_partition(b_root, len(fake.b_rootfs)) == fake.b_rootfs
    after = _json(capsys, _linux(fake, "status"))
    assert after["slots"]["b"]["state"] == "trial" and after["fuse_counter"] == 1
    assert after["booted"]["slot"] == "a"
    # the reboot, as systemd-boot does it: the trial entry is booted and counted down
    esp = fake.root / "efi/EFI/Linux"
    (esp / "bastion-2-b+3-0.efi").rename(esp / "bastion-2-b+2-1.efi")
    _select(fake.root, "bastion-2-b.efi")
    settled = _json(capsys, _linux(fake, "settle"))
    assert settled["slot"] == "b" and settled["action"] == "committed"
    assert (esp / "bastion-2-b.efi").is_file()  # blessed: the counter dropped
    final = _json(capsys, _linux(fake, "status"))
    # on linux "trial" is whether the booted entry still counts, so no longer
    assert final["booted"] == {"slot": "b", "stem": "bastion-2-b", "trial": False}
    assert final["slots"]["b"]["state"] == "committed" and final["fuse_counter"] == 2


def test_agent_run_takes_the_linux_platform(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``agent run --platform linux``: the built-in updater works on the linux platform
    (its state, ESP, TUF metadata folder, the system's reboot), only when configured."""
    from bastion.cli._platform import linux_device
    from bastion.cli.agent import _linux_updater

    ident = tmp_path / "ident"
    ident.mkdir()
    argv = ["agent", "run", str(ident), "--once", "--server", "http://127.0.0.1:9"]
    assert main([*argv, "--root", str(fake.root)]) == ConfigError.exit_code
    assert "--root only with --platform linux" in capsys.readouterr().err
    args = argparse.Namespace(platform="linux", root=str(fake.root), disk="/dev/vda", tpm=None)
    linux = linux_device(args)
    reboots: list[str] = []
    agent = SimpleNamespace(
        actions=SimpleNamespace(reboot=lambda: reboots.append("systemctl reboot")),
        note=lambda _text: None,
    )
    signer = SimpleNamespace(identity=SimpleNamespace(device_id="dev-1"))
    kw = {"signer": signer, "http": None, "ca_file": None, "agent": agent}
    assert _linux_updater(linux, None, **kw) is None  # not configured: --update-hook
    linux.platform.store(tuf_update.SETTINGS, b"{}")
    _select(fake.root, None)
    with pytest.raises(NotFoundError, match="no LoaderEntrySelected"):
        _linux_updater(linux, None, **kw)
    _select(fake.root, "bastion-1-a.efi")
    updater = _linux_updater(linux, None, **kw)
    assert updater.platform == LinuxPlatform(fake.root, disk_device="/dev/vda")
    assert updater.metadata_dir == fake.root / "var/lib/bastion/tuf-metadata"
    updater.reboot()
    assert reboots == ["systemctl reboot"]


def test_linux_configure_and_tuf_check(
    fake: Fake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``configure`` records the TUF settings in ROOT/var/lib/bastion; ``check`` without a
    bundle refreshes TUF there and reads the running slot and the TPM's fuses."""
    from tests.tufkit import NOW, Keys, custom, make_repo, publish, serve

    from bastion.build.tuf_repo import renew

    assert main(_linux(fake, "check")) == NotFoundError.exit_code  # nothing configured
    assert "update configure" in capsys.readouterr().err
    keys = Keys()
    repo = make_repo(tmp_path / "repo", keys)
    repo.delegate(uk.PRODUCT, keys.product, 1, keys.targets, NOW)
    renew(repo, keys.snapshot, keys.timestamp, NOW)
    files = tmp_path / "files"
    files.mkdir()
    publish(repo, keys, files, "n.raucb",
            custom("1.2", 1, hardware=(uk.HARDWARE,), product=uk.PRODUCT))  # fmt: skip
    tuf_root = repo.metadata_dir / "1.root.json"
    with serve(repo.path) as base:
        conf = _json(
            capsys,
            _linux(
                fake, "configure", "--product", uk.PRODUCT, "--hardware", uk.HARDWARE,
                "--metadata-url", f"{base}/metadata", "--targets-url", f"{base}/targets",
                "--tuf-root", str(tuf_root), "--keyring", str(fake.ca), tpm=False,
            ),
        )  # fmt: skip
        assert conf["tuf"]["metadata_url"] == f"{base}/metadata" and conf["keyring"]
        state = fake.root / "var/lib/bastion"
        assert (state / tuf_update.KEYRING).read_bytes() == fake.ca.read_bytes()
        assert (state / tuf_update.SETTINGS).is_file()
        checked = _json(capsys, _linux(fake, "check"))
    assert checked["status"] == "available"
    assert checked["running"] == {"version": "1.0", "svn": 1}
    assert checked["fuse_counter"] == 1
    assert checked["target"]["version"] == "1.2"
    assert (fake.root / "var/lib/bastion/tuf-metadata").is_dir()
