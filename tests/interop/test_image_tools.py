"""The product disk (``image build``: ESP, signed UKI, verity root, data) and a sim device
booted from it, read by the reference tools.

sfdisk shows the layout and DPS type GUIDs; veritysetup verifies the root partition
with its hash partition and the root hash from the signed UKI's command line;
cryptsetup luksDump reads the data partition after first boot; tpm2_eventlog parses the
firmware event log and replays the same PCRs as bastion, which equal the offline
prediction for 4, 7 and 9 (PCR 11 gains the initrd phases after the log ends).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.bootkit import product_keys
from tests.conftest import need_tool
from tests.simefikit import SbKeys, build_product, need_efi_tools, sb_keys

from bastion.device.boot import read_eventlog
from bastion.device.boot.efi_chain import EfiBootChain
from bastion.device.boot_create import create_efi_device
from bastion.device.platform.sim import SimPlatform
from bastion.formats import eventlog as el
from bastion.formats import gpt
from bastion.formats.uki import uki_sections
from bastion.storage import disk_image as di
from bastion.trust import image as ti

pytestmark = pytest.mark.interop


@dataclass(frozen=True)
class Booted:
    image: Path
    dev: Path
    keys: SbKeys
    uki: bytes
    loader: bytes

    @property
    def root_hash(self) -> bytes:
        cmdline = uki_sections(self.uki)[".cmdline"].rstrip(b"\0").decode()
        words = dict(w.partition("=")[::2] for w in cmdline.split())
        return bytes.fromhex(words["roothash"])


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Booted:
    need_efi_tools()
    root = tmp_path_factory.mktemp("interop")
    keys = sb_keys()
    image = build_product(root / "build", keys, product_keys().image)
    plat = create_efi_device(root / "dev", image, keys.variables())
    esp = plat.esp()
    (entry,) = esp.list("EFI/Linux")
    uki, loader = esp.read(f"EFI/Linux/{entry}"), esp.read("EFI/BOOT/BOOTX64.EFI")
    EfiBootChain(SimPlatform(root / "dev")).run()
    return Booted(image, root / "dev", keys, uki, loader)


def _extract(disk: Path, part: gpt.Partition, out: Path, size: int | None = None) -> Path:
    out.write_bytes(di.read_partition(disk, part, size))
    return out


def test_sfdisk_shows_layout_and_dps_types(device: Booted) -> None:
    sfdisk = need_tool("sfdisk")
    layout = di.read_layout(device.image)
    proc = subprocess.run([sfdisk, "--json", str(device.image)], capture_output=True, check=True)
    table = json.loads(proc.stdout)["partitiontable"]
    assert table["label"] == "gpt"
    got = {
        p["name"]: (p["type"].lower(), p["uuid"].lower(), p["start"]) for p in table["partitions"]
    }
    root_uuid, verity_uuid = gpt.verity_partition_uuids(device.root_hash)
    assert got["root-a"][:2] == (str(gpt.TYPE_ROOT_X86_64), str(root_uuid))
    assert got["root-a-verity"][:2] == (str(gpt.TYPE_ROOT_VERITY_X86_64), str(verity_uuid))
    assert got["root-b"][0] == str(gpt.TYPE_ROOT_X86_64)
    assert got["esp"][0] == str(gpt.TYPE_ESP)
    assert got["data"][0] == str(gpt.TYPE_LINUX_DATA)
    for part in layout.partitions:
        assert got[part.name][2] == part.first_lba
    verify = subprocess.run(
        [sfdisk, "--verify", str(device.image)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_veritysetup_verifies_root_with_the_ukis_root_hash(device: Booted, tmp_path: Path) -> None:
    veritysetup = need_tool("veritysetup")
    layout = di.read_layout(device.image)
    root = _extract(device.image, layout.find("root-a"), tmp_path / "root.img")
    hashes = _extract(device.image, layout.find("root-a-verity"), tmp_path / "hash.img")
    ok = subprocess.run(
        [veritysetup, "verify", str(root), str(hashes), device.root_hash.hex()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    with open(root, "r+b") as handle:
        handle.seek(4096 * 2 + 5)
        b = handle.read(1)
        handle.seek(4096 * 2 + 5)
        handle.write(bytes([b[0] ^ 1]))
    bad = subprocess.run(
        [veritysetup, "verify", str(root), str(hashes), device.root_hash.hex()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0


def test_cryptsetup_reads_data_volume_after_first_boot(device: Booted, tmp_path: Path) -> None:
    cryptsetup = need_tool("cryptsetup")
    disk = device.dev / "disk.img"
    data = di.read_layout(disk).find("data")
    vol = _extract(disk, data, tmp_path / "data.img")
    proc = subprocess.run(
        [cryptsetup, "luksDump", str(vol)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Version:       \t2" in proc.stdout or "Version:" in proc.stdout
    assert "systemd-tpm2" in proc.stdout and "systemd-recovery" in proc.stdout


def test_tpm2_eventlog_parses_the_boot_log(device: Booted, tmp_path: Path) -> None:
    tool = need_tool("tpm2_eventlog")
    proc = subprocess.run(
        [tool, str(device.dev / "eventlog.bin")], capture_output=True, text=True, check=True
    )
    values = {
        int(k): v for k, v in re.findall(r"^\s+(\d+)\s*: 0x([0-9a-f]{64})$", proc.stdout, re.M)
    }
    keys = device.keys
    predicted = ti.predict_efi_pcrs(device.loader, device.uki, keys.variables(), phases="")
    replay = el.replay(read_eventlog(device.dev).events)
    assert values == {k: v.hex() for k, v in replay.items()}
    assert {0, 4, 7, 9, 11} <= set(values)
    assert all(values[k] == predicted[k].hex() for k in (0, 4, 7, 9, 11))
